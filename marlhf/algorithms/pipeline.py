"""The credit pipeline: stages 2-5 of an iteration as plain functions over a filled buffer.

In order: :func:`score` (no-grad log-probs, reference log-probs, values) -> :func:`shape`
(``r_t = clip(task_reward_t) - beta * kl_t``) -> :func:`segment` (macro starts from the
termination) -> :func:`estimate` (the registered estimator's advantages). Each takes what it reads
as arguments, stores its result in the buffer with one ``buffer.set_*`` (the buffer owns what it
stores) and returns it; none keeps state between calls (docs/design.md, "One iteration"). The
baseline rollouts an estimator declares (greedy rewards, Monte-Carlo values) are the collector's
(:class:`~marlhf.algorithms.collector.RolloutCollector`); :func:`estimate` takes their results.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from marlhf.algorithms.buffer import LMRolloutBuffer
from marlhf.algorithms.config import PPOConfig
from marlhf.credit.diagnostics import raise_non_finite
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
from marlhf.options import SegmentationBatch, Termination, compute_starts
from marlhf.parallel import distributed as dist_utils
from marlhf.policy.actor_critic import CausalLMActorCritic

#: A zero-argument factory of the forwards' autocast context.
Autocast = Callable[[], Any]


def together(world: dist_utils.WorldInfo, check: Callable[..., Any], *args: Any) -> None:
    """Run a check that raises ``FloatingPointError``; with several ranks, all raise when
    any does (the first failing rank's message), so none waits forever in a collective."""
    error: FloatingPointError | None = None
    try:
        check(*args)
    except FloatingPointError as exc:
        if not world.distributed:
            raise
        error = exc
    dist_utils.raise_together(error)


# ---------------------------------------------------------------- stage 2: score
def can_defer_policy_scores(
    config: PPOConfig,
    buffer: LMRolloutBuffer,
    *,
    policy: CausalLMActorCritic,
    termination: Termination | None,
    kl_ctl: KLController,
    world: dist_utils.WorldInfo,
) -> bool:
    """Whether the update's own log-probs can be the old ones (module docstring of
    :mod:`marlhf.policy.logprobs`): one epoch of one whole-rollout minibatch in one process,
    and none of the shaping (a fixed KL coefficient in the loss, or 0), the termination, the
    estimator, the critic and the probability mask reads the policy's log-probs first."""
    spec = get_estimator(config.credit.estimator)
    return (
        config.optim.n_epochs == 1
        and config.optim.batch_size in (None, buffer.num_envs)
        and config.optim.micro_batch_size is None
        and not world.distributed
        and policy.fsdp is None
        and buffer.action_index is None
        and not spec.needs_critic
        and "token_probs" not in spec.requires
        and config.loss.prob_mask_threshold is None
        and policy.reference_mode != "none"
        and isinstance(kl_ctl, FixedKLController)
        and (config.kl.kl_in == "loss" or kl_ctl.value == 0)
        and (
            termination is None
            or not (
                termination.requires & {"logprobs", "entropy"}
                or getattr(termination, "trainable", False)
            )
        )
    )


@torch.no_grad()
def score_rows(
    policy: CausalLMActorCritic,
    buffer: LMRolloutBuffer,
    rows: slice,
    *,
    config: PPOConfig,
    termination: Termination | None,
    autocast: Autocast,
    reference_only: bool = False,
) -> tuple[Any, torch.Tensor, Any, Any]:
    """``(logp, ref_logp, values, entropy)`` of the buffer's ``rows`` in the episode layout
    (``values`` is None without a critic; ``entropy`` is None unless ``termination`` cuts on
    it; with ``reference_only`` only ``ref_logp`` is computed, the rest are None)."""
    args = (buffer.input_ids[rows], buffer.attention_mask[rows], buffer.response_mask[rows])
    kw: dict[str, Any] = {
        "temperature": config.sampling.scoring_temperature,
        "action_mask": None if buffer.action_mask is None else buffer.action_mask[rows],
    }
    with autocast():
        if reference_only:  # (no entropy or values are needed: see score)
            return None, policy.reference_logprobs(*args, **kw), None, None
        logp, entropy, values = policy.evaluate_actions(
            *args,
            **kw,
            with_values=get_estimator(config.credit.estimator).needs_critic,
            entropy="grad" if "entropy" in getattr(termination, "requires", ()) else "none",
        )
        if policy.reference_mode == "none":  # no reference: no KL penalty
            ref_logp = logp.clone()
        else:
            ref_logp = policy.reference_logprobs(*args, **kw)
    return logp, ref_logp, values, entropy


def score(
    policy: CausalLMActorCritic,
    buffer: LMRolloutBuffer,
    config: PPOConfig,
    *,
    termination: Termination | None = None,
    world: dist_utils.WorldInfo | None = None,
    autocast: Autocast = contextlib.nullcontext,
    defer: bool = False,
) -> None:
    """Stage 2: no-grad log-probs, reference log-probs and (when the estimator declares a
    critic) values of the whole rollout, stored with ``buffer.set_scores``; non-finite scores
    stop training here. With ``config.optim.micro_batch_size``, in chunks of that many episodes.

    :param defer: leave the policy's log-probs to the update (zeros until
        ``buffer.fill_logprobs``; see :func:`can_defer_policy_scores`).
    """
    world = world or dist_utils.world()
    mask = buffer.credit_mask  # (multi-turn: the actions, in the action layout)
    together(
        world, raise_non_finite, buffer.task_rewards, mask, "task reward (from the env's reward)"
    )
    size = config.optim.micro_batch_size or mask.shape[0]
    parts = [
        score_rows(
            policy,
            buffer,
            slice(b, b + size),
            config=config,
            termination=termination,
            autocast=autocast,
            reference_only=defer,
        )
        for b in range(0, mask.shape[0], size)
    ]
    ref_logp = torch.cat([part[1] for part in parts])
    logp = torch.zeros_like(ref_logp) if defer else torch.cat([p[0] for p in parts])
    # kept for terminations that cut on it (requires "entropy"; None when none does)
    entropy = None if parts[0][3] is None else buffer.to_actions(torch.cat([p[3] for p in parts]))
    values = None if parts[0][2] is None else torch.cat([part[2] for part in parts])
    logp, ref_logp = buffer.to_actions(logp), buffer.to_actions(ref_logp)
    if values is not None:
        values = buffer.to_actions(values)
        together(world, raise_non_finite, values, mask, "value (from the value head)")
    together(world, raise_non_finite, logp, mask, "policy log-prob")
    together(world, raise_non_finite, ref_logp, mask, "reference log-prob")
    buffer.set_scores(logp, ref_logp, values, entropy=entropy, deferred=defer)


def reference_kl(buffer: LMRolloutBuffer, config: PPOConfig) -> float:
    """The mean over episodes of the summed per-token KL to the reference (the logged
    ``rollout/kl_ref`` of this process's rows)."""
    kl = kl_penalty(
        buffer.logprobs, buffer.ref_logprobs, config.kl.kl_estimator, config.kl.kl_clamp
    )
    kl = torch.where(buffer.credit_mask, kl, torch.zeros_like(buffer.logprobs))
    return float(kl.sum(dim=1).mean())


def fill_policy_scores(
    buffer: LMRolloutBuffer, rows: torch.Tensor, logp: torch.Tensor, config: PPOConfig
) -> float:
    """Store the policy's log-probs ``float[b, N]`` of ``rows`` that :func:`score` deferred.

    :return: the rollout's KL to the reference they give (as :func:`shape` would have logged).
    """
    buffer.fill_logprobs(rows, logp)
    return reference_kl(buffer, config)


def ensure_policy_scores(
    policy: CausalLMActorCritic,
    buffer: LMRolloutBuffer,
    config: PPOConfig,
    *,
    world: dist_utils.WorldInfo | None = None,
    autocast: Autocast = contextlib.nullcontext,
) -> float | None:
    """Score the rollout with the policy now when :func:`score` deferred it (for a reader of
    ``buffer.logprobs`` before the update, as the credit audit).

    :return: the KL to the reference (to log), or None when nothing was deferred.
    """
    if not buffer.logprobs_deferred:
        return None
    size = config.optim.micro_batch_size or buffer.num_envs
    parts = [
        score_rows(
            policy, buffer, slice(b, b + size), config=config, termination=None, autocast=autocast
        )[0]
        for b in range(0, buffer.num_envs, size)
    ]
    logp = buffer.to_actions(torch.cat(parts))
    together(
        world or dist_utils.world(), raise_non_finite, logp, buffer.credit_mask, "policy log-prob"
    )
    return fill_policy_scores(
        buffer, torch.arange(buffer.num_envs, device=logp.device), logp, config
    )


# ---------------------------------------------------------------- stage 3: shape
def shape(buffer: LMRolloutBuffer, config: PPOConfig, kl_coef: float) -> torch.Tensor:
    """Stage 3: ``r_t = clip(task_reward_t) - beta * kl_t`` stored with
    ``buffer.set_rewards``; ``beta = kl_coef`` with ``config.kl.kl_in="reward"`` (with ``"loss"``
    the KL acts in the loss instead and ``beta`` is 0 here).

    :return: the per-token KL ``float[B, N]`` (for the logs and the adaptive controller).
    """
    mask = buffer.credit_mask
    zeros = torch.zeros_like(buffer.logprobs)
    kl = torch.where(
        mask,
        kl_penalty(
            buffer.logprobs, buffer.ref_logprobs, config.kl.kl_estimator, config.kl.kl_clamp
        ),
        zeros,
    )
    beta = kl_coef if config.kl.kl_in == "reward" else 0.0
    buffer.set_rewards(
        shaped_rewards(buffer.task_rewards, kl, mask, beta, config.credit.reward_clip)
    )
    return kl


# ---------------------------------------------------------------- stage 4: segment
def segment(
    buffer: LMRolloutBuffer,
    termination: Termination | None,
    *,
    codec: Any = None,
    generator: torch.Generator | None = None,
    isolate_last: bool = True,
) -> torch.Tensor:
    """Stage 4: macro starts ``bool[B, N]`` from ``termination`` (every token when None),
    stored with ``buffer.set_starts``.

    :param codec: the env's codec (terminations that read text).
    :param generator: the stream of random terminations.
    :param isolate_last: the last token is its own segment (``PPOConfig.isolate_last``).
    """
    if termination is None:
        starts = buffer.credit_mask.clone()
        buffer.set_starts(starts)
        return starts
    batch = SegmentationBatch.build(
        buffer.action_ids,
        buffer.credit_mask,
        termination.requires,
        codec=codec,
        logprobs=buffer.logprobs,
        ref_logprobs=buffer.ref_logprobs,
        generator=generator,
        entropy=buffer.entropy,
        values=buffer.values if buffer.has_values else None,
        turn_starts=None if buffer.turns is None else buffer.turns.turn_starts,
    )
    check_horizon = getattr(termination, "check_horizon", None)
    if callable(check_horizon):  # a cut budget above the horizon is an error
        check_horizon(buffer.max_new_tokens)
    starts = compute_starts(termination, batch, isolate_last=isolate_last)
    buffer.set_starts(starts)
    return starts


# ---------------------------------------------------------------- stage 5: estimate
def estimate(
    buffer: LMRolloutBuffer,
    spec: EstimatorSpec,
    config: PPOConfig,
    *,
    greedy_rewards: torch.Tensor | None = None,
    mc_values: torch.Tensor | None = None,
    policy: CausalLMActorCritic | None = None,
    env: Any = None,
    autocast: Autocast = contextlib.nullcontext,
) -> Estimate:
    """Stage 5: the estimator turns the buffer's rewards (and what it declared) into
    advantages, stored with ``buffer.set_estimate`` (the baselines with
    ``buffer.set_baselines``).

    :param greedy_rewards: ``float[B]`` when the estimator declares ``greedy_rewards``.
    :param mc_values: ``float[B, N]`` when it declares ``mc_values``.
    :param policy: the policy, when it declares turn potentials (log p(gold | s)).
    :param env: the env, when it declares turns or turn potentials.
    :param autocast: the autocast context of the potentials' forwards.
    """
    requires = spec.requires
    for name, given in (("greedy_rewards", greedy_rewards), ("mc_values", mc_values)):
        if name in requires and given is None:
            raise ValueError(f"estimate: estimator={spec.name!r} declares {name!r}; pass {name}=")
    batch = EstimatorBatch(
        rewards=buffer.rewards,
        task_rewards=buffer.task_rewards,
        mask=buffer.credit_mask,
        starts=buffer.starts,
        values=buffer.values if buffer.has_values else None,
        group_ids=buffer.group_ids,
        greedy_rewards=greedy_rewards if "greedy_rewards" in requires else None,
        mc_values=mc_values if "mc_values" in requires else None,
        token_probs=buffer.logprobs.exp() if "token_probs" in requires else None,
    )
    if requires & {"turns", "turn_state_keys"}:
        _fill_turns(batch, requires, buffer, env)
    if requires & set(POTENTIAL_FIELDS):  # log p(gold | s) at turn starts (IGPO, TRACE)
        if policy is None or env is None:
            raise ValueError(
                f"estimate: estimator={spec.name!r} reads turn potentials; pass policy= and env="
            )
        with autocast():
            fill_potentials(
                batch,
                requires,
                policy,
                buffer,
                env,
                config.sampling.scoring_temperature,
                config.optim.micro_batch_size,
            )
    buffer.set_baselines(batch.mc_values, batch.greedy_rewards)
    result = spec.fn(batch, config)
    check_estimate(spec.name, result, batch)
    keep = ~uniform_groups(batch) if config.credit.drop_uniform_groups else None
    threshold = config.loss.prob_mask_threshold
    if threshold is not None:  # SPO: confident tokens leave the update (bool[B, T] keep)
        tokens = prob_mask(buffer.logprobs, buffer.response_mask, threshold)
        result.advantages = torch.where(tokens, result.advantages, 0.0)
        keep = tokens if keep is None else tokens & keep[:, None]
    buffer.set_estimate(result.advantages, result.returns, keep)
    return result


def _fill_turns(
    batch: EstimatorBatch, requires: frozenset[str], buffer: LMRolloutBuffer, env: Any
) -> None:
    """The turn fields an estimator declared (``turns``, ``turn_state_keys``), in the
    action layout of ``batch`` (so ``action_mask`` is ``mask``)."""
    if env is None:
        raise ValueError("estimate: the estimator reads turns; pass env=")
    turns = buffer.turn_data(env.codec.eos_token_id)
    if "turns" in requires:
        batch.action_mask = batch.mask
        batch.turn_ids, batch.turn_starts = turns.turn_ids, turns.turn_starts
        batch.turn_rewards, batch.num_turns = turns.turn_rewards, turns.num_turns
        batch.terminated, batch.truncated = turns.terminated, turns.truncated
    if "turn_state_keys" in requires:
        batch.turn_state_keys = turns.turn_state_keys
