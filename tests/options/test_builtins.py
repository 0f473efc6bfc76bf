"""Concrete behaviour of the built-in terminations and combinators, and the released-code
defects marlhf must not repeat (docs/method.md)."""

from __future__ import annotations

import math

import pytest
import torch

from marlhf.options import (
    MaxLength,
    MinLength,
    NGram,
    Perplexity,
    Punctuation,
    RandomNGram,
    SegmentationBatch,
    Termination,
    Union,
    compute_starts,
    make_termination,
    segment_lengths,
)
from marlhf.tokenization import TokenCodec
from tests.options.strategies import CODEC, row_segments


def batch_of(lengths: list[int], width: int | None = None, **kwargs: object) -> SegmentationBatch:
    width = max(lengths) if width is None else width
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    ids = torch.where(mask, 2, 0)
    return SegmentationBatch(response_ids=ids, mask=mask, **kwargs)  # type: ignore[arg-type]


def segments(starts: torch.Tensor, mask: torch.Tensor) -> list[list[list[int]]]:
    return [row_segments(starts[b].tolist(), int(n)) for b, n in enumerate(mask.sum(1))]


def text_segments(codec: TokenCodec, texts: list[str], term: Termination) -> list[list[str]]:
    rows = [codec.encode(t) for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [codec.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[i < len(r) for i in range(width)] for r in rows])
    batch = SegmentationBatch.build(ids, mask, term.requires, codec=codec)
    starts = compute_starts(term, batch)
    assert batch.alignments is not None
    out = []
    for b, align in enumerate(batch.alignments):
        segs = row_segments(starts[b].tolist(), len(rows[b]))
        out.append([align.text[align.starts[s[0]] : align.ends[s[-1]]] for s in segs])
    return out


# --- released-code defects ----------------------------------------------------------------


def test_ngram_1_is_token_level_without_empty_segments() -> None:
    batch = batch_of([7, 3, 1, 0], width=8)
    for isolate_last in (False, True):
        starts = compute_starts(NGram(1), batch, isolate_last=isolate_last)
        assert torch.equal(starts, batch.mask)  # every real token is its own macro
        lengths = segment_lengths(starts, batch.mask)
        assert lengths.sum(1).tolist() == [7, 3, 1, 0]
        assert ((lengths == 1) | (lengths == 0)).all()  # count == length, none empty


def test_each_row_gets_its_own_boundaries() -> None:
    # Released code: boundaries of row 0 applied to all rows. Here row 1 is shorter.
    batch = batch_of([10, 4, 6])
    starts = compute_starts(NGram(3), batch, isolate_last=True)
    assert segments(starts, batch.mask) == [
        [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]],
        [[0, 1, 2], [3]],
        [[0, 1, 2], [3, 4], [5]],
    ]


def test_last_token_isolated_when_asked() -> None:
    batch = batch_of([5, 6, 1])
    for term in (NGram(math.inf), NGram(4), MinLength(NGram(1), 3)):
        starts = compute_starts(term, batch, isolate_last=True)
        for row, n in zip(segments(starts, batch.mask), (5, 6, 1), strict=True):
            assert row[-1] == [n - 1]
    plain = compute_starts(NGram(math.inf), batch)
    assert not plain[0, 4]  # without isolate_last the rule decides


# --- n-grams --------------------------------------------------------------------------------


def test_ngram_inf_is_one_segment() -> None:
    batch = batch_of([9, 2])
    starts = compute_starts(make_termination("ngram:inf"), batch)
    assert segments(starts, batch.mask) == [[list(range(9))], [[0, 1]]]


