"""Does a batch-level cut budget matter? The oracle with the same number of cuts per batch.

At ``budget=k`` every response gets ``k`` cuts. A batch-level budget gives the batch ``k * B``
cuts and lets the rule place them where they help most: many cuts in one episode, none in
another. Same mean number of cuts, so the comparison is still at equal cuts. This module asks
whether that placement matters before anyone builds a rule for it:

- :func:`~marlhf.algorithms.termination_training.batch_oracle_cuts`: greedy on the truth over the
  whole batch (each step adds the one cut, in any episode, that lowers the estimator's summed
  squared error most);
- :func:`global_top` : a scored rule at a batch budget (its ``k * B`` best-scoring candidates,
  wherever they are): what the learned termination and the entropy rule would do with it.

``python benchmarks/learned_terms.py --part alloc --tasks ... --seeds ...`` writes
``learned_terms_alloc*.json``; the page shows the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from marlhf.algorithms.termination_training import base_starts, batch_oracle_cuts, estimator_errors
from marlhf.options import CutBudget
from marlhf.options.budget import select_batch


def global_top(scores: torch.Tensor, mask: torch.Tensor, total: int) -> torch.Tensor:
    """``bool[B, T]``: the ``total`` best-scoring candidates of the whole batch (NaN never;
    ties towards the earlier row and position)."""
    return select_batch(scores, CutBudget("global", budget=1).candidates(mask), total)


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
