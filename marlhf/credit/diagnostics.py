"""Checks and logged diagnostics of a rollout: non-finite guards and the ``credit/*`` values."""

from __future__ import annotations

import torch

from marlhf.credit.advantages import explained_variance
from marlhf.credit.estimators import Estimate
from marlhf.options import Termination, num_segments


def raise_non_finite(tensor: torch.Tensor, mask: torch.Tensor, what: str) -> None:
    """Raise ``FloatingPointError`` naming ``what``, the first bad row/column and its value."""
    bad = ~torch.isfinite(tensor) & mask
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise FloatingPointError(
            f"non-finite {what} at row {row}, response token {col} "
            f"(value {float(tensor[row, col])}); training stopped before any update"
        )


def credit_stats(
    mask: torch.Tensor,
    starts: torch.Tensor,
    estimate: Estimate,
    termination: Termination | None,
) -> dict[str, float]:
    """``credit/*`` values of one rollout: macro lengths, advantage variance early and late in
    the response, the critic's explained variance per segment (NaN without a critic)."""
    segments = num_segments(starts, mask).float()
    lengths = mask.sum(dim=1).float()
    cols = torch.arange(mask.shape[1], device=mask.device).float()
    quantile = cols[None, :] / lengths.clamp(min=1)[:, None]
    early, late = mask & (quantile < 0.25), mask & (quantile >= 0.75)

    def masked_var(x: torch.Tensor, m: torch.Tensor) -> float:
        return float(x[m].var()) if int(m.sum()) > 1 else float("nan")

    seg = estimate.segments
    explained = (
        float(explained_variance(seg["seg_values"], seg["seg_returns"], seg["seg_mask"]))
        if {"seg_values", "seg_returns", "seg_mask"} <= set(seg)
        else float("nan")
    )
    return {
        "credit/macro_len_mean": float(lengths.sum() / segments.sum().clamp(min=1)),
        "credit/segments_per_episode": float(segments.mean()),
        "credit/adv_var_early": masked_var(estimate.advantages, early),
        "credit/adv_var_late": masked_var(estimate.advantages, late),
        "credit/explained_variance_segment": explained,
        "credit/termination_fallbacks": float(
            termination.stats.fallbacks if termination is not None else 0
        ),
    }
