"""``LMOnPolicyAlgorithm``: what PPO and MAPPO share (setup, the SB3 surface, save/load).

One iteration is three collaborators the algorithm wires (docs/design.md, "One iteration"):
the :class:`~marlhf.algorithms.collector.RolloutCollector` fills the buffer (reset, token-by-token
sampling with the KV cache as recurrent state), the credit pipeline of
:mod:`marlhf.algorithms.pipeline` turns it into advantages (score -> shape -> segment -> estimate),
and the :class:`~marlhf.algorithms.updater.PPOUpdater` takes the optimizer steps. The algorithm
keeps the counters, the logger, the callbacks and the stage methods SB3 users and the tests call.
"""

from __future__ import annotations

import sys
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
from stable_baselines3.common.logger import HumanOutputFormat, Logger
from stable_baselines3.common.utils import configure_logger

from marlhf.algorithms.buffer import LMRolloutBuffer
from marlhf.algorithms.collector import RolloutCollector, autocast_for, sampling_kwargs
from marlhf.algorithms.config import (
    CreditConfig,
    KLConfig,
    LossConfig,
    OptimConfig,
    PPOConfig,
    SamplingConfig,
    SystemsConfig,
    flat_values,
    resolve_config,
)
from marlhf.algorithms.turn_checks import check_estimator_env
from marlhf.algorithms.updater import PPOUpdater
from marlhf.allocator import apply_allocator_policy
from marlhf.checkpoint import save_util
from marlhf.credit.kl import make_kl_controller
from marlhf.envs.core.batched import BatchedTokenEnv
from marlhf.envs.core.sb3_vec import sb3_vec_env
from marlhf.models import resolve_device
from marlhf.options import Termination, make_termination
from marlhf.parallel import distributed as dist_utils
from marlhf.parallel.fsdp import shard_policy
from marlhf.policy.actor_critic import CausalLMActorCritic, GenerationState
from marlhf.threads import apply_thread_policy

SelfAlgo = TypeVar("SelfAlgo", bound="LMOnPolicyAlgorithm")


