"""``LMOnPolicyAlgorithm``: what PPO and MAPPO share (setup, rollout, learn loop, save/load).

The rollout follows DESIGN.md's data flow: reset (one episode per env row) -> token-by-token
sampling with the KV cache as recurrent state -> no-grad log-probs, reference log-probs and values
of the whole rollout in one forward -> shaped rewards -> macro starts from the termination (every
token when there is none) -> GAE. The update itself is :meth:`train`, written by the subclass.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    ConvertCallback,
    ProgressBarCallback,
)
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import configure_logger

from marlhf.agents import save_util
from marlhf.agents.advantages import compute_gae, explained_variance
from marlhf.agents.buffer import LMRolloutBuffer
from marlhf.agents.kl import kl_penalty, make_kl_controller, shaped_rewards
from marlhf.agents.policy import CausalLMActorCritic, GenerationState
from marlhf.agents.presets import DEFAULTS, UNSET, get_preset, validate_hyperparams
from marlhf.options import (
    SegmentationBatch,
    Termination,
    compute_starts,
    make_termination,
    num_segments,
)

SelfAlgo = TypeVar("SelfAlgo", bound="LMOnPolicyAlgorithm")


def get_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TokenProgressBar(ProgressBarCallback):
    """SB3's progress bar, advanced by the tokens actually generated.

    SB3's own adds ``num_envs`` per step, which overshoots the total once rows finish early
    (EOS): here a step adds the growth of ``num_timesteps``, which counts active rows only.
    """

    def _on_training_start(self) -> None:
        super()._on_training_start()
        self._last = self.model.num_timesteps

    def _on_step(self) -> bool:
        now = self.model.num_timesteps
        self.pbar.update(now - self._last)
        self._last = now
        return True


class LMOnPolicyAlgorithm:
    """Base of the on-policy LM algorithms (see :class:`marlhf.agents.PPO` for the arguments)."""

    _defaults: ClassVar[dict[str, Any]] = {}

    # Hyper-parameters (set from DEFAULTS, the preset and the caller's arguments).
    learning_rate: float
    n_epochs: int
    batch_size: int | None
    gamma: float
    gae_lambda: float
    clip_range: float
    clip_range_vf: float | None
    normalize_advantage: bool
    ent_coef: float
    vf_coef: float
    max_grad_norm: float | None
    target_kl: float | None
    kl_coef: float
    kl_estimator: str
    kl_target: float | None
    kl_horizon: int
    reward_clip: float | None
    temperature: float
    top_k: int
    top_p: float
    reward_agg: str
    value_agg: str
    ratio_level: str
    discount: str
    isolate_last: bool
    bf16: bool
    mask_actions: bool

    def __init__(
        self,
        policy: CausalLMActorCritic | torch.nn.Module | str | Path,
        env: Any,
        hyperparams: dict[str, Any],
        *,
        preset: str | None = None,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: str | torch.device = "auto",
    ) -> None:
        hp = {**DEFAULTS, **self._defaults}
        if preset is not None:
            hp.update(get_preset(preset))
        hp.update({k: v for k, v in hyperparams.items() if v is not UNSET})
        unknown = set(hp) - set(DEFAULTS)
        if unknown:
            raise TypeError(
                f"unknown hyper-parameters {sorted(unknown)}; valid: {sorted(DEFAULTS)}"
            )
        validate_hyperparams(hp)
        self.hyperparams = hp
        for name, value in hp.items():
            setattr(self, name, value)
        self.preset = preset
        self.tensorboard_log = tensorboard_log
        self.policy_kwargs = dict(policy_kwargs or {})
        self.verbose = verbose
        # No seed: draw one from OS entropy and keep it, so the run can still be saved and resumed.
        self.seed = int(seed) if seed is not None else int(np.random.default_rng().integers(2**31))
        self.device = get_device(device)
        self.termination: Termination | None = (
            None if hp["termination"] is None else make_termination(hp["termination"])
        )
        self.num_timesteps = 0
        self._total_timesteps = 0
        self._num_timesteps_at_start = 0
        self._n_updates = 0
        self._iteration = 0
        self._env_seeded = False
        self._custom_logger = False
        self._logger: Logger | None = None
        #: The last rollout's and update's logged values (also sent to the logger).
        self.rollout_stats: dict[str, float] = {}
        self.train_stats: dict[str, float] = {}
        self.start_time = time.time_ns()
        if isinstance(policy, CausalLMActorCritic):
            if self.policy_kwargs:
                raise ValueError(
                    f"policy_kwargs={self.policy_kwargs!r} only apply when policy is a model or a "
                    "path; this policy is already a CausalLMActorCritic"
                )
            self.policy = policy
        else:
            self.policy = CausalLMActorCritic(policy, **self.policy_kwargs)
        self.policy.to(self.device)
        self.policy.eval()
        self.optimizer = torch.optim.Adam(
            list(self.policy.trainable_parameters()), lr=self.learning_rate, eps=1e-5
        )
        self.kl_ctl = make_kl_controller(self.kl_coef, self.kl_target, self.kl_horizon)
        self.sample_generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.shuffle_generator = torch.Generator().manual_seed(self.seed + 1)
        self.predict_generator = torch.Generator(device=self.device).manual_seed(self.seed + 2)
        self.termination_generator = torch.Generator().manual_seed(self.seed + 3)
        self.env: Any = None
        self.rollout_buffer: LMRolloutBuffer | None = None
        if env is not None:
            self.set_env(env)

    # ---------------------------------------------------------------- env and logger
    def set_env(self, env: Any) -> None:
        """Attach a ``BatchedTokenEnv`` (or anything with its contract) and size the buffer."""
        for attr in ("num_envs", "codec", "max_prompt_len", "max_new_tokens"):
            if not hasattr(env, attr):
                raise TypeError(f"env: {type(env).__name__} lacks {attr!r}; pass a BatchedTokenEnv")
        codec = env.codec
        if getattr(codec, "pad_token_id", None) is None:
            raise ValueError("env.codec.pad_token_id is None; the codec needs a pad token")
        model_vocab = self.policy.model_vocab_size
        if codec.vocab_size != self.policy.vocab_size or codec.vocab_size > model_vocab:
            raise ValueError(
                f"env vocabulary size {codec.vocab_size} != the policy's vocabulary size "
                f"{self.policy.vocab_size} (model output {model_vocab}); build the model for the "
                "env's codec, or CausalLMActorCritic(..., vocab_size=env.codec.vocab_size)"
            )
        if self.mask_actions and not callable(getattr(env, "action_masks", None)):
            raise ValueError(
                f"mask_actions=True but {type(env).__name__} has no action_masks(); "
                "use mask_actions=False or an env that exposes its allowed tokens"
            )
        if self.batch_size is not None and env.num_envs % self.batch_size != 0:
            raise ValueError(
                f"batch_size={self.batch_size} cannot split a rollout of num_envs={env.num_envs} "
                "episodes; use a divisor of num_envs"
            )
        self.env = env
        self.n_envs = int(env.num_envs)
        self.rollout_buffer = LMRolloutBuffer(
            self.n_envs, int(env.max_prompt_len), int(env.max_new_tokens), self.device
        )

    def get_env(self) -> Any:
        """The env the algorithm trains on (``None`` before :meth:`set_env`)."""
        return self.env

    @property
    def logger(self) -> Logger:
        """The SB3 ``Logger`` (configured by :meth:`learn` unless :meth:`set_logger` was called)."""
        if self._logger is None:
            self._logger = configure_logger(self.verbose, None, "", True)
        return self._logger

    def set_logger(self, logger: Logger) -> None:
        """Use a custom SB3 logger (e.g. from ``stable_baselines3.common.logger.configure``)."""
        self._logger = logger
        self._custom_logger = True

    def get_vec_normalize_env(self) -> None:
        """SB3 callbacks ask for it; text envs are never normalised."""
        return None

    def _autocast(self) -> Any:
        enabled = bool(self.bf16) and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # ---------------------------------------------------------------- rollout
    def predict(
        self,
        observation: dict[str, Any],
        state: GenerationState | None = None,
        episode_start: Any = None,
        deterministic: bool = False,
        action_masks: Any = None,
    ) -> tuple[Any, GenerationState]:
        """Next token per row; ``state`` is the KV cache (pass back what the last call returned).

        :param observation: ``{"input_ids", "attention_mask"}``, tensors or numpy arrays.
        :param state: ``None`` at an episode start; afterwards the returned state.
        :param episode_start: ``bool[B]``; any True restarts from ``observation``.
        :param deterministic: greedy decoding instead of sampling.
        :param action_masks: ``bool[B, V]`` allowed tokens (as sb3-contrib's MaskablePPO takes
            them, e.g. ``env.action_masks()``), or ``None`` for the whole vocabulary.
        :return: ``(actions, state)``; actions as numpy when the observation was numpy.
        """
        as_numpy = isinstance(observation["input_ids"], np.ndarray)
        obs = {k: torch.as_tensor(observation[k], device=self.device) for k in observation}
        if episode_start is not None and bool(np.any(np.asarray(episode_start))):
            state = None
        mask = None if action_masks is None else torch.as_tensor(action_masks, device=self.device)
        with self._autocast():
            actions, state = self.policy.act(
                obs,
                state,
                action_mask=mask,
                deterministic=deterministic,
                generator=self.predict_generator,
                **self._sampling_kwargs(),
            )
        return (actions.cpu().numpy() if as_numpy else actions), state

    def _sampling_kwargs(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}

    def collect_rollouts(self, callback: BaseCallback) -> bool:
        """One episode per env row into the buffer, then scores and advantages.

        :return: False when a callback asked to stop (the rollout is then discarded).
        """
        env, buffer = self.env, self.rollout_buffer
        if env is None or buffer is None:
            raise ValueError("collect_rollouts: no env; call set_env(env) first")
        seed = None if self._env_seeded else self.seed
        obs, _ = env.reset(seed=seed)
        self._env_seeded = True
        buffer.reset()
        obs = {k: torch.as_tensor(v, device=self.device) for k, v in obs.items()}
        buffer.set_prompts(obs["input_ids"], obs["attention_mask"])
        if self.mask_actions:  # the tokens each row may take, fixed for the episode
            buffer.action_mask = torch.as_tensor(env.action_masks(), device=self.device).bool()
        pad = int(env.codec.pad_token_id)
        env_device = getattr(env, "device", self.device)
        done = torch.zeros(self.n_envs, dtype=torch.bool, device=self.device)
        # Rows not done yet, on the host (a device sync a step once some row has finished;
        # none before, with an env that knows it on the host); while it is every row, nothing
        # needs masking.
        n_active = self.n_envs
        state: GenerationState | None = None
        callback.on_rollout_start()
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
        for _step in range(buffer.max_new_tokens):
            if _step > 0 and self._rollout_over(env, done):
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
            n_active = (
                n_envs if getattr(env, "any_done", None) is False else n_envs - int(done.sum())
            )
            if listening:
                callback.update_locals(locals())
            if not callback.on_step():
                return False
            if listening:
                policy, generator, sampling, autocast = settings()
        self._finish_rollout()
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    @staticmethod
    def _rollout_over(env: Any, done: torch.Tensor) -> bool:
        # BatchedTokenEnv knows it without a device sync; other envs are asked through `done`.
        all_done = getattr(env, "all_done", None)
        return all_done if isinstance(all_done, bool) else bool(done.all())

    @staticmethod
    def _raise_non_finite(tensor: torch.Tensor, mask: torch.Tensor, what: str) -> None:
        bad = ~torch.isfinite(tensor) & mask
        if bool(bad.any()):
            row, col = (int(i) for i in bad.nonzero()[0])
            raise FloatingPointError(
                f"non-finite {what} at row {row}, response token {col} "
                f"(value {float(tensor[row, col])}); training stopped before any update"
            )

    @torch.no_grad()
    def _finish_rollout(self) -> None:
        buf = self.rollout_buffer
        assert buf is not None  # set by collect_rollouts' check
        mask = buf.response_mask
        self._raise_non_finite(buf.task_rewards, mask, "task reward (from the env's reward)")
        args = (buf.input_ids, buf.attention_mask, mask)
        with self._autocast():
            kw: dict[str, Any] = {"temperature": self.temperature, "action_mask": buf.action_mask}
            logp, _, values = self.policy.evaluate_actions(*args, **kw)
            if self.policy.reference_mode == "none":  # no reference: no KL penalty
                ref_logp = logp.clone()
            else:
                ref_logp = self.policy.reference_logprobs(*args, **kw)
        self._raise_non_finite(values, mask, "value (from the value head)")
        self._raise_non_finite(logp, mask, "policy log-prob")
        self._raise_non_finite(ref_logp, mask, "reference log-prob")
        zeros = torch.zeros_like(logp)
        buf.logprobs = torch.where(mask, logp.float(), zeros)
        buf.ref_logprobs = torch.where(mask, ref_logp.float(), zeros)
        buf.values = torch.where(mask, values.float(), zeros)
        kl = torch.where(mask, kl_penalty(buf.logprobs, buf.ref_logprobs, self.kl_estimator), zeros)
        kl_coef = float(self.kl_ctl.value)
        buf.rewards = shaped_rewards(buf.task_rewards, kl, mask, kl_coef, self.reward_clip)
        buf.starts = self._starts()
        gae = compute_gae(
            buf.rewards,
            buf.values,
            mask,
            buf.starts,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            reward_agg=self.reward_agg,
            value_agg=self.value_agg,
            discount=self.discount,
        )
        buf.advantages, buf.returns = gae.advantages, gae.returns
        kl_per_episode = kl.sum(dim=1)
        self.kl_ctl.update(float(kl_per_episode.mean()), self.n_envs)
        self.rollout_stats = self._credit_stats(gae)
        self.rollout_stats.update(
            {
                "rollout/kl_ref": float(kl_per_episode.mean()),
                "rollout/kl_coef": kl_coef,
                "rollout/score_mean": float(buf.task_rewards.sum(dim=1).mean()),
                "rollout/ep_len_mean": float(buf.lengths.float().mean()),
            }
        )

    def _starts(self) -> torch.Tensor:
        """Macro starts: every token for token-level PPO, else the termination's boundaries."""
        buf = self.rollout_buffer
        assert buf is not None
        if self.termination is None:
            return buf.response_mask.clone()
        batch = SegmentationBatch.build(
            buf.response_ids,
            buf.response_mask,
            self.termination.requires,
            codec=self.env.codec,
            logprobs=buf.logprobs,
            ref_logprobs=buf.ref_logprobs,
            generator=self.termination_generator,
        )
        return compute_starts(self.termination, batch, isolate_last=self.isolate_last)

    def _credit_stats(self, gae: Any) -> dict[str, float]:
        buf = self.rollout_buffer
        assert buf is not None
        mask, starts = buf.response_mask, buf.starts
        segments = num_segments(starts, mask).float()
        lengths = buf.lengths.float()
        cols = torch.arange(mask.shape[1], device=mask.device).float()
        quantile = cols[None, :] / lengths.clamp(min=1)[:, None]
        early, late = mask & (quantile < 0.25), mask & (quantile >= 0.75)

        def masked_var(x: torch.Tensor, m: torch.Tensor) -> float:
            return float(x[m].var()) if int(m.sum()) > 1 else float("nan")

        stats = {
            "credit/macro_len_mean": float(lengths.sum() / segments.sum().clamp(min=1)),
            "credit/segments_per_episode": float(segments.mean()),
            "credit/adv_var_early": masked_var(gae.advantages, early),
            "credit/adv_var_late": masked_var(gae.advantages, late),
            "credit/explained_variance_segment": float(
                explained_variance(gae.seg_values, gae.seg_returns, gae.seg_mask)
            ),
            "credit/termination_fallbacks": float(
                self.termination.stats.fallbacks if self.termination is not None else 0
            ),
        }
        return stats

    # ---------------------------------------------------------------- learn
    def train(self) -> None:
        """One update on the current rollout buffer (implemented by the subclass)."""
        raise NotImplementedError

    def _init_callback(self, callback: Any, progress_bar: bool) -> BaseCallback:
        if isinstance(callback, list):
            callback = CallbackList(callback)
        if callback is None:
            callback = CallbackList([])
        if not isinstance(callback, BaseCallback):
            callback = ConvertCallback(callback)
        if progress_bar:
            callback = CallbackList([callback, TokenProgressBar()])
        callback.init_callback(self)
        return callback

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: Any,
        reset_num_timesteps: bool,
        tb_log_name: str,
        progress_bar: bool,
    ) -> tuple[int, BaseCallback]:
        if not isinstance(total_timesteps, int | np.integer) or total_timesteps <= 0:
            raise ValueError(f"total_timesteps={total_timesteps!r} must be a positive int")
        if self.env is None:
            raise ValueError("learn: no env; pass one to the constructor, load() or set_env()")
        self.start_time = time.time_ns()
        if reset_num_timesteps:
            self.num_timesteps = 0
            self._iteration = 0
            self._n_updates = 0
        else:
            total_timesteps += self.num_timesteps
        self._total_timesteps = int(total_timesteps)
        self._num_timesteps_at_start = self.num_timesteps
        if not self._custom_logger:
            self._logger = configure_logger(
                self.verbose, self.tensorboard_log, tb_log_name, reset_num_timesteps
            )
        return int(total_timesteps), self._init_callback(callback, progress_bar)

    def learn(
        self: SelfAlgo,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 1,
        tb_log_name: str = "run",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfAlgo:
        """Train until ``num_timesteps`` (response tokens generated) reaches ``total_timesteps``.

        :param total_timesteps: tokens to generate (whole rollouts: the last may overshoot).
        :param callback: SB3 callback(s): a ``BaseCallback``, a list of them, or a function.
        :param log_interval: dump the logger every this many iterations (rollout + update).
        :param tb_log_name: the run's name under ``tensorboard_log``.
        :param reset_num_timesteps: False continues counters (and the env's seed stream).
        :param progress_bar: show SB3's progress bar (tqdm and rich).
        """
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        callback.on_training_start(locals(), globals())
        while self.num_timesteps < total_timesteps:
            if not self.collect_rollouts(callback):
                break
            self._iteration += 1
            self.train()
            if log_interval > 0 and self._iteration % log_interval == 0:
                self._dump_logs()
        callback.on_training_end()
        return self

    def _dump_logs(self) -> None:
        elapsed = max((time.time_ns() - self.start_time) / 1e9, 1e-9)
        fps = int((self.num_timesteps - self._num_timesteps_at_start) / elapsed)
        for key, value in {**self.rollout_stats, **self.train_stats}.items():
            self.logger.record(key, value)
        self.logger.record("time/iterations", self._iteration, exclude="tensorboard")
        self.logger.record("time/fps", fps)
        self.logger.record("time/time_elapsed", int(elapsed), exclude="tensorboard")
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(step=self.num_timesteps)

    # ---------------------------------------------------------------- save / load
    def save(self, path: str | Path) -> None:
        """Write ``<path>.zip`` (state) and ``<path>_weights/`` (weights), atomically.

        The zip holds the hyper-parameters, counters, optimizer and KL-controller states and every
        RNG state (sampling, minibatch order, termination, the env's prompt sampler), so
        ``load`` + ``learn(reset_num_timesteps=False)`` continues exactly as an uninterrupted run.
        """
        save_util.save_algorithm(self, path)

    @classmethod
    def load(
        cls: type[SelfAlgo],
        path: str | Path,
        env: Any = None,
        device: str | torch.device = "auto",
        **kwargs: Any,
    ) -> SelfAlgo:
        """Rebuild a saved algorithm; with ``env``, also restore the env's random stream.

        :param path: what :meth:`save` was given (with or without ``.zip``).
        :param env: the env to train on (``None``: attach one later with :meth:`set_env`).
        :param device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        :param kwargs: hyper-parameters to change on the loaded algorithm.
        """
        return save_util.load_algorithm(cls, path, env, device, kwargs)
