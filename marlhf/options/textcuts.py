"""Helpers shared by the text-based terminations (``parse`` for prose, ``treesitter`` for code).

- mapping character and byte offsets of a decoded response to token indices through the batch's
  :class:`~marlhf.tokenization.TokenAlignment` (:func:`char_to_token`, :func:`byte_to_token`);
- reading a batch's alignments checked against its lengths (:func:`text_rows`);
- MA-RLHF's depth-first cut with the leftover merge rule (:func:`merge_leftovers`), whose events
  (``UNIT``, ``MACRO``, ``LEFTOVER``, ``LEADING``) both parsers emit.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from marlhf.options.base import SegmentationBatch
from marlhf.tokenization import TokenAlignment

__all__ = [
    "LEADING",
    "LEFTOVER",
    "MACRO",
    "SUBTREE",
    "UNIT",
    "byte_to_token",
    "char_to_token",
    "merge_leftovers",
    "text_rows",
]


def char_to_token(alignment: TokenAlignment) -> np.ndarray:
    """``int64[len(text)]``: the token holding each character of ``alignment.text``."""
    lens = np.subtract(alignment.ends, alignment.starts)
    return np.repeat(np.arange(len(lens), dtype=np.int64), lens)


def byte_to_token(alignment: TokenAlignment, data: bytes) -> list[int]:
    """The token holding each byte of ``data`` (the UTF-8 encoding of ``alignment.text``).

    Every byte of a multi-byte character maps to the token that holds the character.
    """
    c2t = char_to_token(alignment)
    if len(data) == len(c2t):  # ASCII: bytes are characters
        return list(c2t.tolist())
    raw = np.frombuffer(data, dtype=np.uint8)
    byte_char = np.cumsum((raw & 0xC0) != 0x80) - 1  # continuation bytes stay on their char
    return list(c2t[byte_char].tolist())


def text_rows(batch: SegmentationBatch, spec: str) -> tuple[list[TokenAlignment], list[int]]:
    """The batch's alignments and real lengths, checked against each other (for ``spec``)."""
    if batch.alignments is None:
        raise ValueError(f"{spec}: batch.alignments is None; this termination requires 'text'")
    lengths = batch.lengths.tolist()
    if len(batch.alignments) != len(lengths):
        raise ValueError(f"{spec}: {len(batch.alignments)} alignments for {len(lengths)} rows")
    for b, (alignment, n) in enumerate(zip(batch.alignments, lengths, strict=True)):
        if len(alignment.starts) != n:
            raise ValueError(
                f"{spec}: row {b} has {n} real tokens but its alignment has {len(alignment.starts)}"
            )
    return batch.alignments, lengths


# Events of a depth-first cut, in text order (see merge_leftovers); SUBTREE marks work to do.
UNIT, MACRO, LEFTOVER, LEADING, SUBTREE = 0, 1, 2, 3, -1


def merge_leftovers(events: Iterable[tuple[int, int]]) -> set[int]:
    """Boundaries from a depth-first cut, applying the leftover merge rule.

    ``events`` come in text order as ``(kind, token)``: ``UNIT`` opens a sentence or statement
    (it only resets the state: its first piece opens a macro), ``MACRO`` begins a piece that is
    one macro, ``LEFTOVER`` is a single-word (single-token) piece, ``LEADING`` a leftover that
    comes first in its parent (a head word before its dependents, a keyword opening its
    statement, an opening bracket). A leftover joins the previous macro (MA-RLHF's rule). A
    leading leftover opens a macro that the next piece joins instead, so ``for`` stays with its
    target and ``the`` with its noun; a leading leftover right after another joins it, and a
    plain leftover ends the joining, so leftovers never chain a whole sentence into one macro.
    """
    out: set[int] = set()
    have_macro = glue = False
    for kind, token in events:
        if kind == UNIT:
            have_macro = glue = False
            continue
        if kind == MACRO or (kind == LEADING and not glue) or not have_macro:
            if not glue:
                out.add(token)
            glue = kind != MACRO
        else:
            glue = glue and kind == LEADING
        have_macro = True
    return out
