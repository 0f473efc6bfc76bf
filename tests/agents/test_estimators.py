"""The credit-assignment estimators: docs/method.md's exact reductions on hand-made tensors, and
property tests on random ragged batches against per-sample Python references."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marlhf.algorithms import PPOConfig
from marlhf.algorithms.config import PRESETS, resolve_config
from marlhf.algorithms.losses import policy_loss
from marlhf.credit.advantages import compute_gae
from marlhf.credit.estimators import (
    EstimatorBatch,
    available_estimators,
    get_estimator,
    register_estimator,
    uniform_groups,
)


def prefix_mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def terminal_batch(
    scores: list[float], lengths: list[int], groups: list[int], width: int = 5
) -> EstimatorBatch:
    mask = prefix_mask(lengths, width)
    rewards = torch.zeros(len(scores), width)
    for i, (s, n) in enumerate(zip(scores, lengths, strict=True)):
        rewards[i, n - 1] = s
    return EstimatorBatch(
        rewards=rewards,
        task_rewards=rewards.clone(),
        mask=mask,
        starts=mask.clone(),
        group_ids=torch.tensor(groups),
    )


def run(name: str, batch: EstimatorBatch, **cfg: Any) -> torch.Tensor:
    config = PPOConfig(
        estimator=name, group_size=2 if get_estimator(name).needs_groups else 1, **cfg
    )
    return get_estimator(name).fn(batch, config).advantages


SCORES, LENGTHS, GROUPS = [1.0, 0.0, 3.0, 0.5, 0.5, 2.0], [2, 5, 3, 1, 4, 5], [0, 0, 0, 1, 1, 1]


def test_group_baselines_by_hand() -> None:
    b = terminal_batch(SCORES, LENGTHS, GROUPS)
    # Group 0: outcomes 1, 0, 3 (mean 4/3, unbiased std sqrt(7/3)); group 1: 0.5, 0.5, 2 (mean 1).
    dr = run("grpo", b, group_std=False)
    assert dr[0, :2].tolist() == pytest.approx([1 - 4 / 3] * 2)
    assert dr[0, 2:].tolist() == [0.0, 0.0, 0.0]  # padding stays 0
    assert dr[5, 4] == pytest.approx(1.0)
    g = run("grpo", b)
    assert g[2, 0] == pytest.approx((3 - 4 / 3) / (math.sqrt(7 / 3) + 1e-6))
    r = run("rloo", b)
    assert r[0, 0] == pytest.approx(1 - 1.5)  # 1 - mean(0, 3)
    assert r[3, 0] == pytest.approx(0.5 - 1.25)  # 0.5 - mean(0.5, 2)
    # Every token of a response carries the same (sequence-level) advantage.
    assert torch.equal(r[4, :4], r[4, :1].expand(4))


def test_exact_reductions_to_gae_with_one_segment() -> None:
    # docs/method.md: one segment per response, V = group mean, lambda = gamma = 1 -> Dr. GRPO.
    b = terminal_batch(SCORES, LENGTHS, GROUPS)
    mean = torch.tensor([4 / 3] * 3 + [1.0] * 3)
    one_segment = b.mask & (torch.arange(5)[None, :] == 0)
    values = torch.where(b.mask, mean[:, None].expand_as(b.rewards), 0.0)
    ref = compute_gae(b.rewards, values, b.mask, one_segment, gamma=1.0, gae_lambda=1.0)
    assert torch.allclose(run("grpo", b, group_std=False), ref.advantages, atol=1e-6)
    # ... divided by the group std: GRPO; the leave-one-out mean: RLOO.
    std = torch.tensor([math.sqrt(7 / 3)] * 3 + [math.sqrt(0.75)] * 3)
    assert torch.allclose(
        run("grpo", b), torch.where(b.mask, ref.advantages / (std[:, None] + 1e-6), 0.0), atol=1e-6
    )
    size = 3
    loo = (mean * size - torch.tensor(SCORES)) / (size - 1)
    values_loo = torch.where(b.mask, loo[:, None].expand_as(b.rewards), 0.0)
    ref_loo = compute_gae(b.rewards, values_loo, b.mask, one_segment, gamma=1.0, gae_lambda=1.0)
    assert torch.allclose(run("rloo", b), ref_loo.advantages, atol=1e-6)


def test_mc_is_lambda0_td_over_branch_points_by_hand() -> None:
    # VinePPO: V at each branch point from Monte Carlo; A_tau = R_tau + V_{tau+1} - V_tau, the
    # last segment bootstrapping from 0 (docs/method.md: lambda = 0 with MC values at step starts).
    mask = prefix_mask([5], 5)
    rewards = torch.tensor([[0.0, -0.1, 0.0, -0.2, 1.0]])
    nan = float("nan")
    mc_values = torch.tensor([[0.4, nan, 0.7, nan, 0.9]])
    batch = EstimatorBatch(
        rewards=rewards, task_rewards=rewards, mask=mask, starts=mask.clone(), mc_values=mc_values
    )
    adv = get_estimator("mc").fn(batch, PPOConfig(estimator="mc", kl_coef=0.0)).advantages
    expected = [(0.0 - 0.1) + 0.7 - 0.4] * 2 + [(0.0 - 0.2) + 0.9 - 0.7] * 2 + [1.0 - 0.9]
    assert adv[0].tolist() == pytest.approx(expected)


def test_remax_subtracts_the_greedy_reward() -> None:
    b = terminal_batch(SCORES, LENGTHS, GROUPS)
    b.greedy_rewards = torch.tensor([0.5, 0.5, 0.5, 2.0, 2.0, 2.0])
    adv = get_estimator("remax").fn(b, PPOConfig(estimator="remax")).advantages
    assert adv[:, 0].tolist() == pytest.approx([0.5, -0.5, 2.5, -1.5, -1.5, 0.0])
    assert not adv[~b.mask].any()


def test_reinforce_pp_is_whitened_return_to_go() -> None:
    b = terminal_batch(SCORES, LENGTHS, GROUPS)
    b.rewards[1, 0] = -0.25  # a dense (KL-like) reward before the end
    adv = run("reinforce_pp", b)
    assert float(adv[b.mask].mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(adv[b.mask].std()) == pytest.approx(1.0, abs=1e-5)
    # Before whitening row 1 is [-0.25, 0, 0, 0, 0] -> returns-to-go [-0.25, 0, 0, 0, 0].
    order = adv[1, :5]
    assert float(order[0]) < float(order[1]) and float(order[1]) == pytest.approx(float(order[4]))
    base = run("reinforce_pp_baseline", terminal_batch(SCORES, LENGTHS, GROUPS))
    # Centred by the group mean before whitening: the best row of group 0 stays the best.
    assert float(base[2, 0]) > float(base[0, 0]) > float(base[1, 0])


def _python_group_reference(scores: list[float], groups: list[int], kind: str) -> list[float]:
    out = []
    for i, s in enumerate(scores):
        mates = [scores[j] for j in range(len(scores)) if groups[j] == groups[i]]
        mean = sum(mates) / len(mates)
        if kind == "rloo":
            out.append(s - (sum(mates) - s) / (len(mates) - 1))
            continue
        var = sum((m - mean) ** 2 for m in mates) / (len(mates) - 1)
        out.append((s - mean) / (math.sqrt(var) + 1e-6) if kind == "grpo" else s - mean)
    return out


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 4).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=k, max_size=4 * k),
        )
    ),
    st.randoms(use_true_random=False),
)
def test_group_estimators_match_python_on_ragged_batches(data: Any, rnd: Any) -> None:
    k, raw = data
    n = len(raw) - len(raw) % k
    scores = raw[:n]
    groups = [i // k for i in range(n)]
    lengths = [rnd.randint(1, 6) for _ in range(n)]
    b = terminal_batch(scores, lengths, groups, width=6)
    for name, kind, cfg in (
        ("grpo", "grpo", {}),
        ("grpo", "dr", {"group_std": False}),
        ("rloo", "rloo", {}),
    ):
        adv = run(name, b, **cfg)
        ref = _python_group_reference(scores, groups, kind)
        for i in range(n):
            assert adv[i, : lengths[i]].tolist() == pytest.approx([ref[i]] * lengths[i], abs=1e-4)
            assert not adv[i, lengths[i] :].any()


def test_uniform_groups_and_registry_errors() -> None:
    b = terminal_batch([1.0, 1.0, 0.0, 2.0], [1, 2, 3, 4], [0, 0, 1, 1])
    assert uniform_groups(b).tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match=r"estimator='nope' is unknown; choose one of \["):
        get_estimator("nope")
    with pytest.raises(ValueError, match=r"unknown input 'critic'; valid: \['values'"):
        register_estimator("bad", requires=("critic",))
    with pytest.raises(ValueError, match=r"estimator='grpo' needs groups: group_size=1"):
        PPOConfig(estimator="grpo")
    with pytest.raises(ValueError, match=r"drop_uniform_groups=True needs groups"):
        PPOConfig(drop_uniform_groups=True)
    assert {"gae", "grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"} <= set(
        available_estimators()
    )


def test_a_new_estimator_is_one_registered_function() -> None:
    @register_estimator("outcome_only_test")
    def outcome_only(batch: EstimatorBatch, config: Any) -> Any:
        """Every token gets its response's outcome (no baseline)."""
        from marlhf.credit.estimators import Estimate, broadcast, sequence_returns

        return Estimate(broadcast(sequence_returns(batch), batch.mask))

    cfg = PPOConfig(estimator="outcome_only_test")
    assert get_estimator(cfg.credit.estimator).needs_critic is False
    assert get_estimator("outcome_only_test").description.startswith("Every token gets")


