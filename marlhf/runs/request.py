"""What one training run is: its :class:`RunSpec` (agent, termination, seed) and its
:class:`RunRequest`, everything the run needs, resolved and validated once.

``marlhf train`` builds one request, ``marlhf compare`` one per (agent, termination, seed), with
:func:`build_request`: the agent's presets are resolved there, and only there, into the run's
:class:`~marlhf.algorithms.config.PPOConfig`. The same request then trains in this process
(:func:`marlhf.runs.runner.execute`) or, as :meth:`RunRequest.to_dict` (plain JSON values),
in a worker process, which rebuilds it with :meth:`RunRequest.from_dict` (types checked, no
preset resolved again).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from marlhf.algorithms import MAPPO, PPO
from marlhf.algorithms.config import PRESETS, PPOConfig, resolve_config
from marlhf.config.commands import AgentConfig, ModelConfig, TaskConfig
from marlhf.config.parse import ConfigError, from_dict, to_dict

#: Minutes after which a checkpoint is also saved, whatever ``checkpoint_every`` says.
CHECKPOINT_MINUTES = 5.0


@dataclass(frozen=True)
class RunSpec:
    """Which agent, termination and seed one run trains.

    :param agent: ``"ppo"`` (token level), ``"mappo"``, or a preset name (``grpo``, ...).
    :param termination: the termination spec; ``"token"`` for token-level credit.
    :param seed: seeds the model init, the env and the agent.
    """

    agent: str
    termination: str
    seed: int

    @property
    def name(self) -> str:
        """A folder-safe run name, e.g. ``mappo-ngram_5-seed0``."""
        safe = "".join(c if c.isalnum() or c in "._" else "_" for c in self.termination)
        return f"{self.agent}-{safe}-seed{self.seed}"


def agent_class(name: str, termination: str = "token") -> Any:
    """``PPO`` for token-level credit, ``MAPPO`` when the run has a termination."""
    if name not in ("ppo", "mappo") and name not in PRESETS:
        raise ValueError(f"agent {name!r} is not one of {sorted({'ppo', 'mappo', *PRESETS})}")
    if name == "mappo":
        return MAPPO
    return PPO if termination == "token" else MAPPO


def agent_inputs(spec: RunSpec, agent: AgentConfig) -> tuple[list[str] | None, dict[str, Any]]:
    """The presets and keyword values the run's agent config is resolved from: the shared
    ``agent`` section alone for ``ppo``/``mappo``; for a preset run, the section's presets, then
    the run's, with only the keys the user set as explicit values (so a method's fixed knobs win
    over the section's defaults, and clash with the user's settings)."""
    if spec.agent in ("ppo", "mappo"):
        preset: list[str] | None = None
        kwargs = agent.agent_kwargs()
    else:
        preset = [*agent.preset, spec.agent]
        values = agent.agent_kwargs()
        kwargs = {k: values[k] for k in agent.explicit}
    if spec.termination != "token":
        kwargs["termination"] = spec.termination
    return preset, kwargs


def resolve_run_config(spec: RunSpec, agent: AgentConfig) -> PPOConfig:
    """The run's agent config: :func:`agent_inputs` resolved by its algorithm's config class."""
    preset, kwargs = agent_inputs(spec, agent)
    return resolve_config(agent_class(spec.agent, spec.termination).config_class, preset, kwargs)


@dataclass(frozen=True)
class RunRequest:
    """Everything one training run needs, resolved and validated (see the module docstring).

    :param spec: agent, termination and seed.
    :param folder: the run's folder.
    :param task: the environment.
    :param model: the policy model.
    :param config: the agent's hyper-parameters, presets applied (``PPOConfig`` or
        ``MAPPOConfig``, the class of the run's algorithm).
    :param preset: the presets ``config`` was resolved from (recorded with the agent's saves).
    :param total_timesteps: the run's budget in generated tokens.
    :param device: the torch device.
    :param checkpoint_every: iterations between checkpoints; 0 saves none (no resume).
    :param checkpoint_minutes: also save a checkpoint once this many minutes have passed since
        the last one (0: by iterations only); only with ``checkpoint_every > 0``.
    :param tensorboard: also write TensorBoard event files to ``<folder>/tensorboard``.
    :param credit: log the credit audit during training: the keyword arguments of
        :class:`~marlhf.audit.credit.CreditAuditCallback`; None: no audit.
    :param metrics_file: keep ``<folder>/metrics.csv`` up to date while training.
    :param threads: torch threads a worker process applies before the run (None: the thread
        policy); the in-process path applies them around all its runs.
    :param imports: modules a worker process imports first (the user's tasks, terminations,
        estimators).
    """

    spec: RunSpec
    folder: str
    task: TaskConfig
    model: ModelConfig
    config: PPOConfig
    preset: list[str] | None
    total_timesteps: int
    device: str = "cpu"
    checkpoint_every: int = 10
    checkpoint_minutes: float = CHECKPOINT_MINUTES
    tensorboard: bool = False
    credit: dict[str, Any] | None = None
    metrics_file: bool = False
    threads: int | None = None
    imports: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The request as plain JSON values (nested dicts, lists, numbers, strings)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("spec", "task", "model", "config"):
            out[name] = to_dict(out[name])
        out["preset"] = None if self.preset is None else list(self.preset)
        out["imports"] = list(self.imports)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRequest:
        """The request :meth:`to_dict` wrote; the sections' types are checked again, the agent's
        presets are not applied again (``config`` holds them)."""
        values = dict(data)
        spec = RunSpec(**values.pop("spec"))
        config_class = agent_class(spec.agent, spec.termination).config_class
        return cls(
            spec=spec,
            task=from_dict(TaskConfig, values.pop("task"), prefix="task."),
            model=from_dict(ModelConfig, values.pop("model"), prefix="model."),
            config=from_dict(config_class, values.pop("config"), prefix="agent."),
            **values,
        )


def build_request(
    spec: RunSpec,
    folder: str,
    *,
    task: TaskConfig,
    model: ModelConfig,
    agent: AgentConfig,
    total_timesteps: int,
    **options: Any,
) -> RunRequest:
    """The request of run ``spec``: the agent section resolved for it (presets, explicit values,
    termination) into its config, once.

    :param options: the other fields of :class:`RunRequest` (``device``, ``checkpoint_every``,
        ...).
    :raises ConfigError: the run's agent config does not build (a preset clash, a bad value);
        for a preset run the message names it (``agents: 'grpo': ...``).
    """
    preset, _ = agent_inputs(spec, agent)
    try:
        config = resolve_run_config(spec, agent)
    except (TypeError, ValueError) as err:
        named = f"agents: {spec.agent!r}: " if preset is not None else ""
        raise ConfigError(f"{named}{err}") from None
    return RunRequest(
        spec=spec,
        folder=str(folder),
        task=task,
        model=model,
        config=config,
        preset=preset,
        total_timesteps=total_timesteps,
        **options,
    )
