"""What both methods of :mod:`marlhf.credit.truth` build on.

:class:`Sampling` (the policy's sampling distribution), :class:`TrueAdvantages` (the result),
:func:`env_rewards` (the task's own env scoring fixed responses), and the checks and tensors
shared by the exact and the Monte-Carlo truth (rollout shapes, left-padded prompts, the
policy's next-token logits after a prompt and a prefix, the Monte-Carlo truth's argument
checks, sampler and result).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from marlhf.envs.core.batched import BatchedTokenEnv
from marlhf.envs.core.tasks import Prompt, Task
from marlhf.policy.actor_critic import CausalLMActorCritic
from marlhf.policy.lm_utils import filter_logits, mask_logits


@dataclass(frozen=True)
class Sampling:
    """How the policy turns logits into its sampling distribution (as ``policy.sample`` does).

    :param temperature: logits are divided by it (> 0).
    :param top_k: keep the ``k`` most likely tokens (0: all).
    :param top_p: nucleus threshold (1.0: all).
    :param action_mask: ``bool[V]`` tokens the policy may sample, or ``None`` for all.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    action_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"Sampling: temperature={self.temperature!r} must be > 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"Sampling: top_p={self.top_p!r} must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"Sampling: top_k={self.top_k!r} must be >= 0 (0: off)")

    @classmethod
    def of(cls, algo: Any) -> Sampling:
        """The sampling settings of an algorithm (``PPO``/``MAPPO``) and its env."""
        config = algo.config
        mask = None
        if config.sampling.mask_actions:
            mask = torch.as_tensor(algo.env.task.action_mask(), dtype=torch.bool)
        return cls(
            float(config.sampling.temperature),
            int(config.sampling.top_k),
            float(config.sampling.top_p),
            mask,
        )

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """``float[..., V]`` sampling probabilities from logits ``[..., V]`` (float32 or wider)."""
        scaled = logits.to(torch.promote_types(logits.dtype, torch.float32)) / self.temperature
        if self.action_mask is not None:
            scaled = mask_logits(scaled, self.action_mask.to(scaled.device))
        flat = filter_logits(scaled.reshape(-1, scaled.shape[-1]), self.top_k, self.top_p)
        return flat.softmax(dim=-1).reshape(scaled.shape)


@dataclass
class TrueAdvantages:
    """Per-token truth for a batch of responses (``float64[B, T]``, 0 on padding).

    :param advantages: ``A(s_t, a_t)``.
    :param values: ``V(s_t)``, the value of the state before token ``t``.
    :param q_values: ``Q(s_t, a_t)``.
    :param stderr: standard error of each advantage (Monte Carlo), ``None`` when exact.
    :param method: ``"exact"`` or ``"mc"``.
    :param stats: cost counters (sequences, forward tokens, env steps, seconds, ...).
    """

    advantages: torch.Tensor
    values: torch.Tensor
    q_values: torch.Tensor
    stderr: torch.Tensor | None
    method: str
    stats: dict[str, float] = field(default_factory=dict)


def model_and_vocab(policy: nn.Module, vocab_size: int) -> tuple[nn.Module, torch.device]:
    """``(causal LM, device)`` of a policy or a bare LM; raises when its vocabulary is smaller
    than the task's ``vocab_size``."""
    model = policy.model if isinstance(policy, CausalLMActorCritic) else policy
    try:
        device = next(policy.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    if isinstance(policy, CausalLMActorCritic) and policy.vocab_size < vocab_size:
        raise ValueError(
            f"truth: the policy's vocabulary ({policy.vocab_size}) is smaller than the task's "
            f"({vocab_size})"
        )
    return model, device


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off while the truth is computed (the sampler's distribution has none)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def next_token_logits(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, first: int, vocab_size: int
) -> torch.Tensor:
    """Logits ``float[R, L - first, V]`` predicting the tokens at columns ``first ..``."""
    positions = (mask.long().cumsum(dim=-1) - 1).clamp(min=0)
    with _eval_mode(model):
        out = model(input_ids=ids, attention_mask=mask.long(), position_ids=positions)
    return out.logits[:, first - 1 : -1, :vocab_size].float()


@torch.no_grad()
def next_token_probs(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    sampling: Sampling,
    vocab_size: int,
    pad: int,
) -> torch.Tensor:
    """``float64[R, V]`` (on the model's device): the sampling distribution of the token after
    each left-padded context ``ids``/``mask`` ``[R, L]``."""
    device = next(iter(model.parameters())).device
    width = ids.shape[1]
    # One masked column after the contexts: its prediction is the next token's.
    ids = torch.cat([ids, torch.full_like(ids[:, :1], pad)], dim=1)
    mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], dim=1)
    logits = next_token_logits(model, ids.to(device), mask.to(device), width, vocab_size)
    return sampling.probs(logits[:, 0].double())


