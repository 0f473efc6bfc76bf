"""``BatchedTokenEnv``: B text-generation episodes stepped together as torch tensors on a device.

One step consumes one token per row. The observation is the fixed-length window
``L = P + N`` of each row, left-padded: at reset each row holds its prompt right-aligned in the
last ``P`` columns; each step every active row shifts left by one and appends its token. A row
ends on EOS (``terminated``, when the task's codec has one) or after ``N`` tokens
(``truncated``); finished rows stay finished (they ignore their action, get reward 0 and both
flags False) until :meth:`BatchedTokenEnv.reset`, so one rollout is one episode per row
(``autoreset_mode = DISABLED``).

Gymnasium conventions: values are torch tensors on the env's device; ``observation_space``
describes their shapes, dtypes and bounds (as numpy arrays they lie in it;
:class:`~marlhf.envs.core.numpy_view.TorchToNumpy` gives that view, for Gymnasium's numpy wrappers
such as ``RecordEpisodeStatistics``). There is no autoreset (``AutoresetMode.DISABLED``).

Speed: :meth:`~BatchedTokenEnv.step` has no Python loop over rows and synchronises with the
device at most twice per step (action check, flags); until a row finishes it skips the masking
of done rows, and then needs the flags sync only when a token can be EOS or rewards are dense.
Terminal reward functions run once per finishing step, on the rows that just ended.
While every row is active, a step only appends to the window: ``response_ids``,
``response_mask`` and ``lengths`` catch up from the window's last columns when next read (the
same values, written once for many steps). A caller whose actions are in range by construction
(the collector: ids sampled over the env's vocabulary) skips the range check and its device
sync inside :meth:`~marlhf.envs.core.token_vector_env.TokenVectorEnv.trusted_actions`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from marlhf.envs.core.action_checks import check_actions
from marlhf.envs.core.caught_up import CaughtUp
from marlhf.envs.core.registration import make_task
from marlhf.envs.core.reset_options import RESET_OPTIONS, check_prefixes, check_prompts
from marlhf.envs.core.tasks import Prompt, RewardBatch, Task, check_rewards, nonfinite_message
from marlhf.envs.core.token_vector_env import TokenVectorEnv
from marlhf.envs.core.token_vector_env import observation_space as observation_space  # re-exported

Obs = dict[str, torch.Tensor]


class BatchedTokenEnv(TokenVectorEnv):
    """The native batched text environment the agents drive.

    :param task: a :class:`~marlhf.envs.Task`, or the name / env id of a registered one.
    :param num_envs: ``B``, the number of rows (episodes) stepped together.
    :param device: torch device holding every tensor (default ``"cpu"``).
    :param seed: seed of the prompt sampler (default ``None``: fresh entropy); ``reset(seed=...)``
        reseeds it.
    :param task_kwargs: keyword arguments of the task (only with a task name), e.g. ``horizon``.
    """

    def __init__(
        self,
        task: Task | str,
        num_envs: int = 1,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        **task_kwargs: Any,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"BatchedTokenEnv: num_envs={num_envs!r} must be an int >= 1")
        self.task: Task = make_task(task, **task_kwargs)
        self._set_up(self.task, num_envs, device, seed)
        self.reward_mode = self.task.reward_fn.mode

        B, P, N, L, dev = (
            num_envs,
            self.max_prompt_len,
            self.max_new_tokens,
            self.seq_len,
            self.device,
        )
        self.input_ids = torch.full((B, L), self.pad_token_id, dtype=torch.int64, device=dev)
        self.attention_mask = torch.zeros((B, L), dtype=torch.int64, device=dev)
        self.prompt_ids = torch.full((B, P), self.pad_token_id, dtype=torch.int64, device=dev)
        self.prompt_mask = torch.zeros((B, P), dtype=torch.bool, device=dev)
        self.response_ids = torch.full((B, N), self.pad_token_id, dtype=torch.int64, device=dev)
        self.response_mask = torch.zeros((B, N), dtype=torch.bool, device=dev)
        self.lengths = torch.zeros(B, dtype=torch.int64, device=dev)
        self.done = torch.ones(B, dtype=torch.bool, device=dev)
        self.episode_return = torch.zeros(B, dtype=torch.float32, device=dev)
        self.prompts: list[Prompt] = []
        self._needs_reset = True
        self._all_done = True
        self._rows = torch.arange(B, device=dev)
        # Host-side state of the step's fast path: has any row finished, steps since the reset.
        self._any_done = True
        self._steps = 0
        self._ragged = False  # rows at different columns (prefix resets): no fast path
        # Response columns written into response_ids/response_mask/lengths; the fast path's
        # steps past it are only in the window until the next read (_catch_up).
        self._written = 0
        # The fast path's per-step rewards and flags from step _step_first on (_step_blocks).
        self._step_rewards: tuple[torch.Tensor, ...] = ()
        self._step_false: tuple[torch.Tensor, ...] = ()
        self._step_true: tuple[torch.Tensor, ...] = ()
        self._step_first = 0
        self._ones_column = torch.ones((B, 1), dtype=torch.int64, device=dev)

    # ------------------------------------------------------------------ reset
    def _where(self) -> str:
        return f"BatchedTokenEnv(task {self.task.name!r}, num_envs={self.num_envs})"

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        """Start one new episode in every row.

        :param seed: reseeds the prompt sampler.
        :param options: any of

            - ``"group_size"``: ``K``, an int dividing ``num_envs``: ``num_envs / K`` prompts,
              each in ``K`` consecutive rows (row ``i`` is in group ``i // K``); the rows of a
              group share the prompt only, every step of each row is its own.
            - ``"prompts"``: ``list[Prompt]`` of ``num_envs / K`` prompts to use instead of
              sampling (evaluation on fixed prompts; ``K = 1`` without ``group_size``).
            - ``"prefixes"``: Monte-Carlo continuations. A sequence of ``num_envs / K`` token-id
              sequences (``list[int]``, 1-D numpy array or tensor), needs ``"prompts"``;
              entry ``j`` is a partial response to ``prompts[j]`` of ``0..max_new_tokens - 1``
              ids in ``[0, vocab_size)`` without EOS. Its rows start exactly where a row that
              took those tokens after that prompt would be: the window holds prompt + prefix,
              the prefix counts against ``max_new_tokens``, and a terminal reward scores
              prefix + continuation. Rewards are paid from the reset on (the prefix's own
              dense rewards are not), so ``episode_return`` is the return from that state.

        :returns: ``(obs, info)``; ``info["prompts"]`` holds the ``Prompt`` of each row and
            ``info["prompt_text"]`` their decoded text; with ``group_size``,
            ``info["group_ids"]`` is ``int64[B]`` (``arange(B) // K``) on :attr:`device`.
        :raises ValueError: an unknown option, or a bad value (named with the valid ones).
        """
        self._catch_up()  # (a tensor kept from an unfinished episode gets its tokens)
        options, K = self._begin_reset(seed, options, RESET_OPTIONS)
        count = self.num_envs // K
        if "prompts" in options:
            given = options["prompts"]
        else:
            given = self.task.sample_prompts(self.np_random, count)
        prompts = check_prompts(given, count, self.max_prompt_len, self.vocab_size, self._where())
        prefixes: list[list[int]] = [[] for _ in range(count)]
        if "prefixes" in options:
            if "prompts" not in options:
                raise ValueError(
                    f"{self._where()}: reset option prefixes needs option prompts "
                    "(the prompt each prefix continues)"
                )
            prefixes = check_prefixes(
                options["prefixes"],
                count,
                self.vocab_size,
                self.max_new_tokens,
                self.eos_token_id,
                self._where(),
            )
        prompts = [p for p in prompts for _ in range(K)]
        prefixes = [q for q in prefixes for _ in range(K)]
        P, N = self.max_prompt_len, self.max_new_tokens
        ids = np.full((self.num_envs, P), self.pad_token_id, dtype=np.int64)
        for i, p in enumerate(prompts):
            ids[i, P - len(p.ids) :] = p.ids
        lens = torch.tensor([len(p.ids) for p in prompts], device=self.device)
        self.prompt_ids = torch.as_tensor(ids, device=self.device)
        self.prompt_mask = torch.arange(P, device=self.device)[None, :] >= (P - lens)[:, None]
        self.input_ids = torch.cat(
            [
                torch.full((self.num_envs, N), self.pad_token_id, device=self.device),
                self.prompt_ids,
            ],
            dim=1,
        )
        self.attention_mask = torch.cat(
            [
                torch.zeros((self.num_envs, N), dtype=torch.int64, device=self.device),
                self.prompt_mask.long(),
            ],
            dim=1,
        )
        # Fresh tensors, not in-place fills: buffers kept from the last episode stay valid.
        B, dev = self.num_envs, self.device
        self.response_ids = torch.full((B, N), self.pad_token_id, dtype=torch.int64, device=dev)
        self.response_mask = torch.zeros((B, N), dtype=torch.bool, device=dev)
        self.lengths = torch.zeros(B, dtype=torch.int64, device=dev)
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.episode_return = torch.zeros(B, dtype=torch.float32, device=dev)
        self.prompts = prompts
        self._needs_reset = False
        self._all_done = False
        self._any_done = False
        self._steps = self._written = 0
        self._ragged = False
        self._step_true = ()  # (the fast path's first step makes them: _step_blocks)
        if any(prefixes):
            self._apply_prefixes(prefixes)
        info: dict[str, Any] = {
            "prompts": prompts,
            "prompt_text": [self.codec.decode(p.ids) for p in prompts],
        }
        if "group_size" in options:
            info["group_ids"] = torch.arange(self.num_envs, device=self.device) // K
        return self._obs(), info

    def _apply_prefixes(self, prefixes: list[list[int]]) -> None:
        """Put each row where stepping its prefix from the prompt would have left it."""
        N, dev = self.max_new_tokens, self.device
        lengths = [len(q) for q in prefixes]
        window, mask = self.input_ids.cpu().numpy(), self.attention_mask.cpu().numpy()
        for i, q in enumerate(prefixes):  # shift left by len(q), append q (as len(q) steps do)
            window[i] = np.concatenate([window[i], np.asarray(q, dtype=np.int64)])[len(q) :]
            mask[i] = np.concatenate([mask[i], np.ones(len(q), dtype=np.int64)])[len(q) :]
        self.input_ids = torch.as_tensor(window, device=dev)
        self.attention_mask = torch.as_tensor(mask, device=dev)
        self.lengths = torch.tensor(lengths, dtype=torch.int64, device=dev)
        self.response_mask = torch.arange(N, device=dev)[None, :] < self.lengths[:, None]
        for i, q in enumerate(prefixes):
            self.response_ids[i, : len(q)] = torch.as_tensor(q, dtype=torch.int64, device=dev)
        # The all-rows-at-one-column fast path of step() holds while every prefix is as long.
        self._ragged = len(set(lengths)) > 1
        self._steps = self._written = lengths[0]

    @property
    def all_done(self) -> bool:
        """True when every row has finished (known from the last step; no device sync)."""
        return self._all_done

    @property
    def any_done(self) -> bool:
        """True once any row has finished since the last reset (no device sync)."""
        return self._any_done

    # --------------------------------------------- the response, caught up from the window
    response_ids = CaughtUp(
        "_catch_up", doc="``int64[B, N]``: each row's response tokens so far (pad after them)."
    )
    response_mask = CaughtUp(
        "_catch_up", doc="``bool[B, N]``: True on each row's response tokens so far."
    )
    lengths = CaughtUp("_catch_up", doc="``int64[B]``: each row's response tokens so far.")
    _response_ids: torch.Tensor
    _response_mask: torch.Tensor
    _lengths: torch.Tensor

    def _catch_up(self) -> None:
        """Write the tokens of the fast path's steps not written yet (all rows at the same
        columns ``_written .. _steps``: the window's last columns) into the response, its mask
        and the lengths, in place: what the steps would have written one column at a time."""
        begin, end = self._written, self._steps
        if end > begin:
            self._written = end
            self._response_ids[:, begin:end] = self.input_ids[:, self.seq_len - (end - begin) :]
            self._response_mask[:, begin:end] = True
            self._lengths += end - begin

    def _obs(self) -> Obs:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    # ------------------------------------------------------------------- step
    def step(
        self, actions: torch.Tensor | np.ndarray
    ) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Append one token per active row.

        :param actions: ``int64[B]`` token ids on :attr:`device`, or a numpy integer array
            (such as ``action_space.sample()``), copied to the device; rows already done ignore
            theirs (send pad), but every value must lie in ``[0, vocab_size)``.
        :returns: ``(obs, rewards float32[B], terminated bool[B], truncated bool[B], info)``;
            ``info["active"]`` marks the rows that consumed their action; when the last row
            finishes ``info`` also holds ``prompt_text``, ``response_text`` and
            ``episode_return``.
        """
        if self._needs_reset:
            raise RuntimeError(
                f"{self._where()}: call reset() before step() (new env, or a step raised)"
            )
        if self._all_done:
            raise RuntimeError(
                f"{self._where()}: step() after every row finished; "
                "call reset() to start new episodes"
            )
        actions = check_actions(
            actions,
            self.num_envs,
            self.vocab_size,
            self.device,
            self._where,
            check_range=self.validate_actions,
        )
        try:
            if self._any_done or self._ragged:
                return self._advance(actions)
            return self._advance_all_active(actions)
        except Exception:
            # A failing reward function leaves the rows half-advanced: force a reset.
            self._needs_reset = True
            raise

    def _step_blocks(self, first: int) -> None:
        """The fast path's per-step rewards, flags and active masks from step ``first`` to the
        horizon: one block per kind, unbound into its rows, so that each step returns fresh
        tensors of its own (distinct memory) without making any (a row view costs a third of a
        ``torch.zeros``; rows are made only for the steps left, and only once the fast path
        runs, so resets that never take it, as ragged prefixes, pay nothing)."""
        B, dev, steps = self.num_envs, self.device, self.max_new_tokens - first
        self._step_first = first
        self._step_rewards = torch.zeros((steps, B), dtype=torch.float32, device=dev).unbind(0)
        self._step_false = torch.zeros((2 * steps, B), dtype=torch.bool, device=dev).unbind(0)
        self._step_true = torch.ones((steps, B), dtype=torch.bool, device=dev).unbind(0)

    def _dense_rewards(self, active: torch.Tensor) -> torch.Tensor:
        """``float32[B]``: the task's dense reward for the token each row just appended
        (checked for shape and dtype; the caller keeps it only on ``active`` rows)."""
        batch = RewardBatch(
            prompts=self.prompts,
            response_ids=self.response_ids,
            response_mask=self.response_mask,
            codec=self.codec,
            prompt_ids=self.prompt_ids,
            prompt_mask=self.prompt_mask,
            active=active,
            rows=self._rows,
        )
        return check_rewards(self.task.reward_fn(batch), self.num_envs, self.task.name, self.device)

    def _advance_all_active(
        self, actions: torch.Tensor
    ) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """:meth:`_advance` while no row has finished yet (known on the host from the previous
        steps' flags): every row appends, all at column ``t``, so no masking is needed and the
        flags are known without a device sync unless a token can be EOS. Same results; the
        response and lengths catch up from the window when next read (:meth:`_catch_up`)."""
        B, N, dev = self.num_envs, self.max_new_tokens, self.device
        t = self._steps
        if not self._step_true:  # the first fast step since the reset
            self._step_blocks(t)
        k = t - self._step_first  # this step's row of the blocks
        active = self._step_true[k]
        self.input_ids = torch.cat([self.input_ids[:, 1:], actions[:, None]], dim=1)
        self.attention_mask = torch.cat([self.attention_mask[:, 1:], self._ones_column], dim=1)
        self._steps = t + 1  # (response column t: the window's last, until _catch_up)
        last = t + 1 >= N  # every row reaches the horizon on this step

        if self.eos_token_id is not None:
            terminated = actions == self.eos_token_id
            truncated = ~terminated if last else self._step_false[2 * k + 1]
        else:
            terminated = self._step_false[2 * k]
            truncated = (
                torch.ones(B, dtype=torch.bool, device=dev) if last else self._step_false[2 * k + 1]
            )

        rewards = self._step_rewards[k]
        nonfinite: torch.Tensor | None = None
        if self.reward_mode == "dense":
            dense = self._dense_rewards(active)
            nonfinite = ~torch.isfinite(dense).all()
            rewards = torch.where(active, dense, rewards)
        # Every row finishes at the horizon; before it only EOS can end a row.
        any_finished = all_done = last
        eos_flags = not last and self.eos_token_id is not None
        checks = [] if nonfinite is None else [nonfinite]
        if eos_flags:
            checks += [terminated.any(), terminated.all()]
        if checks:  # one device synchronisation for the flags (plus one for the action check)
            values = torch.stack(checks).tolist()
            if nonfinite is not None and values[0]:
                self.done = self.done | terminated | truncated  # as _advance leaves it
                raise ValueError(
                    nonfinite_message(self.task.name, dense) + " (the env must be reset)"
                )
            if eos_flags:
                any_finished, all_done = values[-2], values[-1]
        if any_finished:
            finished = terminated | truncated
            self.done = self.done | finished
            self._any_done = True
            if self.reward_mode == "terminal":
                rewards = self._terminal_rewards(finished, rewards)
        if any_finished or self.reward_mode == "dense":
            self.episode_return += rewards  # else adding zeros would change nothing
        self._all_done = bool(all_done)
        info: dict[str, Any] = {"active": active}
        if self._all_done:
            info.update(self._final_info())
        return self._obs(), rewards, terminated, truncated, info

    def _advance(
        self, actions: torch.Tensor
    ) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        N = self.max_new_tokens
        active = ~self.done
        # The fast path's unwritten columns are the window's last ones only until it moves.
        self._catch_up()

        # Append the token of every active row (in the window, the response and its mask).
        keep = active[:, None]
        self.input_ids = torch.where(
            keep, torch.cat([self.input_ids[:, 1:], actions[:, None]], dim=1), self.input_ids
        )
        self.attention_mask = torch.where(
            keep,
            torch.cat(
                [self.attention_mask[:, 1:], torch.ones_like(self.attention_mask[:, :1])], dim=1
            ),
            self.attention_mask,
        )
        # Done rows may sit at length N: their (unused) write index is kept in range.
        pos = torch.clamp(self.lengths, max=N - 1)[:, None]
        old = self.response_ids.gather(1, pos)[:, 0]
        self.response_ids.scatter_(1, pos, torch.where(active, actions, old)[:, None])
        self.response_mask.scatter_(
            1, pos, (active | self.response_mask.gather(1, pos)[:, 0])[:, None]
        )
        self.lengths += active.long()

        if self.eos_token_id is not None:
            terminated = active & (actions == self.eos_token_id)
        else:
            terminated = torch.zeros_like(active)
        truncated = active & ~terminated & (self.lengths >= N)
        finished = terminated | truncated

        rewards = torch.zeros(self.num_envs, dtype=torch.float32, device=self.device)
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        if self.reward_mode == "dense":
            dense = self._dense_rewards(active)
            nonfinite = ~torch.isfinite(dense).all()
            rewards = torch.where(active, dense, rewards)
        self.done = self.done | finished
        # One device synchronisation for the flags (plus one for the action check above).
        any_finished, all_done, bad_reward = torch.stack(
            [finished.any(), self.done.all(), nonfinite]
        ).tolist()
        if bad_reward:
            raise ValueError(nonfinite_message(self.task.name, dense) + " (the env must be reset)")
        if any_finished and self.reward_mode == "terminal":
            rewards = self._terminal_rewards(finished, rewards)
        self._any_done = self._any_done or bool(any_finished)  # reached with none done if ragged
        self.episode_return += rewards
        self._all_done = bool(all_done)
        info: dict[str, Any] = {"active": active}
        if self._all_done:
            info.update(self._final_info())
        return self._obs(), rewards, terminated, truncated, info

    def _terminal_rewards(self, finished: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        idx = finished.nonzero().flatten()
        rows = idx.tolist()
        batch = RewardBatch(
            prompts=[self.prompts[i] for i in rows],
            response_ids=self.response_ids[idx],
            response_mask=self.response_mask[idx],
            codec=self.codec,
            prompt_ids=self.prompt_ids[idx],
            prompt_mask=self.prompt_mask[idx],
            rows=idx,
        )
        scores = check_rewards(self.task.reward_fn(batch), len(rows), self.task.name, self.device)
        if not bool(torch.isfinite(scores).all()):
            raise ValueError(nonfinite_message(self.task.name, scores) + " (the env must be reset)")
        return rewards.index_copy(0, idx, scores)

    def _final_info(self) -> dict[str, Any]:
        responses = self.response_ids.tolist()
        lengths = self.lengths.tolist()
        return {
            "prompt_text": [self.codec.decode(p.ids) for p in self.prompts],
            "response_text": [
                self.codec.decode(r[:n]) for r, n in zip(responses, lengths, strict=True)
            ],
            "episode_return": self.episode_return.clone(),
        }

    def action_masks(self) -> torch.Tensor:
        """``bool[B, vocab]``: the task's allowed tokens for active rows, only pad for done rows."""
        return torch.where(self.done[:, None], self._done_mask[None, :], self._task_mask[None, :])

    def __repr__(self) -> str:
        return (
            f"BatchedTokenEnv(task={self.task.name!r}, num_envs={self.num_envs}, "
            f"device={str(self.device)!r}, seq_len={self.seq_len})"
        )
