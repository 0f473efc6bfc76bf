"""Gradient accumulation (``micro_batch_size``): one update in micro-batches equals the update on
whole minibatches, for every policy-loss aggregation and ratio level the presets use."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from marlhf.algorithms import MAPPO, PPO
from tests.agents import test_data_parallel as dp
from tests.agents.conftest import CueEnv, assert_same_gradients, gradients_at_clipping, tiny_model
from tests.agents.ranks import run_ranks

B, N = 8, 5
#: Minibatches of 4 episodes: micro-batches of 1, and of 3 (3 + 1: not a divisor).
SETTINGS = {"n_epochs": 2, "batch_size": 4, "learning_rate": 0.002, "ent_coef": 0.01}
#: Graded scores on each row's last token; rows 0-1 and 4-5 tie, so DAPO drops those groups.
SCORES = torch.tensor([1.0, 1.0, 0.25, -0.5, 0.3, 0.3, 0.9, -1.0])
GROUPS = {"group_size": 2}
CASES: dict[str, tuple[type, dict[str, Any]]] = {
    "ppo": (PPO, {"preset": "ppo"}),
    "ppo-seq-mean-token-mean": (PPO, {"preset": "ppo", "loss_agg": "seq-mean-token-mean"}),
    "ma-ppo": (MAPPO, {"preset": "ma-ppo", "termination": "ngram:2"}),
    "mappo-macro": (MAPPO, {"termination": "ngram:2", "ratio_level": "macro"}),
    "grpo": (PPO, {"preset": "grpo", **GROUPS}),  # kl_in="loss": the KL term is weighted too
    # The KL in the loss aggregated per response, as the policy loss (weights differ by chunk).
    "grpo-seq-mean-token-mean": (
        PPO,
        {"preset": "grpo", **GROUPS, "loss_agg": "seq-mean-token-mean"},
    ),
    "dr-grpo": (PPO, {"preset": "dr-grpo", **GROUPS}),  # seq-sum-constant
    "dapo": (PPO, {"preset": "dapo", **GROUPS}),  # asymmetric clip, dropped groups
    "gspo": (PPO, {"preset": "gspo", **GROUPS, "clip_range": 0.2}),  # sequence-level ratios
}


def _trained(kind: str, **overrides: Any) -> Any:
    """One rollout (the same for every ``overrides``: they do not touch sampling), then one
    ``train()``."""
    cls, extra = CASES[kind]
    env = CueEnv(num_envs=B, max_new_tokens=N)
    algo = cls(tiny_model(env.codec, seed=0), env, seed=3, **{**SETTINGS, **extra, **overrides})
    algo._setup_learn(1, None, True, "run", False)
    assert algo.collect(algo._init_callback(None, False))
    buf = algo.rollout_buffer
    buf.task_rewards.zero_()
    buf.task_rewards[torch.arange(B), buf.lengths - 1] = SCORES
    algo.finish_rollout()
    with gradients_at_clipping() as grads:
        algo.train()
    algo.grads = grads  # each step's accumulated gradients, before clipping and the step
    return algo


def _params(algo: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in algo.policy.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_micro_batches_update_like_whole_minibatches(kind: str) -> None:
    whole = _trained(kind)
    lengths = whole.rollout_buffer.lengths
    # Responses of different lengths: token, response and row weights all differ.
    assert int(lengths.min()) < int(lengths.max()), lengths
    if kind == "dapo":
        assert not bool(whole.rollout_buffer.keep.all())
    want = _params(whole)
    moved = max(float((want[n] - p).abs().max()) for n, p in _params(_untrained(kind)).items())
    assert moved > 1e-3  # the update is large enough for the comparison to mean something
    for size in (1, 3):
        micro = _trained(kind, micro_batch_size=size)
        assert micro._n_updates == whole._n_updates
        assert_same_gradients(micro.grads, whole.grads, rtol=1e-4)
        got = _params(micro)
        for name, value in want.items():
            torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0, msg=name)
        for key, value in whole.train_stats.items():
            other = micro.train_stats[key]
            assert (math.isnan(value) and math.isnan(other)) or math.isclose(
                other, value, rel_tol=1e-5, abs_tol=1e-6
            ), (size, key, other, value)


def _untrained(kind: str) -> Any:
    cls, extra = CASES[kind]
    env = CueEnv(num_envs=B, max_new_tokens=N)
    return cls(tiny_model(env.codec, seed=0), env, seed=3, **{**SETTINGS, **extra})


def test_one_micro_batch_per_minibatch_is_the_whole_minibatch_bitwise() -> None:
    whole = _params(_trained("dr-grpo"))
    got = _params(_trained("dr-grpo", micro_batch_size=SETTINGS["batch_size"]))
    for name, value in whole.items():
        assert torch.equal(got[name], value), name


def test_target_kl_stops_at_the_same_minibatch() -> None:
    whole = _trained("ppo", target_kl=1e-7)
    micro = _trained("ppo", target_kl=1e-7, micro_batch_size=1)
    assert 0 < whole._n_updates < 4  # stopped early, after at least one step
    assert micro._n_updates == whole._n_updates
    for name, value in _params(whole).items():
        torch.testing.assert_close(_params(micro)[name], value, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_bad_micro_batch_size_is_refused_naming_the_field(bad: Any) -> None:
    env = CueEnv(num_envs=B, max_new_tokens=N)
    with pytest.raises(ValueError, match=r"micro_batch_size=.* must be an int >= 1 or None"):
        PPO(tiny_model(env.codec), env, micro_batch_size=bad)


def _dp_update(kind: str, data: dict[str, Any], rank: int, world_size: int, **kw: Any) -> Any:
    """``test_data_parallel``'s update of a replayed rollout, with config overrides."""
    share = dp.B // world_size
    algo = dp._algo(kind, share, **{"batch_size": None, **kw})  # 2 rows a rank: 2 chunks
    algo._setup_learn(1, None, True, "run", False)
    dp._replay(algo, data, slice(rank * share, (rank + 1) * share))
    algo.finish_rollout()
    algo.train()
    return algo


