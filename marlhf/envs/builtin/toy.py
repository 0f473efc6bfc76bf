"""Toy credit-assignment tasks with small vocabularies, known optimal and random returns.

=================  =========================================  ============  =====================
env id             what is rewarded                           optimal       random (uniform over
                                                                            ``action_mask``)
=================  =========================================  ============  =====================
DelayedChoice-v0   FIRST response token matches the cue's     1             1 / num_choices
                   rule; the score arrives after ``horizon``
                   tokens (pure delayed credit)
Reverse-v0         reverse the prompt then EOS; terminal       1             mean over lengths m of
                   partial credit: correct positions / (m+1)                 (1 - q^(m+1)) / (m+1),
                                                                            q = K / (K + 1)
ReverseDense-v0    the same score paid per token as it is      1             same as Reverse
                   written (dense twin of Reverse-v0)
ExprTarget-v0      a Python integer expression equal to the    1             seeded Monte-Carlo
                   prompt's number; graded terminal reward                  estimate (~0.017 at the
                                                                            defaults)
=================  =========================================  ============  =====================

Defaults: DelayedChoice horizon 32, 4 choices (random 0.25); Reverse/ReverseDense 6 symbols,
prompts of 2..6, horizon 7 (random 0.108); ExprTarget targets 0..30, horizon 12. Every default
is a keyword of the task and of ``gymnasium.make`` / ``make_vec``. Each task's
:meth:`~ToyTask.optimal_response` gives the scripted optimal answer to a prompt; the tests check
every documented return against scripted and seeded random rollouts.
"""

from __future__ import annotations

import string
from functools import cached_property
from typing import ClassVar

import numpy as np
import torch

from marlhf.envs.builtin import safe_expr
from marlhf.envs.core.registration import register_task
from marlhf.envs.core.rollout import random_returns
from marlhf.envs.core.tasks import Prompt, RewardBatch, RewardFunction, RewardMode, Task
from marlhf.tokenization import SymbolCodec


def _check_int(task: str, name: str, value: object, low: int, high: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not low <= value <= high
    ):
        raise ValueError(f"{task}: {name}={value!r}; valid: an int in [{low}, {high}]")
    return int(value)


class ToyTask(Task):
    """Shared helpers of the toy tasks."""

    codec: SymbolCodec

    def optimal_response(self, prompt: Prompt) -> list[int]:
        """Token ids of an optimal response to ``prompt`` (EOS included where the task has one)."""
        raise NotImplementedError

    def _mask_of(self, symbols: list[str], eos: bool) -> np.ndarray:
        mask = np.zeros(self.codec.vocab_size, dtype=bool)
        mask[[self.codec.tokens.index(s) for s in symbols]] = True
        if eos and self.codec.eos_token_id is not None:
            mask[self.codec.eos_token_id] = True
        return mask

    def _target_prompts(self, rng: np.random.Generator, n: int, high: int) -> list[Prompt]:
        """``n`` prompts ``"<t>="`` with targets ``t`` uniform in ``[0, high]``."""
        out = []
        for t in rng.integers(0, high + 1, size=n).tolist():
            text = f"{t}="
            out.append(Prompt(self.codec.encode(text), {"target": t}, text=text))
        return out


# ----------------------------------------------------------------------------- DelayedChoice
class _DelayedChoiceReward(RewardFunction):
    mode: ClassVar[RewardMode] = "terminal"

    def __init__(self, target_of_cue: np.ndarray) -> None:
        self._table = torch.as_tensor(target_of_cue, dtype=torch.int64)
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        if batch.prompt_ids is not None:
            cue = batch.prompt_ids[:, -1]
        else:
            cue = torch.tensor([p.ids[-1] for p in batch.prompts], device=batch.response_ids.device)
        table = self._on_device.get(cue.device)
        if table is None:  # copied once per device, not on every call
            table = self._on_device[cue.device] = self._table.to(cue.device)
        correct = (batch.response_ids[:, 0] == table[cue]) & batch.response_mask[:, 0]
        return correct.float()


