"""PPO losses over token-level batches: clipped policy surrogate (token or macro ratio), clipped
value loss and entropy bonus (docs/method.md, steps 7 and 8).

Every loss is a mean over real tokens, so token-level PPO and MA-PPO are on the same scale.
Padding may hold anything (even inf or NaN): it is replaced before any nonlinear operation, so it
reaches neither the loss nor the gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from marlhf.agents.advantages import check_choice
from marlhf.options.base import validate_starts
from marlhf.options.segments import broadcast_to_tokens, segment_reduce

RATIO_LEVELS: tuple[str, ...] = ("token", "macro", "sequence")
LOSS_AGGREGATIONS: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-sum-constant")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is True (a 0-dim tensor; 0 if none are).

    :param x: ``float[...]`` values; entries off the mask are ignored, whatever they hold.
    :param mask: ``bool[...]`` of the same shape.
    """
    if x.shape != mask.shape:
        raise ValueError(
            f"masked_mean: x has shape {tuple(x.shape)} but mask has {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"masked_mean: mask must have dtype torch.bool, got {mask.dtype}")
    total = torch.where(mask, x, torch.zeros_like(x)).sum()
    return total / mask.sum().clamp(min=1).to(total.dtype)


def _check_same_shape(where: str, **tensors: Tensor) -> None:
    shapes = {name: tuple(x.shape) for name, x in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{where}: all inputs must have one shape, got {shapes}")


def _check_positive(where: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{where}: {name}={value!r} must be a number > 0")


def _outside(ratio: Tensor, low: float, high: float) -> Tensor:
    if low == high:  # the symmetric test, written as before (bitwise the same statistics)
        return (ratio - 1.0).abs() > low
    return (ratio < 1.0 - low) | (ratio > 1.0 + high)


def policy_loss(
    new_logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    starts: Tensor,
    *,
    clip_range: float,
    ratio_level: str = "token",
    clip_range_high: float | None = None,
    loss_agg: str = "token-mean",
) -> tuple[Tensor, dict[str, float]]:
    """Clipped PPO surrogate ``-min(r A, clip(r, 1 - c, 1 + c) A)``, averaged over real tokens.

    - ``ratio_level="token"`` (released code): each token's ratio ``exp(new - old)`` with its
      (segment) advantage; the loss is the masked mean over tokens.
    - ``ratio_level="macro"`` (the paper's notation): one ratio per segment,
      ``exp(sum over the segment of (new - old))``, clipped per segment, with the segment's
      advantage (the mean of its tokens' advantages, which :func:`compute_gae` makes equal).
      The segments' losses are summed and divided by the number of real tokens, i.e. a
      segment's loss is shared by its tokens, so both levels average over tokens. Then at
      ratio 1 (on-policy, first epoch) the two levels have the same gradient: a segment
      contributes ``-A sum_t grad log pi(a_t)`` either way.

    :param new_logp: ``float[B, T]`` log-probs of the taken tokens under the current policy
        (with grad).
    :param old_logp: ``float[B, T]`` log-probs at rollout time.
    :param advantages: ``float[B, T]`` per-token (segment) advantages.
    :param mask: ``bool[B, T]`` real response tokens.
    :param starts: ``bool[B, T]`` macro-action starts (only used, and validated, by ``"macro"``).
    :param clip_range: ``c > 0``, e.g. 0.2.
    :param ratio_level: ``"token"`` (default), ``"macro"`` or ``"sequence"`` (GSPO,
        arXiv 2507.18071: one ratio per response, ``exp(mean over its tokens of (new - old))``,
        clipped per response, with the response's mean advantage).
    :param clip_range_high: the upper clip ``1 + clip_range_high`` (DAPO's asymmetric clipping,
        e.g. 0.28); ``None``: symmetric.
    :param loss_agg: ``"token-mean"`` (every real token of the batch weighs the same; default),
        ``"seq-mean-token-mean"`` (each response's token mean, then the mean over responses),
        ``"seq-sum-constant"`` (Dr. GRPO: the sum over tokens divided by ``B * T``, a constant).
    :return: ``(loss, stats)``; ``stats["clip_fraction"]`` is the fraction of real tokens whose
        ratio (their segment's, for ``"macro"``) lies outside ``[1 - c, 1 + c]``;
        ``stats["approx_kl"]`` the mean over real tokens of ``(r - 1) - log r`` with the
        per-token ratio ``r``, at both levels (for ``target_kl`` early stopping).
    """
    where = "policy_loss"
    check_choice(where, "ratio_level", ratio_level, RATIO_LEVELS)
    check_choice(where, "loss_agg", loss_agg, LOSS_AGGREGATIONS)
    _check_positive(where, "clip_range", clip_range)
    high = clip_range if clip_range_high is None else clip_range_high
    _check_positive(where, "clip_range_high", high)
    _check_same_shape(
        where, new_logp=new_logp, old_logp=old_logp, advantages=advantages, mask=mask, starts=starts
    )
    zeros = torch.zeros_like(new_logp)
    log_ratio = torch.where(mask, new_logp - old_logp, zeros)
    adv = torch.where(mask, advantages, torch.zeros_like(advantages))

    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1).to(new_logp.dtype)
    if ratio_level == "token":
        ratio = torch.exp(log_ratio)
        clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)
        token_loss = torch.maximum(-adv * ratio, -adv * clipped)
        outside = _outside(ratio, clip_range, high)
        if loss_agg == "token-mean":
            loss = masked_mean(token_loss, mask)
    elif ratio_level == "macro":
        validate_starts(starts, mask, name=where)
        seg_log_ratio = segment_reduce(log_ratio, starts, mask, "sum")
        seg_adv = segment_reduce(adv, starts, mask, "mean")
        seg_ratio = torch.exp(seg_log_ratio)
        seg_clipped = torch.clamp(seg_ratio, 1.0 - clip_range, 1.0 + high)
        seg_loss = torch.maximum(-seg_adv * seg_ratio, -seg_adv * seg_clipped)
        if loss_agg == "token-mean":
            # Absent segments hold zeros (ratio 1, advantage 0), so they add nothing to the sum.
            loss = seg_loss.sum() / mask.sum().clamp(min=1).to(seg_loss.dtype)
        seg_outside = _outside(seg_ratio, clip_range, high).to(adv.dtype)
        outside = broadcast_to_tokens(seg_outside.detach(), starts, mask) > 0.5
        # A segment's loss shared by its tokens, for the other aggregations.
        seg_len = segment_reduce(mask.to(adv.dtype), starts, mask, "sum").clamp(min=1)
        token_loss = broadcast_to_tokens(seg_loss / seg_len, starts, mask)
    else:
        seq_ratio = torch.exp(log_ratio.sum(dim=1, keepdim=True) / lengths)
        seq_adv = adv.sum(dim=1, keepdim=True) / lengths
        seq_clipped = torch.clamp(seq_ratio, 1.0 - clip_range, 1.0 + high)
        seq_loss = torch.maximum(-seq_adv * seq_ratio, -seq_adv * seq_clipped)
        token_loss = torch.where(mask, (seq_loss / lengths).expand_as(adv), zeros)
        seq_outside = _outside(seq_ratio, clip_range, high)
        outside = seq_outside.expand_as(mask) & mask
        if loss_agg == "token-mean":
            loss = token_loss.sum() / mask.sum().clamp(min=1).to(token_loss.dtype)
    if loss_agg == "seq-mean-token-mean":
        rows = mask.any(dim=1)
        per_row = torch.where(mask, token_loss, zeros).sum(dim=1) / lengths.squeeze(1)
        loss = per_row[rows].sum() / rows.sum().clamp(min=1).to(per_row.dtype)
    elif loss_agg == "seq-sum-constant":
        loss = torch.where(mask, token_loss, zeros).sum() / float(mask.numel() or 1)

    with torch.no_grad():
        lr = log_ratio.detach()
        stats = {
            "clip_fraction": float(masked_mean(outside.to(lr.dtype), mask)),
            "approx_kl": float(masked_mean(torch.expm1(lr) - lr, mask)),
        }
    return loss, stats


def value_loss(
    new_values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip_range_vf: float | None,
) -> Tensor:
    """``0.5 * max((v - G)^2, (clip(v, v_old - c, v_old + c) - G)^2)``, masked mean over tokens.

    Each token's value is regressed towards its segment's return ``G`` (docs/method.md, step 8).

    :param new_values: ``float[B, T]`` current value estimates (with grad).
    :param old_values: ``float[B, T]`` value estimates at rollout time.
    :param returns: ``float[B, T]`` targets (``GAEResult.returns``).
    :param mask: ``bool[B, T]`` real response tokens.
    :param clip_range_vf: ``c > 0`` to clip the value change (released code: 0.2), or ``None``
        for the plain ``0.5 * (v - G)^2``. Unlike SB3's, the clipped term is max-ed with the
        unclipped one (the pessimistic form used by the RLHF codebases).
    """
    where = "value_loss"
    _check_same_shape(
        where, new_values=new_values, old_values=old_values, returns=returns, mask=mask
    )
    zeros = torch.zeros_like(new_values)
    v = torch.where(mask, new_values, zeros)
    target = torch.where(mask, returns, zeros)
    loss = (v - target) ** 2
    if clip_range_vf is not None:
        _check_positive(where, "clip_range_vf", clip_range_vf)
        v_old = torch.where(mask, old_values, zeros)
        v_clipped = v_old + torch.clamp(v - v_old, -clip_range_vf, clip_range_vf)
        loss = torch.maximum(loss, (v_clipped - target) ** 2)
    return 0.5 * masked_mean(loss, mask)


def entropy_loss(entropy: Tensor, mask: Tensor) -> Tensor:
    """``-mean(entropy)`` over real tokens (minimising it raises the entropy).

    :param entropy: ``float[B, T]`` per-token policy entropy (nats).
    :param mask: ``bool[B, T]`` real response tokens.
    """
    return -masked_mean(entropy, mask)
