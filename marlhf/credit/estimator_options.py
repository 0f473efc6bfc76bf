"""The knobs an estimator owns: one frozen dataclass per estimator that has any, declared with
:func:`~marlhf.credit.estimators.register_estimator` (``options=``) and held by the agent config
at ``config.credit.<estimator>`` (``config.credit.grpo.group_std``).

A knob lives here when one estimator (family) alone reads it; the knobs several estimators read
(``gamma``, ``group_size``, ...) are the ``credit`` group's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


def _doc(help: str) -> dict[str, Any]:
    return {"help": help, "cli": True}


def _int_at_least_1(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be an int >= 1")


@dataclass(frozen=True)
class GRPOOptions:
    """grpo's knobs (``config.credit.grpo``)."""

    group_std: bool = field(
        default=True,
        metadata=_doc("grpo: divide by the group's std (False: Dr. GRPO's unscaled advantage)"),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.group_std, bool):
            raise ValueError(f"group_std={self.group_std!r} must be True or False")


ReinforcePPForm = Literal["openrlhf", "verl"]
REINFORCE_PP_FORMS: tuple[str, ...] = ("openrlhf", "verl")


@dataclass(frozen=True)
class ReinforcePPBaselineOptions:
    """reinforce_pp_baseline's knobs (``config.credit.reinforce_pp_baseline``)."""

    reinforce_pp_form: ReinforcePPForm = field(
        default="openrlhf",
        metadata=_doc(
            "reinforce_pp_baseline: openrlhf (the group mean of the task score is subtracted "
            "from the score, the per-token KL stays in the return-to-go) or verl (the group "
            "mean of the KL-inclusive total is subtracted from the total, one advantage per "
            "response)"
        ),
    )

    def __post_init__(self) -> None:
        if self.reinforce_pp_form not in REINFORCE_PP_FORMS:
            raise ValueError(
                f"reinforce_pp_form={self.reinforce_pp_form!r} is not one of {REINFORCE_PP_FORMS}"
            )


@dataclass(frozen=True)
class MCOptions:
    """mc's knobs (``config.credit.mc``): the Monte-Carlo values of every estimator that
    declares ``mc_values`` (``mc``, ``turn_mc``)."""

    mc_rollouts: int = field(
        default=4,
        metadata=_doc("mc: continuations sampled from each branch point (K); must divide num_envs"),
    )
    mc_max_starts: int = field(
        default=8,
        metadata=_doc(
            "mc: branch points per response at most (the first token always; the others evenly "
            "spread over the segment starts)"
        ),
    )

    def __post_init__(self) -> None:
        _int_at_least_1("mc_rollouts", self.mc_rollouts)
        _int_at_least_1("mc_max_starts", self.mc_max_starts)
