"""``MultiTurnTokenEnv``: B text-level multi-turn envs driven one agent token per ``step``.

Every ``step`` takes one token per active row, like :class:`~marlhf.envs.BatchedTokenEnv`. A
row's agent turn ends on the task's ``end_of_turn_id`` or after ``max_turn_tokens`` tokens; the
turn's text goes to that row's text env (``env.step``), whose reward is this step's reward of
the row (it sits on the turn's last action token). Unless the episode ended, the env's answer
is tokenised and appended to the row *in the same step* as forced tokens: context, not actions.
So rows never wait for each other: every active row samples one token per step, whatever turn
it is in, and a row whose turn just ended also received its observation.

What the agent needs to feed its KV cache comes in ``info`` when some row received forced
tokens: ``info["forced_ids"]`` (``int64[B, F]``, pad-filled) and ``info["forced_lengths"]``
(``int64[B]``): the tokens each row appended after its action. Feeding ``[action, forced...]``
to the cache is one forward over the new tokens, never a re-prefill of the history.

The observation is the window ``L = P + T`` of each row (left-padded, as the single-turn env's):
the first observation right-aligned at reset, then every appended token, agent or forced.

Episode record (read with :meth:`MultiTurnTokenEnv.turn_record` after the last step): which
tokens are actions, each token's turn, each turn's reward and state key, and whether each row
terminated (the env said so) or was truncated (the env said so, ``max_turns`` turns, or no room
left in ``max_new_tokens``) - kept apart.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import torch

from marlhf.envs.core.action_checks import check_actions
from marlhf.envs.core.registration import task_factory
from marlhf.envs.core.reset_options import check_prompts
from marlhf.envs.core.tasks import Prompt
from marlhf.envs.core.token_vector_env import TokenVectorEnv
from marlhf.envs.multiturn.protocol import CheckedTextEnv, TextEnvError, as_text_env
from marlhf.envs.multiturn.record import TurnRecord
from marlhf.envs.multiturn.task import MultiTurnTask, check_multiturn_task

Obs = dict[str, torch.Tensor]
RESET_OPTIONS = ("group_size", "prompts", "prefixes")


def make_multiturn_task(task: MultiTurnTask | str, **task_kwargs: Any) -> MultiTurnTask:
    """A checked :class:`MultiTurnTask` from an instance, a registered name or an env id."""
    if isinstance(task, str):
        built: Any = task_factory(task)(**task_kwargs)
        if not isinstance(built, MultiTurnTask):
            raise TypeError(
                f"task {task!r} is not a multi-turn task (got {type(built).__name__}); run it "
                "with marlhf.envs.BatchedTokenEnv"
            )
        task = built
    elif task_kwargs:
        raise TypeError(
            f"task {getattr(task, 'name', task)!r} is already built; task kwargs "
            f"{sorted(task_kwargs)} can only be given with a task name"
        )
    check_multiturn_task(task)
    return task


class MultiTurnTokenEnv(TokenVectorEnv):
    """The batched token env of a multi-turn task (see the module docstring).

    :param task: a :class:`MultiTurnTask`, or the name / env id of a registered one.
    :param num_envs: ``B``, rows (episodes) stepped together.
    :param device: torch device of every tensor.
    :param seed: seeds the per-episode env seeds (``reset(seed=...)`` reseeds).
    :param task_kwargs: keyword arguments of the task (only with a task name).
    """

    def __init__(
        self,
        task: MultiTurnTask | str,
        num_envs: int = 1,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        **task_kwargs: Any,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"MultiTurnTokenEnv: num_envs={num_envs!r} must be an int >= 1")
        self.task = make_multiturn_task(task, **task_kwargs)
        self._set_up(self.task, num_envs, device, seed)
        self.end_of_turn_id = int(self.task.end_of_turn_id)
        self.max_turn_tokens = int(self.task.max_turn_tokens)
        self.max_turns = None if self.task.max_turns is None else int(self.task.max_turns)
        self.reward_mode = "env"
        B, dev = num_envs, self.device
        self.envs: list[CheckedTextEnv] = [as_text_env(self.task.make_env()) for _ in range(B)]
        self._clear()
        self.done = torch.ones(B, dtype=torch.bool, device=dev)
        self._needs_reset = True
        self._all_done = True
        self._any_done = True

    def _where(self, row: int | None = None) -> str:
        at = "" if row is None else f", row {row}"
        return f"MultiTurnTokenEnv(task {self.task.name!r}{at})"

    def _clear(self) -> None:
        B, P, T, dev, pad = (
            self.num_envs,
            self.max_prompt_len,
            self.max_new_tokens,
            self.device,
            self.pad_token_id,
        )
        # One tensor per field holds [T pad columns | prompt | response]: the prompt and the
        # response are views into it, so the observation window is one gather (see _obs).
        self._ids = torch.full((B, T + P + T), pad, dtype=torch.int64, device=dev)
        self._mask = torch.zeros((B, T + P + T), dtype=torch.bool, device=dev)
        self.prompt_ids = self._ids[:, T : T + P]
        self.response_ids = self._ids[:, T + P :]
        self.prompt_mask = self._mask[:, T : T + P]
        self.response_mask = self._mask[:, T + P :]
        self._cols = torch.arange(P + T, device=dev)[None, :]
        self.is_action = torch.zeros((B, T), dtype=torch.bool, device=dev)
        self.turn_ids = torch.full((B, T), -1, dtype=torch.int64, device=dev)
        self.lengths = torch.zeros(B, dtype=torch.int64, device=dev)
        self.turn_lengths = torch.zeros(B, dtype=torch.int64, device=dev)
        self.turn_index = torch.zeros(B, dtype=torch.int64, device=dev)
        self.episode_return = torch.zeros(B, dtype=torch.float32, device=dev)
        self.terminated = torch.zeros(B, dtype=torch.bool, device=dev)
        self.truncated = torch.zeros(B, dtype=torch.bool, device=dev)
        self.prompts: list[Prompt] = []
        self._turn_rewards: list[list[float]] = [[] for _ in range(B)]
        self._pending_actions: list[tuple[int, int]] = []
        self._pending_turns: list[int] = []
        self._state_keys: list[list[Hashable]] = [[] for _ in range(B)]

    # ------------------------------------------------------------------ reset
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        """Reset every row's text env and show its first observation.

        :param seed: reseeds the draw of the per-episode env seeds.
        :param options: ``group_size`` (``K`` rows share one env seed, hence one start state),
            ``prompts`` (the ``Prompt`` of each group: every ``K``-th of ``info["prompts"]``:
            their ``metadata["seed"]`` replays those episodes' starts) and ``prefixes`` (with
            ``prompts``: partial episodes replayed token by token, see :meth:`_replay`).
        :returns: ``(obs, info)`` with ``info["prompts"]``, one per row as the single-turn env's
            (``metadata["seed"]`` is the env
            seed) and, with ``group_size``, ``info["group_ids"]``.
        """
        options, K = self._begin_reset(seed, options, RESET_OPTIONS)
        count = self.num_envs // K
        if "prompts" in options:
            given = check_prompts(
                options["prompts"], count, self.max_prompt_len, self.vocab_size, self._where()
            )
            seeds = [self._prompt_seed(p, i) for i, p in enumerate(given)]
        else:
            given = None
            seeds = [int(s) for s in self.np_random.integers(0, 2**31 - 1, size=count)]
        self._clear()
        prompts: list[Prompt] = []
        for i in range(self.num_envs):
            seed_i = seeds[i // K]
            text, _ = self.envs[i].reset(seed=seed_i)
            ids = self.task.encode_observation(text)
            if not 1 <= len(ids) <= self.max_prompt_len:
                raise TextEnvError(
                    f"{self.envs[i].name}.reset(seed={seed_i}) returned an observation of "
                    f"{len(ids)} tokens; valid: 1..max_prompt_len={self.max_prompt_len} "
                    f"(task {self.task.name!r})"
                )
            if given is not None and ids != list(given[i // K].ids):
                raise TextEnvError(
                    f"{self.envs[i].name}.reset(seed={seed_i}) is not deterministic: its first "
                    "observation differs from the prompt being replayed"
                )
            prompts.append(Prompt(ids=ids, metadata={"seed": seed_i}, text=text))
            self.prompt_ids[i, self.max_prompt_len - len(ids) :] = torch.as_tensor(ids)
            self.prompt_mask[i, self.max_prompt_len - len(ids) :] = True
            self._record_state_key(i)
        self.prompts = prompts
        self.done = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self._needs_reset = False
        self._all_done = self._any_done = False
        if "prefixes" in options:
            if given is None:
                raise ValueError(f"{self._where()}: reset option prefixes needs option prompts")
            self._replay(options["prefixes"], K)
        info: dict[str, Any] = {
            "prompts": prompts,
            "prompt_text": [p.text for p in prompts],
        }
        if "group_size" in options:
            info["group_ids"] = torch.arange(self.num_envs, device=self.device) // K
        return self._obs(), info

    def _prompt_seed(self, prompt: Prompt, i: int) -> int:
        seed = prompt.metadata.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise ValueError(
                f"{self._where()}: reset option prompts[{i}] has no metadata['seed']; pass the "
                "prompts a reset returned in info['prompts']"
            )
        return int(seed)

    def _replay(self, prefixes: Any, K: int) -> None:
        """Step each row through its prefix (episode tokens after the prompt): agent tokens are
        replayed as actions; the forced tokens the env appends must equal the prefix's."""
        if len(prefixes) != self.num_envs // K:
            raise ValueError(
                f"{self._where()}: reset option prefixes has {len(prefixes)} entries; expected "
                f"{self.num_envs // K} (one a prompt)"
            )
        for i in range(self.num_envs):
            prefix = [int(t) for t in torch.as_tensor(prefixes[i // K]).reshape(-1).tolist()]
            col = 0
            while col < len(prefix):
                if bool(self.done[i]):
                    raise ValueError(f"{self._where(i)}: prefix goes past the episode's end")
                self._append_action(i, prefix[col])
                n = int(self.lengths[i])
                if n > len(prefix) and not bool(self.done[i]):
                    raise ValueError(
                        f"{self._where(i)}: prefix ends inside an observation (after column "
                        f"{len(prefix)}); a prefix must end before an agent token"
                    )
                if self.response_ids[i, col:n].tolist() != prefix[col:n]:
                    raise TextEnvError(
                        f"{self.envs[i].name}: replaying the prefix gave other env tokens; the "
                        "env is not deterministic given its seed and actions"
                    )
                col = n
            if bool(self.done[i]):
                raise ValueError(f"{self._where(i)}: prefix ends the episode; nothing to continue")
        self.episode_return.zero_()  # rewards are paid from the restart on
        self._any_done = False

    def _obs(self) -> Obs:
        """The left-padded window: prompt then every appended token, right-aligned."""
        cols = self.lengths[:, None] + self._cols
        return {
            "input_ids": self._ids.gather(1, cols),
            "attention_mask": self._mask.gather(1, cols).long(),
        }

    @property
    def all_done(self) -> bool:
        """True when every row has finished (no device sync)."""
        return self._all_done

    @property
    def any_done(self) -> bool:
        """True once any row has finished since the reset (no device sync)."""
        return self._any_done

    # ------------------------------------------------------------------- step
    def step(
        self, actions: torch.Tensor | np.ndarray
    ) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Append one agent token per active row; rows whose turn ends step their text env.

        :returns: ``(obs, rewards float32[B], terminated bool[B], truncated bool[B], info)``;
            ``info["active"]``; ``info["forced_ids"]``/``info["forced_lengths"]`` when some row
            received an observation; at the last step ``prompt_text``, ``response_text`` and
            ``episode_return``.
        """
        if self._needs_reset:
            raise RuntimeError(f"{self._where()}: call reset() before step()")
        if self._all_done:
            raise RuntimeError(f"{self._where()}: step() after every row finished; reset()")
        actions = check_actions(
            actions,
            self.num_envs,
            self.vocab_size,
            self.device,
            self._where,
            check_range=self.validate_actions,
        )
        try:
            return self._advance(actions)
        except Exception:
            self._needs_reset = True
            raise

    def _advance(
        self, actions: torch.Tensor
    ) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        B, T, dev = self.num_envs, self.max_new_tokens, self.device
        active = ~self.done
        before = self.lengths.clone()
        pos = before.clamp(max=T - 1)[:, None]
        self.response_ids.scatter_(
            1, pos, torch.where(active, actions, self.response_ids.gather(1, pos)[:, 0])[:, None]
        )
        self.response_mask.scatter_(
            1, pos, (active | self.response_mask.gather(1, pos)[:, 0])[:, None]
        )  # (is_action and turn_ids are written when the turn ends: _end_turns)
        self.lengths += active.long()
        self.turn_lengths += active.long()
        ends = active & (
            (actions == self.end_of_turn_id)
            | (self.turn_lengths >= self.max_turn_tokens)
            | (self.lengths >= T)
        )
        rewards = torch.zeros(B, dtype=torch.float32, device=dev)
        terminated = torch.zeros(B, dtype=torch.bool, device=dev)
        truncated = torch.zeros(B, dtype=torch.bool, device=dev)
        rows = ends.nonzero().flatten().tolist()  # the one device sync of the step
        if rows:
            idx = torch.as_tensor(rows, device=dev)
            reward, term, trunc = self._end_turns(rows)
            rewards[idx] = torch.as_tensor(reward, dtype=torch.float32, device=dev)
            terminated[idx] = torch.as_tensor(term, device=dev)
            truncated[idx] = torch.as_tensor(trunc, device=dev)
        info: dict[str, Any] = {"active": active}
        if rows:
            added = self.lengths - before - active.long()
            if bool((added > 0).any()):
                info.update(self._forced(before + 1, added))
            self._any_done = self._any_done or bool((terminated | truncated).any())
            self._all_done = bool(self.done.all())
            self.episode_return += rewards
        if self._all_done:
            info.update(self._final_info())
        return self._obs(), rewards, terminated, truncated, info

    def _forced(self, first: torch.Tensor, added: torch.Tensor) -> dict[str, torch.Tensor]:
        """The forced tokens each row appended this step, ``int64[B, F]`` pad-filled."""
        width = int(added.max())
        cols = (first[:, None] + torch.arange(width, device=self.device)[None, :]).clamp(
            max=self.max_new_tokens - 1
        )
        ids = self.response_ids.gather(1, cols)
        keep = torch.arange(width, device=self.device)[None, :] < added[:, None]
        return {
            "forced_ids": torch.where(keep, ids, self.pad_token_id),
            "forced_lengths": added,
        }

    def _append_action(self, i: int, token: int) -> None:
        """One agent token of row ``i`` (the replay's slow path; :meth:`_advance` vectorises
        the same bookkeeping)."""
        n = int(self.lengths[i])
        self.response_ids[i, n] = token
        self.response_mask[i, n] = True
        self.is_action[i, n] = True
        self.turn_ids[i, n] = self.turn_index[i]
        self.lengths[i] += 1
        self.turn_lengths[i] += 1
        if (
            token == self.end_of_turn_id
            or int(self.turn_lengths[i]) >= self.max_turn_tokens
            or n + 1 >= self.max_new_tokens
        ):
            self._end_turns([i])

    def _end_turns(self, rows: list[int]) -> tuple[list[float], list[bool], list[bool]]:
        """Send each row's turn to its env; append the answers or finish the episodes.

        One read of the rows' state and one write of the answers, whatever the row count.
        :returns: per row, ``(reward, terminated, truncated)``.
        """
        idx = torch.as_tensor(rows, device=self.device)
        lengths, turn_lengths = self.lengths[idx].tolist(), self.turn_lengths[idx].tolist()
        turns = (self.turn_index[idx] + 1).tolist()
        tokens = self.response_ids[idx].tolist()
        self.turn_index[idx] += 1
        self.turn_lengths[idx] = 0
        rewards: list[float] = []
        terms: list[bool] = []
        truncs: list[bool] = []
        finished, cells, values = [], [], []
        for i, n, k, turn, row in zip(rows, lengths, turn_lengths, turns, tokens, strict=True):
            # The turn's actions: marked as actions of turn ``turn - 1``.
            acted = [(i, c) for c in range(n - k, n)]
            self._mark_actions(acted, turn - 1)
            ids = row[n - k : n]
            if ids and ids[-1] == self.end_of_turn_id:
                ids = ids[:-1]
            text, reward, term, trunc, _ = self.envs[i].step(self.task.decode_action(ids))
            self._turn_rewards[i].append(reward)
            if not (term or trunc):
                if self.max_turns is not None and turn >= self.max_turns:
                    trunc = True
                else:
                    answer = self._observation_ids(i, text)
                    trunc = n + len(answer) + 1 > self.max_new_tokens  # no room for a turn
                    if not trunc:
                        cells += [(i, n + c) for c in range(len(answer))]
                        values += answer
                        self._record_state_key(i)
            trunc = trunc and not term
            if term or trunc:
                finished.append((i, term, trunc))
            rewards.append(reward)
            terms.append(term)
            truncs.append(trunc)
        if cells:  # the answers as forced tokens, each tagged with the turn it answers
            r, c = torch.as_tensor(cells, device=self.device).unbind(1)
            self.response_ids[r, c] = torch.as_tensor(values, device=self.device)
            self.response_mask[r, c] = True
            self.turn_ids[r, c] = self.turn_index[r] - 1
            self.lengths.index_add_(0, r, torch.ones_like(r))
        self._flush_actions()
        if finished:
            done, term_flags, trunc_flags = zip(*finished, strict=True)
            at = torch.as_tensor(done, device=self.device)
            self.done[at] = True
            self.terminated[at] = torch.as_tensor(term_flags, device=self.device)
            self.truncated[at] = torch.as_tensor(trunc_flags, device=self.device)
        return rewards, terms, truncs

    def _mark_actions(self, cells: list[tuple[int, int]], turn: int) -> None:
        self._pending_actions += cells
        self._pending_turns += [turn] * len(cells)

    def _flush_actions(self) -> None:
        """Write the marks of :meth:`_mark_actions` (one indexed write)."""
        if self._pending_actions:
            r, c = torch.as_tensor(self._pending_actions, device=self.device).unbind(1)
            self.is_action[r, c] = True
            self.turn_ids[r, c] = torch.as_tensor(self._pending_turns, device=self.device)
        self._pending_actions, self._pending_turns = [], []

    def _observation_ids(self, i: int, text: str) -> list[int]:
        """The env's answer as token ids; longer than ``max_obs_tokens`` is an error."""
        ids = self.task.encode_observation(text)
        if len(ids) > self.task.max_obs_tokens:
            raise TextEnvError(
                f"{self.envs[i].name}.step returned an observation of {len(ids)} tokens, longer "
                f"than the context allows (task {self.task.name!r} max_obs_tokens="
                f"{self.task.max_obs_tokens})"
            )
        return ids

    def _record_state_key(self, i: int) -> None:
        env = self.envs[i]
        if env.can_state_key:
            self._state_keys[i].append(env.state_key())

    def _final_info(self) -> dict[str, Any]:
        responses, lengths = self.response_ids.tolist(), self.lengths.tolist()
        return {
            "prompt_text": [p.text for p in self.prompts],
            "response_text": [
                self.codec.decode(r[:n]) for r, n in zip(responses, lengths, strict=True)
            ],
            "episode_return": self.episode_return.clone(),
        }

    def turn_record(self) -> TurnRecord:
        """The rollout's turn structure (see :class:`TurnRecord`)."""
        counts = [len(r) for r in self._turn_rewards]
        K = max([self.max_turns or 0, *counts, 1])
        rewards = torch.zeros((self.num_envs, K), dtype=torch.float32)
        for i, r in enumerate(self._turn_rewards):
            rewards[i, : len(r)] = torch.as_tensor(r, dtype=torch.float32)
        keyed = all(env.can_state_key for env in self.envs)
        return TurnRecord(
            is_action=self.is_action.clone(),
            turn_ids=self.turn_ids.clone(),
            turn_rewards=rewards.to(self.device),
            num_turns=torch.as_tensor(counts, dtype=torch.int64, device=self.device),
            turn_state_keys=[list(k) for k in self._state_keys] if keyed else None,
            terminated=self.terminated.clone(),
            truncated=self.truncated.clone(),
        )

    def action_masks(self) -> torch.Tensor:
        """``bool[B, vocab]``: the task's allowed tokens for active rows, pad for done rows."""
        return torch.where(self.done[:, None], self._done_mask[None, :], self._task_mask[None, :])

    def __repr__(self) -> str:
        return (
            f"MultiTurnTokenEnv(task={self.task.name!r}, num_envs={self.num_envs}, "
            f"max_turns={self.max_turns}, max_new_tokens={self.max_new_tokens})"
        )
