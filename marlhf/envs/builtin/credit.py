"""A task family built for exact credit assignment: ``marlhf/CreditSum-v0``.

The prompt is a target number written in digits followed by ``=`` (e.g. ``4=``). The response
is ``horizon`` digit tokens from ``0 .. num_symbols - 1``; only the first ``num_decisions`` of
them count: the score, paid once on the last token (at the horizon), is

    ``1 - |d_1 + ... + d_m - target| / D``, with ``D = m * (num_symbols - 1)``,

so every target in ``[0, D]`` is reachable: optimal return 1. The tokens after the decisions
are filler the reward ignores, so their true advantage is exactly 0, while the score that
decides the decisions' credit arrives ``horizon - num_decisions`` steps later: the credit has to
travel back over the filler, as in DelayedChoice, but several decisions interact (a decision's
worth depends on what the policy will do next).

Why it is exact: the return depends only on the prompt and the first ``num_decisions`` response
tokens, and every episode lasts exactly ``horizon`` tokens (no EOS). The attribute
:attr:`CreditSumTask.decisive_tokens` declares that, so :mod:`marlhf.credit.truth` enumerates
only ``num_symbols ** num_decisions`` continuations per prompt (27 at the defaults), whatever
the horizon.

Random return (uniform over the allowed digits, targets uniform in ``[0, D]``): the mean over
targets of ``E[1 - |S - target| / D]`` where ``S`` is the sum of ``m`` uniform digits; its
distribution is the ``m``-fold convolution of the uniform one (2/3 at the defaults, computed
in :func:`random_return` and checked in the tests by brute-force enumeration and by seeded
random rollouts).

Defaults: 3 symbols, 3 decisions, horizon 32, so targets ``0..6``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from marlhf.envs.builtin.toy import ToyTask, _check_int
from marlhf.envs.core.registration import register_task
from marlhf.envs.core.tasks import Prompt, RewardBatch, RewardFunction, RewardMode
from marlhf.tokenization import SymbolCodec

DIGITS = [str(d) for d in range(10)]


def sum_distribution(num_symbols: int, num_decisions: int) -> np.ndarray:
    """``float64[m * (K - 1) + 1]``: the law of the sum of ``m`` uniform digits in ``[0, K)``."""
    one = np.full(num_symbols, 1.0 / num_symbols)
    law = np.ones(1)
    for _ in range(num_decisions):
        law = np.convolve(law, one)
    return law


def random_return(num_symbols: int, num_decisions: int) -> float:
    """The uniform policy's expected return (targets uniform in ``[0, D]``)."""
    law = sum_distribution(num_symbols, num_decisions)
    span = num_decisions * (num_symbols - 1)
    sums = np.arange(span + 1)
    scores = 1.0 - np.abs(sums[:, None] - sums[None, :]) / span  # [sum, target]
    return float((law[:, None] * scores).sum(axis=0).mean())


class _CreditSumReward(RewardFunction):
    mode: ClassVar[RewardMode] = "terminal"

    def __init__(
        self, digit_ids: torch.Tensor, vocab_size: int, num_decisions: int, span: int
    ) -> None:
        # value_of[token id] = the digit it writes (-1 for any other token)
        self._value_of = torch.full((vocab_size,), -1, dtype=torch.int64)
        self._value_of[digit_ids] = torch.arange(len(digit_ids))
        self.num_decisions = num_decisions
        self.span = span

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        m = self.num_decisions
        dev = batch.response_ids.device
        value_of = self._value_of.to(dev)
        digits = value_of[batch.response_ids[:, :m]]
        valid = (digits >= 0).all(dim=1) & batch.response_mask[:, :m].all(dim=1)
        targets = torch.tensor(
            [int(p.metadata["target"]) for p in batch.prompts], dtype=torch.int64, device=dev
        )
        error = (digits.clamp(min=0).sum(dim=1) - targets).abs().float() / self.span
        return torch.where(valid, 1.0 - error, torch.zeros_like(error))


class CreditSumTask(ToyTask):
    """Several interacting decisions, one delayed graded score, exact credit (module docstring).

    :param horizon: response tokens per episode (``max_new_tokens``), ``num_decisions``..512
        (default 32).
    :param num_symbols: ``K``, the digits ``0 .. K - 1`` allowed as actions, 2..10 (default 3).
    :param num_decisions: ``m``, the leading tokens the score reads, 1..8 (default 3); the
        targets span ``0 .. m * (K - 1)`` (at most 72).
    """

    def __init__(self, horizon: int = 32, num_symbols: int = 3, num_decisions: int = 3) -> None:
        self.name = "CreditSum"
        k = _check_int(self.name, "num_symbols", num_symbols, 2, 10)
        m = _check_int(self.name, "num_decisions", num_decisions, 1, 8)
        self.max_new_tokens = _check_int(self.name, "horizon", horizon, m, 512)
        self.span = m * (k - 1)
        self.num_symbols = k
        self.num_decisions = m
        #: The return depends only on the prompt and this many leading response tokens, and
        #: every episode lasts ``max_new_tokens`` tokens (read by :mod:`marlhf.credit.truth`).
        self.decisive_tokens = m
        self.codec = SymbolCodec([*DIGITS, "="], eos=None)
        self.max_prompt_len = len(str(self.span)) + 1
        digit_ids = torch.tensor([self.codec.tokens.index(d) for d in DIGITS[:k]])
        self._digit_ids = digit_ids.tolist()
        self.reward_fn = _CreditSumReward(digit_ids, self.codec.vocab_size, m, self.span)
        self.optimal_return = 1.0
        self.random_return = random_return(k, m)

    def sample_prompts(self, rng: np.random.Generator, n: int) -> list[Prompt]:
        return self._target_prompts(rng, n, self.span)

    def action_mask(self) -> np.ndarray:
        return self._mask_of(DIGITS[: self.num_symbols], eos=False)

    def optimal_response(self, prompt: Prompt) -> list[int]:
        """Greedy digits summing to the target, then ``0`` filler to the horizon."""
        left = int(prompt.metadata["target"])
        out = []
        for _ in range(self.num_decisions):
            d = min(left, self.num_symbols - 1)
            out.append(self._digit_ids[d])
            left -= d
        return out + [self._digit_ids[0]] * (self.max_new_tokens - self.num_decisions)


register_task("CreditSum", CreditSumTask)