def test_random_ngram_is_seeded_and_per_row() -> None:
    term = RandomNGram()
    lengths = [200] * 16

    def draw(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return compute_starts(term, batch_of(lengths, generator=gen))

    first, again, other = draw(0), draw(0), draw(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert len({tuple(r) for r in first.tolist()}) > 1  # rows are shuffled independently
    # 15 drawn lengths sum to 63 < 200: the remainder is one macro.
    for row in segments(first, batch_of(lengths).mask):
        assert len(row) == 16
        assert sorted(len(s) for s in row[:-1]) == sorted([1, 2, 3, 5, 10] * 3)
        assert len(row[-1]) == 200 - 63


def test_random_ngram_needs_a_generator() -> None:
    with pytest.raises(ValueError, match="generator"):
        compute_starts(RandomNGram(), batch_of([4]))


# --- perplexity -------------------------------------------------------------------------------

WORKED_PPL = [5, 4, 3, 3.5, 2, 1.5, 1.8, 1, 0.9, 1.2]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("paper", [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]),
        ("consecutive", [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]),
        ("released", [[0, 1], [2, 3, 4], [5, 6, 7], [8], [9]]),
        # No token's nll exceeds the running mean of a macro that started at ppl 5.
        ("macro", [[0, 1, 2, 3, 4, 5, 6, 7, 8], [9]]),
    ],
)
def test_perplexity_worked_example(rule: str, expected: list[list[int]]) -> None:
    ref = -torch.log(torch.tensor([[*WORKED_PPL, 7.0, 7.0]]))  # two pads of garbage
    batch = batch_of([10], width=12, ref_logprobs=ref)
    starts = compute_starts(make_termination(f"perplexity:rule={rule}"), batch, isolate_last=True)
    assert segments(starts, batch.mask) == [expected]


def test_perplexity_macro_rule_compares_the_macro_with_and_without_the_token() -> None:
    # ppl [1, 1, 5, 1, 2]: token 2 raises the macro's perplexity (cut); token 3 (ppl 1) lowers
    # the new macro's {5}; token 4 (ppl 2) is below that macro's geometric mean sqrt(5).
    ref = -torch.log(torch.tensor([[1.0, 1.0, 5.0, 1.0, 2.0]]))
    batch = batch_of([5], width=5, ref_logprobs=ref)
    starts = compute_starts(Perplexity("macro"), batch)
    assert segments(starts, batch.mask) == [[[0, 1], [2, 3, 4]]]
    # The consecutive rule cuts at every rise instead (5 > 1 and 2 > 1).
    starts = compute_starts(Perplexity("consecutive"), batch)
    assert segments(starts, batch.mask) == [[[0, 1], [2, 3], [4]]]


