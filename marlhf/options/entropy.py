"""Entropy cut points: a macro starts at a token the policy chose from an uncertain distribution.

Where the policy's next-token distribution has high entropy it is deciding something; where it
is near-deterministic nothing new is decided and no new credit unit need begin. This is the
branching rule of the high-entropy "forking tokens" line of work (arXiv 2506.01939) and of the
entropy-based branch points of tree-search RL, as a termination: the score of position ``t`` is
the entropy of the distribution token ``t`` was drawn from, and a :class:`~marlhf.options.budget.
CutBudget` keeps the best positions (``budget=k``, ``length=n``, ``threshold=x`` nats, or the top
fraction ``q`` of the response).

The agents pass the entropy of the scoring distribution (the policy's logits at the scoring
temperature, over the allowed actions), the one its log-probs and KL are computed from.
"""

from __future__ import annotations

import torch

from marlhf.options.base import SegmentationBatch
from marlhf.options.budget import ScoredTermination, require
from marlhf.options.registry import register_termination


@register_termination("entropy")
class Entropy(ScoredTermination):
    """Cut before the tokens drawn from the highest-entropy distributions.

    :param budget: at most this many cuts per response (default 4 when nothing else is given).
    :param length: instead of ``budget``: a target mean segment length.
    :param threshold: only positions whose entropy (nats) exceeds it are cut points.
    :param q: only the top fraction ``q`` of a response's positions by entropy are cut points.
    """

    requires = frozenset({"entropy"})

    def scores(self, batch: SegmentationBatch) -> torch.Tensor:
        return require(batch, "entropy", self.name)
