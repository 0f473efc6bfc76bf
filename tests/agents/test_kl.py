"""KL estimators, coefficient controllers and the shaped per-token reward."""

from __future__ import annotations

import math

import pytest
import torch

from marlhf.credit.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_penalty,
    make_kl_controller,
    shaped_rewards,
)


def test_k1_k2_k3_values() -> None:
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0], dtype=torch.float64)
    ref = torch.tensor([-1.5, -1.0, -0.5, -0.1], dtype=torch.float64)
    assert kl_penalty(logp, ref).tolist() == pytest.approx([0.5, -1.0, 0.0, -2.9])
    assert kl_penalty(logp, ref, "k2").tolist() == pytest.approx([0.125, 0.5, 0.0, 4.205])
    expected = []
    for a, b in zip(logp.tolist(), ref.tolist(), strict=True):
        r = math.exp(b - a)
        expected.append((r - 1.0) - math.log(r))
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx(expected, rel=1e-12)


def test_k3_is_nonnegative_and_quadratic_near_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    logp = -10.0 * torch.rand(10_000, generator=gen)
    ref = -10.0 * torch.rand(10_000, generator=gen)
    assert bool((kl_penalty(logp, ref, "k3") >= 0).all())
    d = torch.tensor([1e-4, -1e-4, 1e-3], dtype=torch.float32)
    k3 = kl_penalty(d, torch.zeros_like(d), "k3")
    assert k3.tolist() == pytest.approx((0.5 * d * d).tolist(), rel=1e-2)


def test_k1_and_k3_are_unbiased_monte_carlo_estimates() -> None:
    gen = torch.Generator().manual_seed(1)
    p = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    logp, ref = p.log()[tokens], q.log()[tokens]
    for estimator in ("k1", "k3"):
        mean = float(kl_penalty(logp, ref, estimator).mean())
        assert mean == pytest.approx(exact, abs=5e-3), estimator


def test_kl_penalty_bad_input() -> None:
    x = torch.zeros(3)
    with pytest.raises(ValueError, match=r"estimator='k4'.*'k1', 'k2', 'k3'"):
        kl_penalty(x, x, "k4")
    with pytest.raises(ValueError, match=r"logprobs has shape \(3,\) but ref_logprobs has \(4,\)"):
        kl_penalty(x, torch.zeros(4))


def test_adaptive_controller_follows_the_target() -> None:
    ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=12.0, n_steps=256)  # above target: error clipped at +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000))
    up = ctl.value
    ctl.update(current_kl=5.4, n_steps=256)  # 10% below target
    assert ctl.value == pytest.approx(up * (1 - 0.1 * 256 / 10_000))
    assert ctl.value < up
    ctl.update(current_kl=6.0, n_steps=256)
    assert ctl.value == pytest.approx(up * (1 - 0.1 * 256 / 10_000))
    before = ctl.value
    ctl.update(current_kl=0.6, n_steps=256)  # 90% below target: error clipped at -0.2
    assert ctl.value == pytest.approx(before * (1 - 0.2 * 256 / 10_000))
    with pytest.raises(ValueError, match="current_kl=nan"):
        ctl.update(math.nan, 1)


def test_controller_state_dict_round_trip() -> None:
    ctl = AdaptiveKLController(0.05, target=3.0, horizon=1000)
    for kl in (1.0, 9.0, 4.0):
        ctl.update(kl, 64)
    restored = AdaptiveKLController(1.0, target=1.0, horizon=1)
    restored.load_state_dict(ctl.state_dict())
    assert restored.state_dict() == ctl.state_dict()
    ctl.update(2.0, 64)
    restored.update(2.0, 64)
    assert restored.value == ctl.value
    with pytest.raises(ValueError, match="does not match 'fixed'"):
        FixedKLController(0.1).load_state_dict(ctl.state_dict())
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.05
    other = FixedKLController(0.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05


def test_make_kl_controller_and_validation() -> None:
    assert isinstance(make_kl_controller(0.05), FixedKLController)
    adaptive = make_kl_controller(0.05, kl_target=6.0, kl_horizon=500)
    assert isinstance(adaptive, AdaptiveKLController)
    assert (adaptive.value, adaptive.target, adaptive.horizon) == (0.05, 6.0, 500.0)
    with pytest.raises(ValueError, match=r"coef=-0\.1"):
        FixedKLController(-0.1)
    with pytest.raises(ValueError, match=r"target=0\.0 must be a finite number > 0"):
        make_kl_controller(0.05, kl_target=0.0)
    with pytest.raises(ValueError, match="horizon=0"):
        AdaptiveKLController(0.05, 1.0, 0)


def test_shaped_rewards_keep_the_score_on_each_rows_last_real_token() -> None:
    lengths, width = [5, 2, 7], 7
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    gen = torch.Generator().manual_seed(2)
    kl = torch.where(mask, torch.rand(3, width, generator=gen, dtype=torch.float64), math.nan)
    task = torch.zeros(3, width, dtype=torch.float64)
    scores = [1.5, -0.5, 3.0]
    for b, n in enumerate(lengths):
        task[b, n - 1] = scores[b]  # as the env delivers it
    out = shaped_rewards(task, kl, mask, kl_coef=0.05)
    for b, n in enumerate(lengths):
        for t in range(width):
            if t >= n:
                expected = 0.0
            else:
                expected = (scores[b] if t == n - 1 else 0.0) - 0.05 * float(kl[b, t])
            assert float(out[b, t]) == pytest.approx(expected, abs=1e-12), (b, t)


def test_shaped_rewards_clip_the_task_reward_not_the_kl() -> None:
    mask = torch.tensor([[True, True, True, False]])
    task = torch.tensor([[0.0, 5.0, -7.0, 9.0]])
    kl = torch.tensor([[40.0, 1.0, -2.0, 0.0]])
    out = shaped_rewards(task, kl, mask, kl_coef=0.1, reward_clip=2.5)
    assert out[0].tolist() == pytest.approx([-4.0, 2.4, -2.3, 0.0])
    unclipped = shaped_rewards(task, kl, mask, kl_coef=0.1)
    assert unclipped[0].tolist() == pytest.approx([-4.0, 4.9, -6.8, 0.0])
    with pytest.raises(ValueError, match="reward_clip=0"):
        shaped_rewards(task, kl, mask, kl_coef=0.1, reward_clip=0)
    with pytest.raises(ValueError, match="must have the same shape"):
        shaped_rewards(task, kl[:, :3], mask, kl_coef=0.1)
