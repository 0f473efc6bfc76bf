"""Low-probability cut points (SPO-chain, arXiv 2505.23564): a macro starts at a token the policy
sampled with probability under ``p``, every ``every``-th such token.

Where the policy was confident (probability >= ``p``) nothing was really decided, so no new
credit unit begins; Monte-Carlo values at the cut points then measure the tokens that mattered.
SPO's optional probability mask (advantage 0 on tokens with probability above ``p``) is the
agents' ``prob_mask_threshold`` knob, not part of this rule.
"""

from __future__ import annotations

import math

import torch

from marlhf.options.base import SegmentationBatch, Termination
from marlhf.options.registry import register_termination


@register_termination("lowprob")
class LowProbability(Termination):
    """Cut before every ``every``-th token whose sampling probability is below ``p``.

    :param p: probability threshold in (0, 1] (SPO-chain: 0.9).
    :param every: keep every k-th candidate (1: all), counted per response.
    """

    requires = frozenset({"logprobs"})

    def __init__(self, p: float = 0.9, every: int = 1) -> None:
        super().__init__()
        ok = isinstance(p, int | float) and not isinstance(p, bool) and 0 < p <= 1
        if not ok:
            raise ValueError(f"lowprob: p={p!r} must be a probability in (0, 1]")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"lowprob: every={every!r} must be a positive integer")
        self.p = float(p)
        self.every = every

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        lp = batch.logprobs
        if lp is None:
            raise ValueError(
                "lowprob: batch.logprobs is None; build the batch with "
                "SegmentationBatch.build(..., requires=termination.requires, logprobs=...)"
            )
        mask = batch.mask
        candidate = (lp.to(mask.device) < math.log(self.p)) & mask
        rank = torch.cumsum(candidate.long(), dim=1)  # 1 for the first candidate of a row
        out = candidate & ((rank - 1) % self.every == 0)
        if mask.shape[1]:
            out[:, 0] = mask[:, 0]
        return out