def make_logger(
    verbose: int, tensorboard_log: str | None, tb_log_name: str, reset_num_timesteps: bool
) -> Logger:
    """SB3's ``configure_logger``, except that without tensorboard no folder is made (SB3's
    creates an empty ``SB3-<date>`` folder in the temp dir on every ``learn``)."""
    if tensorboard_log is None:
        return Logger(None, [HumanOutputFormat(sys.stdout)] if verbose >= 1 else [])
    return configure_logger(verbose, tensorboard_log, tb_log_name, reset_num_timesteps)


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
    """Base of the on-policy LM algorithms (see :class:`marlhf.algorithms.PPO` for the arguments).

    The hyper-parameters live in ``self.config`` (a :class:`~marlhf.algorithms.config.PPOConfig`)
    by group: ``model.config.kl.kl_coef``. To change one, give the algorithm a new config:
    ``model.config = model.config.replace(kl_coef=0.1)`` (validated again).
    """

    #: The config dataclass of the algorithm (its groups and flat names are the keyword
    #: arguments).
    config_class: ClassVar[type[PPOConfig]] = PPOConfig
    #: Refuse ``termination=None`` (MAPPO: token-level credit is PPO's).
    requires_termination: ClassVar[bool] = False
    #: Skip the policy's own scoring forward when the update is exactly on-policy (one epoch of
    #: one minibatch) and nothing before the update reads the policy's log-probs: the update's
    #: forward gives them (as TRL's GRPOTrainer does). False always scores (a switch for tests
    #: and measurements; nothing changes but the cost).
    skip_on_policy_scoring: bool = True

    def __init__(
        self,
        policy: CausalLMActorCritic | torch.nn.Module | str | Path,
        env: Any = None,
        *,
        optim: OptimConfig | None = None,
        loss: LossConfig | None = None,
        kl: KLConfig | None = None,
        sampling: SamplingConfig | None = None,
        credit: CreditConfig | None = None,
        systems: SystemsConfig | None = None,
        preset: str | list[str] | None = None,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: str | torch.device = "auto",
        **flat: Any,
    ) -> None:
        groups = {
            "optim": optim,
            "loss": loss,
            "kl": kl,
            "sampling": sampling,
            "credit": credit,
            "systems": systems,
        }
        explicit = {**{k: v for k, v in groups.items() if v is not None}, **flat}
        self._config = resolve_config(self.config_class, preset, explicit)
        apply_thread_policy()  # one torch thread unless the user chose (marlhf.threads)
        self.preset = preset
        self.tensorboard_log = tensorboard_log
        self.policy_kwargs = dict(policy_kwargs or {})
        self.verbose = verbose
        # No seed: draw one from OS entropy and keep it, so the run can still be saved and resumed.
        self.seed = int(seed) if seed is not None else int(np.random.default_rng().integers(2**31))
        #: This process's place among the ranks (one process: rank 0 of 1).
        self.world = dist_utils.world()
        self.device = (
            dist_utils.device_for(self.world, device)
            if self.world.distributed
            else resolve_device(device)
        )
        term = self.config.credit.termination
        self.termination: Termination | None = (
            None
            if term is None
            else term
            if isinstance(term, Termination)
            else make_termination(term)
        )
        if self.requires_termination and self.termination is None:
            raise ValueError(
                f"{type(self).__name__}: termination=None; pass a spec such as 'ngram:5' "
                "(or use PPO for token-level credit)"
            )
        self.num_timesteps = 0
        self._total_timesteps = 0
        #: The tokens the learning-rate schedule (warm-up, linear decay) spans. None (default):
        #: each ``learn`` call's total, as in SB3. A caller that trains one budget in several
        #: ``learn`` calls sets it to the whole budget, or each call would run the schedule to its
        #: end (the run runner does, as it learns one iteration at a time between checkpoints).
        self.schedule_timesteps: int | None = None
        self._num_timesteps_at_start = 0
        self._iteration = 0
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
        # A large model's freed blocks go back to the system (marlhf.allocator).
        apply_allocator_policy(sum(p.numel() for p in self.policy.parameters()))
        self.policy.to(self.device)
        self.policy.eval()
        if self.config.systems.fsdp:
            if self.policy.fsdp is not None:
                raise ValueError(
                    "fsdp=True: this policy is already sharded by another algorithm; build a "
                    "fresh CausalLMActorCritic for each"
                )
            shard_policy(self.policy, self.device)
        # (Sharded: the optimizer holds this rank's shards; the weights are gathered after.)
        params = list(self.policy.trainable_parameters())
        lr, wd = self.config.optim.learning_rate, self.config.optim.weight_decay
        # fused=True only when asked; None is PyTorch's default implementation, bit for bit as
        # before the switch existed (the fused kernel rounds differently).
        fused = True if self.config.systems.fused_optimizer else None
        optimizer: torch.optim.Optimizer = (
            torch.optim.AdamW(params, lr=lr, eps=1e-5, weight_decay=wd, fused=fused)
            if wd > 0
            else torch.optim.Adam(params, lr=lr, eps=1e-5, fused=fused)
        )
        if self.policy.fsdp is not None:
            self.policy.fsdp.gather()
        self.kl_ctl = make_kl_controller(
            self.config.kl.kl_coef, self.config.kl.kl_target, self.config.kl.kl_horizon
        )
        # Ranks sample their own prompts and tokens (rank 0 keeps the seed); the minibatch
        # order is one permutation of the global rows, drawn alike on every rank.
        rank_seed = dist_utils.rank_seed(self.seed, self.world)
        self.sample_generator = torch.Generator(device=self.device).manual_seed(rank_seed)
        self.shuffle_generator = torch.Generator().manual_seed(self.seed + 1)
        self.predict_generator = torch.Generator(device=self.device).manual_seed(rank_seed + 2)
        self.termination_generator = torch.Generator().manual_seed(rank_seed + 3)
        self.mc_generator = torch.Generator(device=self.device).manual_seed(rank_seed + 4)
        #: Tokens generated for baselines (continuations, greedy rollouts), not trained on;
        #: also counted in ``num_timesteps``, so budgets stay compute-matched.
        self.mc_tokens = 0
        #: The baseline tokens of the current rollout (logged as ``rollout/mc_tokens``).
        self._rollout_mc_tokens = 0
        #: Stage 1: env, policy, sampling and KV cache -> a filled buffer.
        self.collector = RolloutCollector(
            self.policy,
            self.config,
            device=self.device,
            world=self.world,
            seed=self.seed,
            generator=self.sample_generator,
            mc_generator=self.mc_generator,
        )
        #: Stage 6: the loss and the optimizer steps over the buffer.
        self.updater = PPOUpdater(
            self.policy,
            optimizer,
            self.config,
            self.kl_ctl,
            world=self.world,
            device=self.device,
            shuffle_generator=self.shuffle_generator,
            verbose=verbose,
        )
        self.env: Any = None
        self._sb3_view: Any = None  # get_env()'s view of self.env, made when first asked for
        self.rollout_buffer: LMRolloutBuffer | None = None
        if env is not None:
            self.set_env(env)

    @property
    def config(self) -> PPOConfig:
        """The hyper-parameters (replaced, never mutated, when one changes: ``model.config =
        model.config.replace(kl_coef=x)`` gives the collector and the updater the new config
        too)."""
        return self._config

    @config.setter
    def config(self, value: PPOConfig) -> None:
        self._config = value
        for part in (self.__dict__.get("collector"), self.__dict__.get("updater")):
            if part is not None:
                part.config = value

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over the policy's trainable parameters (the updater's)."""
        return self.updater.optimizer

    @property
    def _n_updates(self) -> int:
        return self.updater.n_updates

    @_n_updates.setter
    def _n_updates(self, value: int) -> None:
        self.updater.n_updates = value

    @property
    def _env_seeded(self) -> bool:
        return self.collector.env_seeded

    @_env_seeded.setter
    def _env_seeded(self, value: bool) -> None:
        self.collector.env_seeded = value

    @property
    def hyperparams(self) -> dict[str, Any]:
        """The config as a plain dict by flat name (``termination`` as given: a spec, an object
        or None); ``type(model)(policy, **model.hyperparams)`` rebuilds the same config."""
        return flat_values(self.config)

    # ---------------------------------------------------------------- env and logger
    def set_env(self, env: Any) -> None:
        """Attach a ``BatchedTokenEnv`` (or anything with its contract) and size the buffer."""
        self._attach_env(env)
        self._check_batch_size()
        check_estimator_env(self.config.credit.estimator, env)  # turns, state_key(), clone()
        if self.termination is not None:  # a budget above the horizon, a learned one's inputs
            from marlhf.algorithms.termination_training import check_termination

            check_termination(self)

    def _check_batch_size(self) -> None:
        env = self.env
        # With several ranks, env.num_envs is this rank's shard; batch_size counts global rows.
        sizes = dist_utils.all_gather_objects(int(env.num_envs))
        if len(set(sizes)) != 1:
            raise ValueError(f"env.num_envs differs between ranks ({sizes}); give each the same")
        total = int(env.num_envs) * self.world.world_size
        if self.config.optim.batch_size is not None and total % self.config.optim.batch_size != 0:
            where = "" if not self.world.distributed else f" over {self.world.world_size} ranks"
            raise ValueError(
                f"batch_size={self.config.optim.batch_size} cannot split a rollout of "
                f"num_envs={total} episodes{where}; use a divisor of {total}"
            )

    def _attach_env(self, env: Any) -> None:
        """:meth:`set_env` without the minibatch check (``load`` for inference on any number
        of envs; :meth:`learn` checks it)."""
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
        if self.config.sampling.mask_actions and not callable(getattr(env, "action_masks", None)):
            raise ValueError(
                f"mask_actions=True but {type(env).__name__} has no action_masks(); "
                "use mask_actions=False or an env that exposes its allowed tokens"
            )
        if env.num_envs % self.config.credit.group_size != 0:
            raise ValueError(
                f"group_size={self.config.credit.group_size} does not divide "
                f"num_envs={env.num_envs}; "
                "use a divisor of num_envs"
            )
        self.env = env
        self.n_envs = int(env.num_envs)
        self.rollout_buffer = LMRolloutBuffer(
            self.n_envs, int(env.max_prompt_len), int(env.max_new_tokens), self.device
        )
        self.collector.attach(env, self.rollout_buffer)

    def get_env(self) -> Any:
        """SB3's ``VecEnv`` view of the env the algorithm trains on (``None`` before
        :meth:`set_env`), for SB3's tools: ``evaluate_policy(model, model.get_env())``.

        For a :class:`~marlhf.envs.BatchedTokenEnv` it is
        :func:`~marlhf.envs.core.sb3_vec.sb3_vec_env` of it (numpy values, rows restarting on their
        own, ``VecMonitor`` statistics); it shares that env, so use it between ``learn``
        calls. Any other env is returned as it is. The batched env itself is ``model.env``.
        """
        if not isinstance(self.env, BatchedTokenEnv):
            return self.env
        if self._sb3_view is None or self._sb3_view.unwrapped.env is not self.env:
            self._sb3_view = sb3_vec_env(self.env)
        return self._sb3_view

    @property
    def logger(self) -> Logger:
        """The SB3 ``Logger`` (configured by :meth:`learn` unless :meth:`set_logger` was called)."""
        if self._logger is None:
            self._logger = make_logger(self.verbose, None, "", True)
        return self._logger

    def set_logger(self, logger: Logger) -> None:
        """Use a custom SB3 logger (e.g. from ``stable_baselines3.common.logger.configure``)."""
        self._logger = logger
        self._custom_logger = True

    def get_vec_normalize_env(self) -> None:
        """SB3 callbacks ask for it; text envs are never normalised."""
        return None

    def _autocast(self) -> Any:
        return autocast_for(self.config, self.device)

    # ---------------------------------------------------------------- rollout
    def predict(
        self,
        observation: dict[str, Any],
        state: GenerationState | None = None,
        episode_start: Any = None,
        deterministic: bool = False,
        action_masks: Any = None,
        return_state: bool = False,
    ) -> tuple[Any, GenerationState | None]:
        """Next token per row, as SB3's ``predict``: ``(actions, None)`` by default (the policy
        reads the whole window in ``observation``). Generation loops that want the KV cache
        ask for it with ``return_state=True`` and pass back the state each call returns.

        :param observation: ``{"input_ids", "attention_mask"}``, tensors or numpy arrays, of
            shape ``[B, L]``, or ``[L]`` for a single observation (as SB3's ``predict`` takes
            one: the action is then a scalar).
        :param state: ``None`` (the observation is read whole), or the state the last call
            returned (the cache holds the episode; the observation is not read again).
        :param episode_start: ``bool[B]``; any True restarts from ``observation``.
        :param deterministic: greedy decoding instead of sampling.
        :param action_masks: ``bool[B, V]`` (or ``[V]``) allowed tokens (as sb3-contrib's
            MaskablePPO takes them, e.g. ``env.action_masks()``), or ``None`` for all.
        :param return_state: return the KV cache as the state (also done when a state was
            passed in); False: SB3's convention for a policy without recurrent state, ``None``.
        :return: ``(actions, state)``; actions as numpy when the observation was numpy.
        """
        as_numpy = isinstance(observation["input_ids"], np.ndarray)
        obs = {k: torch.as_tensor(observation[k], device=self.device) for k in observation}
        single = obs["input_ids"].dim() == 1
        if single:
            obs = {k: v[None] for k, v in obs.items()}
            if action_masks is not None:
                action_masks = torch.as_tensor(action_masks)[None]
        keep = return_state or state is not None  # a caller that passes a state gets one back
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
        if single:
            actions = actions[0]
        return (actions.cpu().numpy() if as_numpy else actions), (state if keep else None)

    def _sampling_kwargs(self) -> dict[str, Any]:
        return sampling_kwargs(self.config)

    # ---------------------------------------------------------------- learn
    def collect_rollouts(self, callback: BaseCallback) -> bool:
        """One iteration's data into the rollout buffer (implemented by the subclass).

        :return: False when a callback asked to stop.
        """
        raise NotImplementedError

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
        self._check_batch_size()  # an env attached by load() for inference may not fit
        self.start_time = time.time_ns()
        if reset_num_timesteps:
            self.num_timesteps = 0
            self._iteration = 0
            self._n_updates = 0
        else:
            total_timesteps += self.num_timesteps
        self._total_timesteps = int(total_timesteps)
        self._num_timesteps_at_start = self.num_timesteps
        if not self.world.is_main:  # rank 0 logs; the others write nothing
            self._logger = Logger(folder=None, output_formats=[])
        elif not self._custom_logger:
            self._logger = make_logger(
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
        force: bool = False,
        **kwargs: Any,
    ) -> SelfAlgo:
        """Rebuild a saved algorithm; with ``env``, also restore the env's random stream.

        :param path: what :meth:`save` was given (with or without ``.zip``).
        :param env: the env to train on (``None``: attach one later with :meth:`set_env`); its
            task and codec must be the saved ones, its number of envs may differ.
        :param device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        :param force: load onto an env of another task or codec than the saved one.
        :param kwargs: hyper-parameters to change on the loaded algorithm.
        """
        return save_util.load_algorithm(cls, path, env, device, {**kwargs, "force": force})