def test_every_preset_builds_and_names_its_source() -> None:
    for name, preset in PRESETS.items():
        cfg = resolve_config(PPOConfig, name, {})
        assert preset.source, name
        for key, value in preset.fixed.items():
            assert cfg.flat()[key] == value, (name, key)


# ------------------------------------------------------------------------- loss-side knobs
def _loss_inputs() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    mask = prefix_mask([3, 1, 4], 4)
    old = torch.randn(3, 4, generator=gen)
    new = old + 0.3 * torch.randn(3, 4, generator=gen)
    adv = torch.where(mask, torch.randn(3, 4, generator=gen), 0.0)
    adv = adv[:, :1].expand(3, 4) * mask  # sequence-level advantages
    return new, old, adv, mask


def test_loss_aggregations_by_hand() -> None:
    new, old, adv, mask = _loss_inputs()
    ratio = torch.exp(new - old)
    tok = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    tok = torch.where(mask, tok, 0.0)
    kw: dict[str, Any] = {"clip_range": 0.2}
    loss, _ = policy_loss(new, old, adv, mask, mask, **kw)
    assert float(loss) == pytest.approx(float(tok.sum() / mask.sum()))
    loss, _ = policy_loss(new, old, adv, mask, mask, loss_agg="seq-mean-token-mean", **kw)
    per_row = tok.sum(1) / mask.sum(1)
    assert float(loss) == pytest.approx(float(per_row.mean()))
    loss, _ = policy_loss(new, old, adv, mask, mask, loss_agg="seq-sum-constant", **kw)
    assert float(loss) == pytest.approx(float(tok.sum() / 12))