class DelayedChoiceTask(ToyTask):
    """Pure delayed credit: the prompt is one cue symbol (``A``, ``B``, ...); the FIRST response
    token is the choice, the rest are filler until the horizon. The reward, paid at the horizon,
    is 1 when the choice is the cue's partner (the lowercase letter after the cue's, wrapping
    around: ``A -> b``, ``B -> c``, ..., last -> ``a``), else 0.

    Actions are masked to the choice letters, so random return = ``1 / num_choices``; optimal
    return = 1. There is no EOS: every episode lasts exactly ``horizon`` tokens, so credit must
    travel ``horizon - 1`` steps back to the decision.

    :param horizon: tokens per episode (``max_new_tokens``), 2..512 (default 32; 16..512 is the
        intended range).
    :param num_choices: cues and choices, 2..26 (default 4).
    """

    def __init__(self, horizon: int = 32, num_choices: int = 4) -> None:
        self.name = "DelayedChoice"
        horizon = _check_int(self.name, "horizon", horizon, 2, 512)
        k = _check_int(self.name, "num_choices", num_choices, 2, 26)
        self.num_choices = k
        self.cues = list(string.ascii_uppercase[:k])
        self.choices = list(string.ascii_lowercase[:k])
        self.codec = SymbolCodec(self.cues + self.choices, eos=None)
        self.max_prompt_len = 1
        self.max_new_tokens = horizon
        table = np.zeros(self.codec.vocab_size, dtype=np.int64)
        for i, cue in enumerate(self.cues):
            table[self.codec.tokens.index(cue)] = self.codec.tokens.index(self.choices[(i + 1) % k])
        self._target_of_cue = table
        self.reward_fn = _DelayedChoiceReward(table)
        self.optimal_return = 1.0
        self.random_return = 1.0 / k
        #: The reward reads only the first response token and episodes last the horizon, so
        #: the exact truth of :mod:`marlhf.credit.truth` enumerates that token alone.
        self.decisive_tokens = 1

    def sample_prompts(self, rng: np.random.Generator, n: int) -> list[Prompt]:
        picks = rng.integers(0, self.num_choices, size=n)
        out = []
        for i in picks.tolist():
            cue_id = self.codec.tokens.index(self.cues[i])
            target = int(self._target_of_cue[cue_id])
            out.append(Prompt([cue_id], {"target_id": target}, text=self.cues[i]))
        return out

    def action_mask(self) -> np.ndarray:
        return self._mask_of(self.choices, eos=False)

    def optimal_response(self, prompt: Prompt) -> list[int]:
        target = int(self._target_of_cue[prompt.ids[-1]])
        return [target] * self.max_new_tokens


