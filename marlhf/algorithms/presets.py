"""Presets: named partial configs of :class:`~marlhf.algorithms.config.PPOConfig`, and their
resolution. A preset's knobs are flat names (``clip_range``), each reaching its group through
:data:`~marlhf.algorithms.knobs.FLAT_KEYS`.

A preset *fixes* the knobs that define a method (passing one of those too is an error: the result
would no longer be that method) and *suggests* others (learning rate, epochs, ...), which an
explicit value overrides. :func:`resolve_config` applies defaults, then presets, then the
explicit values. :func:`~marlhf.algorithms.user_presets.register_preset` adds a user's preset
beside the built-in ones.
Re-exported by :mod:`marlhf.algorithms.config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from marlhf.algorithms.groups import GROUPS
from marlhf.algorithms.knobs import FLAT_KEYS, get_knob, leaves

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

#: The config class a preset resolves into (:class:`~marlhf.algorithms.config.PPOConfig` or a
#: subclass; presets sit below the config, which re-exports them).
ConfigT = TypeVar("ConfigT", bound="DataclassInstance")


@dataclass(frozen=True)
class Preset:
    """A named partial config.

    :param fixed: knobs that define the method (combining one with the preset is an error).
    :param suggested: defaults the preset recommends (an explicit value overrides them).
    :param source: the paper or code it follows.
    :param source_settings: the source's values of the knobs it sets, under marlhf's field
        names; the presets table (:mod:`marlhf.algorithms.preset_table`) sets each beside the
        preset's own value and flags every difference.
    :param not_reproduced: what differs from that source and has no knob to compare, one item
        a line.
    """

    fixed: Mapping[str, Any]
    suggested: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: str = ""
    not_reproduced: tuple[str, ...] = ()
    source_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        """Every value the preset sets (suggested, then fixed)."""
        return {**self.suggested, **self.fixed}


PRESETS: dict[str, Preset] = {
    # The configuration of the released MA-RLHF code (docs/method.md, "Knobs"): segment rewards and
    # values are means, the ratio is per token, a fixed KL coefficient of 0.05, the terminal
    # score clipped at +-2.5, gamma 1, lambda 0.95, PPO and value clipping 0.2, no advantage
    # whitening, sampling at temperature 0.8 with top-k 50 but log-probs scored from raw logits,
    # one epoch per rollout, lr 1.5e-5 with weight decay 0.1, warm-up then linear decay.
    "ma-rlhf-official": Preset(
        fixed={
            "reward_agg": "mean",
            "value_agg": "mean",
            "ratio_level": "token",
            "discount": "segment",
            "isolate_last": True,
            "kl_coef": 0.05,
            "kl_target": None,
            "kl_estimator": "k1",
            "reward_clip": 2.5,
            "gamma": 1.0,
            "gae_lambda": 0.95,
            "clip_range": 0.2,
            "clip_range_vf": 0.2,
            "normalize_advantage": False,
            "temperature": 0.8,
            "score_temperature": 1.0,
            "top_k": 50,
            "top_p": 1.0,
        },
        suggested={
            "n_epochs": 1,
            "learning_rate": 1.5e-5,
            "weight_decay": 0.1,
            "lr_schedule": "linear",
            "warmup_fraction": 0.1,
        },
        source="MA-RLHF released code (DeepSpeed-Chat fork), arXiv 2410.02743",
        source_settings={
            "reward_agg": "mean",
            "value_agg": "mean",
            "ratio_level": "token",
            "kl_coef": 0.05,
            "kl_estimator": "k1",
            "kl_in": "reward",
            "reward_clip": 2.5,
            "gamma": 1.0,
            "gae_lambda": 0.95,
            "clip_range": 0.2,
            "clip_range_vf": 0.2,
            "normalize_advantage": False,
            "temperature": 0.8,
            "score_temperature": 1.0,
            "top_k": 50,
            "n_epochs": 1,
            "learning_rate": 1.5e-5,
            "weight_decay": 0.1,
            "lr_schedule": "linear",
        },
        not_reproduced=(
            "a separate critic model: pass policy_kwargs={'critic': <model or path>} "
            "(the preset cannot build a second model for you)",
            "DeepSpeed ZeRO and its fused optimizer; warm-up length as a fraction of the run "
            "(the released code counts steps)",
            "the released code's random-n-gram RNG is unseeded; marlhf's is seeded",
        ),
    ),
    "ppo": Preset(
        fixed={"estimator": "gae", "termination": None},
        source="PPO for RLHF (Schulman et al. 2017; Ouyang et al. 2022): token-level GAE",
        source_settings={
            "estimator": "gae",
            "termination": None,
            "gamma": 1.0,
            "gae_lambda": 0.95,
            "clip_range": 0.2,
            "kl_in": "reward",
            "kl_estimator": "k1",
            "normalize_advantage": True,
        },
    ),
    "ma-ppo": Preset(
        fixed={"estimator": "gae"},
        suggested={"termination": "ngram:5"},
        source="MA-PPO (arXiv 2410.02743): GAE over n-gram macro actions (paper's best: n=5)",
        source_settings={
            "estimator": "gae",
            "termination": "ngram:5",
            "reward_agg": "sum",
            "gamma": 1.0,
            "gae_lambda": 0.95,
            "kl_in": "reward",
            "kl_estimator": "k1",
        },
    ),
    "grpo": Preset(
        fixed={
            "estimator": "grpo",
            "group_std": True,
            "normalize_advantage": False,
            "kl_in": "loss",
            "kl_estimator": "k3",
        },
        suggested={"group_size": 4},
        source="GRPO (DeepSeekMath, arXiv 2402.03300), outcome supervision",
        source_settings={
            "estimator": "grpo",
            "group_std": True,
            "normalize_advantage": False,
            "kl_in": "loss",
            "kl_estimator": "k3",
            "kl_coef": 0.04,
            "loss_agg": "seq-mean-token-mean",
            "group_size": 64,
            "n_epochs": 1,
            "learning_rate": 1e-6,
        },
        not_reproduced=(
            "loss_agg stays token-mean (every token alike) so that `make demo`'s GRPO runs keep "
            "their numbers; pass loss_agg='seq-mean-token-mean' for the paper's per-response mean",
            "kl_coef is left to the run (PPOConfig's 0.05; the CLI's toy preset 0); the paper "
            "uses 0.04",
            "group_size 4, n_epochs and learning_rate fit the toy tasks (tiny models trained "
            "from scratch); the paper samples 64 outputs per prompt, makes one update per "
            "rollout batch and fine-tunes at 1e-6",
        ),
    ),
    "dr-grpo": Preset(
        fixed={
            "estimator": "grpo",
            "group_std": False,
            "normalize_advantage": False,
            "loss_agg": "seq-sum-constant",
        },
        suggested={"group_size": 4, "kl_coef": 0.0},
        source="Dr. GRPO (arXiv 2503.20783): no std scaling, loss sum / constant",
        source_settings={
            "estimator": "grpo",
            "group_std": False,
            "normalize_advantage": False,
            "loss_agg": "seq-sum-constant",
            "kl_coef": 0.0,
            "group_size": 8,
        },
        not_reproduced=(
            "the constant is rows x max_new_tokens of the minibatch (the paper: the generation "
            "budget per response, the same number when max_new_tokens is that budget)",
            "group_size 4 fits the toy tasks (the paper samples 8)",
        ),
    ),
    "rloo": Preset(
        fixed={"estimator": "rloo", "normalize_advantage": False, "kl_in": "reward"},
        suggested={"group_size": 4},
        source="RLOO (arXiv 2402.14740): leave-one-out baseline",
        source_settings={
            "estimator": "rloo",
            "normalize_advantage": False,
            "kl_in": "reward",
            "kl_estimator": "k1",
            "group_size": 4,
        },
        not_reproduced=(
            "the update is the PPO-clipped surrogate with n_epochs passes (as TRL's "
            "RLOOTrainer); the paper's plain REINFORCE step is n_epochs=1 (ratio 1)",
        ),
    ),
    "reinforce++": Preset(
        fixed={"estimator": "reinforce_pp", "normalize_advantage": False, "kl_in": "reward"},
        source="REINFORCE++ (arXiv 2501.03262): return-to-go, global batch whitening",
        source_settings={
            "estimator": "reinforce_pp",
            "normalize_advantage": False,
            "kl_in": "reward",
            "kl_estimator": "k1",
            "gamma": 1.0,
        },
        not_reproduced=(
            "the batch whitening divides by the unbiased std (verl's masked_whiten; OpenRLHF "
            "divides by the population std, a factor sqrt((n - 1) / n) over n tokens)",
        ),
    ),
    "reinforce++-baseline": Preset(
        fixed={
            "estimator": "reinforce_pp_baseline",
            "normalize_advantage": False,
            "kl_in": "reward",
        },
        suggested={"group_size": 4},
        source="REINFORCE++-baseline (arXiv 2501.03262): group-mean baseline, then whitening",
        source_settings={
            "estimator": "reinforce_pp_baseline",
            "reinforce_pp_form": "openrlhf",
            "normalize_advantage": False,
            "kl_in": "reward",
            "kl_estimator": "k1",
        },
        not_reproduced=(
            "with reward_clip set, marlhf clips the score before the group mean (OpenRLHF "
            "clips the centred score); reinforce_pp_form='verl' gives verl's form",
            "the batch whitening divides by the unbiased std (OpenRLHF: the population std)",
        ),
    ),
    "dapo": Preset(
        fixed={
            "estimator": "grpo",
            "group_std": True,
            "normalize_advantage": False,
            "clip_range": 0.2,
            "clip_range_high": 0.28,
            "loss_agg": "token-mean",
            "drop_uniform_groups": True,
        },
        suggested={"group_size": 4, "kl_coef": 0.0},
        source="DAPO (arXiv 2503.14476): clip-higher, token-level loss, dynamic sampling",
        source_settings={
            "estimator": "grpo",
            "group_std": True,
            "normalize_advantage": False,
            "clip_range": 0.2,
            "clip_range_high": 0.28,
            "loss_agg": "token-mean",
            "drop_uniform_groups": True,
            "kl_coef": 0.0,
            "group_size": 16,
        },
        not_reproduced=(
            "dynamic sampling drops uniform groups but does not re-sample to refill the batch",
            "the overlong reward shaping is not applied",
            "group_size 4 fits the toy tasks (the paper samples 16)",
        ),
    ),
    "gspo": Preset(
        fixed={
            "estimator": "grpo",
            "group_std": True,
            "normalize_advantage": False,
            "ratio_level": "sequence",
            "loss_agg": "seq-mean-token-mean",
        },
        suggested={"group_size": 4, "clip_range": 3e-4, "clip_range_high": 4e-4, "kl_coef": 0.0},
        source="GSPO (arXiv 2507.18071; verl's GSPO recipe): sequence-level, length-normalised "
        "ratio, one term per response",
        source_settings={
            "estimator": "grpo",
            "group_std": True,
            "normalize_advantage": False,
            "ratio_level": "sequence",
            "loss_agg": "seq-mean-token-mean",
            "clip_range": 3e-4,
            "clip_range_high": 4e-4,
            "kl_coef": 0.0,
        },
        not_reproduced=("group_size 4 fits the toy tasks (verl's GSPO scripts sample more)",),
    ),
    "remax": Preset(
        fixed={"estimator": "remax", "normalize_advantage": False},
        source="ReMax (arXiv 2310.10505): the reward of a greedy rollout of the prompt",
        source_settings={
            "estimator": "remax",
            "normalize_advantage": False,
            "kl_in": "reward",
            "kl_estimator": "k1",
        },
        not_reproduced=(
            "the greedy rollout's tokens are counted as compute but not trained on",
            "the advantage is the return-to-go of the KL-shaped reward minus the greedy "
            "response's task score (verl's form); the greedy response's own KL is not scored, "
            "and reward_clip clips its score as the sample's",
        ),
    ),
    "vineppo": Preset(
        fixed={
            "estimator": "mc",
            "normalize_advantage": True,
            "kl_in": "loss",
            "kl_estimator": "k3",
            "kl_clamp": 10.0,
        },
        suggested={"mc_rollouts": 4, "mc_max_starts": 8, "kl_coef": 1e-4},
        source="VinePPO (arXiv 2410.01679; released configs): Monte-Carlo values at step "
        "starts, lambda 0, k3 KL in the loss clamped to [0, 10]",
        source_settings={
            "estimator": "mc",
            "normalize_advantage": True,
            "kl_in": "loss",
            "kl_estimator": "k3",
            "kl_clamp": 10.0,
            "kl_coef": 1e-4,
            "mc_rollouts": 9,
            "clip_range": 0.2,
        },
        not_reproduced=(
            "steps are the termination's segments (every token by default, capped by "
            "mc_max_starts); VinePPO cuts reasoning steps at newlines and branches at every "
            "step: pass a termination and a larger mc_max_starts",
            "mc_rollouts 4 fits the toy tasks' compute budget (released: 9)",
            "the KL term is aggregated like the policy loss (loss_agg); the released trainer "
            "sums it over each response's tokens, then averages over responses",
            "normalize_advantage whitens each minibatch's advantages; whether the released "
            "trainer whitens per minibatch or over the whole rollout was not checked",
        ),
    ),
    "spo-chain": Preset(
        fixed={
            "estimator": "mc",
            "normalize_advantage": True,
            "kl_in": "loss",
            "kl_estimator": "k3",
            "kl_clamp": 10.0,
            "prob_mask_threshold": 0.9,
        },
        suggested={
            "termination": "lowprob:p=0.9",
            "mc_rollouts": 4,
            "mc_max_starts": 8,
            "kl_coef": 1e-4,
        },
        source="SPO-chain (arXiv 2505.23564; released configs, built on VinePPO's): MC values "
        "at low-probability cut points, confident tokens out of the update",
        source_settings={
            "estimator": "mc",
            "normalize_advantage": True,
            "kl_in": "loss",
            "kl_estimator": "k3",
            "kl_clamp": 10.0,
            "kl_coef": 1e-4,
            "prob_mask_threshold": 0.9,
            "termination": "lowprob:p=0.9",
            "mc_rollouts": 9,
        },
        not_reproduced=(
            "mc_rollouts 4 fits the toy tasks' compute budget (released: 9)",
            "mc_max_starts caps the cut points per response (SPO-chain cuts at every k-th "
            "low-probability token)",
            "the KL term is aggregated like the policy loss (loss_agg); the released trainer "
            "sums it over each response's tokens, then averages over responses",
            "normalize_advantage whitens each minibatch's advantages over its kept tokens; "
            "whether the released trainer whitens per minibatch or over the whole rollout was "
            "not checked",
        ),
    ),
    # The scale the CLI starts from: a tiny model trained from scratch needs a large learning
    # rate and no KL anchor to a random reference. Suggested values only; shown in --help.
    "toy": Preset(
        fixed={},
        suggested={"learning_rate": 1e-3, "batch_size": 16, "kl_coef": 0.0},
        source="marlhf's toy tasks with a tiny GPT-2 trained from scratch",
    ),
}


def available_presets() -> list[str]:
    """Sorted preset names."""
    return sorted(PRESETS)


def get_preset(name: str) -> Preset:
    """Preset ``name``, or a ``ValueError`` listing the available ones."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"preset={name!r} is unknown; available: {available_presets()}")
    return PRESETS[name]


