"""Perplexity-based termination under the reference model (MA-RLHF, section on terminations).

The per-token perplexity of token ``t`` is ``exp(-ref_logprob_t)``. A macro action grows while
the perplexity keeps decreasing and is cut where it would rise. Comparing log-probs directly is
the same test (``exp`` is monotonic) and cannot overflow.

Three rules, selected by ``rule``, each named for what it compares:

- ``consecutive`` (default; ``paper`` is its old name, still accepted): token ``t`` starts a new
  macro when ``ppl[t] > ppl[t-1]``, consecutive per-token perplexities; the token whose
  perplexity rises opens the next macro.
- ``macro``: the paper's stated rule, the macro's perplexity with the next token against without
  it: token ``t`` starts a new macro when adding it would raise the running macro's perplexity
  ``exp(mean nll)``, i.e. when ``nll[t]`` exceeds the mean nll of the macro so far.
- ``released``: the released code's rule, one token early: token ``t`` starts a new macro when
  ``ppl[t+1] > ppl[t]``.

``consecutive`` stays the default because it is the rule every earlier marlhf result used (the
demo and benchmark numbers); ``macro`` is what the paper's text describes. Ties (equal
perplexity) extend the macro under every rule, as in the released code's strict ``>``.
The released code also always makes the last token its own macro; marlhf does that for every
rule through ``compute_starts(..., isolate_last=True)``, so it is not part of the rule.

Worked example, perplexities ``[5, 4, 3, 3.5, 2, 1.5, 1.8, 1, 0.9, 1.2]`` with
``isolate_last=True``: ``paper`` gives ``{0,1,2} {3,4,5} {6,7,8} {9}``; ``released`` gives
``{0,1} {2,3,4} {5,6,7} {8} {9}``.
"""

from __future__ import annotations

from typing import Literal

import torch

from marlhf.options.base import SegmentationBatch, Termination
from marlhf.options.registry import register_termination

PerplexityRule = Literal["consecutive", "macro", "released", "paper"]
RULES: tuple[str, ...] = ("consecutive", "macro", "released", "paper")


@register_termination("perplexity")
class Perplexity(Termination):
    """Cut macros where the reference model's per-token perplexity rises.

    :param rule: ``"consecutive"`` (default: the rising token opens the next macro; ``"paper"``
        is its old name), ``"macro"`` (the token that would raise the macro's perplexity opens
        the next one) or ``"released"`` (the token before the rise opens it).
    """

    requires = frozenset({"ref_logprobs"})

    def __init__(self, rule: PerplexityRule = "consecutive") -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"perplexity: rule={rule!r} is not one of {RULES}")
        self.rule: PerplexityRule = rule

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        lp = batch.ref_logprobs
        mask = batch.mask
        if lp is None:
            raise ValueError(
                "perplexity: batch.ref_logprobs is None; build the batch with "
                "SegmentationBatch.build(..., requires=termination.requires, ref_logprobs=...)"
            )
        if lp.shape != mask.shape:
            raise ValueError(
                f"perplexity: ref_logprobs has shape {tuple(lp.shape)}, expected the mask's "
                f"{tuple(mask.shape)}"
            )
        if not lp.is_floating_point():
            raise TypeError(f"perplexity: ref_logprobs must be floating point, got {lp.dtype}")
        lp = lp.to(mask.device)
        nan = torch.isnan(lp) & mask
        if nan.any():
            row, col = (int(i) for i in nan.nonzero()[0])
            raise ValueError(f"perplexity: ref_logprobs is NaN at row {row}, token {col}")
        out = torch.zeros_like(mask)
        if mask.shape[1] < 2:
            return out
        # rise[:, j] is True when ppl[j + 1] > ppl[j], i.e. logprob[j + 1] < logprob[j].
        if self.rule == "macro":
            return _macro_rule(lp, mask)
        rise = (lp[:, 1:] < lp[:, :-1]) & mask[:, 1:]
        if self.rule in ("consecutive", "paper"):
            out[:, 1:] = rise
        else:
            out[:, :-1] = rise
        return out & mask

    @property
    def spec(self) -> str:
        return f"{self.name}:rule={self.rule}"


def _macro_rule(lp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cut where a token's nll exceeds the running mean nll of the macro it would join."""
    nll = -lp.double()
    out = torch.zeros_like(mask)
    total = nll[:, 0].clone()
    count = torch.ones_like(total)
    for t in range(1, mask.shape[1]):
        cut = (nll[:, t] * count > total) & mask[:, t]  # nll_t > mean, without dividing
        out[:, t] = cut
        total = torch.where(cut, nll[:, t], total + nll[:, t])
        count = torch.where(cut, torch.ones_like(count), count + 1)
    return out & mask