def test_perplexity_rules_without_isolate_last() -> None:
    # A rising perplexity on the padding must not cut before the last real token.
    ref = -torch.log(torch.tensor([[*WORKED_PPL, 7.0]]))
    batch = batch_of([10], width=11, ref_logprobs=ref)
    paper = compute_starts(Perplexity("paper"), batch)
    released = compute_starts(Perplexity("released"), batch)
    assert segments(paper, batch.mask) == [[[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]]
    # The released code's extra {9} came from its always-isolated last token.
    assert segments(released, batch.mask) == [[[0, 1], [2, 3, 4], [5, 6, 7], [8, 9]]]


def test_perplexity_rejects_nan_and_missing_logprobs() -> None:
    ref = torch.tensor([[-1.0, float("nan"), -2.0]])
    with pytest.raises(ValueError, match="NaN at row 0, token 1"):
        compute_starts(Perplexity(), batch_of([3], ref_logprobs=ref))
    with pytest.raises(ValueError, match="ref_logprobs is None"):
        compute_starts(Perplexity(), batch_of([3]))
    with pytest.raises(ValueError, match="shape"):
        compute_starts(Perplexity(), batch_of([3], ref_logprobs=torch.zeros(1, 4)))


# --- punctuation ------------------------------------------------------------------------------


def test_punctuation_on_symbol_tokens() -> None:
    texts = ["the cat sat. the mat, on\nthe cat", "def f(x):\n return 3.3!", "the cat"]
    got = text_segments(CODEC, texts, Punctuation())
    assert got == [
        ["the cat sat.", " the mat,", " on\n", "the cat"],
        ["def f(x):\n", " return 3.3!"],
        ["the cat"],
    ]
    sentence = text_segments(CODEC, texts[:1], make_termination("punctuation:level=sentence"))
    assert sentence == [["the cat sat.", " the mat, on\n", "the cat"]]
    no_newline = text_segments(CODEC, texts[:1], Punctuation("sentence", newline=False))
    assert no_newline == [["the cat sat.", " the mat, on\nthe cat"]]


def test_punctuation_on_bpe_tokens(bpe_codec: TokenCodec) -> None:
    text = 'Hello world. This is, "quoted." Done!\n\nNext line 3.14 stays\nend'
    (got,) = text_segments(bpe_codec, [text], Punctuation())
    assert "".join(got) == text
    assert got == [
        "Hello world.",
        " This is,",
        ' "quoted."',
        " Done!\n\n",
        "Next line 3.14 stays\n",
        "end",
    ]


def test_punctuation_maps_split_characters_to_the_completing_token(bpe_codec: TokenCodec) -> None:
    # "é" is two UTF-8 bytes and this byte-level BPE splits it: the first byte's token has an
    # empty character span. Cuts still fall after the token holding the punctuation.
    text = "é. é!é"
    ids = bpe_codec.encode(text)
    assert len(ids) > len(text)  # the split really happens
    assert text_segments(bpe_codec, [text], Punctuation()) == [["é.", " é!é"]]


# --- combinators ------------------------------------------------------------------------------


def test_union_min_max_on_known_boundaries() -> None:
    batch = batch_of([12])
    union = compute_starts(Union([NGram(5), NGram(4)]), batch)
    assert segments(union, batch.mask) == [[[0, 1, 2, 3], [4], [5, 6, 7], [8, 9], [10, 11]]]
    short = compute_starts(MinLength(Union(["ngram:5", "ngram:4"]), 3), batch)
    assert segments(short, batch.mask) == [[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]]
    long = compute_starts(MaxLength("ngram:inf", 5), batch)
    assert segments(long, batch.mask) == [[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]]
    split = compute_starts(make_termination("max_length:3|ngram:5"), batch)
    assert segments(split, batch.mask) == [[[0, 1, 2], [3, 4], [5, 6, 7], [8, 9], [10, 11]]]


def test_min_length_counts_from_the_first_token() -> None:
    class OnlyAtTwo(Termination):
        def starts(self, batch: SegmentationBatch) -> torch.Tensor:
            out = torch.zeros_like(batch.mask)
            out[:, 2] = True
            return out & batch.mask

    batch = batch_of([6])
    starts = compute_starts(MinLength(OnlyAtTwo(), 3), batch)
    assert segments(starts, batch.mask) == [[list(range(6))]]  # 2 < 3 tokens since column 0


def test_combinator_requires_and_fallbacks_come_from_parts() -> None:
    class Failing(Termination):
        requires = frozenset({"logprobs"})

        def starts(self, batch: SegmentationBatch) -> torch.Tensor:
            self.stats.fallbacks += 2
            self.stats.extra["errors"] = self.stats.extra.get("errors", 0) + 1
            return batch.mask.clone()

    union = Union([Failing(), "punctuation", "random_ngram"])
    assert union.requires == {"logprobs", "text", "generator"}
    assert MaxLength(Failing(), 2).requires == {"logprobs"}
    batch = SegmentationBatch.build(
        torch.tensor([CODEC.encode("the cat.")]),
        torch.ones(1, 3, dtype=torch.bool),
        union.requires,
        codec=CODEC,
        logprobs=torch.zeros(1, 3),
    )
    compute_starts(union, batch)
    compute_starts(union, batch)
    assert union.stats.fallbacks == 4
    assert union.stats.extra == {"errors": 2}
    assert union.parts[1].stats.calls == 2
