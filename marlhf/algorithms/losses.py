"""PPO losses over token-level batches: clipped policy surrogate (token or macro ratio), clipped
value loss and entropy bonus (docs/method.md, steps 7 and 8).

Every loss is a mean over real tokens, so token-level PPO and MA-PPO are on the same scale.
Padding may hold anything (even inf or NaN): it is replaced before any nonlinear operation, so it
reaches neither the loss nor the gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from marlhf.credit.advantages import check_choice
from marlhf.credit.kl import kl_penalty
from marlhf.options.base import validate_starts
from marlhf.options.segments import broadcast_to_tokens, segment_reduce

RATIO_LEVELS: tuple[str, ...] = ("token", "macro", "sequence")
LOSS_AGGREGATIONS: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-sum-constant")
#: KL estimators that regularise as a loss term (METHOD.md: k1 belongs in the reward only).
KL_LOSS_ESTIMATORS: tuple[str, ...] = ("k2", "k3")


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


def aggregate(x: Tensor, mask: Tensor, loss_agg: str) -> Tensor:
    """Aggregate per-token loss terms ``x`` over the real tokens as ``loss_agg`` says.

    - ``"token-mean"``: the mean over every real token of the batch;
    - ``"seq-mean-token-mean"``: each response's token mean, then the mean over the responses
      that have a real token;
    - ``"seq-sum-constant"``: the sum over real tokens divided by ``B * T`` (Dr. GRPO's
      constant: rows times the column budget), whatever the responses' lengths.

    The policy loss (token and macro ratios) and a KL in the loss use it alike (verl's
    ``agg_loss``).

    :param x: ``float[B, T]`` per-token terms; entries off the mask are ignored.
    :param mask: ``bool[B, T]`` the tokens that count.
    :param loss_agg: one of ``LOSS_AGGREGATIONS``.
    :return: a 0-dim tensor.
    """
    check_choice("aggregate", "loss_agg", loss_agg, LOSS_AGGREGATIONS)
    if loss_agg == "token-mean":
        return masked_mean(x, mask)
    kept = torch.where(mask, x, torch.zeros_like(x))
    if loss_agg == "seq-sum-constant":
        return kept.sum() / float(mask.numel() or 1)
    lengths = mask.sum(dim=1).clamp(min=1).to(x.dtype)
    rows = mask.any(dim=1)
    per_row = kept.sum(dim=1) / lengths
    return per_row[rows].sum() / rows.sum().clamp(min=1).to(per_row.dtype)


def _surrogate(ratio: Tensor, adv: Tensor, low: float, high: float, dual: float | None) -> Tensor:
    """``max(-A r, -A clip(r, 1 - low, 1 + high))``; with ``dual`` (verl's dual clip), where
    ``A < 0`` the loss is also bounded above by ``-A * dual``."""
    loss = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1.0 - low, 1.0 + high))
    if dual is None:
        return loss
    return torch.where(adv < 0, torch.minimum(loss, -adv * dual), loss)


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
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped PPO surrogate ``-min(r A, clip(r, 1 - c, 1 + c) A)``, aggregated by ``loss_agg``.

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
        arXiv 2507.18071: one ratio per response ``s_i = exp(mean over its tokens of
        (new - old))``, clipped per response, times the response's mean advantage ``A_i``; the
        loss is ``mean_i max(-A_i s_i, -A_i clip(s_i))``, one term per response, so it needs
        ``loss_agg="seq-mean-token-mean"``: any other aggregation would weight the responses by
        their lengths).
    :param clip_range_high: the upper clip ``1 + clip_range_high`` (DAPO's asymmetric clipping,
        e.g. 0.28); ``None``: symmetric.
    :param loss_agg: ``"token-mean"`` (every real token of the batch weighs the same; default),
        ``"seq-mean-token-mean"`` (each response's token mean, then the mean over responses),
        ``"seq-sum-constant"`` (Dr. GRPO: the sum over tokens divided by ``B * T``, a constant);
        see :func:`aggregate`.
    :param dual_clip: verl's dual clip ``c > 1`` (``clip_ratio_c``, e.g. 3.0): where the
        advantage is negative the per-token (macro, sequence) loss is at most ``-c * A``;
        ``None`` (default): off.
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
    if dual_clip is not None and not (
        not isinstance(dual_clip, bool) and isinstance(dual_clip, (int, float)) and dual_clip > 1
    ):
        raise ValueError(f"{where}: dual_clip={dual_clip!r} must be a number > 1 or None")
    if ratio_level == "sequence" and loss_agg != "seq-mean-token-mean":
        raise ValueError(
            f"{where}: loss_agg={loss_agg!r} is undefined with ratio_level='sequence' (GSPO is "
            "one term per response, averaged over responses); valid: 'seq-mean-token-mean'"
        )
    _check_same_shape(
        where, new_logp=new_logp, old_logp=old_logp, advantages=advantages, mask=mask, starts=starts
    )
    zeros = torch.zeros_like(new_logp)
    log_ratio = torch.where(mask, new_logp - old_logp, zeros)
    adv = torch.where(mask, advantages, torch.zeros_like(advantages))

    if ratio_level == "token":
        ratio = torch.exp(log_ratio)
        token_loss = _surrogate(ratio, adv, clip_range, high, dual_clip)
        outside = _outside(ratio, clip_range, high)
        loss = aggregate(token_loss, mask, loss_agg)
    elif ratio_level == "macro":
        validate_starts(starts, mask, name=where)
        seg_log_ratio = segment_reduce(log_ratio, starts, mask, "sum")
        seg_adv = segment_reduce(adv, starts, mask, "mean")
        seg_ratio = torch.exp(seg_log_ratio)
        seg_loss = _surrogate(seg_ratio, seg_adv, clip_range, high, dual_clip)
        seg_outside = _outside(seg_ratio, clip_range, high).to(adv.dtype)
        outside = broadcast_to_tokens(seg_outside.detach(), starts, mask) > 0.5
        if loss_agg == "token-mean":
            # Absent segments hold zeros (ratio 1, advantage 0), so they add nothing to the sum.
            loss = seg_loss.sum() / mask.sum().clamp(min=1).to(seg_loss.dtype)
        else:  # a segment's loss shared by its tokens
            seg_len = segment_reduce(mask.to(adv.dtype), starts, mask, "sum").clamp(min=1)
            loss = aggregate(broadcast_to_tokens(seg_loss / seg_len, starts, mask), mask, loss_agg)
    else:
        lengths = mask.sum(dim=1).clamp(min=1).to(new_logp.dtype)
        seq_ratio = torch.exp(log_ratio.sum(dim=1) / lengths)
        seq_adv = adv.sum(dim=1) / lengths
        seq_loss = _surrogate(seq_ratio, seq_adv, clip_range, high, dual_clip)
        rows = mask.any(dim=1)
        # GSPO: one term per response, the mean over the responses (verl's seq-mean-token-mean
        # of its per-token copies of the sequence loss).
        loss = seq_loss[rows].sum() / rows.sum().clamp(min=1).to(seq_loss.dtype)
        outside = _outside(seq_ratio, clip_range, high)[:, None].expand_as(mask) & mask

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


def kl_loss(
    new_logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    *,
    estimator: str = "k3",
    loss_agg: str = "token-mean",
    clamp: float | None = None,
) -> Tensor:
    """The KL to the reference as a loss term (``kl_in="loss"``), aggregated like the policy
    loss (verl: ``agg_loss(kl, mask, loss_agg_mode)``; the caller multiplies by ``beta``).

    :param new_logp: ``float[B, T]`` current log-probs of the taken tokens (with grad).
    :param ref_logp: ``float[B, T]`` the reference's log-probs of the same tokens.
    :param mask: ``bool[B, T]`` the tokens that count.
    :param estimator: ``"k3"`` (default; its gradient is that of KL(ref || pi), as GRPO) or
        ``"k2"`` (the gradient of KL(pi || ref)). ``"k1"`` is refused: ``logp - ref`` has zero
        expected gradient on-policy, so it does not regularise in a loss.
    :param loss_agg: see :func:`aggregate`.
    :param clamp: clamp each token's estimate to ``[-clamp, clamp]`` (verl: 10); ``None``: none.
    """
    if estimator not in KL_LOSS_ESTIMATORS:
        raise ValueError(
            f"kl_loss: estimator={estimator!r} cannot regularise in the loss (k1 has zero "
            f"expected gradient on-policy); choose one of {KL_LOSS_ESTIMATORS}"
        )
    kl = kl_penalty(new_logp, ref_logp, estimator, clamp=clamp)
    return aggregate(kl, mask, loss_agg)