# ----------------------------------------------------------------------------- Reverse
def _reverse_matches(batch: RewardBatch, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``bool[R, N]`` response positions that hold the right token, and ``m + 1`` per row."""
    if batch.prompt_ids is None or batch.prompt_mask is None:
        raise ValueError("Reverse reward: RewardBatch.prompt_ids/prompt_mask are required")
    N = batch.response_ids.shape[1]
    P = batch.prompt_ids.shape[1]
    dev = batch.response_ids.device
    m = batch.prompt_mask.sum(dim=1)
    t = torch.arange(N, device=dev)
    # target[t] = prompt[m - 1 - t] = column P - 1 - t of the left-padded prompt, for t < m.
    cols = (P - 1 - t).clamp(min=0)
    target = batch.prompt_ids[:, cols]
    target = torch.where(t[None, :] == m[:, None], torch.full_like(target, eos_id), target)
    scored = t[None, :] <= m[:, None]
    hit = (batch.response_ids == target) & scored & batch.response_mask
    return hit, (m + 1).float()


class _ReverseTerminal(RewardFunction):
    mode: ClassVar[RewardMode] = "terminal"

    def __init__(self, eos_id: int) -> None:
        self.eos_id = eos_id

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        hit, denom = _reverse_matches(batch, self.eos_id)
        return hit.sum(dim=1).float() / denom


class _ReverseDense(RewardFunction):
    mode: ClassVar[RewardMode] = "dense"

    def __init__(self, eos_id: int) -> None:
        self.eos_id = eos_id

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        # Only the token just appended (position t = length - 1) is scored: O(R) per step.
        if batch.prompt_ids is None or batch.prompt_mask is None:
            raise ValueError("ReverseDense reward: RewardBatch.prompt_ids/prompt_mask are required")
        P = batch.prompt_ids.shape[1]
        m = batch.prompt_mask.sum(dim=1)
        t = (batch.lengths - 1).clamp(min=0)
        token = batch.response_ids.gather(1, t[:, None])[:, 0]
        from_prompt = batch.prompt_ids.gather(1, (P - 1 - t).clamp(min=0)[:, None])[:, 0]
        target = torch.where(t == m, torch.full_like(token, self.eos_id), from_prompt)
        hit = (token == target) & (t <= m) & (batch.lengths > 0)
        return hit.float() / (m + 1).float()


class ReverseTask(ToyTask):
    """Structured output with partial credit: reverse the prompt, then write EOS.

    The prompt is ``m`` symbols (``m`` uniform in ``[min_len, max_len]``) from the first
    ``num_symbols`` lowercase letters. The score is the number of correct positions among the
    ``m`` reversed symbols and the EOS that must follow, divided by ``m + 1``: optimal 1.
    Random return (uniform over the symbols and EOS, ``q = K / (K + 1)``): the mean over ``m``
    of ``(1 - q^(m+1)) / (m + 1)``.

    :param horizon: ``max_new_tokens``, at least ``max_len + 1`` (default ``max_len + 1``).
    :param num_symbols: ``K``, 2..26 (default 6).
    :param min_len: shortest prompt (default 2).
    :param max_len: longest prompt (default 6).
    :param dense: pay each position's credit on the step that writes it (``ReverseDense``).
    """

    def __init__(
        self,
        horizon: int | None = None,
        num_symbols: int = 6,
        min_len: int = 2,
        max_len: int = 6,
        dense: bool = False,
    ) -> None:
        self.name = "ReverseDense" if dense else "Reverse"
        k = _check_int(self.name, "num_symbols", num_symbols, 2, 26)
        self.max_len = _check_int(self.name, "max_len", max_len, 1, 256)
        self.min_len = _check_int(self.name, "min_len", min_len, 1, self.max_len)
        h = self.max_len + 1 if horizon is None else horizon
        self.max_new_tokens = _check_int(self.name, "horizon", h, self.max_len + 1, 1024)
        self.symbols = list(string.ascii_lowercase[:k])
        self.codec = SymbolCodec(self.symbols)
        eos = self.codec.eos_token_id
        if eos is None:  # SymbolCodec with the default eos always has one
            raise RuntimeError("ReverseTask: codec has no EOS")
        self.max_prompt_len = self.max_len
        self.reward_fn = _ReverseDense(eos) if dense else _ReverseTerminal(eos)
        self.optimal_return = 1.0
        q = k / (k + 1)
        lengths = np.arange(self.min_len, self.max_len + 1)
        self.random_return = float(np.mean((1 - q ** (lengths + 1)) / (lengths + 1)))

    def sample_prompts(self, rng: np.random.Generator, n: int) -> list[Prompt]:
        lengths = rng.integers(self.min_len, self.max_len + 1, size=n)
        out = []
        for m in lengths.tolist():
            ids = (rng.integers(0, len(self.symbols), size=m) + 2).tolist()  # ids 0, 1: pad, eos
            text = self.codec.decode(ids)
            out.append(Prompt(ids, {"target": text[::-1]}, text=text))
        return out

    def action_mask(self) -> np.ndarray:
        return self._mask_of(self.symbols, eos=True)

    def optimal_response(self, prompt: Prompt) -> list[int]:
        eos = self.codec.eos_token_id
        return list(reversed(prompt.ids)) + ([] if eos is None else [eos])


class ReverseDenseTask(ReverseTask):
    """:class:`ReverseTask` with the same score paid densely (see its parameters)."""

    def __init__(
        self, horizon: int | None = None, num_symbols: int = 6, min_len: int = 2, max_len: int = 6
    ) -> None:
        super().__init__(horizon, num_symbols, min_len, max_len, dense=True)


# ----------------------------------------------------------------------------- ExprTarget
EXPR_SYMBOLS = [*string.digits, "+", "-", "*", "(", ")", " "]


class _ExprReward(RewardFunction):
    mode: ClassVar[RewardMode] = "terminal"

    def __init__(self, require_operator: bool) -> None:
        self.require_operator = require_operator

    def score(self, text: str, target: int) -> float:
        """Graded score of one response (see :class:`ExprTargetTask`)."""
        result = safe_expr.evaluate(text)
        if not result.valid or result.value is None:
            return 0.0
        if result.value != target:
            return 0.1 + 0.4 / (1.0 + abs(result.value - target))
        if self.require_operator and result.num_operators == 0:
            return 0.6
        return 1.0

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        texts = batch.response_texts()
        scores = [
            self.score(t, int(p.metadata["target"]))
            for t, p in zip(texts, batch.prompts, strict=True)
        ]
        return torch.tensor(scores, dtype=torch.float32, device=batch.response_ids.device)


class ExprTargetTask(ToyTask):
    """Syntax task: the prompt is a number followed by ``=`` (e.g. ``17=``); the response must be
    a Python integer expression over ``0-9 + - * ( )`` and space whose value is that number.

    Terminal, graded score (evaluated safely by :mod:`marlhf.envs.builtin.safe_expr`, never
    ``eval``): 0 when empty, unparseable or outside the grammar; ``0.1 + 0.4 / (1 + |value -
    target|)`` (in (0.1, 0.5]) for a valid expression with the wrong value; 0.6 for a bare literal
    with the right value when ``require_operator``; 1 for a correct expression with an operator.
    Optimal 1 (e.g. ``17+0``). The random return has no closed form: :attr:`random_return` is a
    seeded Monte-Carlo estimate (4096 episodes, seed 0), about 0.017 at the defaults.

    :param horizon: ``max_new_tokens`` (default 12); at least the length of ``<max_target>+0``.
    :param max_target: targets are uniform in ``[0, max_target]`` (default 30).
    :param require_operator: full credit only for expressions with an operator (default True).
    """

    def __init__(
        self, horizon: int = 12, max_target: int = 30, require_operator: bool = True
    ) -> None:
        self.name = "ExprTarget"
        self.max_target = _check_int(self.name, "max_target", max_target, 0, 10**6)
        shortest = len(str(self.max_target)) + 2
        self.max_new_tokens = _check_int(self.name, "horizon", horizon, shortest, 64)
        if not isinstance(require_operator, bool):
            raise TypeError(f"{self.name}: require_operator={require_operator!r} must be a bool")
        self.codec = SymbolCodec([*EXPR_SYMBOLS, "="])
        self.max_prompt_len = len(str(self.max_target)) + 1
        self.reward_fn = _ExprReward(require_operator)
        self.optimal_return = 1.0

    @cached_property
    def random_return(self) -> float:  # type: ignore[override]

        return float(random_returns(self, episodes=4096, seed=0).mean())

    def sample_prompts(self, rng: np.random.Generator, n: int) -> list[Prompt]:
        return self._target_prompts(rng, n, self.max_target)

    def action_mask(self) -> np.ndarray:
        return self._mask_of(EXPR_SYMBOLS, eos=True)

    def optimal_response(self, prompt: Prompt) -> list[int]:
        ids = self.codec.encode(f"{prompt.metadata['target']}+0")
        eos = self.codec.eos_token_id
        return ids + ([] if eos is None else [eos])


register_task("DelayedChoice", DelayedChoiceTask)
register_task("Reverse", ReverseTask)
register_task("ReverseDense", ReverseDenseTask)
register_task("ExprTarget", ExprTargetTask)
