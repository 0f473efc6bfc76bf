"""Combinators: build new terminations from existing ones.

- :class:`Union`: a boundary wherever any part has one.
- :class:`MinLength`: drop boundaries that would make a macro shorter than ``n`` tokens.
- :class:`MaxLength`: split macros longer than ``n`` tokens into ``n``-token pieces.

A combinator's ``requires`` is the union of its parts', and its ``stats.fallbacks`` (and each
counter in ``stats.extra``) the sum of its parts'.

Spec syntax (the arguments are themselves specs, so combinators parse them; nest freely)::

    union:SPEC|SPEC|...          e.g.  union:ngram:5|punctuation
    min_length:N|SPEC            e.g.  min_length:3|punctuation:level=sentence
    max_length:N|SPEC            e.g.  max_length:10|union:perplexity|punctuation

``|`` separates the arguments; parentheses group a part that itself contains ``|``, e.g.
``union:(max_length:10|punctuation)|ngram:20``. ``min_length``/``max_length`` take the whole
rest after ``N|`` as their inner spec, so they need no parentheses there. The ``spec`` property
writes this form back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from marlhf.options.base import SegmentationBatch, SegmentationError, Termination
from marlhf.options.ngram import check_macro_length
from marlhf.options.registry import make_termination, register_termination
from marlhf.options.segments import position_in_segment


def split_top_level(text: str, sep: str = "|") -> list[str]:
    """Split ``text`` at ``sep`` outside parentheses; strip one pair of enclosing parentheses
    from each part. Unbalanced parentheses are an error."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"combinator spec {text!r}: unbalanced ')'")
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise ValueError(f"combinator spec {text!r}: unbalanced '('")
    parts.append("".join(current))
    return [_unwrap(p.strip()) for p in parts]


def _unwrap(part: str) -> str:
    # "(a|b)" -> "a|b", but "(a)|(b)" is left alone (its first "(" closes before the end).
    while part.startswith("(") and part.endswith(")"):
        depth = 0
        for i, ch in enumerate(part):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(part) - 1:
                return part
        part = part[1:-1].strip()
    return part


def _wrap(spec: str) -> str:
    return f"({spec})" if "|" in spec else spec


def _part_starts(part: Termination, batch: SegmentationBatch) -> torch.Tensor:
    """A part's raw boundaries, checked for type, dtype and shape (naming the part)."""
    raw = part.starts(batch)
    mask = batch.mask
    if not isinstance(raw, torch.Tensor) or raw.dtype != torch.bool or raw.shape != mask.shape:
        got = (raw.dtype, tuple(raw.shape)) if isinstance(raw, torch.Tensor) else type(raw)
        raise SegmentationError(
            f"{part.display_name()}: starts must be a bool tensor of shape "
            f"{tuple(mask.shape)}, got {got}"
        )
    part.stats.calls += 1
    part.stats.rows += int(mask.shape[0])
    return raw & mask


class Combinator(Termination):
    """Base class: holds the parts, merges their ``requires`` and fallback counts."""

    def __init__(self, parts: Sequence[Termination | str]) -> None:
        super().__init__()
        self.parts: list[Termination] = [make_termination(p) for p in parts]
        self.requires = frozenset().union(*(p.requires for p in self.parts))

    def config_kwargs(self) -> dict[str, Any]:
        return {"parts": list(self.parts)}

    def _sync_stats(self) -> None:
        self.stats.fallbacks = sum(p.stats.fallbacks for p in self.parts)
        extra: dict[str, int] = {}
        for part in self.parts:
            for key, value in part.stats.extra.items():
                extra[key] = extra.get(key, 0) + value
        self.stats.extra = extra


@register_termination("union")
class Union(Combinator):
    """A boundary wherever any part has one.

    :param parts: two or more terminations or spec strings.
    """

    def __init__(self, parts: Sequence[Termination | str]) -> None:
        if isinstance(parts, str | Termination) or len(parts) < 2:
            raise ValueError(
                f"union: parts={parts!r} must be a list of at least two terminations or specs, "
                "e.g. Union(['ngram:5', 'punctuation']) or 'union:ngram:5|punctuation'"
            )
        super().__init__(parts)

    @staticmethod
    def parse_spec_args(rest: str) -> tuple[list[Any], dict[str, Any]]:
        """``"A|B|C"`` -> ``([["A", "B", "C"]], {})``."""
        parts = split_top_level(rest)
        if any(not p for p in parts):
            raise ValueError(
                f"union spec {rest!r}: empty part; expected e.g. union:ngram:5|punctuation"
            )
        return [parts], {}

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        out = _part_starts(self.parts[0], batch)
        for part in self.parts[1:]:
            out = out | _part_starts(part, batch)
        self._sync_stats()
        return out

    @property
    def spec(self) -> str:
        return f"{self.name}:" + "|".join(_wrap(p.spec) for p in self.parts)


