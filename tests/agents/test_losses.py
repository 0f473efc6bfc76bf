"""PPO losses: hand-computed values, token vs macro ratio at ratio 1, padding hygiene."""

from __future__ import annotations

import math

import pytest
import torch

from marlhf.algorithms.losses import entropy_loss, masked_mean, policy_loss, value_loss
from marlhf.credit.advantages import compute_gae
from marlhf.options import lengths_to_starts


def prefix_mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def test_masked_mean_ignores_padding_and_handles_empty() -> None:
    x = torch.tensor([[1.0, 2.0, math.nan], [3.0, math.inf, math.inf]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert float(masked_mean(x, mask)) == pytest.approx(2.0)
    assert float(masked_mean(x, torch.zeros_like(mask))) == 0.0


def test_token_policy_loss_by_hand() -> None:
    # ratios 1.5 (A=+1, clipped at 1.2), 0.5 (A=-1, clipped at 0.8), 0.5 (A=+1, unclipped),
    # 1.1 (A=-2, unclipped) and one padding token.
    ratio = torch.tensor([[1.5, 0.5, 0.5], [1.1, 1.0, 1.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0, 1.0], [-2.0, 0.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    old = torch.full_like(ratio, -1.0)
    loss, stats = policy_loss(old + ratio.log(), old, adv, mask, mask, clip_range=0.2)
    expected = (-1.2 + 0.8 - 0.5 + 2.2) / 4
    assert float(loss) == pytest.approx(expected)
    assert stats["clip_fraction"] == pytest.approx(3 / 4)  # 1.5, 0.5, 0.5 lie outside [0.8, 1.2]
    approx = [(r - 1) - math.log(r) for r in (1.5, 0.5, 0.5, 1.1)]
    assert stats["approx_kl"] == pytest.approx(sum(approx) / 4)


def test_macro_policy_loss_by_hand() -> None:
    # One row: a segment of two tokens (log-ratios 0.1, 0.2) and a segment of one (-0.05).
    mask = torch.tensor([[True, True, True, False]])
    starts = torch.tensor([[True, False, True, False]])
    log_ratio = torch.tensor([[0.1, 0.2, -0.05, 5.0]], dtype=torch.float64)
    adv = torch.tensor([[2.0, 2.0, -1.0, 0.0]], dtype=torch.float64)
    old = torch.zeros_like(log_ratio)
    loss, stats = policy_loss(
        log_ratio, old, adv, mask, starts, clip_range=0.2, ratio_level="macro"
    )
    seg0 = -2.0 * min(math.exp(0.3), 1.2)  # exp(0.3) = 1.35, clipped
    seg1 = 1.0 * max(math.exp(-0.05), 0.8)  # -(-1) * ratio, unclipped
    assert float(loss) == pytest.approx((seg0 + seg1) / 3)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)  # both tokens of the clipped segment


def ragged_batch(seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    lengths, width = [9, 3, 12, 1], 12
    segs = [[3, 3, 2, 1], [2, 1], [5, 1, 4, 1, 1], [1]]
    mask = prefix_mask(lengths, width)
    starts = lengths_to_starts(segs, width)
    rewards = torch.where(mask, torch.randn(4, width, generator=gen, dtype=torch.float64), 0.0)
    values = torch.randn(4, width, generator=gen, dtype=torch.float64)
    adv = compute_gae(rewards, values, mask, starts, gamma=1.0, gae_lambda=0.95).advantages
    logits = torch.randn(4, width, generator=gen, dtype=torch.float64)
    return mask, starts, adv, logits


@pytest.mark.parametrize("seed", [0, 1])
def test_token_and_macro_ratio_have_equal_gradients_at_ratio_one(seed: int) -> None:
    mask, starts, adv, logits = ragged_batch(seed)
    old = torch.nn.functional.logsigmoid(logits)
    grads, losses = {}, {}
    for level in ("token", "macro"):
        theta = logits.clone().requires_grad_(True)
        new = torch.nn.functional.logsigmoid(theta)  # a parameterised log-prob, == old
        loss, stats = policy_loss(new, old, adv, mask, starts, clip_range=0.2, ratio_level=level)
        (grad,) = torch.autograd.grad(loss, theta)
        grads[level], losses[level] = grad, float(loss.detach())
        assert stats["clip_fraction"] == 0.0 and stats["approx_kl"] == 0.0
    torch.testing.assert_close(grads["token"], grads["macro"], rtol=1e-12, atol=1e-12)
    assert losses["token"] != pytest.approx(losses["macro"])  # values differ, gradients do not
    assert bool(grads["token"][~mask].eq(0).all())


def test_token_and_macro_ratio_differ_off_policy_but_agree_for_single_tokens() -> None:
    mask, starts, adv, logits = ragged_batch(2)
    old = torch.nn.functional.logsigmoid(logits)
    new = old + 0.3 * torch.randn(old.shape, generator=torch.Generator().manual_seed(9))
    token, _ = policy_loss(new, old, adv, mask, starts, clip_range=0.2)
    macro, _ = policy_loss(new, old, adv, mask, starts, clip_range=0.2, ratio_level="macro")
    assert float(token) != pytest.approx(float(macro))
    single, _ = policy_loss(new, old, adv, mask, mask, clip_range=0.2, ratio_level="macro")
    assert float(single) == pytest.approx(float(token), rel=1e-12)


@pytest.mark.parametrize("level", ["token", "macro"])
def test_padding_garbage_reaches_neither_loss_nor_gradient(level: str) -> None:
    mask = prefix_mask([2, 1], 3)
    starts = mask.clone()
    theta = torch.tensor([[-1.0, -0.5, 80.0], [-0.2, math.inf, math.nan]], requires_grad=True)
    old = torch.tensor([[-1.0, -0.6, -90.0], [-0.3, math.nan, 0.0]])
    adv = torch.tensor([[1.0, -1.0, math.nan], [0.5, math.inf, 1.0]])
    loss, stats = policy_loss(
        theta * 1.0, old, adv, mask, starts, clip_range=0.2, ratio_level=level
    )
    loss.backward()
    assert math.isfinite(float(loss.detach())) and all(math.isfinite(v) for v in stats.values())
    assert theta.grad is not None and bool(torch.isfinite(theta.grad).all())


def test_value_loss_clipped_and_unclipped() -> None:
    mask = torch.tensor([[True, True, False]])
    old = torch.tensor([[0.0, 1.0, 0.0]])
    new = torch.tensor([[1.0, 1.1, math.nan]])
    ret = torch.tensor([[1.0, 2.0, 5.0]])
    # Unclipped: (0 + 0.81) / 2 * 0.5. Clipped at 0.2: token 0 moves only to 0.2 -> (0.8)^2.
    assert float(value_loss(new, old, ret, mask, clip_range_vf=None)) == pytest.approx(0.2025)
    clipped = value_loss(new, old, ret, mask, clip_range_vf=0.2)
    assert float(clipped) == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    with pytest.raises(ValueError, match="clip_range_vf=0"):
        value_loss(new, old, ret, mask, clip_range_vf=0)


def test_entropy_loss_and_bad_arguments() -> None:
    mask = torch.tensor([[True, False], [True, True]])
    ent = torch.tensor([[1.0, 100.0], [2.0, 3.0]])
    assert float(entropy_loss(ent, mask)) == pytest.approx(-2.0)
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"ratio_level='segment'.*'token', 'macro'"):
        policy_loss(x, x, x, mask, mask, clip_range=0.2, ratio_level="segment")
    with pytest.raises(ValueError, match="clip_range=0"):
        policy_loss(x, x, x, mask, mask, clip_range=0.0)
    with pytest.raises(ValueError, match="one shape"):
        policy_loss(x, x[:, :1], x, mask, mask, clip_range=0.2)
    with pytest.raises(ValueError, match="segment start on padding"):
        policy_loss(x, x, x, mask, torch.ones_like(mask), clip_range=0.2, ratio_level="macro")
