"""The value-change termination, and the agents handing entropy and values to terminations."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import pytest
import torch

from marlhf.algorithms import MAPPO
from marlhf.checkpoint.rollout_io import collect
from marlhf.models import tiny_gpt2
from marlhf.options import SegmentationBatch, compute_starts, make_termination
from marlhf.options.segments import segment_ids


def test_cuts_before_the_tokens_that_moved_the_value() -> None:
    values = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.4, 0.4, 0.4, 0.4]])
    mask = torch.ones_like(values, dtype=torch.bool)
    batch = SegmentationBatch.build(
        torch.ones(1, 10).long(), mask, frozenset({"values"}), values=values
    )
    # token 2 moved V from 0 to 1, token 5 from 1 to 0.4: each opens a macro
    starts = compute_starts(make_termination("value_change:budget=2"), batch)
    assert starts[0].nonzero().flatten().tolist() == [0, 2, 5]
    one = compute_starts(make_termination("value_change:budget=1"), batch)
    assert one[0].nonzero().flatten().tolist() == [0, 2]
    above = compute_starts(make_termination("value_change:threshold=0.7"), batch)
    assert above[0].nonzero().flatten().tolist() == [0, 2]


def test_padding_values_are_ignored() -> None:
    values = torch.tensor([[0.0, 0.0, 5.0, float("nan"), 100.0]])
    mask = torch.tensor([[True, True, True, False, False]])
    batch = SegmentationBatch.build(
        torch.ones(1, 5).long(), mask, frozenset({"values"}), values=values
    )
    starts = compute_starts(make_termination("value_change:budget=3"), batch, isolate_last=True)
    assert starts[0].tolist() == [True, True, True, False, False]


def _agent(spec: str, horizon: int = 12, **kw: Any) -> MAPPO:
    env: Any = gym.make_vec(
        "marlhf/CreditSum-v0",
        num_envs=8,
        vectorization_mode="vector_entry_point",
        horizon=horizon,
    )
    model = tiny_gpt2(env.codec, n_layer=1, n_embd=16, n_head=2, seed=0)
    return MAPPO(
        model,
        env,
        batch_size=8,
        kl_coef=0.0,
        mask_actions=True,
        seed=0,
        termination=spec,
        **kw,
    )


@pytest.mark.parametrize("spec", ["entropy:budget=2", "value_change:budget=2"])
def test_agents_cut_on_their_own_entropy_and_values(spec: str) -> None:
    algo = _agent(spec)
    collect(algo)  # one rollout, scored and segmented, no update
    buf = algo.rollout_buffer
    assert buf is not None
    args = (buf.input_ids, buf.attention_mask, buf.response_mask)
    with torch.no_grad():
        _, entropy, values = algo.policy.evaluate_actions(
            *args, temperature=algo.config.sampling.scoring_temperature, action_mask=buf.action_mask
        )
    # what the agent segmented with is the policy's entropy / critic of this rollout (the
    # entropy is kept only when the termination reads it)
    if spec.startswith("entropy"):
        assert algo._rollout_entropy is not None
        assert torch.allclose(algo._rollout_entropy, entropy, atol=1e-5)
    else:
        assert algo._rollout_entropy is None
    assert buf.values is not None
    torch.testing.assert_close(buf.values, values)
    batch = SegmentationBatch.build(
        buf.response_ids,
        buf.response_mask,
        frozenset({"entropy", "values"}),
        entropy=entropy,
        values=values,
    )
    expected = compute_starts(make_termination(spec), batch, isolate_last=True)
    assert torch.equal(buf.starts, expected)
    assert int(segment_ids(buf.starts, buf.response_mask).max()) == 3  # 4 segments per episode


def test_agent_rejects_a_budget_above_the_horizon() -> None:
    """Refused when the agent gets its env, before any rollout; also at the segment stage."""
    with pytest.raises(ValueError, match=r"budget=13 cuts exceeds the horizon \(12"):
        _agent("entropy:budget=13")
    algo = _agent("entropy:budget=12")  # at the horizon: fine
    algo.termination.cut_budget.budget = 13  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"budget=13 cuts exceeds the horizon \(12.*1\.\.12"):
        collect(algo)


def test_value_change_without_a_critic_names_values() -> None:
    algo = _agent("value_change:budget=2", estimator="grpo", group_size=2)
    with pytest.raises(ValueError, match="'values' is required but None"):
        collect(algo)
