"""The true advantage: a hand-computed 2-token case, the decisive shortcut, Monte Carlo."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from marlhf.credit.truth import Sampling, exact_advantages, mc_advantages, true_advantages
from marlhf.envs.builtin.credit import CreditSumTask
from marlhf.envs.core.tasks import Prompt
from marlhf.models import tiny_gpt2


class BigramLM(nn.Module):
    """A causal LM double whose next-token distribution depends only on the last token."""

    def __init__(self, log_probs: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(log_probs.clone(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        return SimpleNamespace(logits=self.table[input_ids])


def _hand_case(gamma: float) -> tuple:
    """CreditSum with digits {0, 1}, two decisions, horizon 2, target 1: score 1 - |s - 1| / 2.

    pi(a0 = 0) = 3/4; pi(a1 = 1 | a0 = 0) = 1/2; pi(a1 = 1 | a0 = 1) = 3/4.
    """
    task = CreditSumTask(horizon=2, num_symbols=2, num_decisions=2)
    tok = task.codec.tokens.index
    zero, one, eq = tok("0"), tok("1"), tok("=")
    table = torch.full((task.codec.vocab_size, task.codec.vocab_size), -30.0)
    table[eq, zero], table[eq, one] = math.log(0.75), math.log(0.25)
    table[zero, zero], table[zero, one] = math.log(0.5), math.log(0.5)
    table[one, zero], table[one, one] = math.log(0.25), math.log(0.75)
    prompt = Prompt(task.codec.encode("1="), {"target": 1})
    responses = torch.tensor([[zero, zero], [zero, one], [one, zero], [one, one]])
    return task, BigramLM(table), [prompt] * 4, responses


def test_exact_truth_matches_the_hand_computed_two_token_case() -> None:
    task, model, prompts, responses = _hand_case(1.0)
    mask = torch.ones_like(responses, dtype=torch.bool)
    truth = exact_advantages(model, task, prompts, responses, mask)
    # V(a0=0) = .5*.5 + .5*1 = .75; V(a0=1) = .25*1 + .75*.5 = .625; V(s0) = .71875
    expected = torch.tensor(
        [
            [0.75 - 0.71875, 0.5 - 0.75],
            [0.75 - 0.71875, 1.0 - 0.75],
            [0.625 - 0.71875, 1.0 - 0.625],
            [0.625 - 0.71875, 0.5 - 0.625],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(truth.advantages, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(truth.values[:, 0], torch.full((4,), 0.71875, dtype=torch.float64))
    assert truth.stderr is None and truth.method == "exact"
    # advantages average to 0 under the policy at every state
    pi0 = torch.tensor([0.75, 0.75, 0.25, 0.25]) / 2  # each a0 appears twice
    assert abs(float((pi0.double() * truth.advantages[:, 0]).sum())) < 1e-6


def test_exact_truth_discounts_the_delayed_score() -> None:
    task, model, prompts, responses = _hand_case(0.5)
    mask = torch.ones_like(responses, dtype=torch.bool)
    truth = exact_advantages(model, task, prompts, responses, mask, gamma=0.5)
    # the score arrives one step after a0: Q(s0, a0) = 0.5 * V(s1)
    torch.testing.assert_close(
        truth.advantages[:, 0],
        0.5 * torch.tensor([0.03125, 0.03125, -0.09375, -0.09375], dtype=torch.float64),
        rtol=0,
        atol=1e-6,
    )
    torch.testing.assert_close(
        truth.advantages[:, 1],
        torch.tensor([-0.25, 0.25, 0.375, -0.125], dtype=torch.float64),
        rtol=0,
        atol=1e-6,
    )


def _gpt_case(horizon: int, episodes: int = 6, seed: int = 0):
    task = CreditSumTask(horizon=horizon, num_symbols=2, num_decisions=2)
    model = tiny_gpt2(task.codec, n_layer=1, n_embd=16, n_head=2, n_positions=16, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    prompts = task.sample_prompts(__import__("numpy").random.default_rng(seed), episodes)
    allowed = torch.as_tensor(task.action_mask())
    digits = allowed.nonzero().flatten()
    responses = digits[torch.randint(len(digits), (episodes, horizon), generator=gen)]
    mask = torch.ones_like(responses, dtype=torch.bool)
    return task, model, prompts, responses, mask, Sampling(action_mask=allowed)


def test_decisive_shortcut_equals_full_enumeration() -> None:
    task, model, prompts, responses, mask, sampling = _gpt_case(horizon=6)
    mask[0, 4:] = False  # a ragged row: truth is 0 on its padding
    short = exact_advantages(model, task, prompts, responses, mask, sampling=sampling, gamma=0.9)
    full = exact_advantages(
        model, task, prompts, responses, mask, sampling=sampling, gamma=0.9, decisive=False
    )
    assert short.stats["sequences"] < full.stats["sequences"]
    torch.testing.assert_close(short.advantages, full.advantages, rtol=0, atol=1e-9)
    torch.testing.assert_close(short.values, full.values, rtol=0, atol=1e-9)
    assert bool((short.advantages[:, 2:] == 0).all())  # filler carries no credit
    assert bool((short.values[0, 4:] == 0).all())
    assert float(short.advantages[:, :2].abs().max()) > 1e-3


def test_mc_truth_agrees_with_exact_within_its_standard_error() -> None:
    task, model, prompts, responses, mask, sampling = _gpt_case(horizon=4)
    exact = exact_advantages(model, task, prompts, responses, mask, sampling=sampling)
    mc = mc_advantages(
        model, task, prompts, responses, mask, sampling=sampling, samples=256, seed=1
    )
    assert mc.stderr is not None and mc.method == "mc"
    assert mc.stats["mc_tokens"] > 0
    on = mc.stderr > 0
    z = (mc.advantages - exact.advantages)[on] / mc.stderr[on]
    assert float(z.abs().max()) < 4.0
    assert 0.3 < float((z**2).mean()) < 2.0  # the reported SE is the error's actual scale
    # where every continuation has the same return (filler), MC is exact with SE 0
    torch.testing.assert_close(mc.advantages[:, 2:], exact.advantages[:, 2:], rtol=0, atol=1e-9)


def test_bad_input_is_named() -> None:
    task, model, prompts, responses, mask, sampling = _gpt_case(horizon=4)
    with pytest.raises(ValueError, match="max_sequences"):
        exact_advantages(
            model,
            task,
            prompts,
            responses,
            mask,
            sampling=sampling,
            decisive=False,
            max_sequences=4,
        )
    outside = responses.clone()
    outside[1, 0] = task.codec.tokens.index("=")
    with pytest.raises(ValueError, match="row 1 token 0"):
        exact_advantages(model, task, prompts, outside, mask, sampling=sampling)
    with pytest.raises(ValueError, match="samples"):
        mc_advantages(model, task, prompts, responses, mask, sampling=sampling, samples=1)
    with pytest.raises(ValueError, match="method"):
        true_advantages(model, task, prompts, responses, mask, method="oracle")
    with pytest.raises(ValueError, match="prompts"):
        exact_advantages(model, task, prompts[:2], responses, mask, sampling=sampling)


def test_delayed_choice_declares_its_one_decisive_token() -> None:
    from marlhf.envs.builtin.toy import DelayedChoiceTask

    task = DelayedChoiceTask(horizon=4, num_choices=2)
    model = tiny_gpt2(task.codec, n_layer=1, n_embd=16, n_head=2, n_positions=16, seed=1)
    prompts = task.sample_prompts(__import__("numpy").random.default_rng(0), 4)
    allowed = torch.as_tensor(task.action_mask())
    choices = allowed.nonzero().flatten()
    responses = choices[torch.randint(2, (4, 4), generator=torch.Generator().manual_seed(0))]
    mask = torch.ones_like(responses, dtype=torch.bool)
    sampling = Sampling(action_mask=allowed)
    short = exact_advantages(model, task, prompts, responses, mask, sampling=sampling)
    full = exact_advantages(
        model, task, prompts, responses, mask, sampling=sampling, decisive=False
    )
    assert short.stats["depth"] == 1 and full.stats["depth"] == 4
    torch.testing.assert_close(short.advantages, full.advantages, rtol=0, atol=1e-9)
    assert bool((short.advantages[:, 1:] == 0).all())


def test_mc_values_estimates_only_the_requested_prefixes() -> None:
    from marlhf.credit.truth import mc_values

    task, model, prompts, responses, mask, sampling = _gpt_case(horizon=4)
    at = torch.zeros_like(mask)
    at[:, 0] = True
    at[1, 2] = True
    exact = exact_advantages(model, task, prompts, responses, mask, sampling=sampling)
    values, stderr, tokens = mc_values(
        model, task, prompts, responses, mask, at=at, sampling=sampling, samples=256, seed=3
    )
    assert bool(torch.isfinite(values[at]).all()) and bool(torch.isnan(values[~at]).all())
    assert tokens == 256 * (len(prompts) * 4 + 2)  # continuations from s_0 and s_2, all counted
    noisy = at & (stderr > 0)
    z = (values[noisy] - exact.values[noisy]) / stderr[noisy]
    assert float(z.abs().max()) < 4.0
    # s_2 follows both decisions: every continuation scores the same, so MC is exact there
    assert float(stderr[1, 2]) == 0.0
    assert abs(float(values[1, 2] - exact.values[1, 2])) < 1e-9
    # one greedy continuation (top-k 1) is deterministic: its SE is undefined, a second draw
    # with another seed gives the same value
    greedy = Sampling(1.0, 1, 1.0, sampling.action_mask)
    g1, se1, _ = mc_values(model, task, prompts, responses, mask, at=at, sampling=greedy, samples=1)
    g2, _, _ = mc_values(
        model, task, prompts, responses, mask, at=at, sampling=greedy, samples=1, seed=9
    )
    torch.testing.assert_close(g1[at], g2[at], rtol=0, atol=0)
    assert bool(torch.isnan(se1).all())
    with pytest.raises(ValueError, match="samples"):
        mc_values(model, task, prompts, responses, mask, sampling=sampling, samples=0)
