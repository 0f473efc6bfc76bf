"""Token-level PPO for language models (Schulman et al. 2017; Ouyang et al. 2022 for RLHF).

Every response token is one action. :class:`marlhf.algorithms.MAPPO` is this same class with a
termination, so token-level PPO is MAPPO with every token its own macro action.

An iteration is :meth:`PPO.collect_rollouts` then :meth:`PPO.train`, wiring three collaborators
that each work alone (docs/design.md, "One iteration"): the collector
(:class:`~marlhf.algorithms.collector.RolloutCollector`, stage 1), the credit pipeline
(:mod:`marlhf.algorithms.pipeline`: score -> shape -> segment -> estimate, stages 2-5) and the
updater (:class:`~marlhf.algorithms.updater.PPOUpdater`, stage 6). The stage methods here are one
call each.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback

from marlhf.algorithms import pipeline
from marlhf.algorithms.base import LMOnPolicyAlgorithm
from marlhf.algorithms.buffer import LMRolloutBuffer, RolloutSamples
from marlhf.algorithms.config import PPOConfig, document_hyperparameters
from marlhf.credit.diagnostics import credit_stats
from marlhf.credit.estimators import Estimate, EstimatorSpec, get_estimator
from marlhf.parallel import distributed as dist_utils
from marlhf.policy.actor_critic import GenerationState


class PPO(LMOnPolicyAlgorithm):
    """Proximal Policy Optimization over the tokens (or macro actions) of LM responses.

    Paper: https://arxiv.org/abs/1707.06347; macro actions: https://arxiv.org/abs/2410.02743.
    The hyper-parameters are :class:`~marlhf.algorithms.config.PPOConfig`'s, keyword only: whole
    groups (``loss=LossConfig(clip_range=0.1)``) or flat names (``clip_range=0.1``, SB3 style);
    ``help(PPO)`` lists them with their groups and defaults. The algorithm reads them by group
    (``model.config.loss.clip_range``).

    :param policy: a :class:`CausalLMActorCritic`, a ``transformers`` causal LM, or a local path.
    :param env: a ``BatchedTokenEnv`` (``None`` to attach one later with :meth:`set_env`).
    :hyperparameters:
    :param flat: the knobs above by flat name (each also in its group).
    :param preset: a preset name (``"ma-rlhf-official"``, ``"toy"``, ...) or a list of them,
        applied in order; it fixes the knobs that define its method (passing one too is an error)
        and suggests others, which explicit arguments override.
    :param tensorboard_log: folder for TensorBoard logs, ``None`` for none.
    :param policy_kwargs: keyword arguments for :class:`CausalLMActorCritic` when ``policy`` is a
        model or a path (``critic``, ``reference``, ``vocab_size``).
    :param verbose: 0 silent, 1 prints the logged table.
    :param seed: seeds sampling, minibatch order, termination randomness and the env's first
        reset; ``None`` draws one.
    :param device: ``"auto"``, ``"cpu"``, ``"cuda"``...
    """

    # ---------------------------------------------------------------- one iteration
    @property
    def estimator_spec(self) -> EstimatorSpec:
        """The registered advantage estimator named by ``config.credit.estimator``."""
        return get_estimator(self.config.credit.estimator)

    def _buffer(self) -> LMRolloutBuffer:
        if self.rollout_buffer is None:
            raise ValueError("no rollout buffer; call set_env(env) and collect a rollout")
        return self.rollout_buffer

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

    def collect(self, callback: BaseCallback) -> bool:
        """Stage 1 (:meth:`RolloutCollector.collect`): reset, then sample token by token and
        step the env into the rollout buffer; ``num_timesteps`` counts the tokens.

        :return: False when a callback asked to stop (with several ranks: any rank's).
        """
        start_timesteps = self.num_timesteps
        finished = self.collector.collect(callback, self._count_tokens, owner=self)
        return self._sync_collect(start_timesteps, stopped=not finished)

    def _count_tokens(self, tokens: int) -> None:
        self.num_timesteps += tokens

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

    def finish_rollout(self) -> None:
        """Stages 2-5 (:mod:`marlhf.algorithms.pipeline`) on the collected rollout, each one
        call."""
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
        """Stage 2 (:func:`~marlhf.algorithms.pipeline.score`), deferring the policy's log-probs
        to the update when it is exactly on-policy (``skip_on_policy_scoring``)."""
        buf = self._buffer()
        defer = self.skip_on_policy_scoring and pipeline.can_defer_policy_scores(
            self.config,
            buf,
            policy=self.policy,
            termination=self.termination,
            kl_ctl=self.kl_ctl,
            world=self.world,
        )
        pipeline.score(
            self.policy,
            buf,
            self.config,
            termination=self.termination,
            world=self.world,
            autocast=self._autocast,
            defer=defer,
        )

    def ensure_policy_scores(self) -> None:
        """Score the rollout with the policy now when :meth:`score` left it to the update (for
        a reader of the buffer's ``logprobs`` before the update, as the credit audit)."""
        kl_ref = pipeline.ensure_policy_scores(
            self.policy, self._buffer(), self.config, world=self.world, autocast=self._autocast
        )
        if kl_ref is not None:
            self.rollout_stats["rollout/kl_ref"] = kl_ref

    def shape(self) -> torch.Tensor:
        """Stage 3 (:func:`~marlhf.algorithms.pipeline.shape`) at the KL controller's coefficient;
        returns the per-token KL."""
        return pipeline.shape(self._buffer(), self.config, float(self.kl_ctl.value))

    def segment(self) -> None:
        """Stage 4 (:func:`~marlhf.algorithms.pipeline.segment`): macro starts from the
        termination (every token when there is none)."""
        pipeline.segment(
            self._buffer(),
            self.termination,
            codec=getattr(self.env, "codec", None),
            generator=self.termination_generator,
            isolate_last=self.config.credit.isolate_last,
        )

    def estimate(self) -> Estimate:
        """Stage 5 (:func:`~marlhf.algorithms.pipeline.estimate`), with the baseline rollouts the
        estimator declares (greedy rewards, then Monte-Carlo values) run first."""
        spec = self.estimator_spec
        greedy = self._greedy_rewards() if "greedy_rewards" in spec.requires else None
        mc_values = self._mc_values() if "mc_values" in spec.requires else None
        return pipeline.estimate(
            self._buffer(),
            spec,
            self.config,
            greedy_rewards=greedy,
            mc_values=mc_values,
            policy=self.policy,
            env=self.env,
            autocast=self._autocast,
        )

    def _greedy_rewards(self) -> torch.Tensor:
        """ReMax's baseline (:meth:`RolloutCollector.greedy_rewards`); its tokens counted."""
        returns, tokens = self.collector.greedy_rewards()
        self._count_baseline_tokens(tokens)
        return returns

    def _mc_values(self) -> torch.Tensor:
        """Monte-Carlo values (:meth:`RolloutCollector.mc_values`); their tokens counted."""
        values, tokens = self.collector.mc_values()
        self._count_baseline_tokens(tokens)
        return values

    def _count_baseline_tokens(self, tokens: int) -> None:
        if self.world.distributed:  # every rank counts every rank's tokens
            tokens = int(dist_utils.global_sum(tokens))
        self.num_timesteps += tokens
        self.mc_tokens += tokens
        self._rollout_mc_tokens += tokens

    def _rollout_log(self, kl: torch.Tensor, estimate: Estimate) -> None:
        """Log the rollout (``rollout_stats``) and update the KL controller with its KL."""
        buf = self._buffer()
        kl_coef = float(self.kl_ctl.value)  # (what shape used: the update is below)
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
                "rollout/kl_coef": kl_coef,
                "rollout/score_mean": score_mean,
                "rollout/ep_len_mean": len_mean,
                "rollout/mc_tokens": float(self._rollout_mc_tokens),
            }
        )

    # The collector's state under the names the algorithm had (tests, termination training,
    # the benchmarks read them).
    @property
    def _rollout_prompts(self) -> list[Any] | None:
        return self.collector.prompts

    @_rollout_prompts.setter
    def _rollout_prompts(self, value: list[Any] | None) -> None:
        self.collector.prompts = value

    @property
    def _prefill(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.collector.prefill

    @_prefill.setter
    def _prefill(self, value: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        self.collector.prefill = value

    @property
    def _rollout_state(self) -> GenerationState | None:
        return self.collector.cache

    @_rollout_state.setter
    def _rollout_state(self, value: GenerationState | None) -> None:
        self.collector.cache = value

    @property
    def _rollout_entropy(self) -> torch.Tensor | None:
        """The last scoring's per-token entropy (when the termination reads it)."""
        return None if self.rollout_buffer is None else self.rollout_buffer.entropy

    @property
    def _scores_deferred(self) -> bool:
        """Whether the last :meth:`score` left the policy's log-probs to the update."""
        return self.rollout_buffer is not None and self.rollout_buffer.logprobs_deferred

    def train(self) -> None:
        """Stage 6: one update (:class:`~marlhf.algorithms.updater.PPOUpdater`) on the rollout
        buffer; its values go to ``train_stats`` and the logger."""
        buf = self.rollout_buffer
        if buf is None:
            raise ValueError("train: no rollout buffer; call set_env(env) and collect a rollout")
        self.updater.verbose = self.verbose
        total = self.schedule_timesteps or self._total_timesteps  # (None: this call's total)
        progress = self.num_timesteps / max(total, 1)
        self.train_stats = self.updater.update(buf, progress)
        if self.updater.kl_ref is not None:  # the scores the update filled in (deferred)
            self.rollout_stats["rollout/kl_ref"] = self.updater.kl_ref
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")

    def _minibatch_loss(
        self, mb: RolloutSamples, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """The update's loss of one minibatch of the rollout buffer
        (:meth:`~marlhf.algorithms.updater.PPOUpdater.minibatch_loss`)."""
        assert self.rollout_buffer is not None
        self.updater.kl_ref = None
        out = self.updater.minibatch_loss(self.rollout_buffer, mb, **kwargs)
        if self.updater.kl_ref is not None:
            self.rollout_stats["rollout/kl_ref"] = self.updater.kl_ref
        return out


document_hyperparameters(PPO, PPOConfig)
