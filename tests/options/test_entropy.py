"""The entropy termination and the cut budget every scored termination shares."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marlhf.options import (
    Cap,
    CutBudget,
    ScoredTermination,
    SegmentationBatch,
    compute_starts,
    make_termination,
    segment_lengths,
)

PROPERTY = settings(deadline=None, max_examples=40)


def batch_of(entropy: list[list[float]], lengths: list[int]) -> SegmentationBatch:
    width = len(entropy[0])
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    ids = torch.where(mask, 3, 0)
    ent = torch.tensor(entropy)
    return SegmentationBatch.build(
        ids, mask, frozenset({"entropy", "logprobs"}), entropy=ent, logprobs=-ent
    )


def reference_cuts(scores: list[float], length: int, k: int) -> set[int]:
    """The ``k`` best candidates (positions 1..length-2), ties to the earlier position."""
    cand = sorted(range(1, max(length - 1, 1)), key=lambda t: (-scores[t], t))
    return set(cand[:k])


@PROPERTY
@given(
    data=st.data(),
    width=st.integers(0, 20),
    rows=st.integers(1, 4),
    k=st.integers(1, 6),
)
def test_budget_keeps_the_k_highest_entropy_candidates(
    data: st.DataObject, width: int, rows: int, k: int
) -> None:
    lengths = data.draw(st.lists(st.integers(0, width), min_size=rows, max_size=rows))
    ent = [
        data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=width, max_size=width))
        for _ in range(rows)
    ]
    if width == 0:
        ent = [[] for _ in range(rows)]
    batch = batch_of(ent, lengths) if width else None
    if batch is None:
        return
    starts = compute_starts(make_termination(f"entropy:budget={k}"), batch)
    for b, n in enumerate(lengths):
        got = {t for t in range(1, n) if starts[b, t]}
        assert got == reference_cuts(ent[b], n, k)
        assert len(got) == min(k, max(n - 2, 0))  # exactly k when there are enough candidates


def test_threshold_and_top_q_filter_candidates() -> None:
    ent = [[9.0, 0.1, 3.0, 0.2, 2.5, 0.3, 4.0, 9.0]]
    batch = batch_of(ent, [8])
    cuts = compute_starts(make_termination("entropy:threshold=2.0"), batch)
    assert cuts[0].nonzero().flatten().tolist() == [0, 2, 4, 6]  # first token always starts
    capped = compute_starts(make_termination("entropy:threshold=2.0;budget=2"), batch)
    assert capped[0].nonzero().flatten().tolist() == [0, 2, 6]
    top = compute_starts(make_termination("entropy:q=0.25"), batch)  # ceil(0.25 * 8) = 2 cuts
    assert top[0].nonzero().flatten().tolist() == [0, 2, 6]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_length_gives_as_many_segments_as_ngram(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    lengths = [0, 1, 2, 5, 9, 16]
    ent = torch.rand(len(lengths), 16, generator=gen).tolist()
    batch = batch_of(ent, lengths)
    mask = batch.mask
    ours = compute_starts(make_termination(f"entropy:length={n}"), batch)
    ngram = compute_starts(make_termination(f"ngram:{n}"), batch)
    assert torch.equal(ours.sum(dim=1), ngram.sum(dim=1).clamp(max=(mask.sum(1) - 1).clamp(min=1)))
    assert torch.equal(segment_lengths(ours, mask).sum(dim=1), mask.sum(dim=1))


def test_same_budget_same_segment_count_across_rules() -> None:
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(4, 20, dtype=torch.bool)
    ids = torch.randint(2, 9, (4, 20), generator=gen)
    lp = -torch.rand(4, 20, generator=gen) * 3
    batch = SegmentationBatch.build(
        ids,
        mask,
        frozenset({"logprobs", "entropy", "values", "generator"}),
        logprobs=lp,
        entropy=-lp,
        values=lp.cumsum(1),
        generator=gen,
    )
    counts = set()
    for rule in ("entropy", "value_change", "even", "random_cuts", "surprisal", "learned"):
        starts = compute_starts(make_termination(f"{rule}:budget=3"), batch, isolate_last=True)
        counts.add(tuple(starts.sum(dim=1).tolist()))
    assert counts == {(5, 5, 5, 5)}  # first token + 3 cuts + the isolated last token


def test_even_spaces_its_cuts() -> None:
    batch = batch_of([[0.0] * 13], [13])
    starts = compute_starts(make_termination("even:budget=3"), batch)
    assert starts[0].nonzero().flatten().tolist() == [0, 3, 6, 9]


def test_surprisal_with_a_threshold_is_lowprob() -> None:
    gen = torch.Generator().manual_seed(1)
    lp = torch.log(torch.rand(3, 12, generator=gen))
    mask = torch.ones(3, 12, dtype=torch.bool)
    batch = SegmentationBatch.build(
        torch.ones(3, 12).long(), mask, frozenset({"logprobs"}), logprobs=lp
    )
    ours = compute_starts(make_termination(f"surprisal:threshold={-math.log(0.5)}"), batch)
    theirs = compute_starts(make_termination("lowprob:p=0.5"), batch)
    assert torch.equal(ours[:, :-1], theirs[:, :-1])  # the last token is never a candidate


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("entropy:budget=0", r"entropy: budget=0 must be >= 1"),
        ("entropy:budget=-2", r"entropy: budget=-2 must be >= 1"),
        ("entropy:budget=2.5", r"entropy: budget=2\.5 must be an integer"),
        ("entropy:budget=2;length=3", r"entropy: give budget=2 or length=3"),
        ("entropy:length=0.5", r"entropy: length=0\.5 must be a mean segment length >= 1"),
        ("entropy:q=0", r"entropy: q=0 must be a fraction in \(0, 1\]"),
        ("entropy:q=1.5", r"entropy: q=1\.5 must be a fraction"),
        ("entropy:threshold=x", r"entropy: threshold='x' must be a number"),
        ("value_change:budget=0", r"value_change: budget=0 must be >= 1"),
        ("learned:budget=0", r"learned: budget=0 must be >= 1"),
        ("learned:target=truth", r"learned: target='truth' is not one of"),
    ],
)
def test_bad_budgets_name_the_field(spec: str, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make_termination(spec)


def test_budget_above_the_horizon_is_an_error() -> None:
    term = make_termination("entropy:budget=40")
    assert isinstance(term, ScoredTermination)
    with pytest.raises(ValueError, match=r"entropy: budget=40 cuts exceeds the horizon \(32"):
        term.check_horizon(32)
    term.check_horizon(40)
    CutBudget("x", length=100.0).check_horizon(4)  # a length is no count: any is fine


def test_missing_entropy_is_a_clear_error() -> None:
    mask = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="'entropy' is required but None"):
        SegmentationBatch.build(torch.ones(1, 4).long(), mask, frozenset({"entropy"}))
    term = make_termination("entropy")
    with pytest.raises(ValueError, match=r"entropy: batch\.entropy is None"):
        term.starts(SegmentationBatch(torch.ones(1, 4).long(), mask))


@pytest.mark.parametrize(
    "spec",
    ["entropy", "entropy:budget=3", "entropy:threshold=1.5;budget=2", "entropy:length=4.0",
     "entropy:q=0.2", "even:budget=2", "random_cuts:length=5.0", "surprisal:budget=1"],
)  # fmt: skip
def test_specs_round_trip(spec: str) -> None:
    term = make_termination(spec)
    again = make_termination(term.spec)
    assert again.spec == term.spec
    assert again.config_kwargs() == term.config_kwargs()


def test_cap_keeps_an_evenly_spread_subset_of_any_rule() -> None:
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 9:] = False
    batch = SegmentationBatch(torch.ones(2, 20).long(), mask)
    inner = compute_starts(make_termination("ngram:2"), batch)  # cuts at 2, 4, ..., 18
    capped = compute_starts(make_termination("cap:3|ngram:2"), batch)
    # of its 9 cuts, those numbered round(j * 10 / 4) = 2, 5, 8 (halves to even)
    assert capped[0].nonzero().flatten().tolist() == [0, 4, 10, 16]
    assert bool((capped <= inner).all())  # a subset of the rule's own starts
    assert capped[1].nonzero().flatten().tolist() == [0, 2, 4, 6]  # 3 cuts of 3: all kept
    term = make_termination("cap:3|union:ngram:2|punctuation")
    assert term.spec.startswith("cap:3|union:ngram:2|punctuation")
    assert make_termination(term.spec).spec == term.spec
    with pytest.raises(ValueError, match=r"cap: budget=0 must be >= 1"):
        make_termination("cap:0|ngram:2")
    with pytest.raises(ValueError, match=r"cap spec '2': expected K\|SPEC"):
        make_termination("cap:2")
    big = make_termination("cap:9|ngram:2")
    assert isinstance(big, Cap)
    with pytest.raises(ValueError, match=r"cap: budget=9 cuts exceeds the horizon \(8"):
        big.check_horizon(8)
