"""Every turn-level preset and estimator trains on the toy tool-use MDP (ToolLookup) through
the multi-turn driver: inputs declared, provided and consumed end to end."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from marlhf.algorithms import PPO
from marlhf.algorithms.turn_presets import TURN_PRESETS
from marlhf.envs.multiturn.env import MultiTurnTokenEnv
from marlhf.envs.multiturn.tool import ToolLookupTask
from tests.agents.conftest import tiny_model


def _train(**kwargs: Any) -> Any:
    task = ToolLookupTask()
    env = MultiTurnTokenEnv(task, num_envs=8, seed=0)
    algo = PPO(tiny_model(task.codec), env, seed=0, batch_size=8, mask_actions=True, **kwargs)
    algo.learn(8 * 6)
    return algo


@pytest.mark.parametrize(
    "preset",
    [  # the continuations make vineppo-turns the slow one (~25 s on a loaded machine)
        pytest.param(p, marks=pytest.mark.slow) if p == "vineppo-turns" else p
        for p in sorted(TURN_PRESETS)
    ],
)
def test_every_turn_preset_trains_on_tool_lookup(preset: str) -> None:
    extra: dict[str, Any] = {"group_size": 4}
    if preset == "vineppo-turns":  # groups of 4 too: the replay reads one prompt per row
        extra = {"group_size": 4, "mc_rollouts": 2, "mc_max_starts": 3}
    algo = _train(preset=["toy", preset], **extra)
    buf = algo.rollout_buffer
    assert math.isfinite(algo.rollout_stats["rollout/score_mean"])
    assert torch.isfinite(buf.advantages).all()
    assert bool((buf.advantages[buf.credit_mask] != 0).any())
    if preset == "vineppo-turns":  # the continuations are counted in the budget
        assert algo.rollout_stats["rollout/mc_tokens"] > 0


@pytest.mark.parametrize(
    "estimator",
    [
        "turn_potential:source=reference;normalize=group_rewards",
        "grpo + 0.5 * gigpo_step",
        "turn_gae:inner=gae",
    ],
)
def test_specs_with_options_and_sums_train(estimator: str) -> None:
    algo = _train(preset=["toy"], estimator=estimator, group_size=4)
    assert torch.isfinite(algo.rollout_buffer.advantages).all()
    buf = algo.rollout_buffer
    assert bool((buf.advantages[buf.credit_mask] != 0).any())