def check_samples(name: str, samples: Any, least: int) -> None:
    """Raise unless ``samples`` is an int ``>= least``; ``name`` is the caller's."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < least:
        raise ValueError(f"{name}: samples={samples!r} must be an int >= {least}")


def check_gamma(name: str, gamma: float) -> None:
    """Raise unless ``0 <= gamma <= 1``; ``name`` is the caller's."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"{name}: gamma={gamma!r} must be in [0, 1]")


def mc_sampler(
    policy: nn.Module, vocab_size: int, seed: int
) -> tuple[nn.Module, torch.device, torch.Generator]:
    """``(causal LM, device, generator seeded with seed on that device)`` for Monte Carlo."""
    model, device = model_and_vocab(policy, vocab_size)
    return model, device, torch.Generator(device=device).manual_seed(seed)


def mc_truth(
    rewards: torch.Tensor,
    v_mean: torch.Tensor,
    v_se: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    stats: dict[str, float],
) -> TrueAdvantages:
    """The Monte-Carlo truth from each step's reward and value estimates.

    ``Q(s_t, a_t) = r_t + gamma V(s_{t+1})``; the two values come from independent
    continuations, so ``se_A = sqrt(gamma**2 se_V(t+1)**2 + se_V(t)**2)``.

    :param rewards: ``float64[B, T]`` each step's reward.
    :param v_mean: ``float64[B, T + 1]`` the values before each step (0 once the episode ended).
    :param v_se: ``float64[B, T + 1]`` their standard errors.
    :param mask: ``bool[B, T]`` the real steps (the results are 0 elsewhere).
    :param stats: the cost counters to report.
    """
    T = rewards.shape[1]
    zeros = torch.zeros(rewards.shape, dtype=torch.float64)
    q = torch.where(mask, rewards + gamma * v_mean[:, 1:], zeros)
    values = torch.where(mask, v_mean[:, :T], zeros)
    se = torch.where(mask, (gamma**2 * v_se[:, 1:] ** 2 + v_se[:, :T] ** 2).sqrt(), zeros)
    return TrueAdvantages(q - values, values, q, se, "mc", stats)


def check_rollouts(
    task: Task, prompts: list[Prompt], response_ids: torch.Tensor, mask: torch.Tensor
) -> None:
    """Raise unless there is one prompt per ``[B, T]`` response row and ``T`` fits the task's
    horizon."""
    if response_ids.dim() != 2 or response_ids.shape != mask.shape:
        raise ValueError(
            f"truth: response_ids {tuple(response_ids.shape)} and response_mask "
            f"{tuple(mask.shape)} must both be [B, T]"
        )
    if len(prompts) != response_ids.shape[0]:
        raise ValueError(
            f"truth: {len(prompts)} prompts for {response_ids.shape[0]} responses; one per row"
        )
    if response_ids.shape[1] > task.max_new_tokens:
        raise ValueError(
            f"truth: responses have {response_ids.shape[1]} columns but task {task.name!r} "
            f"has horizon {task.max_new_tokens}"
        )


def prompt_tensors(
    prompts: list[Prompt], width: int, pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids int64[R, width], mask bool[R, width])``: the prompts left-padded with ``pad``."""
    ids = torch.full((len(prompts), width), pad, dtype=torch.int64)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p.ids) :] = torch.as_tensor(p.ids, dtype=torch.int64)
        mask[i, width - len(p.ids) :] = True
    return ids, mask


def env_rewards(
    task: Task, prompts: list[Prompt], scripts: torch.Tensor, batch_rows: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step the task's env through fixed responses; ``(rewards float64[R, H], lengths int64[R])``.

    :param scripts: ``int64[R, H]`` the tokens each row writes (what follows an EOS is ignored).
    """
    horizon = task.max_new_tokens
    rewards = torch.zeros((len(prompts), horizon), dtype=torch.float64)
    lengths = torch.zeros(len(prompts), dtype=torch.int64)
    for begin in range(0, len(prompts), batch_rows):
        rows = prompts[begin : begin + batch_rows]
        env = BatchedTokenEnv(task, num_envs=len(rows))
        env.reset(options={"prompts": rows})
        for t in range(horizon):
            actions = torch.where(env.done, env.pad_token_id, scripts[begin : begin + len(rows), t])
            _, r, *_ = env.step(actions)
            rewards[begin : begin + len(rows), t] = r.double()
            if env.all_done:
                break
        lengths[begin : begin + len(rows)] = env.lengths
    return rewards, lengths
