"""Turns as a level of the hierarchy: the ``turn`` termination and nesting (``within``).

In a multi-turn episode the agent's tokens fall into turns (the env answers between them). The
``turn`` termination cuts at each turn's first action (``SegmentationBatch.turn_starts``); a
single-turn response is one turn, so ``turn`` there is the whole response as one macro.

Nesting applies a termination *inside* the segments of another, restarting it at each outer
boundary, so that inner macros never cross an outer one (turn -> macro -> token)::

    turn > ngram:5                  five-token macros that restart at every turn
    within:turn|ngram:5             the same, as a combinator spec
    turn > punctuation:level=sentence

``A > B > C`` nests to the right (``A > (B > C)``). The inner rule sees each outer segment as a
response of its own (token ids, mask, log-probs and text sliced to it), so every existing
termination nests unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from marlhf.options.base import SegmentationBatch, SegmentationError, Termination
from marlhf.options.combinators import Combinator, _part_starts, _unwrap, split_top_level
from marlhf.options.registry import register_termination, split_nesting
from marlhf.options.segments import segment_ids, segment_lengths
from marlhf.tokenization import TokenAlignment


@register_termination("turn")
class Turn(Termination):
    """A macro per agent turn: a boundary at the first action of each turn (one macro for a
    single-turn response)."""

    def __init__(self) -> None:
        super().__init__()

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        mask = batch.mask
        if batch.turn_starts is None:
            out = torch.zeros_like(mask)
            if mask.shape[1] > 0:
                out[:, 0] = mask[:, 0]
            return out
        if batch.turn_starts.shape != mask.shape:
            raise SegmentationError(
                f"turn: batch.turn_starts has shape {tuple(batch.turn_starts.shape)}, expected "
                f"{tuple(mask.shape)} (one flag per response token)"
            )
        return batch.turn_starts.bool() & mask


def _slice_alignment(align: TokenAlignment, begin: int, length: int) -> TokenAlignment:
    """The alignment of tokens ``[begin, begin + length)`` of a row, as a text of its own."""
    offset = align.starts[begin]
    end = align.ends[begin + length - 1]
    return TokenAlignment(
        align.text[offset:end],
        [s - offset for s in align.starts[begin : begin + length]],
        [e - offset for e in align.ends[begin : begin + length]],
    )


@register_termination("within")
class Within(Combinator):
    """Apply ``inner`` inside each segment of ``outer`` (restarting at every outer boundary).

    :param outer: the outer termination or its spec (e.g. ``"turn"``).
    :param inner: the inner termination or its spec (e.g. ``"ngram:5"``).
    """

    def __init__(self, outer: Termination | str, inner: Termination | str) -> None:
        for name, value in (("outer", outer), ("inner", inner)):
            if not isinstance(value, Termination | str):
                raise TypeError(
                    f"within: {name}={value!r} must be a Termination or a spec string, e.g. "
                    "Within('turn', 'ngram:5') or 'turn > ngram:5'"
                )
        super().__init__([outer, inner])

    @property
    def outer(self) -> Termination:
        return self.parts[0]

    @property
    def inner(self) -> Termination:
        return self.parts[1]

    def config_kwargs(self) -> dict[str, Any]:
        return {"outer": self.outer, "inner": self.inner}

    @staticmethod
    def parse_spec_args(rest: str) -> tuple[list[Any], dict[str, Any]]:
        """``"OUTER|INNER"`` or ``"OUTER > INNER"`` -> ``([OUTER, INNER], {})``."""
        nested = split_nesting(rest)
        parts = [_unwrap(p) for p in nested] if nested is not None else split_top_level(rest)
        if len(parts) != 2 or not all(parts):
            raise ValueError(
                f"within spec {rest!r}: expected OUTER|INNER, e.g. within:turn|ngram:5 "
                "(or turn > ngram:5)"
            )
        return parts, {}

    @property
    def spec(self) -> str:
        outer = self.outer.spec
        return f"({outer}) > {self.inner.spec}" if ">" in outer else f"{outer} > {self.inner.spec}"

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        mask = batch.mask
        outer = _part_starts(self.outer, batch)
        if mask.shape[1] == 0:
            return outer
        outer[:, 0] |= mask[:, 0]
        lengths = segment_lengths(outer, mask)  # [B, S]
        rows, segs = (lengths > 0).nonzero(as_tuple=True)
        if rows.numel() == 0:
            return outer
        # First column of every outer segment, then each segment as a row of its own.
        first = torch.zeros_like(lengths)
        b_idx, cols = outer.nonzero(as_tuple=True)
        first[b_idx, segment_ids(outer, mask)[b_idx, cols]] = cols
        seg_len = lengths[rows, segs]
        width = int(seg_len.max())
        offsets = torch.arange(width, device=mask.device)[None, :]
        index = (first[rows, segs][:, None] + offsets).clamp(max=mask.shape[1] - 1)
        sub_mask = offsets < seg_len[:, None]
        sub = SegmentationBatch(
            response_ids=batch.response_ids[rows[:, None], index],
            mask=sub_mask,
            generator=batch.generator,
        )
        for name in ("logprobs", "ref_logprobs"):
            value = getattr(batch, name)
            if value is not None:
                setattr(sub, name, value[rows[:, None], index])
        if batch.alignments is not None:
            sub.alignments = [
                _slice_alignment(batch.alignments[b], c, n)
                for b, c, n in zip(
                    rows.tolist(), first[rows, segs].tolist(), seg_len.tolist(), strict=True
                )
            ]
        inner = _part_starts(self.inner, sub)
        self._sync_stats()
        out = outer.clone()
        keep = sub_mask
        out[rows[:, None].expand_as(index)[keep], index[keep]] |= inner[keep]
        return out
