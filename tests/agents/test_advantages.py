"""GAE over tokens and segments: analytic values, a pure-Python reference, the n=1 identity."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marlhf.credit.advantages import (
    DISCOUNTS,
    REWARD_AGGREGATIONS,
    VALUE_AGGREGATIONS,
    compute_gae,
    explained_variance,
    whiten,
)
from marlhf.options import (
    SegmentationBatch,
    SegmentationError,
    Termination,
    compute_starts,
    lengths_to_starts,
    segment_lengths,
)


def prefix_mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def random_segments(lengths: list[int], gen: torch.Generator, max_len: int = 4) -> list[list[int]]:
    """Per row, random segment lengths in [1, max_len] that sum to the row's length."""
    out = []
    for n in lengths:
        row, left = [], n
        while left > 0:
            k = min(int(torch.randint(1, max_len + 1, (1,), generator=gen)), left)
            row.append(k)
            left -= k
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# Token GAE against closed-form values (as SB3's tests/test_gae.py, with ragged rows)
# ---------------------------------------------------------------------------------------------


def analytic_token_advantage(n: int, t: int, v: float, gamma: float, lam: float) -> float:
    """Reward 1 on the last of n tokens, constant value v, terminal after the last token.

    delta_t = (gamma - 1) v before the last token and 1 - v on it, so
    A_t = (gamma lam)^(n-1-t) (1 - v) + (gamma - 1) v * sum_{k < n-1-t} (gamma lam)^k.
    """
    c, m = gamma * lam, n - 1 - t
    geometric = float(m) if c == 1.0 else (1.0 - c**m) / (1.0 - c)
    return c**m * (1.0 - v) + (gamma - 1.0) * v * geometric


@pytest.mark.parametrize("gamma", [1.0, 0.99])
@pytest.mark.parametrize("gae_lambda", [1.0, 0.95])
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_token_gae_matches_closed_form(gamma: float, gae_lambda: float, value: float) -> None:
    lengths, width = [64, 3, 17, 1, 0], 64
    mask = prefix_mask(lengths, width)
    rewards = torch.zeros(len(lengths), width, dtype=torch.float64)
    for b, n in enumerate(lengths):
        if n:
            rewards[b, n - 1] = 1.0  # the terminal score on the last real token
    values = torch.where(mask, torch.full_like(rewards, value), torch.full_like(rewards, math.nan))
    out = compute_gae(rewards, values, mask, mask, gamma=gamma, gae_lambda=gae_lambda)

    expected = torch.zeros_like(rewards)
    for b, n in enumerate(lengths):
        for t in range(n):
            expected[b, t] = analytic_token_advantage(n, t, value, gamma, gae_lambda)
    torch.testing.assert_close(out.advantages, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        out.returns, torch.where(mask, expected + value, 0.0), rtol=0, atol=1e-12
    )
    assert out.seg_mask.tolist() == mask.tolist()


# ---------------------------------------------------------------------------------------------
# Segment GAE against a per-sample pure-Python reference
# ---------------------------------------------------------------------------------------------


