"""Property tests over random ragged batches: every termination is valid, segment utilities
match a per-sample pure-Python reference."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marlhf.options import (
    REDUCTIONS,
    available_terminations,
    broadcast_to_tokens,
    compute_starts,
    make_termination,
    num_segments,
    segment_ids,
    segment_lengths,
    segment_mask,
    segment_reduce,
)
from tests.extras import spec_param
from tests.options.strategies import (
    DEFAULT_SPECS,
    EXTRA_SPECS,
    RaggedBatch,
    ragged_batches,
    reference_reduce,
    row_segments,
)

PROPERTY = settings(deadline=None, max_examples=25)


def all_specs() -> list[Any]:
    specs = [DEFAULT_SPECS.get(n, n) for n in available_terminations()] + EXTRA_SPECS
    return [spec_param(s) for s in specs]


def test_every_builtin_is_registered() -> None:
    names = set(available_terminations())
    expected = {"ngram", "random_ngram", "perplexity", "punctuation"}
    assert expected | {"union", "min_length", "max_length"} <= names


@pytest.mark.parametrize("spec", all_specs())
@PROPERTY
@given(batch=ragged_batches(), isolate_last=st.booleans())
def test_every_termination_is_valid(spec: str, batch: RaggedBatch, isolate_last: bool) -> None:
    term = make_termination(spec)
    starts = compute_starts(term, batch.build(term), isolate_last=isolate_last)  # validates
    lengths = batch.mask.sum(1)
    seg_len = segment_lengths(starts, batch.mask)
    assert torch.equal(seg_len.sum(1), lengths)  # lengths sum to the response
    assert bool(((seg_len > 0) == segment_mask(starts, batch.mask)).all())  # none empty
    # The rule's own output (before normalisation) is deterministic for a fixed seed.
    again = compute_starts(term, batch.build(term), isolate_last=isolate_last)
    assert torch.equal(starts, again)


@PROPERTY
@given(batch=ragged_batches(), n=st.one_of(st.integers(1, 12), st.just(math.inf)))
def test_ngram_matches_reference(batch: RaggedBatch, n: int | float) -> None:
    term = make_termination(f"ngram:{n}")
    starts = compute_starts(term, batch.build(term))
    for b, length in enumerate(batch.mask.sum(1).tolist()):
        expected = [t == 0 if math.isinf(n) else t % int(n) == 0 for t in range(length)]
        assert starts[b, :length].tolist() == expected
        assert not starts[b, length:].any()


@PROPERTY
@given(batch=ragged_batches(), rule=st.sampled_from(["paper", "released"]))
def test_perplexity_matches_reference(batch: RaggedBatch, rule: str) -> None:
    term = make_termination(f"perplexity:rule={rule}")
    starts = compute_starts(term, batch.build(term))
    for b, length in enumerate(batch.mask.sum(1).tolist()):
        ppl = [math.exp(-v) for v in batch.values[b, :length].tolist()]
        rises = {t for t in range(1, length) if ppl[t] > ppl[t - 1]}
        cuts = rises if rule == "paper" else {t - 1 for t in rises}
        expected = [t == 0 or t in cuts for t in range(length)]
        assert starts[b, :length].tolist() == expected


@PROPERTY
@given(batch=ragged_batches(max_len=40))
def test_random_ngram_matches_reference(batch: RaggedBatch) -> None:
    sizes, repeat = (1, 2, 3, 5, 10), 3
    term = make_termination("random_ngram")
    starts = compute_starts(term, batch.build(term))
    pool = [s for s in sizes for _ in range(repeat)]
    gen = torch.Generator().manual_seed(batch.seed)
    orders = torch.argsort(torch.rand(batch.mask.shape[0], len(pool), generator=gen), dim=1)
    for b, length in enumerate(batch.mask.sum(1).tolist()):
        draw = [pool[i] for i in orders[b].tolist()]
        expected_lengths, left = [], length
        for size in draw:
            if left <= 0:
                break
            expected_lengths.append(min(size, left))
            left -= size
        if left > 0:
            expected_lengths.append(left)  # the list is used up: the rest is one macro
        segs = row_segments(starts[b].tolist(), length)
        assert [len(s) for s in segs] == expected_lengths
        assert Counter(len(s) for s in segs[:-1]) <= Counter(pool)


@PROPERTY
@given(batch=ragged_batches(), spec=st.sampled_from(["random_ngram", "perplexity", "ngram:3"]))
def test_segment_utilities_match_reference(batch: RaggedBatch, spec: str) -> None:
    term = make_termination(spec)
    starts = compute_starts(term, batch.build(term), isolate_last=True)
    mask = batch.mask
    values = batch.values.double()
    ids = segment_ids(starts, mask)
    lengths = segment_lengths(starts, mask)
    counts = num_segments(starts, mask)
    reduced = {how: segment_reduce(values, starts, mask, how) for how in REDUCTIONS}  # type: ignore[arg-type]
    seg_values = reduced["mean"]
    tokens = broadcast_to_tokens(seg_values, starts, mask, fill=-7.0)
    for b, length in enumerate(mask.sum(1).tolist()):
        segs = row_segments(starts[b].tolist(), length)
        assert counts[b].item() == len(segs)
        assert lengths[b, : len(segs)].tolist() == [len(s) for s in segs]
        assert not lengths[b, len(segs) :].any()
        assert ids[b].tolist() == [k for k, s in enumerate(segs) for _ in s] + [-1] * (
            mask.shape[1] - length
        )
        row_vals = values[b].tolist()
        for how in REDUCTIONS:
            expected = reference_reduce(row_vals, segs, how)
            got = reduced[how][b, : len(segs)].tolist()
            assert got == pytest.approx(expected, abs=1e-9), how
        expected_tokens = [seg_values[b, k].item() for k, s in enumerate(segs) for _ in s]
        assert tokens[b].tolist() == pytest.approx(
            expected_tokens + [-7.0] * (mask.shape[1] - length)
        )


@PROPERTY
@given(
    batch=ragged_batches(max_len=40),
    n=st.integers(1, 6),
    inner=st.sampled_from(["perplexity", "random_ngram:sizes=1,2,7", "ngram:1", "ngram:inf"]),
)
def test_combinator_invariants(batch: RaggedBatch, n: int, inner: str) -> None:
    mask = batch.mask
    base = make_termination(inner)
    cuts = compute_starts(base, batch.build(base))
    short = compute_starts(make_termination(f"min_length:{n}|{inner}"), batch.build(base))
    long = compute_starts(make_termination(f"max_length:{n}|{inner}"), batch.build(base))
    both = make_termination(f"union:{inner}|ngram:{n}")
    union = compute_starts(both, batch.build(both))
    ngram = compute_starts(make_termination(f"ngram:{n}"), batch.build(base))
    assert torch.equal(union, cuts | ngram)
    assert bool((short <= cuts).all()) and bool((cuts <= long).all())
    for b, length in enumerate(mask.sum(1).tolist()):
        short_segs = row_segments(short[b].tolist(), length)
        assert all(len(s) >= n for s in short_segs[:-1])
        # Greedy: a dropped boundary came fewer than n tokens after the last kept one.
        kept = [s[0] for s in short_segs]
        for t in range(length):
            if cuts[b, t] and not short[b, t]:
                assert t - max(k for k in kept if k < t) < n
        long_segs = row_segments(long[b].tolist(), length)
        assert all(len(s) <= n for s in long_segs)
        # Only splits: every max_length segment lies inside one segment of the inner rule.
        inner_id = [k for k, s in enumerate(row_segments(cuts[b].tolist(), length)) for _ in s]
        assert all(len({inner_id[t] for t in s}) == 1 for s in long_segs)
