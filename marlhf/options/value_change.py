"""Value-change cut points: a macro starts at a token that moved the critic's value.

The score of position ``t`` is ``|V(s_{t+1}) - V(s_t)|``, how far token ``t`` moved the critic's
estimate of the return: a token after which the critic expects something else is one that
decided something, so it opens a credit unit of its own. A :class:`~marlhf.options.budget.
CutBudget` keeps the best positions (``budget=k``, ``length=n``, ``threshold=x`` in return
units, or the top fraction ``q``). The last real token has no next state; it is never a
candidate (the agents isolate it anyway).

The values are the agent's critic (``V(s_t)`` of the state before token ``t``, the values its
estimator reads), so the rule needs an agent whose estimator uses a critic.
"""

from __future__ import annotations

import torch

from marlhf.options.base import SegmentationBatch
from marlhf.options.budget import ScoredTermination, require
from marlhf.options.registry import register_termination


@register_termination("value_change")
class ValueChange(ScoredTermination):
    """Cut before the tokens after which the critic's value moved the most.

    :param budget: at most this many cuts per response (default 4 when nothing else is given).
    :param length: instead of ``budget``: a target mean segment length.
    :param threshold: only positions whose value change exceeds it are cut points.
    :param q: only the top fraction ``q`` of a response's positions are cut points.
    """

    requires = frozenset({"values"})

    def scores(self, batch: SegmentationBatch) -> torch.Tensor:
        values = require(batch, "values", self.name).double()
        out = torch.full_like(values, float("nan"))
        if values.shape[1] > 1:
            out[:, :-1] = (values[:, 1:] - values[:, :-1]).abs()
        return out.masked_fill(~batch.mask, float("nan"))