def reference_segment_gae(
    rewards: list[float],
    values: list[float],
    seg_lengths: list[int],
    *,
    gamma: float,
    lam: float,
    reward_agg: str,
    value_agg: str,
    discount: str,
) -> tuple[list[float], list[float]]:
    """One sample, plain floats and loops: per-token advantages and returns."""
    bounds, pos = [], 0
    for n in seg_lengths:
        bounds.append((pos, pos + n))
        pos += n
    seg_r, seg_v = [], []
    for lo, hi in bounds:
        r, v = rewards[lo:hi], values[lo:hi]
        if reward_agg == "sum":
            weights = [gamma**k if discount == "token" else 1.0 for k in range(len(r))]
            seg_r.append(sum(w * x for w, x in zip(weights, r, strict=True)))
        else:
            seg_r.append(sum(r) / len(r))
        if value_agg == "mean":
            seg_v.append(sum(v) / len(v))
        elif value_agg == "first":
            seg_v.append(v[0])
        elif value_agg == "last":
            seg_v.append(v[-1])
        else:
            w = [1.0 / (k + 1) for k in range(len(v))]
            seg_v.append(sum(a * b for a, b in zip(w, v, strict=True)) / sum(w))
    adv = [0.0] * len(bounds)
    next_adv, next_v = 0.0, 0.0  # the episode ends after the last segment
    for tau in reversed(range(len(bounds))):
        d = gamma ** seg_lengths[tau] if discount == "token" else gamma
        delta = seg_r[tau] + d * next_v - seg_v[tau]
        adv[tau] = delta + d * lam * next_adv
        next_adv, next_v = adv[tau], seg_v[tau]
    tok_adv, tok_ret = [], []
    for tau, n in enumerate(seg_lengths):
        tok_adv += [adv[tau]] * n
        tok_ret += [adv[tau] + seg_v[tau]] * n
    return tok_adv, tok_ret


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.95), (0.0, 0.5), (0.9, 0.0)])
def test_segment_gae_matches_python_reference(seed: int, gamma: float, lam: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    lengths, width = [11, 1, 0, 7, 13, 4], 14
    segs = random_segments(lengths, gen)
    mask = prefix_mask(lengths, width)
    starts = lengths_to_starts(segs, width)
    rewards = torch.where(
        mask, torch.randn(len(lengths), width, generator=gen, dtype=torch.float64), 0.0
    )
    values = torch.randn(len(lengths), width, generator=gen, dtype=torch.float64)
    for reward_agg, value_agg, discount in itertools.product(
        REWARD_AGGREGATIONS, VALUE_AGGREGATIONS, DISCOUNTS
    ):
        kwargs = dict(reward_agg=reward_agg, value_agg=value_agg, discount=discount)
        out = compute_gae(rewards, values, mask, starts, gamma=gamma, gae_lambda=lam, **kwargs)
        for b, n in enumerate(lengths):
            adv, ret = reference_segment_gae(
                rewards[b, :n].tolist(),
                values[b, :n].tolist(),
                segs[b],
                gamma=gamma,
                lam=lam,
                **kwargs,
            )
            assert out.advantages[b, :n].tolist() == pytest.approx(adv, abs=1e-10), (b, kwargs)
            assert out.returns[b, :n].tolist() == pytest.approx(ret, abs=1e-10), (b, kwargs)
            assert not out.advantages[b, n:].any() and not out.returns[b, n:].any()
            assert int(out.seg_mask[b].sum()) == len(segs[b])


segment_rows = st.lists(
    st.lists(st.integers(min_value=1, max_value=5), min_size=0, max_size=5), min_size=1, max_size=4
)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    segs=segment_rows,
    gamma=st.sampled_from([1.0, 0.97, 0.5]),
    lam=st.sampled_from([1.0, 0.95, 0.0]),
    aggs=st.sampled_from(
        list(itertools.product(REWARD_AGGREGATIONS, VALUE_AGGREGATIONS, DISCOUNTS))
    ),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_segment_gae_property(
    segs: list[list[int]], gamma: float, lam: float, aggs: tuple[str, str, str], seed: int
) -> None:
    """Any ragged batch (empty rows included) matches the per-sample reference."""
    lengths = [sum(row) for row in segs]
    width = max(max(lengths), 1)
    gen = torch.Generator().manual_seed(seed)
    mask = prefix_mask(lengths, width)
    starts = lengths_to_starts(segs, width)
    rewards = torch.randn(len(segs), width, generator=gen, dtype=torch.float64)
    values = torch.randn(len(segs), width, generator=gen, dtype=torch.float64)
    kwargs = dict(zip(("reward_agg", "value_agg", "discount"), aggs, strict=True))
    out = compute_gae(rewards, values, mask, starts, gamma=gamma, gae_lambda=lam, **kwargs)
    for b, n in enumerate(lengths):
        adv, ret = reference_segment_gae(
            rewards[b, :n].tolist(), values[b, :n].tolist(), segs[b], gamma=gamma, lam=lam, **kwargs
        )
        assert out.advantages[b, :n].tolist() == pytest.approx(adv, abs=1e-10)
        assert out.returns[b, :n].tolist() == pytest.approx(ret, abs=1e-10)
        assert not out.advantages[b, n:].any()


def token_gae_reference(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain per-token GAE, vectorised over rows, terminal after each row's last token."""
    zero = torch.zeros_like(rewards[:, 0])
    adv = torch.zeros_like(rewards)
    last = zero
    width = rewards.shape[1]
    for t in reversed(range(width)):
        next_v = torch.where(mask[:, t + 1], values[:, t + 1], zero) if t + 1 < width else zero
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = torch.where(mask[:, t], delta + gamma * lam * last, zero)
        adv[:, t] = last
    return adv, torch.where(mask, adv + values, torch.zeros_like(adv))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [1.0, 0.99, 0.9])
def test_single_token_segments_are_bitwise_token_gae(dtype: torch.dtype, gamma: float) -> None:
    gen = torch.Generator().manual_seed(3)
    lengths, width = [9, 2, 0, 16, 1], 16
    mask = prefix_mask(lengths, width)
    rewards = torch.where(mask, torch.randn(len(lengths), width, generator=gen, dtype=dtype), 0.0)
    values = torch.where(
        mask, torch.randn(len(lengths), width, generator=gen, dtype=dtype), math.nan
    )
    expected_adv, expected_ret = token_gae_reference(
        rewards, torch.nan_to_num(values), mask, gamma, 0.95
    )
    for reward_agg, value_agg, discount in itertools.product(
        REWARD_AGGREGATIONS, VALUE_AGGREGATIONS, DISCOUNTS
    ):
        out = compute_gae(
            rewards,
            values,
            mask,
            mask,
            gamma=gamma,
            gae_lambda=0.95,
            reward_agg=reward_agg,
            value_agg=value_agg,
            discount=discount,
        )
        assert out.advantages.dtype == dtype
        assert torch.equal(out.advantages, expected_adv), (reward_agg, value_agg, discount)
        assert torch.equal(out.returns, expected_ret), (reward_agg, value_agg, discount)


@pytest.mark.parametrize("reward_agg", REWARD_AGGREGATIONS)
def test_token_discount_equals_segment_discount_at_gamma_one(reward_agg: str) -> None:
    gen = torch.Generator().manual_seed(5)
    lengths, width = [12, 5, 8], 12
    mask = prefix_mask(lengths, width)
    starts = lengths_to_starts(random_segments(lengths, gen, max_len=5), width)
    rewards = torch.where(mask, torch.randn(3, width, generator=gen), 0.0)
    values = torch.randn(3, width, generator=gen)
    seg = compute_gae(rewards, values, mask, starts, reward_agg=reward_agg, discount="segment")
    tok = compute_gae(rewards, values, mask, starts, reward_agg=reward_agg, discount="token")
    assert torch.equal(seg.advantages, tok.advantages)
    assert torch.equal(seg.returns, tok.returns)
    # ...and they do differ below gamma = 1, where the SMDP discount sees segment lengths.
    seg = compute_gae(rewards, values, mask, starts, gamma=0.9, reward_agg=reward_agg)
    tok = compute_gae(
        rewards, values, mask, starts, gamma=0.9, reward_agg=reward_agg, discount="token"
    )
    assert not torch.allclose(seg.advantages, tok.advantages)


class EveryThree(Termination):
    """A boundary every three tokens (a local stand-in for a fixed n-gram rule)."""

    name = "every3"

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        cols = torch.arange(batch.mask.shape[1])
        return (cols % 3 == 0).expand_as(batch.mask).clone()


@pytest.mark.parametrize("reward_agg", REWARD_AGGREGATIONS)
def test_isolated_last_segment_holds_the_terminal_score(reward_agg: str) -> None:
    lengths, width = [10, 4, 7], 10
    mask = prefix_mask(lengths, width)
    batch = SegmentationBatch(response_ids=torch.zeros(3, width, dtype=torch.long), mask=mask)
    starts = compute_starts(EveryThree(), batch, isolate_last=True)
    seg_len = segment_lengths(starts, mask)
    assert seg_len.sum(dim=1).tolist() == lengths
    kl_shaping = torch.where(mask, torch.full((3, width), -0.01), 0.0)
    scores = [2.0, -1.0, 0.5]
    rewards = kl_shaping.clone()
    for b, n in enumerate(lengths):
        rewards[b, n - 1] += scores[b]
    values = torch.where(mask, torch.linspace(0.0, 1.0, width).expand(3, width), 0.0)
    out = compute_gae(rewards, values, mask, starts, reward_agg=reward_agg)
    for b, n in enumerate(lengths):
        last = int(out.seg_mask[b].sum()) - 1
        assert int(seg_len[b, last]) == 1
        # Terminal segment: G = R_last exactly, never averaged with KL-only tokens.
        assert float(out.seg_returns[b, last]) == pytest.approx(scores[b] - 0.01, abs=1e-6)
        assert float(out.returns[b, n - 1]) == pytest.approx(scores[b] - 0.01, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def small_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = prefix_mask([4, 2], 4)
    return torch.zeros(2, 4), torch.zeros(2, 4), mask, mask.clone()


@pytest.mark.parametrize(
    ("name", "bad", "valid"),
    [
        ("reward_agg", "median", "'sum', 'mean'"),
        ("value_agg", "unit", "'first', 'last'"),
        ("discount", "step", "'segment', 'token'"),
    ],
)
def test_bad_strings_list_the_choices(name: str, bad: str, valid: str) -> None:
    with pytest.raises(ValueError, match=rf"{name}='{bad}'.*{valid}"):
        compute_gae(*small_batch(), **{name: bad})  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "bad"), [("gamma", 1.5), ("gamma", -0.1), ("gae_lambda", 2.0)])
