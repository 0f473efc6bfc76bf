"""The rollout buffer: one rollout of ``B`` episodes of up to ``N`` response tokens, on device.

Unlike SB3's ``RolloutBuffer`` (``n_steps x n_envs`` transitions), an LM rollout is one episode
per env row, so the buffer is rectangular ``[B, N]`` with a mask, and minibatches are drawn over
rows (whole episodes) so every sample keeps its segments intact.

Multi-turn rollouts (:meth:`LMRolloutBuffer.add_turn_step`): ``response_ids``/``response_mask``
hold the whole episode, agent tokens and the env's forced tokens interleaved, which is what the
model reads. Everything credit assignment reads (log-probs, rewards, values, starts, advantages,
returns, ``credit_mask``) is in the *action layout*: each row's action tokens packed to the
left, ``action_index[b, j]`` the episode column of action ``j``. Every estimator, termination and
loss then sees what a single-turn rollout gives it (a prefix mask over actions), with the env's
tokens in the context only. A single-turn rollout is the case where both layouts are one
(``action_index`` is ``None``, ``credit_mask`` is ``response_mask``).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch

from marlhf.envs.core.caught_up import CaughtUp


def to_action_layout(x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, j]]`` where ``mask[b, j]``, 0 elsewhere (episode -> action layout)."""
    return torch.where(mask, x.gather(1, index), torch.zeros((), dtype=x.dtype, device=x.device))


