"""One config per algorithm: every hyper-parameter in one place, with its help text and choices.

``PPOConfig`` is the single source of the algorithms' hyper-parameters, nested by group
(:mod:`marlhf.algorithms.groups`: ``optim``, ``loss``, ``kl``, ``sampling``, ``credit``,
``systems``). ``PPO(...)``'s ``:param`` docs, the CLI's ``agent`` section, YAML files, ``--set``
and ``--help`` all read the groups' fields (``field(metadata=doc(...))``; ``Literal`` types are
the lists of valid choices). A new knob is one field of one group (or of an estimator's options,
:mod:`marlhf.credit.estimator_options`). Flat names (``clip_range``) reach their group through
the one table :data:`~marlhf.algorithms.knobs.FLAT_KEYS`.

Presets (``PRESETS``) are named partial configs. A preset *fixes* the knobs that define a method
(passing one of those too is an error: the result would no longer be that method) and *suggests*
others (learning rate, epochs, ...), which an explicit value overrides. They and
``resolve_config`` live in :mod:`marlhf.algorithms.presets` and are re-exported here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

from marlhf.algorithms.groups import (
    GROUPS,
    CreditConfig,
    KLConfig,
    LossConfig,
    OptimConfig,
    SamplingConfig,
    SystemsConfig,
    doc,
    literal_choices,
)
from marlhf.algorithms.knobs import (
    FLAT_KEYS,
    get_knob,
    knob_fields,
    knob_types,
    leaves,
    with_knobs,
)
from marlhf.algorithms.losses import KL_LOSS_ESTIMATORS
from marlhf.algorithms.presets import PRESETS as PRESETS
from marlhf.algorithms.presets import Preset as Preset
from marlhf.algorithms.presets import available_presets as available_presets
from marlhf.algorithms.presets import get_preset as get_preset
from marlhf.algorithms.presets import resolve_config as resolve_config
from marlhf.credit.estimators import get_estimator

__all__ = [
    "FLAT_KEYS",
    "GROUPS",
    "CreditConfig",
    "KLConfig",
    "LossConfig",
    "MAPPOConfig",
    "OptimConfig",
    "PPOConfig",
    "SamplingConfig",
    "SystemsConfig",
    "doc",
    "flat_values",
    "get_knob",
    "knob_fields",
    "knob_types",
    "leaves",
    "literal_choices",
    "with_knobs",
]


@dataclass(init=False)
class PPOConfig:
    """Hyper-parameters of :class:`marlhf.algorithms.PPO` (SB3 names, plus the LM and MA-RLHF
    knobs), by group: ``config.loss.clip_range``, ``config.kl.kl_coef``...

    Built from groups, flat names or both: ``PPOConfig(loss=LossConfig(clip_range=0.1))``,
    ``PPOConfig(clip_range=0.1)`` (:data:`FLAT_KEYS` says which group a flat name is in; a flat
    value is set on the group given beside it, or on the group's defaults).

    :param optim: :class:`OptimConfig`; :param loss: :class:`LossConfig`; :param kl:
        :class:`KLConfig`; :param sampling: :class:`SamplingConfig`; :param credit:
        :class:`CreditConfig`; :param systems: :class:`SystemsConfig` (each ``None``: its
        defaults).
    :param flat: knobs by flat name (``clip_range=0.1``).
    :raises TypeError: a name that is neither a group nor a flat knob (the message lists them).
    :raises ValueError: a value a group or a cross-group rule refuses (the message names it).
    """

    optim: OptimConfig = field(default_factory=OptimConfig, metadata=doc(OptimConfig.__doc__ or ""))
    loss: LossConfig = field(default_factory=LossConfig, metadata=doc(LossConfig.__doc__ or ""))
    kl: KLConfig = field(default_factory=KLConfig, metadata=doc(KLConfig.__doc__ or ""))
    sampling: SamplingConfig = field(
        default_factory=SamplingConfig, metadata=doc(SamplingConfig.__doc__ or "")
    )
    credit: CreditConfig = field(
        default_factory=CreditConfig, metadata=doc(CreditConfig.__doc__ or "")
    )
    systems: SystemsConfig = field(
        default_factory=SystemsConfig, metadata=doc(SystemsConfig.__doc__ or "")
    )

    #: The termination of a config built without one (MAPPO's is ``"ngram:5"``).
    default_termination: ClassVar[str | None] = None

    def __init__(
        self,
        optim: OptimConfig | None = None,
        loss: LossConfig | None = None,
        kl: KLConfig | None = None,
        sampling: SamplingConfig | None = None,
        credit: CreditConfig | None = None,
        systems: SystemsConfig | None = None,
        **flat: Any,
    ) -> None:
        given = {
            "optim": optim,
            "loss": loss,
            "kl": kl,
            "sampling": sampling,
            "credit": credit,
            "systems": systems,
        }
        unknown = sorted(set(flat) - set(FLAT_KEYS))
        if unknown:
            raise TypeError(
                f"unknown hyper-parameter {unknown[0]!r} for {type(self).__name__}; valid: "
                f"{sorted(FLAT_KEYS)} (or the groups {list(GROUPS)})"
            )
        by_group: dict[str, dict[tuple[str, ...], Any]] = {name: {} for name in GROUPS}
        for key, value in flat.items():
            path = FLAT_KEYS[key]
            by_group[path[0]][path[1:]] = value
        if credit is None and "termination" not in flat:
            by_group["credit"][("termination",)] = self.default_termination
        for name, cls in GROUPS.items():
            base = given[name]
            if base is not None and not isinstance(base, cls):
                raise ValueError(
                    f"{name}={base!r} must be a {cls.__name__} (or None for its defaults)"
                )
            object.__setattr__(self, name, with_knobs(cls, base, by_group[name]))
        self.__post_init__()

    def __post_init__(self) -> None:
        """The rules that span groups (each group checked its own fields)."""
        spec = get_estimator(self.credit.estimator)
        if "mc_values" in spec.requires and self.kl.kl_in == "reward" and self.kl.kl_coef > 0:
            raise ValueError(
                f"estimator={self.credit.estimator!r} estimates values from task rewards only: "
                f"use kl_in='loss' or kl_coef=0 (got kl_in='reward', kl_coef={self.kl.kl_coef}); "
                f"in the loss the KL needs kl_estimator in {KL_LOSS_ESTIMATORS}"
            )

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` (flat names or whole groups), validated again:
        ``config.replace(kl_coef=0.1)``, ``config.replace(loss=LossConfig(clip_range=0.1))``.
        (``dataclasses.replace`` does the same, but mypy checks its keywords against the groups
        alone.)"""
        groups = {name: changes.pop(name) if name in changes else getattr(self, name)
                  for name in GROUPS}  # fmt: skip
        return type(self)(**groups, **changes)

    def flat(self) -> dict[str, Any]:
        """Every knob by its flat name (``termination`` as given: a spec, an object or None)."""
        return flat_values(self)

    if not TYPE_CHECKING:  # (mypy must not see it: it finds every flat read by its absence)

        def __getattr__(self, name: str) -> Any:
            path = FLAT_KEYS.get(name)
            where = "" if path is None else f"; it is config.{'.'.join(path)}"
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}{where}")