def test_rates_outside_unit_interval(name: str, bad: float) -> None:
    with pytest.raises(ValueError, match=rf"{name}={bad}.*\[0, 1\]"):
        compute_gae(*small_batch(), **{name: bad})  # type: ignore[arg-type]


@pytest.mark.parametrize("which", ["rewards", "values"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_inputs_name_tensor_and_place(which: str, bad: float) -> None:
    rewards, values, mask, starts = small_batch()
    tensor = rewards if which == "rewards" else values
    tensor[1, 1] = bad
    tensor[1, 3] = bad  # padding: ignored, so the first bad entry reported is (1, 1)
    with pytest.raises(ValueError, match=rf"{which} has a non-finite value .* row 1, column 1"):
        compute_gae(rewards, values, mask, starts)
    tensor[1, 1] = 0.0
    compute_gae(rewards, values, mask, starts)  # padding alone is fine


def test_shape_dtype_and_starts_errors() -> None:
    rewards, values, mask, starts = small_batch()
    with pytest.raises(ValueError, match="values has shape"):
        compute_gae(rewards, values[:, :3], mask, starts)
    with pytest.raises(TypeError, match=r"mask must have dtype torch\.bool"):
        compute_gae(rewards, values, mask.float(), starts)
    with pytest.raises(TypeError, match="rewards must be a floating tensor"):
        compute_gae(rewards.long(), values, mask, starts)
    starts[1, 3] = True  # a start on padding
    with pytest.raises(SegmentationError, match="row 1 has a segment start on padding"):
        compute_gae(rewards, values, mask, starts)


# ---------------------------------------------------------------------------------------------
# whiten and explained_variance
# ---------------------------------------------------------------------------------------------


def test_whiten_uses_only_real_entries() -> None:
    gen = torch.Generator().manual_seed(0)
    mask = prefix_mask([6, 3, 9], 9)
    x = torch.where(mask, 3.0 + 2.0 * torch.randn(3, 9, generator=gen, dtype=torch.float64), 1e6)
    out = whiten(x, mask)
    real = out[mask]
    assert float(real.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(real.std()) == pytest.approx(1.0, abs=1e-6)
    assert not out[~mask].any()
    scaled = whiten(x, mask, shift_mean=False)
    assert float(scaled[mask].mean()) == pytest.approx(float(x[mask].mean()), abs=1e-9)
    one = prefix_mask([0, 1, 0], 9)
    # A single real entry keeps its raw advantage (as SB3 skips normalising a batch of one).
    assert whiten(x, one).tolist() == torch.where(one, x, 0.0).tolist()
    assert float(whiten(x, one)[one]) != 0.0
    assert whiten(x, one, shift_mean=False).tolist() == torch.where(one, x, 0.0).tolist()
    assert not whiten(x, torch.zeros_like(one)).any()
    with pytest.raises(ValueError, match=r"x has shape \(3, 9\) but mask has \(3, 8\)"):
        whiten(x, mask[:, :8])


def test_explained_variance() -> None:
    gen = torch.Generator().manual_seed(1)
    mask = prefix_mask([5, 8], 8)
    target = torch.randn(2, 8, generator=gen, dtype=torch.float64)
    garbage = torch.where(mask, target, 1e9)
    assert explained_variance(garbage, target, mask) == pytest.approx(1.0)
    mean = float(target[mask].mean())
    assert explained_variance(torch.full_like(target, mean), target, mask) == pytest.approx(0.0)
    assert explained_variance(-target, target, mask) < 0
    assert math.isnan(explained_variance(target, torch.ones_like(target), mask))
    assert math.isnan(explained_variance(target, target, prefix_mask([1, 0], 8)))
