"""One iteration as named stages: collect -> score -> shape -> segment -> estimate.

:class:`IterationStages` is the part of :class:`~marlhf.algorithms.base.LMOnPolicyAlgorithm` that
turns one rollout into advantages (docs/design.md, "One iteration, as named stages"). Each stage is
one call; the buffer owns what it stores (each stage hands its result to one ``buffer.set_*``).
The baseline rollouts some estimators declare (greedy rollouts, Monte-Carlo continuations from
a forked KV cache) run inside :meth:`IterationStages.estimate`, and their tokens are counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from marlhf.algorithms.buffer import LMRolloutBuffer
from marlhf.algorithms.config import PPOConfig
from marlhf.credit.diagnostics import credit_stats, raise_non_finite
from marlhf.credit.estimators import (
    Estimate,
    EstimatorBatch,
    EstimatorSpec,
    check_estimate,
    get_estimator,
    prob_mask,
    uniform_groups,
)
from marlhf.credit.kl import FixedKLController, KLController, kl_penalty, shaped_rewards
from marlhf.credit.turn_potentials import FIELDS as POTENTIAL_FIELDS
from marlhf.credit.turn_potentials import fill_potentials
from marlhf.credit.vine import choose_branch_points, monte_carlo_values, run_to_end
from marlhf.options import SegmentationBatch, Termination, compute_starts
from marlhf.parallel import distributed as dist_utils
from marlhf.policy.actor_critic import CausalLMActorCritic, GenerationState


class IterationStages:
    """Stages 1-5 of an iteration (stage 6, the update, is the algorithm's ``train``)."""

    config: PPOConfig
    policy: CausalLMActorCritic
    env: Any
    rollout_buffer: LMRolloutBuffer | None
    termination: Termination | None
    kl_ctl: KLController
    device: torch.device
    seed: int
    n_envs: int
    num_timesteps: int
    mc_tokens: int
    rollout_stats: dict[str, float]
    sample_generator: torch.Generator
    termination_generator: torch.Generator
    mc_generator: torch.Generator
    _env_seeded: bool
    world: dist_utils.WorldInfo
    _rollout_prompts: list[Any] | None
    _rollout_state: GenerationState | None
    #: Skip the policy's own scoring forward when the update is exactly on-policy (one epoch of
    #: one minibatch) and nothing before the update reads the policy's log-probs: the update's
    #: forward gives them (as TRL's GRPOTrainer does). False always scores (a switch for tests
    #: and measurements; nothing changes but the cost).
    skip_on_policy_scoring: bool = True
    #: Whether the last :meth:`score` left the policy's log-probs to the update (the buffer's
    #: ``logprobs`` hold zeros until :meth:`ensure_policy_scores` or the update fills them).
    _scores_deferred: bool = False
    #: The rows of the update's one minibatch, in its order, while the scores are deferred.
    _deferred_rows: torch.Tensor

    @property
    def estimator_spec(self) -> EstimatorSpec:
        """The registered advantage estimator named by ``config.estimator``."""
        return get_estimator(self.config.estimator)

    # Provided by LMOnPolicyAlgorithm.
    _autocast: Callable[[], Any]
    _sampling_kwargs: Callable[[], dict[str, Any]]

    def collect_rollouts(self, callback: BaseCallback) -> bool:
        """One iteration's data: :meth:`collect`, then :meth:`finish_rollout` (score, shape,
        segment, estimate).

        :return: False when a callback asked to stop (the rollout is then discarded).
        """
        callback.on_rollout_start()
        if not self.collect(callback):
            return False
        self.finish_rollout()
        callback.on_rollout_end()
        return True

    def _reset_env(self) -> dict[str, torch.Tensor]:
        env, buffer = self.env, self.rollout_buffer
        assert env is not None and buffer is not None
        seed = None if self._env_seeded else dist_utils.rank_seed(self.seed, self.world)
        group_size = self.config.group_size
        if group_size > 1:
            obs, info = env.reset(seed=seed, options={"group_size": group_size})
        else:
            obs, info = env.reset(seed=seed)
        self._env_seeded = True
        self._rollout_prompts = info.get("prompts")
        buffer.reset()
        obs = {k: torch.as_tensor(v, device=self.device) for k, v in obs.items()}
        buffer.set_prompts(obs["input_ids"], obs["attention_mask"])
        # The window the KV cache was prefilled with (continuations fork that cache).
        self._prefill = (obs["input_ids"], obs["attention_mask"])
        if group_size > 1:
            if "group_ids" not in info:
                raise ValueError(
                    f"estimator={self.config.estimator!r} needs groups but "
                    f"{type(env).__name__}.reset(options={{'group_size': {group_size}}}) "
                    "returned no info['group_ids']"
                )
            buffer.group_ids = torch.as_tensor(info["group_ids"], device=self.device).long()
        if self.config.mask_actions:  # the tokens each row may take, fixed for the episode
            buffer.action_mask = torch.as_tensor(env.action_masks(), device=self.device).bool()
        return obs

    def collect(self, callback: BaseCallback) -> bool:
        """Stage 1: reset, then sample token by token (the KV cache is the recurrent state) and
        step the env, recording actions and task rewards in the buffer.

        :return: False when a callback asked to stop.
        """
        env, buffer = self.env, self.rollout_buffer
        if env is None or buffer is None:
            raise ValueError("collect_rollouts: no env; call set_env(env) first")
        obs = self._reset_env()
        start_timesteps = self.num_timesteps
        pad = int(env.codec.pad_token_id)
        env_device = env.device
        done = torch.zeros(self.n_envs, dtype=torch.bool, device=self.device)
        # Rows not done yet, on the host (a device sync a step once some row has finished;
        # none before, with an env that knows it on the host); while it is every row, nothing
        # needs masking.
        n_active = self.n_envs
        state: GenerationState | None = None
        # An empty CallbackList reads no locals; skipping the copy saves time on every token.
        listening = not (isinstance(callback, CallbackList) and not callback.callbacks)
        n_envs, device_type = self.n_envs, self.device.type

        def settings() -> tuple[Any, ...]:
            # Read once, and again after each step a callback saw (it may change them).
            autocast: Any = self._autocast()
            try:  # A disabled autocast under none is a no-op: skip its cost on every token.
                with autocast:
                    inside = torch.is_autocast_enabled(device_type)
                if not inside and not torch.is_autocast_enabled(device_type):
                    autocast = contextlib.nullcontext()
            except TypeError:  # torch < 2.4: is_autocast_enabled() takes no device type
                pass
            return self.policy, self.sample_generator, self._sampling_kwargs(), autocast

        policy, generator, sampling, autocast = settings()
        multiturn = callable(getattr(env, "turn_record", None))
        for _step in range(buffer.max_new_tokens):
            if _step > 0 and env.all_done:  # the env knows it on the host: no device sync
                break
            with autocast:
                actions, state = policy.act(
                    obs, state, generator=generator, action_mask=buffer.action_mask, **sampling
                )
            all_active = n_active == n_envs  # then there is nothing to mask
            if not all_active:
                actions = actions.masked_fill(done, pad)
            state.pending = actions
            new_obs, rewards, terminated, truncated, infos = env.step(actions.to(env_device))
            active = ~done
            if multiturn:  # the env's observations: context for the cache, not actions
                self._record_turn_step(buffer, state, actions, rewards, active, infos)
            else:
                buffer.add(
                    actions,
                    torch.as_tensor(rewards, device=self.device),
                    None if all_active else active,
                )
            self.num_timesteps += n_active
            finished = torch.as_tensor(terminated, device=self.device) | torch.as_tensor(
                truncated, device=self.device
            )
            done = done | finished
            # While the env knows on the host that no row has finished, all are active: reading
            # the count from the device would stall the CPU until the GPU caught up, every token.
            n_active = n_envs if not env.any_done else n_envs - int(done.sum())
            if listening:
                callback.update_locals(locals())
            if not callback.on_step():
                if not self.world.distributed:
                    return False
                return self._sync_collect(start_timesteps, stopped=True)
            if listening:
                policy, generator, sampling, autocast = settings()
        if multiturn:
            buffer.set_turns(env.turn_record())
        # Continuations branch from this cache (forked, never re-prefilled).
        needs_cache = "mc_values" in self.estimator_spec.requires
        self._rollout_state = state if needs_cache else None
        callback.update_locals(locals())
        return self._sync_collect(start_timesteps, stopped=False)

    def _record_turn_step(
        self,
        buffer: LMRolloutBuffer,
        state: GenerationState,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        active: torch.Tensor,
        infos: dict[str, Any],
    ) -> None:
        """One step of a multi-turn env: the buffer records the action and the forced tokens
        the env appended after it; the policy state takes them with the action, in one
        forward at the next step."""
        forced, lengths = infos.get("forced_ids"), infos.get("forced_lengths")
        if forced is not None and lengths is not None:
            forced, lengths = forced.to(self.device), lengths.to(self.device)
        else:
            forced = lengths = None
        state.forced, state.forced_lengths = forced, lengths
        rewards = torch.as_tensor(rewards, device=self.device)
        buffer.add_turn_step(actions, rewards, active, forced, lengths)

    def _sync_collect(self, start_timesteps: int, stopped: bool) -> bool:
        """Every rank counts every rank's tokens, and stops when any rank's callback asked
        (so all run the same number of iterations); one process: nothing to do."""
        if not self.world.distributed:
            return not stopped
        local = torch.tensor(
            [self.num_timesteps - start_timesteps, int(stopped)], dtype=torch.int64
        ).to(self.device)
        tokens, any_stopped = (int(v) for v in dist_utils.all_reduce_sum(local).cpu())
        self.num_timesteps = start_timesteps + tokens
        return any_stopped == 0

    def _together(self, check: Callable[..., Any], *args: Any) -> None:
        """Run a check that raises ``FloatingPointError``; with several ranks, all raise when
        any does (the first failing rank's message), so none waits forever in a collective."""
        error: FloatingPointError | None = None
        try:
            check(*args)
        except FloatingPointError as exc:
            if not self.world.distributed:
                raise
            error = exc
        dist_utils.raise_together(error)

    def finish_rollout(self) -> None:
        """Stages 2-5 on the collected rollout, each one call."""
        self._rollout_mc_tokens = 0
        with torch.no_grad():
            self.score()
            kl = self.shape()
            self.segment()
            estimate = self.estimate()
        self._rollout_log(kl, estimate)
        if getattr(self.termination, "trainable", False):  # a learned termination's own step
            from marlhf.algorithms.termination_training import train_termination

            self.rollout_stats.update(train_termination(self))

    def score(self) -> None:
        """Stage 2: no-grad log-probs, reference log-probs and (when the estimator declares it)
        values of the whole rollout; non-finite scores stop training here. With
        ``micro_batch_size``, in chunks of that many episodes (as the update's forwards)."""
        buf = self.rollout_buffer
        assert buf is not None
        mask = buf.credit_mask  # (multi-turn: the actions, in the action layout)
        what = "task reward (from the env's reward)"
        self._together(raise_non_finite, buf.task_rewards, mask, what)
        size = self.config.micro_batch_size or mask.shape[0]
        self._scores_deferred = self._defers_policy_scores()
        parts = [self._score_rows(slice(b, b + size)) for b in range(0, mask.shape[0], size)]
        ref_logp = torch.cat([part[1] for part in parts])
        logp = (
            torch.zeros_like(ref_logp)
            if self._scores_deferred
            else torch.cat([p[0] for p in parts])
        )
        # kept for terminations that cut on it (requires "entropy"; None when none does)
        self._rollout_entropy = (
            None if parts[0][3] is None else buf.to_actions(torch.cat([part[3] for part in parts]))
        )
        values = None if parts[0][2] is None else torch.cat([part[2] for part in parts])
        logp, ref_logp = buf.to_actions(logp), buf.to_actions(ref_logp)
        if values is not None:
            values = buf.to_actions(values)
            self._together(raise_non_finite, values, mask, "value (from the value head)")
        self._together(raise_non_finite, logp, mask, "policy log-prob")
        self._together(raise_non_finite, ref_logp, mask, "reference log-prob")
        buf.set_scores(logp, ref_logp, values)

    def _defers_policy_scores(self) -> bool:
        """Whether the update's own log-probs can be the old ones (module docstring of
        :mod:`marlhf.policy.logprobs`): one epoch of one whole-rollout minibatch in one process,
        and none of the shaping (a fixed KL coefficient in the loss, or 0), the termination, the
        estimator, the critic and the probability mask reads the policy's log-probs first."""
        cfg, buf, term = self.config, self.rollout_buffer, self.termination
        assert buf is not None
        spec = self.estimator_spec
        return (
            self.skip_on_policy_scoring
            and cfg.n_epochs == 1
            and cfg.batch_size in (None, buf.num_envs)
            and cfg.micro_batch_size is None
            and not self.world.distributed
            and self.policy.fsdp is None
            and buf.action_index is None
            and not spec.needs_critic
            and "token_probs" not in spec.requires
            and cfg.prob_mask_threshold is None
            and self.policy.reference_mode != "none"
            and isinstance(self.kl_ctl, FixedKLController)
            and (cfg.kl_in == "loss" or self.kl_ctl.value == 0)
            and (
                term is None
                or not (
                    term.requires & {"logprobs", "entropy"} or getattr(term, "trainable", False)
                )
            )
        )

    def ensure_policy_scores(self) -> None:
        """Score the rollout with the policy now when :meth:`score` left it to the update (for
        a reader of the buffer's ``logprobs`` before the update, as the credit audit)."""
        if not self._scores_deferred:
            return
        self._scores_deferred = False
        buf = self.rollout_buffer
        assert buf is not None
        size = self.config.micro_batch_size or buf.num_envs
        parts = [self._score_rows(slice(b, b + size))[0] for b in range(0, buf.num_envs, size)]
        logp = buf.to_actions(torch.cat(parts))
        self._together(raise_non_finite, logp, buf.credit_mask, "policy log-prob")
        self.fill_policy_scores(torch.arange(buf.num_envs, device=logp.device), logp)

    def fill_policy_scores(self, rows: torch.Tensor, logp: torch.Tensor) -> None:
        """Store the policy's log-probs ``float[b, N]`` of ``rows`` that :meth:`score` left to the
        update, and log the KL to the reference they give (as :meth:`shape` would have)."""
        buf = self.rollout_buffer
        assert buf is not None
        self._scores_deferred = False
        buf.logprobs[rows] = torch.where(buf.credit_mask[rows], logp.detach().float(), 0.0)
        kl = kl_penalty(
            buf.logprobs, buf.ref_logprobs, self.config.kl_estimator, self.config.kl_clamp
        )
        kl = torch.where(buf.credit_mask, kl, torch.zeros_like(buf.logprobs))
        self.rollout_stats["rollout/kl_ref"] = float(kl.sum(dim=1).mean())

    @torch.no_grad()
    def _score_rows(self, rows: slice) -> tuple[torch.Tensor, torch.Tensor, Any, Any]:
        """``(logp, ref_logp, values, entropy)`` of the rollout's ``rows`` (``values`` may be
        None; ``entropy`` is None unless the termination cuts on it)."""
        buf = self.rollout_buffer
        assert buf is not None
        args = (buf.input_ids[rows], buf.attention_mask[rows], buf.response_mask[rows])
        kw: dict[str, Any] = {
            "temperature": self.config.scoring_temperature,
            "action_mask": None if buf.action_mask is None else buf.action_mask[rows],
        }
        with self._autocast():
            if self._scores_deferred:  # (no entropy or values are needed: see score)
                return None, self.policy.reference_logprobs(*args, **kw), None, None  # type: ignore[return-value]
            logp, entropy, values = self.policy.evaluate_actions(
                *args,
                **kw,
                with_values=self.estimator_spec.needs_critic,
                entropy="grad"
                if "entropy" in getattr(self.termination, "requires", ())
                else "none",
            )
            if self.policy.reference_mode == "none":  # no reference: no KL penalty
                ref_logp = logp.clone()
            else:
                ref_logp = self.policy.reference_logprobs(*args, **kw)
        return logp, ref_logp, values, entropy

    def shape(self) -> torch.Tensor:
        """Stage 3: ``r_t = clip(task_reward_t) - beta * kl_t`` (``kl_in="reward"``; with
        ``kl_in="loss"`` the KL acts in the loss instead and ``beta`` is 0 here); returns the
        per-token KL (for the logs and the adaptive controller)."""
        buf = self.rollout_buffer
        assert buf is not None
        mask = buf.credit_mask
        zeros = torch.zeros_like(buf.logprobs)
        kl = torch.where(
            mask,
            kl_penalty(
                buf.logprobs, buf.ref_logprobs, self.config.kl_estimator, self.config.kl_clamp
            ),
            zeros,
        )
        self._kl_coef_used = float(self.kl_ctl.value)
        beta = self._kl_coef_used if self.config.kl_in == "reward" else 0.0
        buf.set_rewards(shaped_rewards(buf.task_rewards, kl, mask, beta, self.config.reward_clip))
        return kl

    def segment(self) -> None:
        """Stage 4: macro starts from the termination (every token when there is none)."""
        buf = self.rollout_buffer
        assert buf is not None
        if self.termination is None:
            buf.set_starts(buf.credit_mask.clone())
            return
        batch = SegmentationBatch.build(
            buf.action_ids,
            buf.credit_mask,
            self.termination.requires,
            codec=self.env.codec,
            logprobs=buf.logprobs,
            ref_logprobs=buf.ref_logprobs,
            generator=self.termination_generator,
            entropy=self._rollout_entropy,
            values=buf.values if buf.has_values else None,
            turn_starts=None if buf.turns is None else buf.turns.turn_starts,
        )
        check_horizon = getattr(self.termination, "check_horizon", None)
        if callable(check_horizon):  # a cut budget above the horizon is an error
            check_horizon(buf.max_new_tokens)
        buf.set_starts(
            compute_starts(self.termination, batch, isolate_last=self.config.isolate_last)
        )

    def estimate(self) -> Estimate:
        """Stage 5: the estimator turns rewards (and what it declared) into advantages."""
        buf = self.rollout_buffer
        assert buf is not None
        requires = self.estimator_spec.requires
        batch = EstimatorBatch(
            rewards=buf.rewards,
            task_rewards=buf.task_rewards,
            mask=buf.credit_mask,
            starts=buf.starts,
            values=buf.values if buf.has_values else None,
            group_ids=buf.group_ids,
            greedy_rewards=self._greedy_rewards() if "greedy_rewards" in requires else None,
            mc_values=self._mc_values() if "mc_values" in requires else None,
            token_probs=buf.logprobs.exp() if "token_probs" in requires else None,
        )
        if requires & {"turns", "turn_state_keys"}:
            self._fill_turns(batch, requires)
        if requires & set(POTENTIAL_FIELDS):  # log p(gold | s) at turn starts (IGPO, TRACE)
            with self._autocast():
                fill_potentials(
                    batch,
                    requires,
                    self.policy,
                    buf,
                    self.env,
                    self.config.scoring_temperature,
                    self.config.micro_batch_size,
                )
        buf.set_baselines(batch.mc_values, batch.greedy_rewards)
        estimate = self.estimator_spec.fn(batch, self.config)
        check_estimate(self.estimator_spec.name, estimate, batch)
        keep = ~uniform_groups(batch) if self.config.drop_uniform_groups else None
        threshold = self.config.prob_mask_threshold
        if threshold is not None:  # SPO: confident tokens leave the update (bool[B, T] keep)
            tokens = prob_mask(buf.logprobs, buf.response_mask, threshold)
            estimate.advantages = torch.where(tokens, estimate.advantages, 0.0)
            keep = tokens if keep is None else tokens & keep[:, None]
        buf.set_estimate(estimate.advantages, estimate.returns, keep)
        return estimate

    def _fill_turns(self, batch: EstimatorBatch, requires: frozenset[str]) -> None:
        """The turn fields an estimator declared (``turns``, ``turn_state_keys``), in the
        action layout of ``batch`` (so ``action_mask`` is ``mask``)."""
        buf = self.rollout_buffer
        assert buf is not None
        turns = buf.turn_data(self.env.codec.eos_token_id)
        if "turns" in requires:
            batch.action_mask = batch.mask
            batch.turn_ids, batch.turn_starts = turns.turn_ids, turns.turn_starts
            batch.turn_rewards, batch.num_turns = turns.turn_rewards, turns.num_turns
            batch.terminated, batch.truncated = turns.terminated, turns.truncated
        if "turn_state_keys" in requires:
            batch.turn_state_keys = turns.turn_state_keys

    def _baseline_kwargs(self) -> dict[str, Any]:
        buf = self.rollout_buffer
        if self._rollout_prompts is None:
            raise ValueError(
                f"estimator={self.config.estimator!r} replays the rollout's prompts, but "
                f"{type(self.env).__name__}.reset returned no info['prompts']"
            )
        assert buf is not None
        return {
            "sampling": self._sampling_kwargs(),
            "action_mask": buf.action_mask,
            "device": self.device,
        }

    def _greedy_rewards(self) -> torch.Tensor:
        """ReMax's baseline: the task return of a greedy rollout of each row's prompt."""
        kw = self._baseline_kwargs()
        obs, _ = self.env.reset(options={"prompts": self._rollout_prompts})
        obs = {k: torch.as_tensor(v, device=self.device) for k, v in obs.items()}
        with self._autocast():
            result = run_to_end(
                self.policy, self.env, obs, None, deterministic=True, generator=None, **kw
            )
        self._count_baseline_tokens(result.tokens)
        return result.returns

    def _mc_values(self) -> torch.Tensor:
        """Mean task return of ``mc_rollouts`` continuations at each chosen segment start."""
        buf = self.rollout_buffer
        assert buf is not None and self._rollout_state is not None
        kw = self._baseline_kwargs()
        branch = choose_branch_points(buf.starts, buf.credit_mask, self.config.mc_max_starts)
        with self._autocast():
            values, tokens = monte_carlo_values(
                self.policy,
                self.env,
                self._rollout_state,
                self._rollout_prompts or [],
                *self._prefill,
                buf.response_ids,
                branch,
                self.config.mc_rollouts,
                generator=self.mc_generator,
                prefix_lengths=buf.action_index,
                **kw,
            )
        self._rollout_state = None
        self._count_baseline_tokens(tokens)
        return values

    def _count_baseline_tokens(self, tokens: int) -> None:
        if self.world.distributed:  # every rank counts every rank's tokens
            tokens = int(dist_utils.global_sum(tokens))
        self.num_timesteps += tokens
        self.mc_tokens += tokens
        self._rollout_mc_tokens += tokens

    def _rollout_log(self, kl: torch.Tensor, estimate: Estimate) -> None:
        buf = self.rollout_buffer
        assert buf is not None
        kl_per_episode = kl.sum(dim=1)
        kl_mean = float(kl_per_episode.mean())
        score_mean = float(buf.task_rewards.sum(dim=1).mean())
        len_mean = float(buf.lengths.float().mean())
        n_episodes = self.n_envs * self.world.world_size
        if self.world.distributed:  # means over every rank's episodes (the controller's KL too)
            sums = torch.stack(
                [kl_per_episode.sum(), buf.task_rewards.sum(), buf.lengths.sum().float()]
            ).double()
            kl_mean, score_mean, len_mean = (
                float(v) / n_episodes for v in dist_utils.all_reduce_sum(sums)
            )
        self.kl_ctl.update(kl_mean, n_episodes)
        # The credit diagnostics are this rank's (rank 0 logs them).
        self.rollout_stats = credit_stats(buf.credit_mask, buf.starts, estimate, self.termination)
        self.rollout_stats.update(
            {
                "rollout/kl_ref": kl_mean,
                "rollout/kl_coef": self._kl_coef_used,
                "rollout/score_mean": score_mean,
                "rollout/ep_len_mean": len_mean,
                "rollout/mc_tokens": float(self._rollout_mc_tokens),
            }
        )
