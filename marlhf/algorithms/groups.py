"""The groups of :class:`~marlhf.algorithms.config.PPOConfig`: one typed dataclass per concern.

=============  ==========================================================================
group          knobs
=============  ==========================================================================
``optim``      learning_rate, n_epochs, batch_size, micro_batch_size, max_grad_norm,
               weight_decay, lr_schedule, warmup_fraction, target_kl
``loss``       clip_range, clip_range_high, clip_range_vf, dual_clip, vf_coef, ent_coef,
               ratio_level, loss_agg, normalize_advantage, prob_mask_threshold
``kl``         kl_coef, kl_estimator, kl_clamp, kl_target, kl_horizon, kl_in
``sampling``   temperature, score_temperature, top_k, top_p, mask_actions
``credit``     estimator, termination, gamma, gae_lambda, discount, reward_agg, value_agg,
               isolate_last, group_size, reward_clip, drop_uniform_groups; and under each
               estimator's name the knobs only it reads, in the options dataclass it declares
               (:mod:`marlhf.credit.estimator_options`): ``credit.grpo.group_std``,
               ``credit.reinforce_pp_baseline.reinforce_pp_form``, ``credit.mc.mc_rollouts``,
               ``credit.mc.mc_max_starts``
``systems``    bf16, fsdp, fused_optimizer
=============  ==========================================================================

Flat names reach these fields through :data:`marlhf.algorithms.knobs.FLAT_KEYS`. Each group
checks its own fields in its own ``__post_init__`` (every error names the field and
its valid values); the rules that span groups are :class:`PPOConfig`'s. The groups are frozen:
a change is a new config (``dataclasses.replace``), validated again.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from marlhf.algorithms.losses import KL_LOSS_ESTIMATORS
from marlhf.credit.advantages import Discount, RewardAgg, ValueAgg
from marlhf.credit.estimator_options import GRPOOptions, MCOptions, ReinforcePPBaselineOptions
from marlhf.credit.estimators import get_estimator
from marlhf.credit.kl import KLEstimator
from marlhf.options import Termination

#: The estimators whose own knobs the ``credit`` group holds, each under the estimator's name.
ESTIMATOR_OPTIONS: dict[str, type] = {
    "grpo": GRPOOptions,
    "reinforce_pp_baseline": ReinforcePPBaselineOptions,
    "mc": MCOptions,
}
RatioLevel = Literal["token", "macro", "sequence"]
LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-sum-constant"]
KLIn = Literal["reward", "loss"]
LRSchedule = Literal["constant", "linear"]


def doc(help: str, *, cli: bool = True) -> dict[str, Any]:
    """Field metadata holding the help text: ``field(default=1, metadata=doc("what, unit"))``.

    :param cli: False keeps the field out of the CLI's ``agent`` section (set elsewhere there).
    """
    return {"help": help, "cli": cli}


def _positive(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not value > 0:
        valid = "a positive finite number" + (" or None" if allow_none else "")
        raise ValueError(f"{name}={value!r} must be {valid}")


def _in_range(name: str, value: Any, low: float, high: float) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not low <= value <= high:
        raise ValueError(f"{name}={value!r} must be a number in [{low}, {high}]")


def _nonnegative(name: str, value: Any) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r} must be a finite number >= 0")


def _int_at_least(name: str, value: Any, low: int, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name}={value!r} must be an int >= {low}{extra}")


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The choices of a ``Literal`` annotation (also inside ``X | None``), else ``None``."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    for arm in get_args(annotation):
        if get_origin(arm) is Literal:
            return get_args(arm)
    return None


def _check_flags_and_choices(group: Any) -> None:
    """Every ``bool`` field holds True or False, every ``Literal`` field one of its choices."""
    hints = typing.get_type_hints(type(group))
    for f in dataclasses.fields(group):
        value = getattr(group, f.name)
        if hints[f.name] is bool and not isinstance(value, bool):
            raise ValueError(f"{f.name}={value!r} must be True or False")
        choices = literal_choices(hints[f.name])
        if choices is not None and value not in choices:
            raise ValueError(f"{f.name}={value!r} is not one of {choices}")


@dataclass(frozen=True)
class OptimConfig:
    """optimisation: the optimizer, its schedule and the passes over each rollout."""

    learning_rate: float = field(default=1e-5, metadata=doc("Adam(W) learning rate"))
    n_epochs: int = field(default=4, metadata=doc("passes over each rollout"))
    batch_size: int | None = field(
        default=None,
        metadata=doc(
            "minibatch size in episodes (rows); must divide num_envs; None: the whole rollout"
        ),
    )
    micro_batch_size: int | None = field(
        default=None,
        metadata=doc(
            "gradient accumulation: each minibatch's forward and backward in chunks of at most "
            "this many episodes (one optimizer step per minibatch; the same update up to "
            "rounding, less activation memory); None: the whole minibatch at once"
        ),
    )
    max_grad_norm: float | None = field(
        default=1.0, metadata=doc("gradient norm clip; None: no clipping")
    )
    weight_decay: float = field(
        default=0.0, metadata=doc("decoupled weight decay (AdamW); 0: plain Adam")
    )
    lr_schedule: LRSchedule = field(
        default="constant",
        metadata=doc("learning rate over training: constant, or linear decay to 0"),
    )
    warmup_fraction: float = field(
        default=0.0,
        metadata=doc("fraction of total_timesteps over which the learning rate warms up from 0"),
    )
    target_kl: float | None = field(
        default=None,
        metadata=doc("stop the epochs early when approx KL exceeds 1.5 x this; None: never"),
    )

    def __post_init__(self) -> None:
        _positive("learning_rate", self.learning_rate)
        _positive("max_grad_norm", self.max_grad_norm, allow_none=True)
        _positive("target_kl", self.target_kl, allow_none=True)
        _int_at_least("n_epochs", self.n_epochs, 1)
        _int_at_least("batch_size", self.batch_size, 1, allow_none=True)
        _int_at_least("micro_batch_size", self.micro_batch_size, 1, allow_none=True)
        _in_range("warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        _nonnegative("weight_decay", self.weight_decay)
        _check_flags_and_choices(self)


@dataclass(frozen=True)
class LossConfig:
    """loss: the clipped policy surrogate, the value and entropy terms, their aggregation."""

    clip_range: float = field(default=0.2, metadata=doc("PPO clip of the probability ratio"))
    clip_range_high: float | None = field(
        default=None,
        metadata=doc("upper ratio clip 1 + this (DAPO: 0.28); None: clip_range (symmetric)"),
    )
    clip_range_vf: float | None = field(
        default=0.2, metadata=doc("value clip around the rollout's values; None: no value clip")
    )
    dual_clip: float | None = field(
        default=None,
        metadata=doc(
            "dual-clip PPO (verl's clip_ratio_c, e.g. 3.0): with a negative advantage the "
            "token's loss is at most -c x A; must be > 1; None: off"
        ),
    )
    vf_coef: float = field(default=0.5, metadata=doc("value loss coefficient"))
    ent_coef: float = field(default=0.0, metadata=doc("entropy bonus coefficient"))
    ratio_level: RatioLevel = field(
        default="token",
        metadata=doc(
            "probability ratio per token, one per macro (segment), or one per response "
            "(sequence: GSPO's length-normalised ratio)"
        ),
    )
    loss_agg: LossAgg = field(
        default="token-mean",
        metadata=doc(
            "policy loss over tokens: token-mean (every token of the batch alike), "
            "seq-mean-token-mean (per response, then over responses), seq-sum-constant "
            "(Dr. GRPO: sum / (rows x max_new_tokens)); ratio_level=sequence needs "
            "seq-mean-token-mean (GSPO: one term per response). A KL in the loss is aggregated "
            "the same way"
        ),
    )
    normalize_advantage: bool = field(default=True, metadata=doc("whiten advantages per minibatch"))
    prob_mask_threshold: float | None = field(
        default=None,
        metadata=doc(
            "tokens sampled with probability above this leave the update: out of the loss, the "
            "KL term and the whitening, advantage 0 (SPO-chain: 0.9); needs ratio_level=token; "
            "None: off"
        ),
    )

    def __post_init__(self) -> None:
        _positive("clip_range", self.clip_range)
        _positive("clip_range_high", self.clip_range_high, allow_none=True)
        _positive("clip_range_vf", self.clip_range_vf, allow_none=True)
        for name in ("ent_coef", "vf_coef"):
            _nonnegative(name, getattr(self, name))
        _check_flags_and_choices(self)
        if self.prob_mask_threshold is not None:
            _in_range("prob_mask_threshold", self.prob_mask_threshold, 0.0, 1.0)
        if self.dual_clip is not None and not (
            isinstance(self.dual_clip, int | float) and math.isfinite(self.dual_clip)
            and self.dual_clip > 1
        ):  # fmt: skip
            raise ValueError(f"dual_clip={self.dual_clip!r} must be a finite number > 1 or None")
        if self.ratio_level == "sequence" and self.loss_agg != "seq-mean-token-mean":
            raise ValueError(
                f"loss_agg={self.loss_agg!r} is undefined with ratio_level='sequence': the "
                "sequence ratio (GSPO) is one term per response, averaged over responses; "
                "valid: loss_agg='seq-mean-token-mean'"
            )
        if self.prob_mask_threshold is not None and self.ratio_level != "token":
            raise ValueError(
                f"prob_mask_threshold={self.prob_mask_threshold} removes single tokens from the "
                f"update, which splits macro and sequence ratios: ratio_level="
                f"{self.ratio_level!r} must be 'token'"
            )


@dataclass(frozen=True)
class KLConfig:
    """kl: the KL to the frozen reference (coefficient, estimate, controller, where it acts)."""

    kl_coef: float = field(
        default=0.05, metadata=doc("beta of the per-token KL penalty towards the reference")
    )
    kl_estimator: KLEstimator = field(
        default="k1",
        metadata=doc("per-token KL estimate: k1 (log-ratio), k2 (half squared), k3 (Schulman)"),
    )
    kl_clamp: float | None = field(
        default=None,
        metadata=doc(
            "clamp each token's KL estimate to [-c, c] wherever it acts (verl clamps k3 at 10; "
            "VinePPO's k3 loss at [0, 10]); None: no clamp"
        ),
    )
    kl_target: float | None = field(
        default=None,
        metadata=doc("target KL per episode of the adaptive controller; None: beta stays fixed"),
    )
    kl_horizon: int = field(
        default=10000, metadata=doc("the adaptive KL controller's horizon in episodes")
    )
    kl_in: KLIn = field(
        default="reward",
        metadata=doc(
            "where the KL to the reference acts: reward (per-token penalty in the shaped reward) "
            "or loss (kl_coef x kl_estimator term in the loss, as GRPO with k3; needs k2 or k3)"
        ),
    )

    def __post_init__(self) -> None:
        _positive("kl_target", self.kl_target, allow_none=True)
        _positive("kl_clamp", self.kl_clamp, allow_none=True)
        _int_at_least("kl_horizon", self.kl_horizon, 1)
        _nonnegative("kl_coef", self.kl_coef)
        _check_flags_and_choices(self)
        if self.kl_in == "loss" and self.kl_estimator not in KL_LOSS_ESTIMATORS:
            raise ValueError(
                f"kl_estimator={self.kl_estimator!r} cannot regularise in the loss: the k1 term "
                "logp - ref has zero expected gradient on-policy. With kl_in='loss' choose "
                f"kl_estimator in {KL_LOSS_ESTIMATORS} (k3: gradient of KL(ref||pi), as GRPO; "
                "k2: gradient of KL(pi||ref), k1's correct loss form), or put k1 in the reward "
                "(kl_in='reward')"
            )


@dataclass(frozen=True)
class SamplingConfig:
    """sampling: how rollout tokens are drawn and at which temperature they are scored."""

    temperature: float = field(default=1.0, metadata=doc("sampling temperature"))
    score_temperature: float | None = field(
        default=None,
        metadata=doc(
            "temperature of the log-probs used for the ratio, the KL and the terminations; "
            "None: the sampling temperature (the released MA-RLHF code scores at 1.0)"
        ),
    )
    top_k: int = field(default=0, metadata=doc("sample among the k most likely tokens; 0: all"))
    top_p: float = field(default=1.0, metadata=doc("nucleus sampling mass; 1.0: all"))
    mask_actions: bool = field(
        default=False,
        metadata=doc(
            "sample and score only the tokens the env allows (env.action_masks(), read at reset)"
        ),
    )

    def __post_init__(self) -> None:
        _positive("temperature", self.temperature)
        _positive("score_temperature", self.score_temperature, allow_none=True)
        _int_at_least("top_k", self.top_k, 0)
        _in_range("top_p", self.top_p, 0.0, 1.0)
        _check_flags_and_choices(self)

    @property
    def scoring_temperature(self) -> float:
        """The temperature log-probs are scored at (``score_temperature`` or ``temperature``)."""
        return self.temperature if self.score_temperature is None else self.score_temperature


@dataclass(frozen=True)
class CreditConfig:
    """credit: the macro actions, the advantage estimator and the returns it discounts."""

    estimator: str = field(
        default="gae",
        metadata=doc(
            "advantage estimator (marlhf.credit.estimators registry): gae (critic; tokens = PPO, "
            "segments = MA-PPO), grpo, rloo, reinforce_pp, reinforce_pp_baseline, remax (greedy "
            "baseline), mc (Monte-Carlo values at segment starts: VinePPO, SPO)"
        ),
    )
    termination: str | Termination | None = field(
        default=None,
        metadata=doc(
            "macro-action termination spec (ngram:5, ...) or object; None: every token is its "
            "own action (token-level PPO)",
            cli=False,
        ),
    )
    gamma: float = field(default=1.0, metadata=doc("discount per segment step (per token: PPO)"))
    gae_lambda: float = field(default=0.95, metadata=doc("GAE lambda"))
    discount: Discount = field(
        default="segment", metadata=doc("one gamma per macro step (segment) or gamma**len (token)")
    )
    reward_agg: RewardAgg = field(
        default="sum", metadata=doc("segment reward: sum (paper) or mean (released code)")
    )
    value_agg: ValueAgg = field(
        default="mean", metadata=doc("segment value: mean (released code), first, last, position")
    )
    isolate_last: bool = field(
        default=True, metadata=doc("the last token is its own segment (carries the score alone)")
    )
    group_size: int = field(
        default=1,
        metadata=doc(
            "rollouts per prompt (num_envs / group_size prompts a rollout); group baselines "
            "need >= 2"
        ),
    )
    reward_clip: float | None = field(
        default=None, metadata=doc("clip task rewards to [-c, c] before shaping; None: no clip")
    )
    drop_uniform_groups: bool = field(
        default=False,
        metadata=doc(
            "leave out of the update the groups whose task scores are all equal (DAPO's dynamic "
            "sampling filter, on the score alone: a KL in the reward does not count)"
        ),
    )
    grpo: GRPOOptions = field(default_factory=GRPOOptions, metadata=doc(GRPOOptions.__doc__ or ""))
    reinforce_pp_baseline: ReinforcePPBaselineOptions = field(
        default_factory=ReinforcePPBaselineOptions,
        metadata=doc(ReinforcePPBaselineOptions.__doc__ or ""),
    )
    mc: MCOptions = field(default_factory=MCOptions, metadata=doc(MCOptions.__doc__ or ""))

    def __post_init__(self) -> None:
        _positive("reward_clip", self.reward_clip, allow_none=True)
        for name in ("gamma", "gae_lambda"):
            _in_range(name, getattr(self, name), 0.0, 1.0)
        _check_flags_and_choices(self)
        _int_at_least("group_size", self.group_size, 1)
        for name, cls in ESTIMATOR_OPTIONS.items():  # each estimator's own, checked by its class
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"credit.{name}={getattr(self, name)!r} must be a {cls.__name__}")
        spec = get_estimator(self.estimator)  # raises naming the valid estimators
        if self.drop_uniform_groups and self.group_size < 2:
            raise ValueError(
                f"drop_uniform_groups=True needs groups: group_size={self.group_size} must be >= 2"
            )
        if spec.needs_groups and self.group_size < 2:
            raise ValueError(
                f"estimator={self.estimator!r} needs groups: group_size={self.group_size} must "
                "be >= 2 (and divide num_envs)"
            )
        if self.termination is not None and not isinstance(self.termination, str | Termination):
            raise ValueError(
                f"termination={self.termination!r} is not valid; expected a spec string "
                "(e.g. 'ngram:5'), a Termination, or None"
            )


@dataclass(frozen=True)
class SystemsConfig:
    """systems: precision and parallelism (the same update, other hardware costs)."""

    bf16: bool = field(default=False, metadata=doc("bfloat16 autocast on CUDA (ignored on CPU)"))
    fsdp: bool = field(
        default=False,
        metadata=doc(
            "shard parameters, gradients and optimizer state over the ranks during the update "
            "(FSDP2, fully_shard; needs torchrun); sampling runs on gathered weights"
        ),
    )
    fused_optimizer: bool = field(
        default=False,
        metadata=doc(
            "Adam(W) as one fused kernel per parameter (PyTorch's fused=True, what Hugging "
            "Face's Trainer uses by default): about 2x faster optimizer steps on CPU, equal to "
            "the default implementation to float rounding (not bit for bit); False: PyTorch's "
            "default implementation"
        ),
    )

    def __post_init__(self) -> None:
        _check_flags_and_choices(self)


#: The groups of :class:`PPOConfig`, in order: attribute name -> dataclass.
GROUPS: dict[str, type] = {
    "optim": OptimConfig,
    "loss": LossConfig,
    "kl": KLConfig,
    "sampling": SamplingConfig,
    "credit": CreditConfig,
    "systems": SystemsConfig,
}