def _preset_names(preset: str | Iterable[str] | None) -> list[str]:
    if preset is None:
        return []
    if isinstance(preset, str):
        return [preset]
    names = list(preset)
    for name in names:
        get_preset(name)
    return names


def explicit_values(explicit: Mapping[str, Any], cls_name: str = "PPOConfig") -> dict[str, Any]:
    """``explicit`` by flat name: a group object (``loss=LossConfig(...)``) stands for every one
    of its knobs (each then explicit: a preset fixing one of them to another value clashes).

    :raises TypeError: a key that is neither a flat knob nor a group (the message lists them).
    :raises ValueError: a group that is not its group's dataclass, or a knob given twice with
        two values (once flat, once in its group).
    """
    out: dict[str, Any] = {}
    groups: dict[str, Any] = {}
    for key, value in explicit.items():
        if key in GROUPS:
            if value is None:
                continue
            if not isinstance(value, GROUPS[key]):
                raise ValueError(
                    f"{key}={value!r} must be a {GROUPS[key].__name__} (or None for its defaults)"
                )
            groups[key] = value
        elif key in FLAT_KEYS:
            out[key] = value
        else:
            raise TypeError(
                f"unknown hyper-parameter {key!r} for {cls_name}; valid: {sorted(FLAT_KEYS)} "
                f"(or the groups {list(GROUPS)})"
            )
    for group, value in groups.items():
        for path, f in leaves(type(value)):
            knob = get_knob(value, path)
            if f.name in out and out[f.name] != knob:
                raise ValueError(
                    f"{f.name} is given twice: {f.name}={out[f.name]!r} and "
                    f"{group}.{'.'.join(path)}={knob!r}"
                )
            out[f.name] = knob
    return out


def resolve_config(
    cls: type[ConfigT],
    preset: str | Iterable[str] | None = None,
    explicit: Mapping[str, Any] | None = None,
) -> ConfigT:
    """The config of ``cls`` from its defaults, then ``preset`` (one name or several, applied in
    order), then the ``explicit`` values (flat names, or whole groups: :func:`explicit_values`).

    :raises TypeError: an explicit key that is not a knob (the message lists the valid ones).
    :raises ValueError: an explicit key a preset fixes, an unknown preset, or a bad value.
    """
    explicit = explicit_values(explicit or {}, cls.__name__)
    values: dict[str, Any] = {}
    for name in _preset_names(preset):
        p = get_preset(name)
        clash = sorted(k for k in set(p.fixed) & set(explicit) if explicit[k] != p.fixed[k])
        if clash:
            raise ValueError(
                f"preset={name!r} fixes {clash[0]}={p.fixed[clash[0]]!r}; remove "
                f"{clash[0]}={explicit[clash[0]]!r} or the preset (the preset fixes "
                f"{sorted(p.fixed)})"
            )
        values.update(p.values())
    values.update(explicit)
    return cls(**values)
