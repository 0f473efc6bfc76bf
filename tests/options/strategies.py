"""Random ragged batches for the options tests, and pure-Python per-sample references."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from marlhf.options import SegmentationBatch, Termination
from marlhf.tokenization import SymbolCodec

# Words, punctuation, whitespace and a few code-like pieces (so text rules have work to do).
SYMBOLS = [
    "the",
    " cat",
    " sat",
    " on",
    " mat",
    ".",
    ",",
    "!",
    "?",
    ";",
    ":",
    " ",
    "\n",
    '"',
    "def",
    " f",
    "(",
    ")",
    " return",
    " x",
    "x",
    "3",
    "é",
]
CODEC = SymbolCodec(SYMBOLS)

# Specs that build each registered name with its defaults; names not listed build from the
# bare name. Extra specs exercise non-default arguments and nesting.
DEFAULT_SPECS = {
    "treesitter": "treesitter:python",
    "union": "union:ngram:3|punctuation",
    "min_length": "min_length:3|punctuation",
    "max_length": "max_length:4|perplexity",
    "cap": "cap:2|punctuation",
    "within": "ngram:5 > punctuation",
}
EXTRA_SPECS = [
    "ngram:1",
    "ngram:2",
    "ngram:inf",
    "random_ngram:sizes=1,4;repeat=2",
    "perplexity:rule=released",
    "punctuation:level=sentence;newline=false",
    "union:(max_length:2|ngram:inf)|random_ngram|perplexity",
    "min_length:2|union:ngram:1|punctuation",
    "max_length:3|min_length:2|perplexity:released",
    "cap:1|union:ngram:2|punctuation",
    "entropy:q=0.3",
    "value_change:threshold=0.5;budget=2",
    "learned:length=3.0",
    "turn > ngram:2",
    "within:(union:ngram:3|punctuation)|perplexity",
]


@dataclass
class RaggedBatch:
    """Response ids (right-padded), mask, per-token floats and a seed."""

    ids: torch.Tensor
    mask: torch.Tensor
    values: torch.Tensor
    seed: int

    def build(self, termination: Termination) -> SegmentationBatch:
        gen = torch.Generator().manual_seed(self.seed)
        return SegmentationBatch.build(
            self.ids,
            self.mask,
            termination.requires,
            codec=CODEC,
            logprobs=self.values,
            ref_logprobs=self.values,
            generator=gen,
            entropy=-self.values,
            values=self.values,
        )


@st.composite
def ragged_batches(draw: st.DrawFn, max_rows: int = 5, max_len: int = 24) -> RaggedBatch:
    """B rows of random length (0 allowed) in a width-T batch; ids cover the codec's symbols."""
    b = draw(st.integers(1, max_rows))
    t = draw(st.integers(0, max_len))
    lengths = draw(st.lists(st.integers(0, t), min_size=b, max_size=b))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, CODEC.vocab_size, (b, t), generator=gen)
    cols = torch.arange(t)
    mask = cols[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]
    ids = torch.where(mask, ids, torch.full_like(ids, CODEC.pad_token_id))
    # Log-probs with frequent ties (rounded) so tie-handling is exercised.
    values = -(torch.rand(b, t, generator=gen) * 4).round(decimals=1)
    return RaggedBatch(ids=ids, mask=mask, values=values, seed=seed)


def row_segments(starts_row: list[bool], n: int) -> list[list[int]]:
    """Token indices of each segment of one row with ``n`` real tokens."""
    segs: list[list[int]] = []
    for t in range(n):
        if starts_row[t] or not segs:
            segs.append([])
        segs[-1].append(t)
    return segs


def reference_reduce(values: list[float], segs: list[list[int]], how: str) -> list[float]:
    """Per-sample reference of ``segment_reduce``."""
    out = []
    for seg in segs:
        vals = [values[t] for t in seg]
        if how == "sum":
            out.append(sum(vals))
        elif how == "mean":
            out.append(sum(vals) / len(vals))
        elif how == "first":
            out.append(vals[0])
        elif how == "last":
            out.append(vals[-1])
        else:
            weights = [1.0 / (k + 1) for k in range(len(vals))]
            out.append(sum(w * v for w, v in zip(weights, vals, strict=True)) / sum(weights))
    return out
