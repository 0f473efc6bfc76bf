"""Does a batch-level cut budget matter? The oracle with the same number of cuts per batch.

At ``budget=k`` every response gets ``k`` cuts. A batch-level budget gives the batch ``k * B``
cuts and lets the rule place them where they help most: many cuts in one episode, none in
another. Same mean number of cuts, so the comparison is still at equal cuts. This module asks
whether that placement matters before anyone builds a rule for it:

- :func:`batch_oracle_cuts`: greedy on the truth over the whole batch (each step adds the one
  cut, in any episode, that lowers the estimator's summed squared error most);
- :func:`global_top` : a scored rule at a batch budget (its ``k * B`` best-scoring candidates,
  wherever they are): what the learned termination and the entropy rule would do with it.

``python benchmarks/learned_terms.py --part alloc --tasks ... --seeds ...`` writes
``learned_terms_alloc*.json``; the page shows the table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from marlhf.agents.termination_training import base_starts, estimator_errors
from marlhf.options import CutBudget


def batch_oracle_cuts(
    advantages_of: Callable[[torch.Tensor], torch.Tensor],
    true: torch.Tensor,
    mask: torch.Tensor,
    total: int,
    *,
    isolate_last: bool = True,
) -> torch.Tensor:
    """``bool[B, T]``: ``total`` cuts over the whole batch, added greedily one at a time where
    the estimator's squared error against ``true`` drops most (rows are independent: the
    estimator's advantages of one row do not depend on another's cuts).

    :param advantages_of: as :func:`~marlhf.agents.termination_training.oracle_cuts`'s.
    """
    b, t = mask.shape
    chosen = torch.zeros_like(mask)
    if t == 0 or b == 0 or total <= 0:
        return chosen
    cand = CutBudget("oracle", budget=1).candidates(mask)
    fixed = base_starts(mask, isolate_last)
    eye = torch.eye(t, dtype=torch.bool, device=mask.device)
    target = true.double()
    for _ in range(total):
        free = cand & ~chosen
        if not bool(free.any()):
            break
        now = estimator_errors(advantages_of, fixed | chosen, true, mask)  # [B]
        trial = ((fixed | chosen)[None, :, :] | eye[:, None, :]) & mask[None]  # [T, B, T]
        adv = advantages_of(trial.reshape(t * b, t)).reshape(t, b, t).double()
        err = torch.where(mask[None], (adv - target[None]).square(), 0.0).sum(dim=2)  # [T, B]
        gain = (now[None, :] - err).masked_fill(~free.T, -math.inf)
        col, row = divmod(int(gain.argmax()), b)
        chosen[row, col] = True
    return chosen


def global_top(scores: torch.Tensor, mask: torch.Tensor, total: int) -> torch.Tensor:
    """``bool[B, T]``: the ``total`` best-scoring candidates of the whole batch (NaN never;
    ties towards the earlier row and position)."""
    cand = CutBudget("global", budget=1).candidates(mask) & ~torch.isnan(scores)
    flat = scores.double().masked_fill(~cand, -math.inf).flatten()
    count = min(total, int(cand.sum()))
    out = torch.zeros(flat.shape, dtype=torch.bool, device=mask.device)
    if count > 0:
        # stable order: highest score first, then the earliest flat index
        order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))[:count]
        out[torch.tensor(order, dtype=torch.long)] = True
    return out.reshape(mask.shape)


def alloc_rows(
    fn: Callable[[torch.Tensor], torch.Tensor],
    true: torch.Tensor,
    mask: torch.Tensor,
    scores: dict[str, torch.Tensor],
    per_row: dict[str, torch.Tensor],
    budget: int,
) -> dict[str, Any]:
    """RMSE per token of each rule's cuts at ``budget`` per row and at ``budget * B`` per batch.

    :param scores: rule -> ``float[B, T]`` scores, for the batch-budget version of each rule.
    :param per_row: rule -> its starts at ``budget`` per row (oracle included).
    """
    tokens = max(int(mask.sum()), 1)
    base = base_starts(mask, True)

    def rmse(starts: torch.Tensor) -> float:
        return float(estimator_errors(fn, starts | base, true, mask).sum() / tokens) ** 0.5

    total = budget * mask.shape[0]
    out: dict[str, Any] = {"per_row": {k: rmse(v) for k, v in per_row.items()}}
    batch = {rule: global_top(s, mask, total) for rule, s in scores.items()}
    batch["oracle"] = batch_oracle_cuts(fn, true, mask, total)
    out["per_batch"] = {k: rmse(v) for k, v in batch.items()}
    out["cuts_per_episode_spread"] = {
        k: float((v & ~base).sum(dim=1).double().std()) for k, v in batch.items()
    }
    return out
