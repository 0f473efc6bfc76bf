"""The rollout buffer: one rollout of ``B`` episodes of up to ``N`` response tokens, on device.

Unlike SB3's ``RolloutBuffer`` (``n_steps x n_envs`` transitions), an LM rollout is one episode
per env row, so the buffer is rectangular ``[B, N]`` with a mask, and minibatches are drawn over
rows (whole episodes) so every sample keeps its segments intact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch


@dataclass
class RolloutSamples:
    """A minibatch of whole episodes (every field indexed by row)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    starts: torch.Tensor
    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    ref_logprobs: torch.Tensor
    keep: torch.Tensor
    action_mask: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        """``int64[b, P + N]``: prompt then response, as the policy scores them."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """``int64[b, P + N]``: 1 on real prompt and response tokens."""
        return torch.cat([self.prompt_mask.long(), self.response_mask.long()], dim=1)


class LMRolloutBuffer:
    """Storage for one rollout, filled step by step and then completed with no-grad scores.

    :param num_envs: ``B``, episodes per rollout (one per env row).
    :param prompt_len: ``P``, columns of the left-padded prompt.
    :param max_new_tokens: ``N``, the response length limit in tokens.
    :param device: where every tensor lives.
    """

    def __init__(
        self, num_envs: int, prompt_len: int, max_new_tokens: int, device: torch.device
    ) -> None:
        for name, value in (
            ("num_envs", num_envs),
            ("prompt_len", prompt_len),
            ("max_new_tokens", max_new_tokens),
        ):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LMRolloutBuffer: {name}={value!r} must be a positive int")
        self.num_envs = num_envs
        self.prompt_len = prompt_len
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.reset()

    def reset(self) -> None:
        """Empty the buffer (tensors are re-allocated zeroed)."""
        b, p, n, dev = self.num_envs, self.prompt_len, self.max_new_tokens, self.device
        self.prompt_ids = torch.zeros(b, p, dtype=torch.long, device=dev)
        self.prompt_mask = torch.zeros(b, p, dtype=torch.long, device=dev)
        self.response_ids = torch.zeros(b, n, dtype=torch.long, device=dev)
        self.response_mask = torch.zeros(b, n, dtype=torch.bool, device=dev)
        self.task_rewards = torch.zeros(b, n, dtype=torch.float32, device=dev)
        self.logprobs = torch.zeros(b, n, dtype=torch.float32, device=dev)
        self.ref_logprobs = torch.zeros(b, n, dtype=torch.float32, device=dev)
        self.values = torch.zeros(b, n, dtype=torch.float32, device=dev)
        self.rewards = torch.zeros(b, n, dtype=torch.float32, device=dev)
        self.starts = torch.zeros(b, n, dtype=torch.bool, device=dev)
        self.advantages = torch.zeros(b, n, dtype=torch.float32, device=dev)
        self.returns = torch.zeros(b, n, dtype=torch.float32, device=dev)
        #: ``bool[B, V]`` tokens each episode was allowed (``None``: the whole vocabulary).
        self.action_mask: torch.Tensor | None = None
        #: ``int64[B]``: rows with the same id answer the same prompt (``None``: no groups).
        self.group_ids: torch.Tensor | None = None
        #: Baseline inputs of the last estimate: ``float[B, T]`` Monte-Carlo values (NaN off the
        #: branch points) and ``float[B]`` greedy-rollout rewards, when the estimator used them.
        self.mc_values: torch.Tensor | None = None
        self.greedy_rewards: torch.Tensor | None = None
        #: Whether ``values``/``returns`` hold a critic's values (False for critic-free credit).
        self.has_values = False
        #: ``bool[B]`` rows the update learns from (False: left out, e.g. a uniform group), or
        #: ``bool[B, N]`` tokens (SPO's probability mask takes single tokens out).
        self.keep = torch.ones(b, dtype=torch.bool, device=dev)
        self.pos = 0

    def set_prompts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Store the prompts: the last ``P`` columns of the reset observation."""
        self.prompt_ids.copy_(input_ids[:, -self.prompt_len :])
        self.prompt_mask.copy_(attention_mask[:, -self.prompt_len :])

    def set_scores(
        self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, values: torch.Tensor | None
    ) -> None:
        """Store the no-grad scores of the rollout (``float[B, N]`` each; 0 written on padding).

        :param values: the critic's values, or ``None`` when the estimator needs no critic.
        """
        mask = self.response_mask
        self.logprobs = torch.where(mask, logprobs.float(), 0.0)
        self.ref_logprobs = torch.where(mask, ref_logprobs.float(), 0.0)
        self.has_values = values is not None
        self.values = (
            torch.zeros_like(self.logprobs)
            if values is None
            else torch.where(mask, values.float(), 0.0)
        )

    def set_rewards(self, rewards: torch.Tensor) -> None:
        """Store the shaped rewards ``float[B, N]`` (what the estimator credits)."""
        self.rewards = rewards

    def set_starts(self, starts: torch.Tensor) -> None:
        """Store the segment starts ``bool[B, N]``."""
        self.starts = starts

    def set_baselines(
        self, mc_values: torch.Tensor | None, greedy_rewards: torch.Tensor | None
    ) -> None:
        """Store the baseline rollouts' results the estimator read (for audits and tests)."""
        self.mc_values = mc_values
        self.greedy_rewards = greedy_rewards

    def set_estimate(
        self,
        advantages: torch.Tensor,
        returns: torch.Tensor | None,
        keep: torch.Tensor | None = None,
    ) -> None:
        """Store the estimator's advantages, value targets (``None``: no critic to train) and
        the rows (``bool[B]``) or tokens (``bool[B, N]``) the update learns from (``None``:
        all)."""
        self.advantages = advantages
        if keep is not None:
            self.keep = keep
        self.returns = torch.zeros_like(advantages) if returns is None else returns

    def add(
        self, actions: torch.Tensor, rewards: torch.Tensor, active: torch.Tensor | None
    ) -> None:
        """Record one env step: ``actions int64[B]``, ``rewards float[B]``, ``active bool[B]``
        (rows that were still generating, whose action the env took; ``None`` when every row
        was, which skips the masking)."""
        if self.pos >= self.max_new_tokens:
            raise ValueError(
                f"LMRolloutBuffer.add: the buffer holds max_new_tokens={self.max_new_tokens} steps"
            )
        t = self.pos
        if active is None:
            self.response_ids[:, t] = actions
            self.response_mask[:, t] = True
            self.task_rewards[:, t] = rewards  # cast to float32 as .float() would
        else:
            self.response_ids[:, t] = torch.where(active, actions, 0)
            self.response_mask[:, t] = active
            self.task_rewards[:, t] = torch.where(active, rewards.float(), 0.0)
        self.pos += 1

    @property
    def input_ids(self) -> torch.Tensor:
        """``int64[B, P + N]``: prompts then responses, as the policy scores them."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """``int64[B, P + N]``: 1 on real prompt and response tokens."""
        return torch.cat([self.prompt_mask.long(), self.response_mask.long()], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        """``int64[B]``: response tokens of each episode."""
        return self.response_mask.sum(dim=1)

    def get(
        self, batch_size: int | None = None, generator: torch.Generator | None = None
    ) -> Iterator[RolloutSamples]:
        """Yield minibatches of ``batch_size`` rows in a random order (all rows when ``None``).

        :param generator: seeded CPU generator for the permutation.
        """
        size = self.num_envs if batch_size is None else batch_size
        if size <= 0 or self.num_envs % size != 0:
            raise ValueError(
                f"batch_size={size} must be a positive divisor of the rollout's "
                f"num_envs={self.num_envs}"
            )
        order = torch.randperm(self.num_envs, generator=generator).to(self.device)
        for begin in range(0, self.num_envs, size):
            idx = order[begin : begin + size]
            yield self._samples(idx)

    def rows(self, idx: torch.Tensor) -> RolloutSamples:
        """The episodes ``idx`` (``int64[k]`` row indices, maybe none) as one minibatch."""
        return self._samples(idx)

    def _samples(self, idx: torch.Tensor) -> RolloutSamples:
        source = {
            "prompt_ids": self.prompt_ids,
            "prompt_mask": self.prompt_mask,
            "response_ids": self.response_ids,
            "response_mask": self.response_mask,
            "starts": self.starts,
            "old_logprobs": self.logprobs,
            "old_values": self.values,
            "advantages": self.advantages,
            "returns": self.returns,
            "ref_logprobs": self.ref_logprobs,
            "keep": self.keep,
        }
        samples = {f.name: source[f.name][idx] for f in fields(RolloutSamples) if f.name in source}
        mask = None if self.action_mask is None else self.action_mask[idx]
        return RolloutSamples(**samples, action_mask=mask)
