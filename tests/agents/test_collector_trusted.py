"""The collector steps the env without its per-step range check (its ids are sampled over the
env's vocabulary) and checks the rollout's ids once instead."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

from marlhf.algorithms import PPO
from marlhf.algorithms import collector as collector_module
from marlhf.envs import BatchedTokenEnv
from tests.agents.conftest import tiny_model


def _agent(task: str = "Reverse") -> tuple[PPO, BatchedTokenEnv]:
    env = BatchedTokenEnv(task, num_envs=4, seed=0)
    return PPO(tiny_model(env.codec), env, n_epochs=1, batch_size=4, seed=0), env


def test_the_rollout_steps_trusted_and_checks_its_ids_once(monkeypatch: pytest.MonkeyPatch) -> None:
    ppo, env = _agent()
    seen: list[bool] = []
    step = env.step

    def spy_step(actions: torch.Tensor) -> Any:
        seen.append(env.validate_actions)
        return step(actions)

    checked: list[torch.Tensor] = []
    real = collector_module.check_action_range

    def spy_check(ids: torch.Tensor, vocab_size: int, where: Any) -> None:
        checked.append(ids)
        real(ids, vocab_size, where)

    monkeypatch.setattr(env, "step", spy_step)
    monkeypatch.setattr(collector_module, "check_action_range", spy_check)
    assert ppo.collect(ppo._init_callback(None, progress_bar=False))
    assert seen and not any(seen)  # every step of the rollout skipped the range check
    assert env.validate_actions  # and a user's own steps check again
    buf = ppo.rollout_buffer
    assert buf is not None
    assert len(checked) == 1 and checked[0] is buf.response_ids
    # What the buffer recorded is what the env took (the env pads with pad, the buffer with 0).
    mask = buf.response_mask
    assert torch.equal(mask, env.response_mask)
    assert torch.equal(buf.response_ids[mask], env.response_ids[mask])
    assert torch.equal(buf.task_rewards.sum(dim=1), env.episode_return)


class _StopAtOnce(BaseCallback):
    def _on_step(self) -> bool:
        return False


def test_ids_out_of_the_vocabulary_fail_the_rollout_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # A policy whose samples are not cut to the env's vocabulary (here, a replaced sample())
    # is caught by the rollout's check, also when a callback stops the rollout early.
    ppo, env = _agent("DelayedChoice")
    bad = torch.full((env.num_envs,), env.vocab_size)
    monkeypatch.setattr(ppo.policy, "sample", lambda logits, **_: bad)
    callback = ppo._init_callback(_StopAtOnce(), progress_bar=False)
    pattern = rf"sampled tokens.*token ids \[{env.vocab_size}.*0\.\.{env.vocab_size - 1}"
    with pytest.raises(ValueError, match=pattern):
        ppo.collect(callback)
    assert env.validate_actions
