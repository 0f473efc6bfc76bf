"""Every marlhf/ id: built by gymnasium.make / make_vec with defaults, passes both env checkers."""

from __future__ import annotations

from typing import Any

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import marlhf  # noqa: F401  (registers the envs)
from marlhf.envs import (
    BatchedTokenEnv,
    DelayedChoiceTask,
    TokenEnv,
    available_tasks,
    env_ids,
    make_task,
)
from tests.extras import NEEDS_REASONING_GYM

pytestmark = pytest.mark.usefixtures("one_thread")

TOY_IDS = [
    "marlhf/DelayedChoice-v0",
    "marlhf/Reverse-v0",
    "marlhf/ReverseDense-v0",
    "marlhf/ExprTarget-v0",
]


def _all_ids() -> list[Any]:
    """Every single-turn id (multi-turn ids have no single-row ``gymnasium.make`` form)."""
    ids = sorted(
        i
        for i in gymnasium.registry
        if i.startswith("marlhf/") and gymnasium.spec(i).entry_point is not None
    )
    return [
        pytest.param(i, marks=NEEDS_REASONING_GYM if "ReasoningGym" in i else [], id=i) for i in ids
    ]


def test_toy_ids_registered_on_import() -> None:
    for env_id in TOY_IDS:
        assert env_id in gymnasium.registry
        spec = gymnasium.spec(env_id)
        assert spec.vector_entry_point is not None
    assert set(TOY_IDS) <= set(env_ids())
    assert {"DelayedChoice", "Reverse", "ReverseDense", "ExprTarget"} <= set(available_tasks())


@pytest.mark.parametrize("env_id", _all_ids())
def test_gymnasium_env_checker(env_id: str) -> None:
    env = gymnasium.make(env_id)
    assert isinstance(env.unwrapped, TokenEnv)
    gym_check_env(env.unwrapped, skip_render_check=False)


@pytest.mark.parametrize("env_id", _all_ids())
def test_sb3_env_checker(env_id: str) -> None:
    env = gymnasium.make(env_id)
    sb3_check_env(env.unwrapped, warn=True)


@pytest.mark.parametrize("env_id", TOY_IDS)
def test_make_vec_returns_batched_env(env_id: str) -> None:
    env = gymnasium.make_vec(env_id, num_envs=64, vectorization_mode="vector_entry_point")
    assert isinstance(env, BatchedTokenEnv)
    assert env.num_envs == 64
    assert env.metadata["autoreset_mode"] is AutoresetMode.DISABLED
    obs, info = env.reset(seed=0)
    assert obs["input_ids"].shape == (64, env.seq_len)
    assert len(info["prompts"]) == 64


def test_task_kwargs_pass_through_make_and_make_vec() -> None:
    single = gymnasium.make("marlhf/DelayedChoice-v0", horizon=48, num_choices=3).unwrapped
    assert isinstance(single, TokenEnv) and isinstance(single.task, DelayedChoiceTask)
    assert single.max_new_tokens == 48
    assert single.task.num_choices == 3
    vec = gymnasium.make_vec(
        "marlhf/DelayedChoice-v0",
        num_envs=8,
        vectorization_mode="vector_entry_point",
        horizon=128,
        seed=3,
    )
    assert isinstance(vec, BatchedTokenEnv)
    assert vec.max_new_tokens == 128
    assert vec.seq_len == 129


def test_unknown_task_lists_registered() -> None:
    with pytest.raises(ValueError, match="DelayedChoice"):
        make_task("NoSuchTask")


def test_bad_task_kwarg_is_named() -> None:
    with pytest.raises(ValueError, match="horizon"):
        gymnasium.make("marlhf/DelayedChoice-v0", horizon=1)
    with pytest.raises(TypeError, match="no_such_kwarg"):
        make_task("Reverse", no_such_kwarg=1)
    with pytest.raises(TypeError, match="already built"):
        make_task(make_task("Reverse"), horizon=9)


def test_user_task_registers_and_builds_by_id() -> None:
    from marlhf.envs import register_task
    from marlhf.envs.builtin.toy import ReverseTask
    from marlhf.envs.core import registration

    def factory(**kwargs: object) -> ReverseTask:
        return ReverseTask(num_symbols=3, **kwargs)  # type: ignore[arg-type]

    env_id = register_task("UserReverse3", factory, version=2)
    try:
        assert env_id == "marlhf/UserReverse3-v2"
        env = gymnasium.make(env_id, max_len=3).unwrapped
        assert isinstance(env, TokenEnv) and isinstance(env.task, ReverseTask)
        assert env.task.max_len == 3 and env.codec.vocab_size == 5
        vec = gymnasium.make_vec(env_id, num_envs=4, vectorization_mode="vector_entry_point")
        assert isinstance(vec, BatchedTokenEnv) and vec.task.codec.vocab_size == 5
    finally:  # leave the global registries as other tests expect them
        del gymnasium.registry[env_id]
        registration._TASKS.pop("UserReverse3")
    by_entry_point = make_task("marlhf.envs.builtin.toy:DelayedChoiceTask", horizon=20)
    assert by_entry_point.max_new_tokens == 20
    with pytest.raises(ValueError, match="name="):
        register_task("bad name", factory)
    with pytest.raises(ValueError, match=r"package\.module:Name"):
        make_task("nomodule:")