class _LengthBound(Combinator):
    """Shared parsing and spec for ``min_length``/``max_length``."""

    def __init__(self, termination: Termination | str, n: int) -> None:
        if not isinstance(termination, Termination | str):
            raise TypeError(
                f"{self.name}: termination={termination!r} must be a Termination or a spec "
                f"string; the arguments are (termination, n), e.g. {type(self).__name__}"
                "('punctuation', 3)"
            )
        super().__init__([termination])
        self.n = int(check_macro_length(n, "n", self.name, allow_inf=False))

    @property
    def inner(self) -> Termination:
        """The wrapped termination."""
        return self.parts[0]

    def config_kwargs(self) -> dict[str, Any]:
        return {"termination": self.inner, "n": self.n}

    @classmethod
    def parse_spec_args(cls, rest: str) -> tuple[list[Any], dict[str, Any]]:
        """``"N|SPEC"`` -> ``(["SPEC", N], {})``."""
        head, sep, inner = rest.partition("|")
        inner = _unwrap(inner.strip())
        if not sep or not inner:
            raise ValueError(
                f"{cls.name} spec {rest!r}: expected N|SPEC, e.g. {cls.name}:3|punctuation"
            )
        try:
            n = int(head.strip())
        except ValueError:
            raise ValueError(
                f"{cls.name} spec {rest!r}: N={head.strip()!r} must be a positive integer"
            ) from None
        return [inner, n], {}

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.n}|{self.inner.spec}"


@register_termination("min_length")
class MinLength(_LengthBound):
    """Drop boundaries that would end a macro before it has ``n`` tokens.

    Greedy from the left: a boundary of the inner rule is kept when at least ``n`` tokens have
    passed since the last kept one. Every macro but the last of a row then has ``>= n`` tokens;
    the last one may be shorter (the response ended), and ``isolate_last`` still isolates the
    final token.

    :param termination: the inner termination or its spec.
    :param n: the minimum macro length in tokens, a positive integer.
    """

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        cand = _part_starts(self.inner, batch)
        self._sync_stats()
        b, t = cand.shape
        if t == 0 or self.n == 1:
            return cand
        # Count from the first real token, which always starts a macro.
        cand[:, 0] |= batch.mask[:, 0]
        device = cand.device
        cols = torch.arange(t + 1, device=device)
        # next_cand[:, j] = first candidate column >= j (t if none); column t is a sentinel.
        marked = torch.full((b, t + 1), t, dtype=torch.long, device=device)
        marked[:, :t] = torch.where(cand, cols[:t].expand(b, t), torch.full_like(marked[:, :t], t))
        next_cand = marked.flip(1).cummin(dim=1).values.flip(1)
        out = torch.zeros(b, t + 1, dtype=torch.bool, device=device)
        pos = next_cand[:, 0]
        # Each pass keeps one more start per row; at most ceil(t / n) passes.
        while bool((pos < t).any()):
            out.scatter_(1, pos[:, None], True)
            nxt = (pos + self.n).clamp(max=t)
            pos = torch.where(pos < t, next_cand.gather(1, nxt[:, None]).squeeze(1), pos)
        return out[:, :t]


@register_termination("max_length")
class MaxLength(_LengthBound):
    """Split macros longer than ``n`` tokens into pieces of ``n`` (the last may be shorter).

    :param termination: the inner termination or its spec.
    :param n: the maximum macro length in tokens, a positive integer.
    """

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        cand = _part_starts(self.inner, batch)
        self._sync_stats()
        mask = batch.mask
        if cand.shape[1] == 0:
            return cand
        # Segments as the validator will see them: the first real token always starts one.
        cand = cand.clone()
        cand[:, 0] |= mask[:, 0]
        pos = position_in_segment(cand, mask)
        return (cand | (pos % self.n == 0)) & mask