DP_CASES = {  # (test_data_parallel kind, overrides): whitened advantages, macro ratios, each agg
    "ppo": ("ppo", {}),
    "mappo": ("mappo", {}),
    "grpo-seq-sum-constant": ("ppo-grpo", {"loss_agg": "seq-sum-constant"}),
    "grpo-seq-mean-token-mean": ("ppo-grpo", {"loss_agg": "seq-mean-token-mean"}),
}


def _micro_on_ranks(rank: int, world_size: int, rollouts: dict[str, Any]) -> dict[Any, Any]:
    out = {}
    for name, (kind, kw) in DP_CASES.items():
        sizes = (1, None) if "loss_agg" in kw else (1,)  # None: test_data_parallel's other cases
        for size in sizes:
            algo = _dp_update(kind, rollouts[name], rank, world_size, micro_batch_size=size, **kw)
            out[name, size] = _params(algo)
    return out


@pytest.mark.slow  # two gloo ranks (26 s when spawned on the loaded 2-core machine)
def test_micro_batches_on_two_ranks_update_like_one_process() -> None:
    """And, for the per-response aggregations, whole minibatches on two ranks too: each rank's
    part is weighted by its share of the aggregation's normaliser, not of the tokens."""
    rollouts = {name: dp._rollout(kind) for name, (kind, _) in DP_CASES.items()}
    results = run_ranks(_micro_on_ranks, 2, rollouts)
    for name, (kind, kw) in DP_CASES.items():
        want = _params(_dp_update(kind, rollouts[name], 0, 1, **kw))
        for got in results:
            for (case, size), params in got.items():
                if case != name:
                    continue
                for param, value in want.items():
                    torch.testing.assert_close(
                        params[param], value, atol=1e-6, rtol=0, msg=f"{name} {size} {param}"
                    )


def _scored(**overrides: Any) -> Any:
    cls, extra = CASES["ppo"]
    env = CueEnv(num_envs=B, max_new_tokens=N)
    algo = cls(tiny_model(env.codec, seed=0), env, seed=3, **{**SETTINGS, **extra, **overrides})
    torch.manual_seed(1)  # a value head that is not zero (it starts at 0)
    torch.nn.init.normal_(algo.policy.value_head.weight)
    algo._setup_learn(1, None, True, "run", False)
    assert algo.collect(algo._init_callback(None, False))
    algo.score()
    return algo.rollout_buffer


@pytest.mark.parametrize("size", [1, 3])
def test_rollout_scoring_in_micro_batches_equals_all_rows_at_once(size: int) -> None:
    whole, micro = _scored(), _scored(micro_batch_size=size)
    assert torch.equal(micro.response_ids, whole.response_ids)  # the same rollout
    mask = whole.response_mask
    for name in ("logprobs", "ref_logprobs", "values"):
        got, want = getattr(micro, name), getattr(whole, name)
        torch.testing.assert_close(got[mask], want[mask], atol=1e-6, rtol=0, msg=name)
    assert float(whole.values[mask].abs().max()) > 0  # the values were computed, not zeros
