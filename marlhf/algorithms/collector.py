"""The rollout collector: stage 1 of an iteration (env, policy, sampling, KV cache -> a buffer).

:class:`RolloutCollector` resets the env, samples token by token with the KV cache as the
recurrent state, steps the env and records actions and task rewards in its
:class:`~marlhf.algorithms.buffer.LMRolloutBuffer`. It also runs the baseline rollouts some
estimators declare, which replay its last rollout (ReMax's greedy rollout of the same prompts;
Monte-Carlo continuations forked from its KV cache). Everything it keeps between calls is an
attribute set in ``__init__`` (docs/design.md, "One iteration").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from marlhf.algorithms.buffer import LMRolloutBuffer
from marlhf.algorithms.config import PPOConfig
from marlhf.credit.estimators import get_estimator
from marlhf.credit.vine import choose_branch_points, monte_carlo_values, run_to_end
from marlhf.envs.core.action_checks import check_action_range
from marlhf.parallel import distributed as dist_utils
from marlhf.policy.actor_critic import CausalLMActorCritic, GenerationState


def autocast_for(config: PPOConfig, device: torch.device) -> Any:
    """The autocast context of a forward: bf16 on CUDA when ``config.systems.bf16``, else
    disabled."""
    enabled = bool(config.systems.bf16) and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def sampling_kwargs(config: PPOConfig) -> dict[str, Any]:
    """The sampling keywords of :meth:`CausalLMActorCritic.act` from ``config``."""
    return {
        "temperature": config.sampling.temperature,
        "top_k": config.sampling.top_k,
        "top_p": config.sampling.top_p,
    }


def _own_tensor(values: Any, device: torch.device) -> torch.Tensor:
    """``values`` as a tensor on ``device`` that no one else writes into: a tensor as it is
    (an env returns fresh ones each step), a numpy array copied (``torch.as_tensor`` would share
    its memory, which an env may reuse, while the buffer keeps the step's tensor a while)."""
    if isinstance(values, torch.Tensor):
        return values.to(device)
    return torch.tensor(values, device=device)


class RolloutCollector:
    """Collects one rollout per call into its buffer, and the baselines that replay it.

    :param policy: the policy that samples.
    :param config: the algorithm's config (sampling, ``bf16``, ``group_size``, ``mask_actions``,
        ``estimator``); the owner replaces it when its config changes.
    :param device: where the buffer and the sampled tokens live.
    :param world: this process's place among the ranks (each rank seeds its env apart).
    :param seed: the run's seed (the env's first reset is seeded with this rank's share of it).
    :param generator: the sampling stream.
    :param mc_generator: the stream of the Monte-Carlo continuations.
    """

    def __init__(
        self,
        policy: CausalLMActorCritic,
        config: PPOConfig,
        *,
        device: torch.device,
        world: dist_utils.WorldInfo,
        seed: int,
        generator: torch.Generator,
        mc_generator: torch.Generator,
    ) -> None:
        self.policy = policy
        self.config = config
        self.device = device
        self.world = world
        self.seed = seed
        self.generator = generator
        self.mc_generator = mc_generator
        self.env: Any = None
        self.buffer: LMRolloutBuffer | None = None
        #: Whether the env's seed stream has begun (only the first reset passes a seed).
        self.env_seeded = False
        #: The last rollout's prompts (``info["prompts"]`` of its reset), which baselines replay.
        self.prompts: list[Any] | None = None
        #: The window the KV cache was prefilled with (continuations fork that cache).
        self.prefill: tuple[torch.Tensor, torch.Tensor] | None = None
        #: The KV cache at the end of the last rollout, kept only when the estimator forks it.
        self.cache: GenerationState | None = None
        #: Multi-turn rollouts: the forced tokens' width fed with each step's action (the
        #: cache's layout, which continuations from turn starts fork).
        self.step_widths: list[int] = []

    def attach(self, env: Any, buffer: LMRolloutBuffer) -> None:
        """Collect from ``env`` into ``buffer`` from now on (the seed stream carries on)."""
        self.env, self.buffer = env, buffer

    def autocast(self) -> Any:
        """The autocast context of the policy's forwards (:func:`autocast_for`)."""
        return autocast_for(self.config, self.device)

    def sampling(self) -> dict[str, Any]:
        """The sampling keywords of the current config (:func:`sampling_kwargs`)."""
        return sampling_kwargs(self.config)

    def reset(self) -> dict[str, torch.Tensor]:
        """Reset the env (one episode per row), empty the buffer and record the prompts.

        :return: the first observation, on the collector's device.
        """
        env, buffer = self.env, self.buffer
        assert env is not None and buffer is not None
        seed = None if self.env_seeded else dist_utils.rank_seed(self.seed, self.world)
        group_size = self.config.credit.group_size
        if group_size > 1:
            obs, info = env.reset(seed=seed, options={"group_size": group_size})
        else:
            obs, info = env.reset(seed=seed)
        self.env_seeded = True
        self.prompts = info.get("prompts")
        buffer.reset()
        self.step_widths = []
        obs = {k: torch.as_tensor(v, device=self.device) for k, v in obs.items()}
        buffer.set_prompts(obs["input_ids"], obs["attention_mask"])
        # A copy: an env may hand out its own buffers and write the next steps into them (the
        # Monte-Carlo forks read this window after the rollout).
        self.prefill = (obs["input_ids"].clone(), obs["attention_mask"].clone())
        if group_size > 1:
            if "group_ids" not in info:
                raise ValueError(
                    f"estimator={self.config.credit.estimator!r} needs groups but "
                    f"{type(env).__name__}.reset(options={{'group_size': {group_size}}}) "
                    "returned no info['group_ids']"
                )
            buffer.group_ids = torch.as_tensor(info["group_ids"], device=self.device).long()
        if self.config.sampling.mask_actions:  # the tokens each row may take, fixed for the episode
            buffer.action_mask = torch.as_tensor(env.action_masks(), device=self.device).bool()
        return obs

    def collect(
        self,
        callback: BaseCallback | None = None,
        count: Callable[[int], None] | None = None,
        owner: Any = None,
    ) -> bool:
        """Reset, then sample token by token and step the env until every row is done or the
        buffer is full, recording actions and task rewards in the buffer.

        :param callback: the SB3 callback, told of every step (``on_step``, ``update_locals``);
            None: none.
        :param count: called with the number of rows that took a token, before the callback
            sees the step (the owner's ``num_timesteps``); None: not counted.
        :param owner: what the callback's locals name ``self`` (SB3's convention: the
            algorithm, as function callbacks read ``locals_["self"].num_timesteps``); None: the
            collector.
        :return: False when the callback asked to stop (the buffer is then incomplete).
        """
        env, buffer = self.env, self.buffer
        if env is None or buffer is None:
            raise ValueError("collect_rollouts: no env; call set_env(env) first")
        obs = self.reset()
        pad = int(env.codec.pad_token_id)
        env_device = env.device
        n_envs = buffer.num_envs
        done = torch.zeros(n_envs, dtype=torch.bool, device=self.device)
        # Rows not done yet, on the host (a device sync a step once some row has finished;
        # none before, with an env that knows it on the host); while it is every row, nothing
        # needs masking.
        n_active = n_envs
        state: GenerationState | None = None
        # An empty CallbackList reads no locals; skipping the copy saves time on every token.
        listening = callback is not None and not (
            isinstance(callback, CallbackList) and not callback.callbacks
        )
        listener = callback if listening else None
        device_type = self.device.type

        def settings() -> tuple[Any, ...]:
            # Read once, and again after each step a callback saw (it may change them).
            autocast: Any = self.autocast()
            try:  # A disabled autocast under none is a no-op: skip its cost on every token.
                with autocast:
                    inside = torch.is_autocast_enabled(device_type)
                if not inside and not torch.is_autocast_enabled(device_type):
                    autocast = contextlib.nullcontext()
            except TypeError:  # torch < 2.4: is_autocast_enabled() takes no device type
                pass
            return self.policy, self.generator, self.sampling(), autocast

        policy, generator, sampling, autocast = settings()
        multiturn = callable(getattr(env, "turn_record", None))
        # The sampled ids are in range by construction (the policy's logits are cut to the env's
        # vocabulary, checked equal to it by set_env): the env skips its range check and its
        # device sync every step, and the rollout's ids are checked once at its end instead.
        trusted = getattr(env, "trusted_actions", None)
        stopped = False
        with trusted() if callable(trusted) else contextlib.nullcontext():
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
                if multiturn:  # the env's observations: context for the cache, not actions
                    self._record_turn_step(state, actions, rewards, ~done, infos)
                else:
                    buffer.add(
                        actions,
                        _own_tensor(rewards, self.device),
                        None if all_active else ~done,  # (no mask made while all are active)
                    )
                if count is not None:
                    count(n_active)
                # While the env knows on the host that no row has finished, all are active and
                # `done` stays all False: nothing to merge, and reading the count from the device
                # would stall the CPU until the GPU caught up, every token.
                if env.any_done:
                    finished = torch.as_tensor(terminated, device=self.device) | torch.as_tensor(
                        truncated, device=self.device
                    )
                    done = done | finished
                    n_active = n_envs - int(done.sum())
                else:
                    n_active = n_envs
                if listener is not None:
                    listener.update_locals({**locals(), "self": owner or self})
                if callback is not None and not callback.on_step():
                    stopped = True
                    break
                if listener is not None:
                    policy, generator, sampling, autocast = settings()
        if callable(trusted):
            check_action_range(buffer.response_ids, int(env.vocab_size), self._sampled_where)
        if stopped:
            return False
        if multiturn:
            buffer.set_turns(env.turn_record())
        # Continuations branch from this cache (forked, never re-prefilled).
        needs_cache = "mc_values" in get_estimator(self.config.credit.estimator).requires
        self.cache = state if needs_cache else None
        if callback is not None:
            callback.update_locals({**locals(), "self": owner or self})
        return True

    def _sampled_where(self) -> str:
        return f"the rollout's sampled tokens ({type(self.env).__name__})"

    def _record_turn_step(
        self,
        state: GenerationState,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        active: torch.Tensor,
        infos: dict[str, Any],
    ) -> None:
        """One step of a multi-turn env: the buffer records the action and the forced tokens
        the env appended after it; the policy state takes them with the action, in one
        forward at the next step."""
        assert self.buffer is not None
        forced, lengths = infos.get("forced_ids"), infos.get("forced_lengths")
        if forced is not None and lengths is not None:
            forced, lengths = forced.to(self.device), lengths.to(self.device)
        else:
            forced = lengths = None
        state.forced, state.forced_lengths = forced, lengths
        self.step_widths.append(0 if forced is None else int(forced.shape[1]))
        rewards = torch.as_tensor(rewards, device=self.device)
        self.buffer.add_turn_step(actions, rewards, active, forced, lengths)

    # ---------------------------------------------------------------- baseline rollouts
    def _baseline_kwargs(self) -> dict[str, Any]:
        if self.prompts is None:
            raise ValueError(
                f"estimator={self.config.credit.estimator!r} replays the rollout's prompts, but "
                f"{type(self.env).__name__}.reset returned no info['prompts']"
            )
        assert self.buffer is not None
        return {
            "sampling": self.sampling(),
            "action_mask": self.buffer.action_mask,
            "device": self.device,
        }

    def greedy_rewards(self) -> tuple[torch.Tensor, int]:
        """ReMax's baseline: the task return of a greedy rollout of each row's prompt.

        :return: ``(float[B] returns, tokens generated)``.
        """
        kw = self._baseline_kwargs()
        obs, _ = self.env.reset(options={"prompts": self.prompts})
        obs = {k: torch.as_tensor(v, device=self.device) for k, v in obs.items()}
        with self.autocast():
            result = run_to_end(
                self.policy, self.env, obs, None, deterministic=True, generator=None, **kw
            )
        return result.returns, result.tokens

    def mc_values(self) -> tuple[torch.Tensor, int]:
        """Mean task return of ``config.credit.mc.mc_rollouts`` continuations at each chosen
        segment start of the buffer (``buffer.starts`` set), forked from the rollout's KV cache
        (then released).

        Multi-turn rollouts fork it too, at turn starts (its layout from ``step_widths``).

        :return: ``(float[B, N] values, tokens generated)``.
        """
        buf = self.buffer
        if buf is None or self.cache is None or self.prefill is None:
            raise ValueError(
                "mc_values: no rollout KV cache; collect a rollout with an estimator that "
                "declares 'mc_values' first"
            )
        kw = self._baseline_kwargs()
        branch = choose_branch_points(
            buf.starts, buf.credit_mask, self.config.credit.mc.mc_max_starts
        )
        with self.autocast():
            values, tokens = monte_carlo_values(
                self.policy,
                self.env,
                self.cache,
                self.prompts or [],
                *self.prefill,
                buf.response_ids,
                branch,
                self.config.credit.mc.mc_rollouts,
                generator=self.mc_generator,
                prefix_lengths=buf.action_index,
                step_widths=self.step_widths,
                **kw,
            )
        self.cache = None
        return values, tokens
