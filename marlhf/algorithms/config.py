"""One config per algorithm: every hyper-parameter in one place, with its help text and choices.

``PPOConfig`` is the single source of the algorithms' hyper-parameters. ``PPO(...)``'s keyword
arguments, its ``:param`` docs, the CLI's ``agent`` section, YAML files, ``--set`` and ``--help``
are all generated from its fields (``field(metadata=doc(...))``; ``Literal`` types are the lists
of valid choices). A new knob is one field here.

Presets (``PRESETS``) are named partial configs. A preset *fixes* the knobs that define a method
(passing one of those too is an error: the result would no longer be that method) and *suggests*
others (learning rate, epochs, ...), which an explicit value overrides. They and
``resolve_config`` live in :mod:`marlhf.algorithms.presets` and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from marlhf.algorithms.losses import KL_LOSS_ESTIMATORS
from marlhf.algorithms.presets import PRESETS as PRESETS
from marlhf.algorithms.presets import Preset as Preset
from marlhf.algorithms.presets import available_presets as available_presets
from marlhf.algorithms.presets import get_preset as get_preset
from marlhf.algorithms.presets import resolve_config as resolve_config
from marlhf.credit.advantages import Discount, RewardAgg, ValueAgg
from marlhf.credit.estimators import get_estimator
from marlhf.credit.kl import KLEstimator
from marlhf.options import Termination

RatioLevel = Literal["token", "macro", "sequence"]
LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-sum-constant"]
KLIn = Literal["reward", "loss"]
ReinforcePPForm = Literal["openrlhf", "verl"]
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


def _check_literal(name: str, value: Any, annotation: Any) -> None:
    choices = literal_choices(annotation)
    if choices is not None and value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}")


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The choices of a ``Literal`` annotation (also inside ``X | None``), else ``None``."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    for arm in get_args(annotation):
        if get_origin(arm) is Literal:
            return get_args(arm)
    return None


@dataclass
class PPOConfig:
    """Hyper-parameters of :class:`marlhf.algorithms.PPO` (SB3 names, plus the LM and MA-RLHF
    knobs)."""

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
    gamma: float = field(default=1.0, metadata=doc("discount per segment step (per token: PPO)"))
    gae_lambda: float = field(default=0.95, metadata=doc("GAE lambda"))
    clip_range: float = field(default=0.2, metadata=doc("PPO clip of the probability ratio"))
    clip_range_vf: float | None = field(
        default=0.2, metadata=doc("value clip around the rollout's values; None: no value clip")
    )
    normalize_advantage: bool = field(default=True, metadata=doc("whiten advantages per minibatch"))
    ent_coef: float = field(default=0.0, metadata=doc("entropy bonus coefficient"))
    vf_coef: float = field(default=0.5, metadata=doc("value loss coefficient"))
    max_grad_norm: float | None = field(
        default=1.0, metadata=doc("gradient norm clip; None: no clipping")
    )
    target_kl: float | None = field(
        default=None,
        metadata=doc("stop the epochs early when approx KL exceeds 1.5 x this; None: never"),
    )
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
    reward_clip: float | None = field(
        default=None, metadata=doc("clip task rewards to [-c, c] before shaping; None: no clip")
    )
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
    termination: str | Termination | None = field(
        default=None,
        metadata=doc(
            "macro-action termination spec (ngram:5, ...) or object; None: every token is its "
            "own action (token-level PPO)",
            cli=False,
        ),
    )
    reward_agg: RewardAgg = field(
        default="sum", metadata=doc("segment reward: sum (paper) or mean (released code)")
    )
    value_agg: ValueAgg = field(
        default="mean", metadata=doc("segment value: mean (released code), first, last, position")
    )
    ratio_level: RatioLevel = field(
        default="token",
        metadata=doc(
            "probability ratio per token, one per macro (segment), or one per response "
            "(sequence: GSPO's length-normalised ratio)"
        ),
    )
    clip_range_high: float | None = field(
        default=None,
        metadata=doc("upper ratio clip 1 + this (DAPO: 0.28); None: clip_range (symmetric)"),
    )
    dual_clip: float | None = field(
        default=None,
        metadata=doc(
            "dual-clip PPO (verl's clip_ratio_c, e.g. 3.0): with a negative advantage the "
            "token's loss is at most -c x A; must be > 1; None: off"
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
    kl_in: KLIn = field(
        default="reward",
        metadata=doc(
            "where the KL to the reference acts: reward (per-token penalty in the shaped reward) "
            "or loss (kl_coef x kl_estimator term in the loss, as GRPO with k3; needs k2 or k3)"
        ),
    )
    discount: Discount = field(
        default="segment", metadata=doc("one gamma per macro step (segment) or gamma**len (token)")
    )
    isolate_last: bool = field(
        default=True, metadata=doc("the last token is its own segment (carries the score alone)")
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
    estimator: str = field(
        default="gae",
        metadata=doc(
            "advantage estimator (marlhf.credit.estimators registry): gae (critic; tokens = PPO, "
            "segments = MA-PPO), grpo, rloo, reinforce_pp, reinforce_pp_baseline, remax (greedy "
            "baseline), mc (Monte-Carlo values at segment starts: VinePPO, SPO)"
        ),
    )
    group_size: int = field(
        default=1,
        metadata=doc(
            "rollouts per prompt (num_envs / group_size prompts a rollout); group baselines "
            "need >= 2"
        ),
    )
    reinforce_pp_form: ReinforcePPForm = field(
        default="openrlhf",
        metadata=doc(
            "reinforce_pp_baseline: openrlhf (the group mean of the task score is subtracted "
            "from the score, the per-token KL stays in the return-to-go) or verl (the group mean "
            "of the KL-inclusive total is subtracted from the total, one advantage per response)"
        ),
    )
    group_std: bool = field(
        default=True,
        metadata=doc("grpo: divide by the group's std (False: Dr. GRPO's unscaled advantage)"),
    )
    mc_rollouts: int = field(
        default=4,
        metadata=doc("mc: continuations sampled from each branch point (K); must divide num_envs"),
    )
    mc_max_starts: int = field(
        default=8,
        metadata=doc(
            "mc: branch points per response at most (the first token always; the others evenly "
            "spread over the segment starts)"
        ),
    )
    prob_mask_threshold: float | None = field(
        default=None,
        metadata=doc(
            "tokens sampled with probability above this leave the update: out of the loss, the "
            "KL term and the whitening, advantage 0 (SPO-chain: 0.9); needs ratio_level=token; "
            "None: off"
        ),
    )
    drop_uniform_groups: bool = field(
        default=False,
        metadata=doc(
            "leave out of the update the groups whose task scores are all equal (DAPO's dynamic "
            "sampling filter, on the score alone: a KL in the reward does not count)"
        ),
    )
    bf16: bool = field(default=False, metadata=doc("bfloat16 autocast on CUDA (ignored on CPU)"))
    fsdp: bool = field(
        default=False,
        metadata=doc(
            "shard parameters, gradients and optimizer state over the ranks during the update "
            "(FSDP2, fully_shard; needs torchrun); sampling runs on gathered weights"
        ),
    )
    mask_actions: bool = field(
        default=False,
        metadata=doc(
            "sample and score only the tokens the env allows (env.action_masks(), read at reset)"
        ),
    )

    def __post_init__(self) -> None:
        _positive("learning_rate", self.learning_rate)
        _positive("clip_range", self.clip_range)
        _positive("clip_range_high", self.clip_range_high, allow_none=True)
        _positive("temperature", self.temperature)
        _positive("score_temperature", self.score_temperature, allow_none=True)
        names = ("clip_range_vf", "target_kl", "reward_clip", "kl_target", "max_grad_norm")
        for name in (*names, "kl_clamp"):
            _positive(name, getattr(self, name), allow_none=True)
        _int_at_least("n_epochs", self.n_epochs, 1)
        _int_at_least("batch_size", self.batch_size, 1, allow_none=True)
        _int_at_least("micro_batch_size", self.micro_batch_size, 1, allow_none=True)
        _int_at_least("kl_horizon", self.kl_horizon, 1)
        _int_at_least("top_k", self.top_k, 0)
        for name in ("gamma", "gae_lambda", "top_p"):
            _in_range(name, getattr(self, name), 0.0, 1.0)
        _in_range("warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        for name in ("ent_coef", "vf_coef", "kl_coef", "weight_decay"):
            _nonnegative(name, getattr(self, name))
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hints[f.name] is bool and not isinstance(value, bool):
                raise ValueError(f"{f.name}={value!r} must be True or False")
            _check_literal(f.name, value, hints[f.name])
        _int_at_least("group_size", self.group_size, 1)
        _int_at_least("mc_rollouts", self.mc_rollouts, 1)
        _int_at_least("mc_max_starts", self.mc_max_starts, 1)
        if self.prob_mask_threshold is not None:
            _in_range("prob_mask_threshold", self.prob_mask_threshold, 0.0, 1.0)
        if self.dual_clip is not None and not (
            isinstance(self.dual_clip, int | float) and math.isfinite(self.dual_clip)
            and self.dual_clip > 1
        ):  # fmt: skip
            raise ValueError(f"dual_clip={self.dual_clip!r} must be a finite number > 1 or None")
        self._check_method_fidelity()
        spec = get_estimator(self.estimator)  # raises naming the valid estimators
        if self.drop_uniform_groups and self.group_size < 2:
            raise ValueError(
                f"drop_uniform_groups=True needs groups: group_size={self.group_size} must be >= 2"
            )
        if "mc_values" in spec.requires and self.kl_in == "reward" and self.kl_coef > 0:
            raise ValueError(
                f"estimator={self.estimator!r} estimates values from task rewards only: use "
                f"kl_in='loss' or kl_coef=0 (got kl_in='reward', kl_coef={self.kl_coef}); in "
                f"the loss the KL needs kl_estimator in {KL_LOSS_ESTIMATORS}"
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

    def _check_method_fidelity(self) -> None:
        """Combinations with no defined meaning: each error names the field and valid values."""
        if self.kl_in == "loss" and self.kl_estimator not in KL_LOSS_ESTIMATORS:
            raise ValueError(
                f"kl_estimator={self.kl_estimator!r} cannot regularise in the loss: the k1 term "
                "logp - ref has zero expected gradient on-policy. With kl_in='loss' choose "
                f"kl_estimator in {KL_LOSS_ESTIMATORS} (k3: gradient of KL(ref||pi), as GRPO; "
                "k2: gradient of KL(pi||ref), k1's correct loss form), or put k1 in the reward "
                "(kl_in='reward')"
            )
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

    @property
    def scoring_temperature(self) -> float:
        """The temperature log-probs are scored at (``score_temperature`` or ``temperature``)."""
        return self.temperature if self.score_temperature is None else self.score_temperature


@dataclass
class MAPPOConfig(PPOConfig):
    """Hyper-parameters of :class:`marlhf.algorithms.MAPPO`: PPO's, with a termination by
    default."""

    termination: str | Termination | None = field(
        default="ngram:5",
        metadata=doc(
            "macro-action termination spec or object (paper's best overall: ngram:5; "
            "ngram:10 for code)",
            cli=False,
        ),
    )


# ------------------------------------------------------------------- algorithm classes from it
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


def _default_repr(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"config field {f.name!r} has no default")


def bind_config(cls: type, config_class: type[PPOConfig]) -> None:
    """Generate an algorithm class's keyword arguments, ``:param`` docs and attribute access from
    its config dataclass, so that a new field shows in ``help()`` with nothing else to edit.

    - ``inspect.signature(cls)``: ``(policy, env=None, *, <every field with its default>,
      preset=None, tensorboard_log=None, ...)``;
    - the line ``:hyperparameters:`` in the class docstring becomes one ``:param`` per field;
    - ``algo.<field>`` reads ``algo.config.<field>``; assigning validates and replaces the config.
    """
    import functools
    import inspect

    cls.config_class = config_class  # type: ignore[attr-defined]
    fields = dataclasses.fields(config_class)
    for f in fields:
        if f.name == "termination":  # algo.termination is the built rule; the spec stays in config
            continue

        def getter(self: Any, _name: str = f.name) -> Any:
            return getattr(self.config, _name)

        def setter(self: Any, value: Any, _name: str = f.name) -> None:
            self.config = dataclasses.replace(self.config, **{_name: value})

        setattr(cls, f.name, property(getter, setter, doc=f.metadata["help"]))

    original = cls.__init__  # type: ignore[misc]

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)

    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("policy", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("env", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    ]
    params += [inspect.Parameter(f.name, kw, default=_default_repr(f)) for f in fields]
    params += [inspect.Parameter(n, kw, default=d) for n, d in COMMON_ARGUMENTS.items()]
    __init__.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[misc]

    if cls.__doc__ and HYPERPARAMETER_DOCS in cls.__doc__:
        lines = [
            f":param {f.name}: {f.metadata['help']} (default ``{_default_repr(f)!r}``)."
            for f in fields
        ]
        indent = cls.__doc__.split(HYPERPARAMETER_DOCS)[0].rsplit("\n", 1)[-1]
        cls.__doc__ = cls.__doc__.replace(HYPERPARAMETER_DOCS, ("\n" + indent).join(lines))