def flat_values(config: PPOConfig) -> dict[str, Any]:
    """``config``'s knobs by flat name, in the groups' order."""
    return {name: get_knob(config, path) for name, path in FLAT_KEYS.items()}


@dataclass(init=False)
class MAPPOConfig(PPOConfig):
    """Hyper-parameters of :class:`marlhf.algorithms.MAPPO`: PPO's, with a termination by
    default (the paper's best overall: ngram:5; ngram:10 for code)."""

    default_termination: ClassVar[str | None] = "ngram:5"


# ---------------------------------------------------------------- the algorithms' docs from it
#: Keyword arguments every algorithm takes besides its hyper-parameters (with their defaults).
COMMON_ARGUMENTS: dict[str, Any] = {
    "preset": None,
    "tensorboard_log": None,
    "policy_kwargs": None,
    "verbose": 0,
    "seed": None,
    "device": "auto",
}
HYPERPARAMETER_DOCS = ":hyperparameters:"


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    raise TypeError(f"config field {f.name!r} has no plain default")


def hyperparameter_docs(config_class: type[PPOConfig] = PPOConfig) -> list[str]:
    """``:param`` lines for an algorithm's docstring: one per group, then one per flat name
    (with the group it is in and its default)."""
    lines = [
        f":param {name}: {cls.__name__}: {(cls.__doc__ or '').strip()}"
        for name, cls in GROUPS.items()
    ]
    for group, cls in GROUPS.items():
        for path, f in leaves(cls, (group,)):
            default = config_class.default_termination if f.name == "termination" else _default(f)
            lines.append(
                f":param {f.name}: {f.metadata['help']} (``{'.'.join(path)}``, default "
                f"``{default!r}``)."
            )
    return lines


def document_hyperparameters(cls: type, config_class: type[PPOConfig]) -> None:
    """Replace the line ``:hyperparameters:`` of ``cls``'s docstring by
    :func:`hyperparameter_docs` (so ``help(PPO)`` lists every knob where it is set)."""
    if cls.__doc__ and HYPERPARAMETER_DOCS in cls.__doc__:
        indent = cls.__doc__.split(HYPERPARAMETER_DOCS)[0].rsplit("\n", 1)[-1]
        text = ("\n" + indent).join(hyperparameter_docs(config_class))
        cls.__doc__ = cls.__doc__.replace(HYPERPARAMETER_DOCS, text)