def test_asymmetric_clip_and_sequence_ratio() -> None:
    new, old, adv, mask = _loss_inputs()
    ratio = torch.exp(new - old)
    hi = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.28))
    loss, _ = policy_loss(new, old, adv, mask, mask, clip_range=0.2, clip_range_high=0.28)
    assert float(loss) == pytest.approx(float(torch.where(mask, hi, 0.0).sum() / mask.sum()))
    # GSPO: one length-normalised ratio per response, one term per response, mean over them.
    # (The earlier form divided each response's term by its length again and took a token
    # mean: issue 21 found it mis-weighted; this pins the definition.)
    n = mask.sum(1, keepdim=True)
    seq_ratio = torch.exp(torch.where(mask, new - old, 0.0).sum(1, keepdim=True) / n)
    a = adv[:, :1]
    seq = torch.maximum(-a * seq_ratio, -a * seq_ratio.clamp(0.8, 1.2))
    kw = {"clip_range": 0.2, "ratio_level": "sequence", "loss_agg": "seq-mean-token-mean"}
    loss, _ = policy_loss(new, old, adv, mask, mask, **kw)  # type: ignore[arg-type]
    assert float(loss) == pytest.approx(float(seq.mean()))
    for agg in ("token-mean", "seq-sum-constant"):  # undefined for one term per response
        with pytest.raises(ValueError, match=r"loss_agg=.*valid: 'seq-mean-token-mean'"):
            policy_loss(new, old, adv, mask, mask, clip_range=0.2, ratio_level="sequence",
                        loss_agg=agg)  # fmt: skip
    # At ratio 1 GSPO's gradient is the token-level one under the per-response token mean.
    p = old.clone().requires_grad_(True)
    policy_loss(p, old, adv, mask, mask, **kw)[0].backward()  # type: ignore[arg-type]
    q = old.clone().requires_grad_(True)
    policy_loss(q, old, adv, mask, mask, clip_range=0.2, loss_agg="seq-mean-token-mean")[
        0
    ].backward()
    assert p.grad is not None and q.grad is not None
    assert torch.allclose(p.grad, q.grad, atol=1e-6)


