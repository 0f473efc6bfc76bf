"""The ``turn`` termination and nesting (``A > B``): macros restart at every outer boundary."""

from __future__ import annotations

import itertools

import torch

from marlhf.options import (
    SegmentationBatch,
    Turn,
    Within,
    build_termination,
    compute_starts,
    make_termination,
    termination_config,
)
from marlhf.tokenization import SymbolCodec

CODEC = SymbolCodec(["a", "b", ".", " "])


def _batch(lengths: list[int], turns: list[list[int]], width: int = 12) -> SegmentationBatch:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, CODEC.vocab_size, (len(lengths), width), generator=gen)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    turn_starts = torch.zeros_like(mask)
    for row, cols in enumerate(turns):
        turn_starts[row, cols] = True
    logp = -torch.rand(len(lengths), width, generator=gen)
    return SegmentationBatch.build(
        ids,
        mask,
        frozenset({"text", "logprobs", "ref_logprobs"}),
        codec=CODEC,
        logprobs=logp,
        ref_logprobs=logp,
        turn_starts=turn_starts,
    )


def _reference(batch: SegmentationBatch, inner: str) -> torch.Tensor:
    """Run ``inner`` on each turn as a batch of its own; put the cuts back."""
    out = torch.zeros_like(batch.mask)
    assert batch.turn_starts is not None
    for row in range(batch.mask.shape[0]):
        n = int(batch.mask[row].sum())
        cols = [*batch.turn_starts[row, :n].nonzero().flatten().tolist(), n]
        for begin, end in itertools.pairwise(cols):
            piece = SegmentationBatch.build(
                batch.response_ids[row : row + 1, begin:end],
                torch.ones(1, end - begin, dtype=torch.bool),
                frozenset({"text", "logprobs", "ref_logprobs"}),
                codec=CODEC,
                logprobs=batch.logprobs[row : row + 1, begin:end],  # type: ignore[index]
                ref_logprobs=batch.logprobs[row : row + 1, begin:end],  # type: ignore[index]
            )
            out[row, begin:end] = compute_starts(make_termination(inner), piece)[0]
    return out


def test_turn_cuts_at_turn_starts_and_is_one_macro_without_turns() -> None:
    batch = _batch([7, 4, 0], [[0, 3, 5], [0, 1], []])
    starts = compute_starts(Turn(), batch)
    assert starts.tolist() == (batch.turn_starts & batch.mask).tolist()  # type: ignore[operator]
    batch.turn_starts = None
    assert compute_starts(Turn(), batch).long().sum(dim=1).tolist() == [1, 1, 0]


def test_nested_ngram_restarts_at_every_turn() -> None:
    batch = _batch([7, 4], [[0, 3, 5], [0, 1]])
    starts = compute_starts(make_termination("turn > ngram:2"), batch)
    expected = [[1, 0, 1, 1, 0, 1, 0], [1, 1, 0, 1]]
    for row, want in enumerate(expected):
        assert starts[row, : len(want)].long().tolist() == want


def test_nesting_matches_running_the_inner_rule_turn_by_turn() -> None:
    batch = _batch([12, 9, 5, 1], [[0, 4, 5, 10], [0, 2], [0], [0]])
    for inner in ("ngram:3", "punctuation", "perplexity", "union:ngram:2|punctuation"):
        got = compute_starts(make_termination(f"turn > {inner}"), batch)
        assert torch.equal(got, _reference(batch, inner)), inner


def test_a_macro_never_crosses_a_turn() -> None:
    batch = _batch([12, 9], [[0, 4, 5, 10], [0, 2]])
    starts = compute_starts(make_termination("turn > ngram:inf"), batch)
    assert torch.equal(starts, batch.turn_starts & batch.mask)  # type: ignore[operator]


def test_specs_and_checkpoint_config_round_trip() -> None:
    term = make_termination("turn > (ngram:5 > punctuation)")
    assert isinstance(term, Within) and isinstance(term.inner, Within)
    assert make_termination(term.spec).spec == term.spec
    assert make_termination("within:turn|ngram:4").spec == "turn > ngram:4"
    rebuilt = build_termination(termination_config(term))
    assert rebuilt.spec == term.spec
