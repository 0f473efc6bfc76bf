"""Cut budgets: terminations that score every position and keep the best cut points.

Comparing terminations is fair only at the same number of cuts: a rule that cuts more often
gives the estimator more segments, whatever it cuts on. A *scored* termination gives each
response position a score (entropy, value change, surprisal, a learned head) and a
:class:`CutBudget` decides how many of the best-scoring positions become segment starts:

- ``budget=k``: at most ``k`` cuts per response (exactly ``k`` when it has that many
  candidates);
- ``length=n``: a target mean segment length, ``ceil(L / n) - 1`` cuts for a response of ``L``
  tokens (as many as ``ngram:n`` makes);
- ``threshold=x``: only positions scoring above ``x`` are candidates;
- ``q=f``: only the top fraction ``f`` of a response's positions are candidates.

``threshold`` and ``q`` filter the candidates; ``budget`` and ``length`` cap their number (a
filter alone keeps every candidate that passes). A *cut* is a segment start other than the
response's first token; the last token is never a candidate, because the agents isolate it
(``isolate_last``, on by default) for every rule alike, so rules at the same budget end up with
the same number of segments. Ties are broken towards the earlier position.

``cap:K|SPEC`` puts any rule at a budget (of its cuts, ``K`` spread evenly). Two baselines at
equal cuts live here too: ``even`` (``k`` evenly spaced cuts: the n-gram
rule at a given number of cuts) and ``random_cuts`` (``k`` positions drawn uniformly), and
``surprisal`` (the low-probability rule of SPO ranked: the ``k`` least likely tokens).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch

from marlhf.options.base import SegmentationBatch, Termination, compute_starts
from marlhf.options.combinators import Combinator, _unwrap
from marlhf.options.registry import register_termination


def _number(owner: str, field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise TypeError(f"{owner}: {field}={value!r} must be a number")
    return float(value)


class CutBudget:
    """How many cut points a scored termination keeps (module docstring).

    :param owner: the termination's name, for error messages.
    :param budget: at most this many cuts per response, an int >= 1.
    :param length: target mean segment length in tokens, a number >= 1.
    :param threshold: only positions scoring above it are candidates.
    :param q: only the top fraction ``q`` in (0, 1] of a response's positions are candidates.
    :raises ValueError: naming the field, for a value out of range, for ``budget`` and
        ``length`` together, or for none of the four.
    """

    def __init__(
        self,
        owner: str,
        budget: int | None = None,
        length: float | None = None,
        threshold: float | None = None,
        q: float | None = None,
    ) -> None:
        self.owner = owner
        if budget is not None:
            if isinstance(budget, bool) or not isinstance(budget, int):
                raise TypeError(f"{owner}: budget={budget!r} must be an integer >= 1")
            if budget < 1:
                raise ValueError(
                    f"{owner}: budget={budget!r} must be >= 1 cut per response (and at most "
                    "the horizon)"
                )
        if length is not None and _number(owner, "length", length) < 1:
            raise ValueError(f"{owner}: length={length!r} must be a mean segment length >= 1")
        if budget is not None and length is not None:
            raise ValueError(
                f"{owner}: give budget={budget!r} or length={length!r}, not both (both set "
                "the number of cuts)"
            )
        if threshold is not None:
            _number(owner, "threshold", threshold)
        if q is not None and not 0 < _number(owner, "q", q) <= 1:
            raise ValueError(f"{owner}: q={q!r} must be a fraction in (0, 1]")
        if budget is None and length is None and threshold is None and q is None:
            raise ValueError(f"{owner}: give one of budget, length, threshold or q")
        self.budget = budget
        self.length = None if length is None else float(length)
        self.threshold = None if threshold is None else float(threshold)
        self.q = None if q is None else float(q)

    def kwargs(self) -> dict[str, Any]:
        """The fields that are set, by name (what rebuilds this budget)."""
        fields = {"budget": self.budget, "length": self.length}
        fields.update(threshold=self.threshold, q=self.q)
        return {k: v for k, v in fields.items() if v is not None}

    def check_horizon(self, horizon: int) -> None:
        """Raise when ``budget`` exceeds the task's ``horizon`` (response tokens)."""
        if self.budget is not None and self.budget > horizon:
            raise ValueError(
                f"{self.owner}: budget={self.budget} cuts exceeds the horizon ({horizon} "
                f"response tokens); valid: 1..{horizon}"
            )

    def candidates(self, mask: torch.Tensor) -> torch.Tensor:
        """``bool[B, T]``: real positions other than the first and the last of each row."""
        lengths = mask.sum(dim=1, keepdim=True)
        cols = torch.arange(mask.shape[1], device=mask.device)[None, :]
        return mask & (cols >= 1) & (cols < lengths - 1)

    def cuts_per_row(self, mask: torch.Tensor) -> torch.Tensor:
        """``int64[B]``: how many cuts each row may keep (a large number when uncapped)."""
        lengths = mask.sum(dim=1)
        if self.budget is not None:
            return torch.full_like(lengths, self.budget)
        if self.length is not None:
            return (torch.ceil(lengths.double() / self.length).long() - 1).clamp(min=0)
        return torch.full_like(lengths, mask.shape[1])

    def select(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``bool[B, T]`` cut points: the best-scoring candidates, within the budget.

        :param scores: ``float[B, T]``; higher is a better cut point (NaN never is).
        :param mask: ``bool[B, T]`` real tokens (a prefix of each row).
        """
        if scores.shape != mask.shape:
            raise ValueError(
                f"{self.owner}: scores have shape {tuple(scores.shape)}, expected the mask's "
                f"{tuple(mask.shape)}"
            )
        eligible = self.candidates(mask) & ~torch.isnan(scores)
        if self.threshold is not None:
            eligible &= scores > self.threshold
        out = torch.zeros_like(mask)
        if mask.shape[1] == 0:
            return out
        keep = self.cuts_per_row(mask)
        if self.q is not None:
            top_q = torch.ceil(mask.sum(dim=1).double() * self.q).long()
            keep = torch.minimum(keep, top_q)
        # Rank eligible positions by score (ties: the earlier first); keep the best `keep`.
        low = torch.finfo(torch.float64).min
        ranked = torch.where(eligible, scores.double(), low)
        order = torch.argsort(ranked, dim=1, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(mask.shape[1], device=mask.device).expand_as(order))
        return eligible & (rank < keep[:, None])


def select_batch(scores: torch.Tensor, candidates: torch.Tensor, total: int) -> torch.Tensor:
    """``bool[B, T]``: the ``total`` best-scoring of ``candidates`` over the whole batch (a batch
    budget: some rows may get many cuts, others none). NaN never counts; ties go to the earlier
    row, then the earlier position."""
    eligible = candidates & ~torch.isnan(scores)
    flat = torch.where(eligible, scores.double(), -math.inf).flatten()
    count = min(max(int(total), 0), int(eligible.sum()))
    out = torch.zeros(flat.shape, dtype=torch.bool, device=scores.device)
    if count:
        order = torch.argsort(flat, descending=True, stable=True)
        out[order[:count]] = True
    return out.reshape(candidates.shape)


class ScoredTermination(Termination):
    """A termination that scores positions and cuts at the best ones within a :class:`CutBudget`.

    Subclasses implement :meth:`scores`; the budget arguments are theirs to pass on.
    """

    def __init__(
        self,
        budget: int | None = None,
        length: float | None = None,
        threshold: float | None = None,
        q: float | None = None,
    ) -> None:
        super().__init__()
        if budget is None and length is None and threshold is None and q is None:
            budget = 4  # the default budget; keeps make_termination(name) working
        self.cut_budget = CutBudget(self.name, budget, length, threshold, q)

    @abstractmethod
    def scores(self, batch: SegmentationBatch) -> torch.Tensor:
        """``float[B, T]``: how good a cut point each position is (higher is better)."""

    def check_horizon(self, horizon: int) -> None:
        """Raise when the cut budget exceeds the task's horizon (agents call it once)."""
        self.cut_budget.check_horizon(horizon)

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        mask = batch.mask
        out = self.cut_budget.select(self.scores(batch).to(mask.device), mask)
        if mask.shape[1]:
            out[:, 0] = mask[:, 0]
        return out

    def config_kwargs(self) -> dict[str, Any]:
        return self.cut_budget.kwargs()

    @property
    def spec(self) -> str:
        parts = [f"{k}={_fmt(v)}" for k, v in self.config_kwargs().items()]
        return f"{self.name}:" + ";".join(parts)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def require(batch: SegmentationBatch, field: str, owner: str) -> torch.Tensor:
    """``batch.<field>`` checked: present, of the mask's shape and floating point."""
    value = getattr(batch, field)
    if value is None:
        raise ValueError(
            f"{owner}: batch.{field} is None; build the batch with "
            f"SegmentationBatch.build(..., requires=termination.requires, {field}=...)"
        )
    if value.shape != batch.mask.shape:
        raise ValueError(
            f"{owner}: {field} has shape {tuple(value.shape)}, expected the mask's "
            f"{tuple(batch.mask.shape)}"
        )
    if not value.is_floating_point():
        raise TypeError(f"{owner}: {field} must be floating point, got {value.dtype}")
    return value.to(batch.mask.device)


@register_termination("even")
class EvenCuts(ScoredTermination):
    """``k`` evenly spaced cuts (the n-gram rule at a given number of cuts): the cut points of a
    response of ``L`` tokens are ``round(j * (L - 1) / (k + 1))``, ``j = 1..k``."""

    requires = frozenset()

    def scores(self, batch: SegmentationBatch) -> torch.Tensor:
        mask = batch.mask
        b, t = mask.shape
        lengths = mask.sum(dim=1, keepdim=True).double()
        keep = self.cut_budget.cuts_per_row(mask).clamp(max=t)[:, None]
        j = torch.arange(1, t + 1, device=mask.device)[None, :]
        ideal = torch.round(j * (lengths - 1) / (keep + 1)).long()
        ideal = torch.where(j <= keep, ideal, t).clamp(0, t)  # column t is a dump column
        out = torch.zeros(b, t + 1, dtype=torch.float64, device=mask.device)
        out.scatter_(1, ideal, 1.0)
        return out[:, :t]


@register_termination("random_cuts")
class RandomCuts(ScoredTermination):
    """``k`` cut points drawn uniformly without replacement from each response (seeded)."""

    requires = frozenset({"generator"})

    def scores(self, batch: SegmentationBatch) -> torch.Tensor:
        if batch.generator is None:
            raise ValueError(
                "random_cuts: batch.generator is None; build the batch with "
                "SegmentationBatch.build(..., requires=termination.requires, generator=...)"
            )
        noise = torch.rand(batch.mask.shape, generator=batch.generator)
        return noise.to(batch.mask.device)


@register_termination("surprisal")
class Surprisal(ScoredTermination):
    """The low-probability rule ranked: cut before the tokens the policy sampled with the lowest
    probability (score ``-log p``); ``threshold=-log(0.9)`` with no budget is ``lowprob:0.9``."""

    requires = frozenset({"logprobs"})

    def scores(self, batch: SegmentationBatch) -> torch.Tensor:
        return -require(batch, "logprobs", self.name)


@register_termination("cap")
class Cap(Combinator):
    """Any termination at a cut budget: keep at most ``budget`` of its cuts, spread evenly over
    them (of ``m > budget`` cuts, those numbered ``round(j (m + 1) / (budget + 1))``,
    ``j = 1..budget``; with ``m <= budget`` all of them). For rules without a score
    (punctuation, parse, perplexity, n-grams). Spec ``cap:4|punctuation``.

    :param termination: the inner termination or its spec.
    :param budget: at most this many cuts per response, an int >= 1.
    """

    def __init__(self, termination: Termination | str, budget: int) -> None:
        if not isinstance(termination, Termination | str):
            raise TypeError(
                f"cap: termination={termination!r} must be a Termination or a spec string, "
                "e.g. Cap('punctuation', 4)"
            )
        super().__init__([termination])
        self.cut_budget = CutBudget(self.name, budget=budget)
        self.budget = budget

    @property
    def inner(self) -> Termination:
        """The wrapped termination."""
        return self.parts[0]

    def check_horizon(self, horizon: int) -> None:
        """Raise when the cut budget exceeds the task's horizon (agents call it once)."""
        self.cut_budget.check_horizon(horizon)

    def config_kwargs(self) -> dict[str, Any]:
        return {"termination": self.inner, "budget": self.budget}

    @classmethod
    def parse_spec_args(cls, rest: str) -> tuple[list[Any], dict[str, Any]]:
        """``"K|SPEC"`` -> ``(["SPEC", K], {})``."""
        head, sep, inner = rest.partition("|")
        inner = _unwrap(inner.strip())  # the whole rest is the inner spec
        if not sep or not inner:
            raise ValueError(f"cap spec {rest!r}: expected K|SPEC, e.g. cap:4|punctuation")
        try:
            budget = int(head.strip())
        except ValueError:
            raise ValueError(
                f"cap spec {rest!r}: budget={head.strip()!r} must be an integer >= 1"
            ) from None
        return [inner, budget], {}

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        mask = batch.mask
        cuts = compute_starts(self.inner, batch) & self.cut_budget.candidates(mask)
        self._sync_stats()
        rank = torch.cumsum(cuts.long(), dim=1)  # 1 for a row's first cut
        m = rank[:, -1:] if rank.shape[1] else rank
        k = self.budget
        keep = cuts & (m <= k)
        for j in range(1, k + 1):
            target = torch.round(j * (m.double() + 1) / (k + 1)).long()
            keep |= cuts & (m > k) & (rank == target)
        if mask.shape[1]:
            keep[:, 0] = mask[:, 0]
        return keep

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.budget}|{self.inner.spec}"
