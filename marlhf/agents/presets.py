"""Presets: named partial configs of :class:`~marlhf.agents.config.PPOConfig`, and their resolution.

A preset *fixes* the knobs that define a method (passing one of those too is an error: the result
would no longer be that method) and *suggests* others (learning rate, epochs, ...), which an
explicit value overrides. :func:`resolve_config` applies defaults, then presets, then the
explicit values. Re-exported by :mod:`marlhf.agents.config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from marlhf.agents.config import PPOConfig


@dataclass(frozen=True)
class Preset:
    """A named partial config.

    :param fixed: knobs that define the method (combining one with the preset is an error).
    :param suggested: defaults the preset recommends (an explicit value overrides them).
    :param source: the paper or code it follows.
    :param not_reproduced: what differs from that source, one item a line.
    """

    fixed: Mapping[str, Any]
    suggested: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: str = ""
    not_reproduced: tuple[str, ...] = ()

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
    ),
    "ma-ppo": Preset(
        fixed={"estimator": "gae"},
        suggested={"termination": "ngram:5"},
        source="MA-PPO (arXiv 2410.02743): GAE over n-gram macro actions (paper's best: n=5)",
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
        not_reproduced=("one update per rollout batch is not enforced (n_epochs is yours)",),
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
    ),
    "rloo": Preset(
        fixed={"estimator": "rloo", "normalize_advantage": False, "kl_in": "reward"},
        suggested={"group_size": 4},
        source="RLOO (arXiv 2402.14740): leave-one-out baseline",
        not_reproduced=("the KL is shaped per token, not summed into one sequence reward",),
    ),
    "reinforce++": Preset(
        fixed={"estimator": "reinforce_pp", "normalize_advantage": False, "kl_in": "reward"},
        source="REINFORCE++ (arXiv 2501.03262): return-to-go, global batch whitening",
    ),
    "reinforce++-baseline": Preset(
        fixed={
            "estimator": "reinforce_pp_baseline",
            "normalize_advantage": False,
            "kl_in": "reward",
        },
        suggested={"group_size": 4},
        source="REINFORCE++-baseline (arXiv 2501.03262): group-mean baseline, then whitening",
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
        not_reproduced=(
            "dynamic sampling drops uniform groups but does not re-sample to refill the batch",
            "the overlong reward shaping is not applied",
        ),
    ),
    "gspo": Preset(
        fixed={
            "estimator": "grpo",
            "group_std": True,
            "normalize_advantage": False,
            "ratio_level": "sequence",
        },
        suggested={"group_size": 4, "clip_range": 3e-4, "clip_range_high": 4e-4},
        source="GSPO (arXiv 2507.18071): sequence-level, length-normalised ratio",
    ),
    "remax": Preset(
        fixed={"estimator": "remax", "normalize_advantage": False},
        source="ReMax (arXiv 2310.10505): the reward of a greedy rollout of the prompt",
        not_reproduced=("the greedy rollout's tokens are counted as compute but not trained on",),
    ),
    "vineppo": Preset(
        fixed={"estimator": "mc", "normalize_advantage": False, "kl_in": "loss"},
        suggested={"mc_rollouts": 4, "mc_max_starts": 8},
        source="VinePPO (arXiv 2410.01679): Monte-Carlo values at step starts, lambda 0",
        not_reproduced=(
            "steps are the termination's segments (every token by default, capped by "
            "mc_max_starts); VinePPO cuts reasoning steps at newlines: pass a termination",
        ),
    ),
    "spo-chain": Preset(
        fixed={
            "estimator": "mc",
            "normalize_advantage": False,
            "kl_in": "loss",
            "prob_mask_threshold": 0.9,
        },
        suggested={"termination": "lowprob:p=0.9", "mc_rollouts": 4, "mc_max_starts": 8},
        source="SPO-chain (arXiv 2505.23564): MC values at low-probability cut points",
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


def resolve_config(
    cls: type[PPOConfig],
    preset: str | Iterable[str] | None = None,
    explicit: Mapping[str, Any] | None = None,
) -> PPOConfig:
    """The config of ``cls`` from its defaults, then ``preset`` (one name or several, applied in
    order), then the ``explicit`` values.

    :raises TypeError: an explicit key that is not a field (the message lists the valid ones).
    :raises ValueError: an explicit key a preset fixes, an unknown preset, or a bad value.
    """
    explicit = dict(explicit or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(explicit) - names)
    if unknown:
        raise TypeError(
            f"unknown hyper-parameter {unknown[0]!r} for {cls.__name__}; valid: {sorted(names)}"
        )
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
