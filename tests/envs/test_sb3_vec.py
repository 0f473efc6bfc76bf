"""``SB3VecEnv``: SB3's VecEnv protocol over the batched env, rows restarting on their own."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import pytest
from stable_baselines3.common.vec_env import VecEnv

from marlhf.envs import BatchedTokenEnv
from marlhf.envs.core.sb3_vec import SB3VecEnv, sb3_vec_env


def make(task: str = "marlhf/Reverse-v0", num_envs: int = 6, **kwargs: Any) -> BatchedTokenEnv:
    env = gymnasium.make_vec(
        task, num_envs=num_envs, vectorization_mode="vector_entry_point", seed=0, **kwargs
    )
    assert isinstance(env, BatchedTokenEnv)
    return env


def oracle(env: BatchedTokenEnv) -> np.ndarray:
    """The next token of each row's optimal response (read from the batched env underneath)."""
    task: Any = env.task  # a toy task: it knows its optimal response
    lengths = env.lengths.tolist()
    return np.array(
        [task.optimal_response(p)[n] for p, n in zip(env.prompts, lengths, strict=True)]
    )


def test_rows_restart_on_their_own_and_keep_their_episode() -> None:
    env = make()
    view = SB3VecEnv(env)
    assert isinstance(view, VecEnv) and view.num_envs == 6
    obs: Any = view.reset()
    assert view.observation_space.contains({k: v[0] for k, v in obs.items()})
    episodes: list[tuple[float, int, int]] = []  # (return, steps, optimal length)
    returns, steps = np.zeros(6), np.zeros(6, dtype=int)
    task: Any = env.task
    wanted = [len(task.optimal_response(p)) for p in env.prompts]
    for _ in range(40):
        obs, rewards, dones, infos = view.step(oracle(env))
        assert obs["input_ids"].shape == (6, env.seq_len) and rewards.dtype == np.float32
        returns += rewards
        steps += 1
        for i in np.flatnonzero(dones):
            assert set(infos[i]["terminal_observation"]) == {"input_ids", "attention_mask"}
            assert infos[i]["TimeLimit.truncated"] is False  # the oracle ends on EOS
            episodes.append((float(returns[i]), int(steps[i]), wanted[i]))
            returns[i], steps[i] = 0.0, 0
            wanted[i] = len(task.optimal_response(env.prompts[i]))  # its new prompt
    # Prompts of different lengths end at different steps: many restarts of single rows, and
    # every episode, also those continued across another row's restart, is the oracle's.
    assert len(episodes) > 20 and len({n for _, n, _ in episodes}) > 1
    for ret, n, optimal_len in episodes:
        assert n == optimal_len and ret == pytest.approx(env.task.optimal_return)


def test_truncated_rows_and_monitor_statistics() -> None:
    env = make("marlhf/DelayedChoice-v0", num_envs=4, horizon=3)
    view = sb3_vec_env(env)
    view.seed(5)
    view.reset()
    view.action_space.seed(0)
    seen = []
    for _ in range(6):
        _, _, dones, infos = view.step(np.array([view.action_space.sample() for _ in range(4)]))
        seen += [infos[i] for i in np.flatnonzero(dones)]
    assert len(seen) == 8  # two episodes per row, each of 3 tokens
    assert all(info["TimeLimit.truncated"] and info["episode"]["l"] == 3 for info in seen)


def test_attributes_methods_and_masks() -> None:
    env = make("marlhf/DelayedChoice-v0", num_envs=4, horizon=3)
    view = SB3VecEnv(env)
    view.reset()
    assert view.get_attr("max_new_tokens") == [3] * 4
    assert view.get_attr("num_envs", indices=[1, 2]) == [4, 4]
    masks = view.env_method("action_masks")
    assert len(masks) == 4 and masks[0].shape == (env.vocab_size,)
    np.testing.assert_array_equal(view.action_masks(), env.action_masks().numpy())
    assert view.env_is_wrapped(object) == [False] * 4
    with pytest.raises(TypeError, match="expected a BatchedTokenEnv"):
        SB3VecEnv(object())  # type: ignore[arg-type]