@dataclass
class TurnData:
    """The turn structure of a rollout, in the action layout (see the module docstring).

    :param turn_ids: ``int64[B, T]`` the turn of each action (-1 on padding).
    :param turn_starts: ``bool[B, T]`` the first action of each turn.
    :param turn_rewards: ``float32[B, K]`` each turn's env reward (0 past ``num_turns``).
    :param num_turns: ``int64[B]``.
    :param turn_state_keys: per row, the env state's key at each turn start (``None``: the env
        has no ``state_key``).
    :param terminated: ``bool[B]`` the env ended the episode.
    :param truncated: ``bool[B]`` a limit ended it.
    """

    turn_ids: torch.Tensor
    turn_starts: torch.Tensor
    turn_rewards: torch.Tensor
    num_turns: torch.Tensor
    turn_state_keys: list[list[Hashable]] | None
    terminated: torch.Tensor
    truncated: torch.Tensor


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
    #: multi-turn: ``int64[b, N]`` episode column of each action, and ``bool[b, N]`` the
    #: action-layout mask (``None``: single-turn, both layouts are one).
    action_index: torch.Tensor | None = None
    credit_mask: torch.Tensor | None = None

    @property
    def loss_mask(self) -> torch.Tensor:
        """``bool[b, N]`` the actions the loss counts (in the layout of the advantages)."""
        return self.response_mask if self.credit_mask is None else self.credit_mask

    def to_actions(self, x: torch.Tensor) -> torch.Tensor:
        """A ``[b, N]`` model output in the episode layout as the loss reads it."""
        if self.action_index is None or self.credit_mask is None:
            return x
        return to_action_layout(x, self.action_index, self.credit_mask)

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
        #: Steps :meth:`add` recorded with every row active and not written yet: their actions
        #: and rewards, from column ``_pending_from`` on (:meth:`_write_pending`).
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_from = 0
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
        #: ``float[B, N]`` per-token entropy of the scoring forward, kept only for a termination
        #: that cuts on it (``None`` otherwise).
        self.entropy: torch.Tensor | None = None
        #: Whether ``logprobs`` still wait for the update's forward to give them (zeros until
        #: then; :func:`marlhf.algorithms.pipeline.score` with ``defer=True``).
        self.logprobs_deferred = False
        #: ``bool[B]`` rows the update learns from (False: left out, e.g. a uniform group), or
        #: ``bool[B, N]`` tokens (SPO's probability mask takes single tokens out).
        self.keep = torch.ones(b, dtype=torch.bool, device=dev)
        self.pos = 0
        #: Multi-turn only (``None`` otherwise): ``bool[B, N]`` episode tokens the agent
        #: sampled, per-row filled columns, the action layout's index, and the turns.
        self.is_action: torch.Tensor | None = None
        self.row_lengths: torch.Tensor | None = None
        self.action_index: torch.Tensor | None = None
        self.turns: TurnData | None = None
        #: ``bool[B, N]`` what credit assignment counts (the action layout's mask); ``None``:
        #: the response mask (single-turn).
        self._credit_mask: torch.Tensor | None = None

    # ------------------------------------------- the fields add() writes, caught up on a read
    response_ids = CaughtUp(
        "_write_pending",
        on_set=True,
        doc="``int64[B, N]``: the sampled tokens (0 on padding; multi-turn: with the env's).",
    )
    response_mask = CaughtUp(
        "_write_pending", on_set=True, doc="``bool[B, N]``: True on the response's tokens."
    )
    task_rewards = CaughtUp(
        "_write_pending",
        on_set=True,
        doc="``float32[B, N]``: the env's reward of each step (action layout).",
    )
    _response_ids: torch.Tensor
    _response_mask: torch.Tensor
    _task_rewards: torch.Tensor

    @property
    def credit_mask(self) -> torch.Tensor:
        """``bool[B, N]`` what credit assignment counts: the action layout's mask (the
        response mask when single-turn)."""
        return self.response_mask if self._credit_mask is None else self._credit_mask

    @credit_mask.setter
    def credit_mask(self, value: torch.Tensor) -> None:
        self._credit_mask = value

    def _write_pending(self) -> None:
        """Write the steps :meth:`add` kept while every row was active into their columns, in
        place (the values one write a step would have left)."""
        if not self._pending:
            return
        begin = self._pending_from
        end = begin + len(self._pending)
        actions, rewards = zip(*self._pending, strict=True)
        self._pending = []
        self._response_ids[:, begin:end] = torch.stack(actions, dim=1)
        self._response_mask[:, begin:end] = True
        self._task_rewards[:, begin:end] = torch.stack(rewards, dim=1)

    def set_prompts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Store the prompts: the last ``P`` columns of the reset observation."""
        self.prompt_ids.copy_(input_ids[:, -self.prompt_len :])
        self.prompt_mask.copy_(attention_mask[:, -self.prompt_len :])

    def set_scores(
        self,
        logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor,
        values: torch.Tensor | None,
        entropy: torch.Tensor | None = None,
        deferred: bool = False,
    ) -> None:
        """Store the no-grad scores of the rollout (``float[B, N]`` each, in the action layout;
        0 written on padding).

        :param values: the critic's values, or ``None`` when the estimator needs no critic.
        :param entropy: the per-token entropy, or ``None`` when nothing reads it.
        :param deferred: ``logprobs`` are placeholders the update fills
            (:meth:`fill_logprobs`).
        """
        mask = self.credit_mask
        self.entropy = entropy
        self.logprobs_deferred = deferred
        self.logprobs = torch.where(mask, logprobs.float(), 0.0)
        self.ref_logprobs = torch.where(mask, ref_logprobs.float(), 0.0)
        self.has_values = values is not None
        self.values = (
            torch.zeros_like(self.logprobs)
            if values is None
            else torch.where(mask, values.float(), 0.0)
        )

    def fill_logprobs(self, rows: torch.Tensor, logprobs: torch.Tensor) -> None:
        """Store the policy's log-probs ``float[b, N]`` of ``rows`` that scoring deferred
        (0 written on padding); the buffer's log-probs are then complete."""
        mask = self.credit_mask[rows]
        self.logprobs[rows] = torch.where(mask, logprobs.detach().float(), 0.0)
        self.logprobs_deferred = False

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
        was, which skips the masking).

        With ``active=None`` the step is kept by reference and written with the steps after it
        at the next read of ``response_ids``, ``response_mask`` or ``task_rewards`` (or the next
        masked step): the caller must not change ``actions`` or ``rewards`` in place afterwards
        (the collector's are fresh tensors every step)."""
        if self.pos >= self.max_new_tokens:
            raise ValueError(
                f"LMRolloutBuffer.add: the buffer holds max_new_tokens={self.max_new_tokens} steps"
            )
        t = self.pos
        if active is None:
            if not self._pending:
                self._pending_from = t
            self._pending.append((actions, rewards))  # (rewards cast to float32 when written)
        else:
            self.response_ids[:, t] = torch.where(active, actions, 0)
            self.response_mask[:, t] = active
            self.task_rewards[:, t] = torch.where(active, rewards.float(), 0.0)
        self.pos += 1

    def add_turn_step(
        self,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        active: torch.Tensor,
        forced_ids: torch.Tensor | None = None,
        forced_lengths: torch.Tensor | None = None,
    ) -> None:
        """Record one step of a multi-turn env: each active row's action (and its reward) at
        its next column, then the forced tokens the env appended after it (context, not
        actions; ``forced_ids int64[B, F]`` real up to ``forced_lengths int64[B]``)."""
        b, n = self.num_envs, self.max_new_tokens
        if self.row_lengths is None or self.is_action is None:
            self.row_lengths = torch.zeros(b, dtype=torch.long, device=self.device)
            self.is_action = torch.zeros(b, n, dtype=torch.bool, device=self.device)
        pos = self.row_lengths.clamp(max=n - 1)[:, None]

        def put(field: torch.Tensor, value: torch.Tensor) -> None:
            field.scatter_(1, pos, torch.where(active, value, field.gather(1, pos)[:, 0])[:, None])

        put(self.response_ids, actions)
        put(self.response_mask, torch.ones_like(active))
        put(self.is_action, torch.ones_like(active))
        put(self.task_rewards, rewards.float())
        self.row_lengths += active.long()
        if forced_ids is not None and forced_lengths is not None:
            counts = forced_lengths.tolist()
            for i in (i for i, c in enumerate(counts) if c > 0):
                at = int(self.row_lengths[i])
                if at + counts[i] > n:
                    raise ValueError(
                        f"LMRolloutBuffer.add_turn_step: row {i} holds {at + counts[i]} tokens; "
                        f"the episode's limit is max_new_tokens={n}"
                    )
                self.response_ids[i, at : at + counts[i]] = forced_ids[i, : counts[i]]
                self.response_mask[i, at : at + counts[i]] = True
                self.row_lengths[i] = at + counts[i]
        self.pos += 1

    def set_turns(self, record: Any) -> None:
        """Close a multi-turn rollout: build the action layout and store the turns.

        :param record: the env's turn record (:class:`~marlhf.envs.multiturn.env.TurnRecord`:
            ``turn_ids`` in the episode layout, ``turn_rewards``, ``num_turns``,
            ``turn_state_keys``, ``terminated``, ``truncated``).
        """
        if self.is_action is None:
            raise ValueError("LMRolloutBuffer.set_turns: no multi-turn step was recorded")
        n_actions = self.is_action.sum(dim=1)
        cols = torch.arange(self.max_new_tokens, device=self.device)
        self.credit_mask = cols[None, :] < n_actions[:, None]
        # Stable sort of "not an action": the action columns first, in order.
        self.action_index = torch.sort((~self.is_action).to(torch.int8), dim=1, stable=True)[1]
        self.task_rewards = self.to_actions(self.task_rewards)
        turn_ids = torch.where(
            self.credit_mask,
            self.to_actions(record.turn_ids.to(self.device)),
            torch.full_like(cols, -1),
        )
        previous = torch.cat([torch.full_like(turn_ids[:, :1], -1), turn_ids[:, :-1]], dim=1)
        self.turns = TurnData(
            turn_ids=turn_ids,
            turn_starts=self.credit_mask & (turn_ids != previous),
            turn_rewards=record.turn_rewards.to(self.device).float(),
            num_turns=record.num_turns.to(self.device),
            turn_state_keys=record.turn_state_keys,
            terminated=record.terminated.to(self.device),
            truncated=record.truncated.to(self.device),
        )

    def to_actions(self, x: torch.Tensor) -> torch.Tensor:
        """A ``[B, N]`` tensor in the episode layout, in the action layout (as is when
        single-turn)."""
        if self.action_index is None:
            return x
        return to_action_layout(x, self.action_index, self.credit_mask)

    @property
    def action_ids(self) -> torch.Tensor:
        """``int64[B, N]`` the sampled tokens in the action layout (what terminations cut)."""
        return self.to_actions(self.response_ids)

    def turn_data(self, eos_token_id: int | None = None) -> TurnData:
        """The turns of the rollout; a single-turn rollout is one turn (its reward the sum of
        its task rewards; terminated when it ends on ``eos_token_id``, else truncated)."""
        if self.turns is not None:
            return self.turns
        mask = self.response_mask
        lengths = mask.sum(dim=1)
        last = self.response_ids.gather(1, (lengths - 1).clamp(min=0)[:, None])[:, 0]
        terminated = (lengths > 0) & (last == eos_token_id if eos_token_id is not None else False)
        starts = torch.zeros_like(mask)
        starts[:, 0] = lengths > 0
        return TurnData(
            turn_ids=torch.where(mask, 0, -1),
            turn_starts=starts,
            turn_rewards=self.task_rewards.sum(dim=1, keepdim=True),
            num_turns=(lengths > 0).long(),
            turn_state_keys=None,
            terminated=terminated,
            truncated=(lengths > 0) & ~terminated,
        )

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
        if self.action_index is not None:
            source.update(action_index=self.action_index, credit_mask=self.credit_mask)
        samples = {f.name: source[f.name][idx] for f in fields(RolloutSamples) if f.name in source}
        mask = None if self.action_mask is None else self.action_mask[idx]
        return RolloutSamples(**samples, action_mask=mask)
