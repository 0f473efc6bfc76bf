"""Per-turn audit: an estimator's turn advantages against the true ones, turn index by turn index.

The true advantage of a whole turn is the sum of its tokens' true advantages (``Q(s_k, turn) -
V(s_k) = sum_t A(s_t, a_t)`` inside the turn, a telescoping sum at ``gamma = 1``); an estimator's
is the mean of its advantages over the turn's action tokens (every turn-level estimator gives
them one value). Per turn index ``k`` over the rows that have a turn ``k``:

- ``bias``: mean of ``A_hat - A``; ``error_var``: variance of that error;
- ``corr``: Pearson correlation (scale-free: normalising estimators are not penalised for their
  scale; NaN when either side is constant);
- ``sign_agreement``: fraction of turns whose true advantage is not 0 where the signs agree
  (an estimate of exactly 0 has no sign: it disagrees).

``overall`` pools every turn. Inputs are in one layout (the buffer's action layout, as the
estimators' advantages and :mod:`marlhf.credit.truth_multiturn`'s are).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from marlhf.credit import turn_maths as tm

ZERO_TOL = 1e-9


def turn_values(
    advantages: Tensor, true_advantages: Tensor, turn_ids: Tensor, mask: Tensor, num_turns: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(estimated[B, K], true[B, K], valid[B, K])`` per turn (float64).

    :param advantages: ``float[B, T]`` an estimator's advantages.
    :param true_advantages: ``float[B, T]`` the true per-token advantages.
    :param turn_ids: ``int64[B, T]`` each position's turn (-1 on padding).
    :param mask: ``bool[B, T]`` action tokens.
    :param num_turns: ``int64[B]``.
    """
    k_max = int(num_turns.max()) if num_turns.numel() else 0
    ks = torch.arange(k_max, device=mask.device)
    valid = ks[None, :] < num_turns[:, None]
    counts = tm.turn_sums(torch.ones_like(advantages), turn_ids, mask, k_max)
    estimated = tm.turn_sums(advantages, turn_ids, mask, k_max) / counts.clamp(min=1)
    true = tm.turn_sums(true_advantages, turn_ids, mask, k_max)
    zero = torch.zeros_like(true)
    return torch.where(valid, estimated, zero), torch.where(valid, true, zero), valid


def _metrics(est: Tensor, true: Tensor) -> dict[str, Any]:
    n = int(est.numel())
    if n == 0:
        return {
            "n": 0,
            "bias": math.nan,
            "error_var": math.nan,
            "corr": math.nan,
            "sign_agreement": math.nan,
        }
    err = est - true
    corr = math.nan
    if n > 1 and float(est.std()) > 0 and float(true.std()) > 0:
        corr = float(torch.corrcoef(torch.stack([est, true]))[0, 1])
    nonzero = true.abs() > ZERO_TOL
    signs = math.nan
    if bool(nonzero.any()):
        signs = float((torch.sign(est[nonzero]) == torch.sign(true[nonzero])).double().mean())
    return {
        "n": n,
        "bias": float(err.mean()),
        "error_var": float(err.var()) if n > 1 else math.nan,
        "corr": corr,
        "sign_agreement": signs,
    }


def audit_turns(
    advantages: Tensor, true_advantages: Tensor, turn_ids: Tensor, mask: Tensor, num_turns: Tensor
) -> dict[str, Any]:
    """``{"per_turn": [metrics of turn 0, 1, ...], "overall": metrics}`` (see the module
    docstring; arguments as :func:`turn_values`)."""
    return audit_turn_values(*turn_values(advantages, true_advantages, turn_ids, mask, num_turns))


def stack_turn_values(parts: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Several rollouts' :func:`turn_values` as one (rows stacked, the turn axis zero-padded to
    the widest), to audit them pooled."""
    width = max(p[0].shape[1] for p in parts)

    def pad(x: Tensor) -> Tensor:
        extra = torch.zeros(x.shape[0], width - x.shape[1], dtype=x.dtype, device=x.device)
        return torch.cat([x, extra], dim=1)

    return tuple(torch.cat([pad(p[i]) for p in parts]) for i in range(3))  # type: ignore[return-value]


def audit_turn_values(est: Tensor, true: Tensor, valid: Tensor) -> dict[str, Any]:
    """The metrics of :func:`audit_turns` from per-turn values (:func:`turn_values`)."""
    per_turn = []
    for k in range(valid.shape[1]):
        rows = valid[:, k]
        per_turn.append({"turn": k, **_metrics(est[rows, k], true[rows, k])})
    return {"per_turn": per_turn, "overall": _metrics(est[valid], true[valid])}