# ------------------------------------------------------------------------- training end to end
@pytest.mark.parametrize(
    "preset",
    [
        "ppo",
        "ma-ppo",
        "grpo",
        "dr-grpo",
        "rloo",
        "reinforce++",
        "reinforce++-baseline",
        "dapo",
        "gspo",
    ],
)
def test_every_preset_trains_on_a_toy_task(preset: str) -> None:
    """Each preset runs whole iterations on DelayedChoice (groups drawn by the env when the
    estimator declares them), with a critic only when the estimator needs one."""
    import gymnasium as gym

    from marlhf.algorithms import PPO
    from marlhf.models import tiny_gpt2

    env: Any = gym.make_vec(
        "marlhf/DelayedChoice-v0",
        num_envs=16,
        horizon=4,
        num_choices=2,
        vectorization_mode="vector_entry_point",
    )
    extra: dict[str, Any] = {"clip_range": 0.2, "clip_range_high": 0.28} if preset == "gspo" else {}
    algo = PPO(
        tiny_gpt2(env.codec, n_layer=1, n_embd=32, n_head=2, seed=0),
        env,
        preset=["toy", preset],
        batch_size=8,
        n_epochs=2,
        mask_actions=True,
        seed=0,
        device="cpu",
        **extra,
    )
    algo.learn(16 * 4 * 12)
    stats = algo.rollout_stats
    assert math.isfinite(stats["rollout/score_mean"])
    buf = algo.rollout_buffer
    assert buf is not None
    needs_groups = get_estimator(algo.config.credit.estimator).needs_groups
    assert (buf.group_ids is not None) == needs_groups
    if needs_groups:  # num_envs / K prompts, each K times
        assert buf.group_ids is not None
        assert buf.group_ids.tolist() == [i // algo.config.credit.group_size for i in range(16)]
    # No critic unless the estimator declares values: no value loss was computed.
    assert buf.has_values == get_estimator(algo.config.credit.estimator).needs_critic
    assert math.isnan(algo.train_stats["train/value_loss"]) != buf.has_values
