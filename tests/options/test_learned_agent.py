"""The learned termination inside an agent: training, saving, resuming, and what it refuses."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch

from marlhf.algorithms import MAPPO
from marlhf.checkpoint.rollout_io import collect
from marlhf.models import tiny_gpt2
from marlhf.options import (
    Learned,
    SegmentationBatch,
    build_termination,
    make_termination,
    termination_config,
)


def _agent(spec: str, seed: int = 0) -> MAPPO:
    env: Any = gym.make_vec(
        "marlhf/CreditSum-v0", num_envs=16, vectorization_mode="vector_entry_point", horizon=12
    )
    model = tiny_gpt2(env.codec, n_layer=1, n_embd=16, n_head=2, seed=seed)
    return MAPPO(
        model,
        env,
        batch_size=16,
        kl_coef=0.0,
        mask_actions=True,
        seed=seed,
        termination=spec,
    )


@pytest.mark.slow
def test_agent_trains_its_learned_termination_and_saves_it(tmp_path: Path) -> None:
    algo = _agent("learned:budget=3;steps=10;rows=8")
    term = algo.termination
    assert isinstance(term, Learned)
    before = termination_config(term)["kwargs"]
    assert "state" not in before
    algo.learn(16 * 12 * 2)
    stats = algo.rollout_stats
    for key in ("loss", "rmse", "oracle_rmse", "truth_tokens"):
        assert f"train/termination_{key}" in stats
    assert stats["train/termination_oracle_rmse"] <= stats["train/termination_rmse"] + 1e-9
    assert term.updates == 20 and term.truth_tokens > 0
    assert (term.arch, term.vocab_size) == ("GPT2LMHeadModel-h16", algo.policy.vocab_size)
    path = tmp_path / "agent.zip"
    algo.save(path)
    loaded = MAPPO.load(path, env=algo.env)
    assert isinstance(loaded.termination, Learned)
    assert loaded.termination.config_kwargs() == term.config_kwargs()
    rollouts = collect(algo)
    batch = SegmentationBatch.build(
        rollouts.response_ids,
        rollouts.response_mask,
        term.requires,
        logprobs=rollouts.logprobs,
        entropy=algo._rollout_entropy,
        values=rollouts.values,
    )
    assert torch.equal(loaded.termination.starts(batch), term.starts(batch))


def test_a_loaded_termination_refuses_another_policy() -> None:
    algo = _agent("learned:budget=3;steps=2;rows=4")
    algo.learn(16 * 12)
    data = termination_config(algo.termination)  # type: ignore[arg-type]
    env: Any = gym.make_vec(
        "marlhf/CreditSum-v0", num_envs=16, vectorization_mode="vector_entry_point", horizon=12
    )
    # refused when the agent is built, also when used frozen (steps=0: it never trains)
    for kwargs in (data["kwargs"], {**data["kwargs"], "steps": 0}):
        with pytest.raises(ValueError, match=r"learned: arch='GPT2LMHeadModel-h16'.*h32"):
            MAPPO(
                tiny_gpt2(env.codec, n_layer=1, n_embd=32, n_head=2, seed=0),
                env,
                batch_size=16,
                kl_coef=0.0,
                mask_actions=True,
                termination=build_termination({"name": "learned", "kwargs": kwargs}),
            )
    # the same policy size takes it
    MAPPO(
        tiny_gpt2(env.codec, n_layer=1, n_embd=16, n_head=2, seed=1),
        env,
        batch_size=16,
        kl_coef=0.0,
        mask_actions=True,
        termination=build_termination(data),
    )


@pytest.mark.slow
def test_cli_trains_a_learned_termination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from marlhf.cli.main import main
    from tests.training.conftest import TINY, sets

    argv = sets(
        "task.id=marlhf/CreditSum-v0",
        "task.kwargs={horizon: 6, num_symbols: 2, num_decisions: 2}",
        *TINY[1:],
        "algo=mappo",
        "termination=learned:budget=2",
        "total_timesteps=96",
        f"output_dir={tmp_path}",
    )
    assert main(["train", *argv]) == 0
    capsys.readouterr()
    result = json.loads((tmp_path / "result.json").read_text())
    losses = [r["value"] for r in result["rows"] if r["metric"] == "train/termination_loss"]
    assert losses and all(math.isfinite(v) for v in losses)
    loaded = MAPPO.load(tmp_path / "final.zip")
    assert isinstance(loaded.termination, Learned) and loaded.termination.is_trained


def test_agent_checkpoint_resumes_termination_training_exactly(tmp_path: Path) -> None:
    """An agent saved mid-run and resumed trains its termination as the uninterrupted run."""
    spec = "learned:budget=3;steps=4;rows=8"
    straight = _agent(spec).learn(16 * 12 * 3)
    first = _agent(spec).learn(16 * 12 * 2)
    first.save(tmp_path / "ck")
    env: Any = gym.make_vec(
        "marlhf/CreditSum-v0", num_envs=16, vectorization_mode="vector_entry_point", horizon=12
    )
    resumed = MAPPO.load(tmp_path / "ck", env=env)
    resumed.learn(16 * 12, reset_num_timesteps=False)
    ours, theirs = straight.termination, resumed.termination
    assert isinstance(ours, Learned) and isinstance(theirs, Learned)
    assert ours.updates == theirs.updates == 12
    assert theirs.state() == ours.state()
    assert termination_config(theirs) == termination_config(ours)
    for p, q in zip(straight.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(p, q)


def _agent_on(env: Any, spec: str, **kw: Any) -> MAPPO:
    model = tiny_gpt2(env.codec, n_layer=1, n_embd=16, n_head=2, seed=0)
    return MAPPO(model, env, batch_size=8, kl_coef=0.0, seed=0, termination=spec, **kw)


@pytest.mark.parametrize(
    ("spec", "kw", "match"),
    [
        ("learned:budget=13", {}, r"learned: budget=13 cuts exceeds the horizon \(12.*1\.\.12"),
        ("learned:budget=2;target=exact", {}, r"learned: target='exact' needs a task with a "
         r"decisive depth.*task 'Reverse'.*valid: auto, exact, mc"),
        ("learned:budget=2", {"estimator": "mc"}, r"learned: estimator='mc' needs \['mc_values'\]"),
    ],
)  # fmt: skip
def test_agent_refuses_what_a_learned_termination_cannot_train_on(
    spec: str, kw: dict[str, Any], match: str
) -> None:
    """Each is refused when the agent gets its env, before a rollout costs anything."""
    from marlhf.envs import BatchedTokenEnv

    env = BatchedTokenEnv("Reverse", num_envs=8, seed=0, horizon=12)
    assert env.max_new_tokens == 12
    with pytest.raises(ValueError, match=match):
        _agent_on(env, spec, **kw)
    # used frozen (steps=0), a trained one needs no truth: target and estimator do not matter
    if "budget=13" not in spec:
        _agent_on(env, spec + ";steps=0", **kw)
    _agent_on(env, "learned:budget=2")  # target=auto on a task without a decisive depth: mc


def test_check_termination_refuses_a_multi_turn_env() -> None:
    from types import SimpleNamespace

    from marlhf.algorithms.termination_training import check_termination
    from marlhf.tokenization import SymbolCodec

    class _TurnEnv:
        max_new_tokens = 12

        def turn_record(self) -> None:
            return None

    model = tiny_gpt2(SymbolCodec(["a", "b"]), n_layer=1, n_embd=16, n_head=2, seed=0)
    algo = SimpleNamespace(
        termination=Learned(budget=2),
        env=_TurnEnv(),
        policy=SimpleNamespace(model=model, vocab_size=5),
        config=SimpleNamespace(credit=SimpleNamespace(estimator="gae")),
    )
    with pytest.raises(ValueError, match=r"learned: _TurnEnv is a multi-turn env.*steps=0"):
        check_termination(algo)
    algo.termination = Learned(budget=2, steps=0)  # applied frozen: fine
    check_termination(algo)
    algo.termination = make_termination("entropy:budget=2")  # a heuristic: fine
    check_termination(algo)
