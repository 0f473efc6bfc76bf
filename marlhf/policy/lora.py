"""LoRA adapters through PEFT (the ``scale`` extra) and gradient checkpointing: the two memory
savers of :class:`~marlhf.policy.actor_critic.CausalLMActorCritic`.

With LoRA the base weights stay frozen; the optimizer trains the adapters (and the value head),
and the KL reference is the same model with its adapters disabled, so no second copy is held.

Checkpoint layout written by :func:`save_peft_policy`: ``policy/`` holds the adapters in PEFT's
own format (``adapter_config.json``, ``adapter_model.safetensors``), ``base/`` the frozen base
model as plain ``transformers`` weights (so the folder loads with no network and no original
model path), and :func:`save_merged` writes the adapters folded into the base weights, a model
plain ``transformers`` loads.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

from marlhf.models import transformer_blocks
from marlhf.policy.lm_utils import load_causal_lm

INSTALL = "pip install 'marlhf[scale]' (or pip install 'peft>=0.13')"

#: Default LoRA targets per ``config.model_type``: the attention projections, as the LoRA paper
#: and PEFT's own defaults do (GPT-2 adds the output projections, its ``c_attn`` being fused).
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn", "c_proj"),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "phi3": ("qkv_proj",),
    "gpt_neox": ("query_key_value",),
    "opt": ("q_proj", "v_proj"),
}


@dataclass(frozen=True)
class LoRAConfig:
    """The LoRA block of a policy.

    :param r: rank of each adapter (> 0).
    :param alpha: scaling numerator; the update is ``(alpha / r) * B A`` (> 0).
    :param dropout: dropout on the adapters' input during the update's forward passes only
        (sampling and rollout scoring run without it, so PPO's first-epoch ratio stays 1);
        in ``[0, 1)``.
    :param target_modules: names of the layers that get adapters (the last component of a
        module's name, e.g. ``"q_proj"``); ``None`` picks the architecture's default
        (:data:`DEFAULT_TARGETS`).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"lora.r={self.r!r} must be an int >= 1")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float):
            raise ValueError(f"lora.alpha={self.alpha!r} must be a number > 0")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha={self.alpha!r} must be a number > 0")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float):
            raise ValueError(f"lora.dropout={self.dropout!r} must be a number in [0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout={self.dropout!r} must be a number in [0, 1)")
        targets = self.target_modules
        if targets is not None:
            if isinstance(targets, str):
                targets = (targets,)
            targets = tuple(targets)
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise ValueError(
                    f"lora.target_modules={self.target_modules!r} must be a non-empty list of "
                    "module names (e.g. ['q_proj', 'v_proj']) or None for the default"
                )
            object.__setattr__(self, "target_modules", targets)

    @classmethod
    def coerce(cls, value: LoRAConfig | dict[str, Any] | None) -> LoRAConfig | None:
        """A :class:`LoRAConfig` from itself, a dict of its fields (from YAML), or ``None``."""
        if value is None or isinstance(value, LoRAConfig):
            return value
        if isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"lora: unknown keys {unknown}; valid: {sorted(known)}")
            return cls(**value)
        raise TypeError(f"lora: expected a LoRAConfig, a dict or None, got {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target_modules"] = None if self.target_modules is None else list(self.target_modules)
        return out


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence the deprecation warning PEFT triggers by asking transformers with an old name."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


def peft_available() -> bool:
    return importlib.util.find_spec("peft") is not None


def require_peft(what: str) -> Any:
    """The ``peft`` module, or an ImportError naming ``what`` needed it and how to install it."""
    if not peft_available():
        raise ImportError(f"{what} needs the optional peft package: {INSTALL}")
    import peft

    return peft


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` has switchable adapters (a PEFT model or one with its interface)."""
    return callable(getattr(model, "disable_adapter", None)) and hasattr(model, "peft_config")


def _adaptable_names(model: nn.Module) -> list[str]:
    """Leaf names of the layers LoRA can wrap (linear, GPT-2's Conv1D, embeddings)."""
    names = set()
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, nn.Linear | nn.Embedding) or kind == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_targets(model: nn.Module, config: LoRAConfig) -> tuple[str, ...]:
    """The target module names for ``model``, checked to exist in it.

    :raises ValueError: when the architecture has no default and none were given, or when a
        requested name matches no layer (PEFT would skip it silently).
    """
    valid = _adaptable_names(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = config.target_modules
    if targets is None:
        if model_type not in DEFAULT_TARGETS:
            raise ValueError(
                f"lora.target_modules: no default for model_type={model_type!r} (defaults exist "
                f"for {sorted(DEFAULT_TARGETS)}); pass target_modules, chosen from {valid}"
            )
        targets = DEFAULT_TARGETS[model_type]
    missing = [t for t in targets if t not in valid]
    if missing:
        raise ValueError(
            f"lora.target_modules={list(targets)!r}: {missing} match no layer of "
            f"{type(model).__name__}; valid names: {valid}"
        )
    return tuple(targets)


def apply_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """``model`` wrapped in PEFT LoRA adapters (base weights frozen, adapters trainable)."""
    peft = require_peft("lora")
    if is_peft_model(model):
        raise ValueError(
            f"lora: {type(model).__name__} already has PEFT adapters; pass lora=None to train "
            "them as they are, or pass the base model"
        )
    targets = resolve_targets(model, config)
    conv1d = any(
        type(m).__name__ == "Conv1D" and name.rsplit(".", 1)[-1] in targets
        for name, m in model.named_modules()
    )
    peft_config = peft.LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(targets),
        # GPT-2's Conv1D stores its weight transposed (in x out).
        fan_in_fan_out=conv1d,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with quiet_peft():
        return peft.get_peft_model(model, peft_config)


def lora_config_of(model: nn.Module) -> LoRAConfig | None:
    """The :class:`LoRAConfig` of a PEFT LoRA model's active adapter (``None`` otherwise)."""
    if not is_peft_model(model):
        return None
    configs: Any = model.peft_config
    config = configs.get(getattr(model, "active_adapter", "default"))
    if config is None or not hasattr(config, "r"):
        return None
    return LoRAConfig(
        r=int(config.r),
        alpha=float(config.lora_alpha),
        dropout=float(config.lora_dropout),
        target_modules=tuple(sorted(config.target_modules)),
    )


def set_adapter_dropout(model: nn.Module, mode: bool) -> None:
    """Switch LoRA's dropout modules (only them) to training ``mode``."""
    for name, module in model.named_modules():
        if ".lora_dropout." in f".{name}." and isinstance(module, nn.Dropout):
            module.train(mode)


def base_state_dict(model: nn.Module) -> dict[str, Any]:
    """The base model's weights under their plain ``transformers`` names (adapters left out)."""
    inner = model.get_base_model()  # type: ignore[operator]
    out = {}
    for key, value in inner.state_dict().items():
        if ".lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value
    return out


def save_peft_policy(model: nn.Module, folder: Path) -> None:
    """Write ``folder/policy`` (adapters, PEFT format) and ``folder/base`` (plain weights)."""
    with quiet_peft():
        model.save_pretrained(str(folder / "policy"))  # type: ignore[operator]
    inner = model.get_base_model()  # type: ignore[operator]
    inner.save_pretrained(str(folder / "base"), state_dict=base_state_dict(model))


def load_peft_policy(folder: Path) -> nn.Module:
    """The trainable PEFT model saved by :func:`save_peft_policy` (local files only)."""
    peft = require_peft(f"loading the LoRA checkpoint {str(folder)!r}")
    if not (folder / "base").is_dir():
        raise ValueError(f"from_pretrained: {str(folder)!r} has adapters but no 'base' folder")
    base = load_causal_lm(folder / "base")
    with quiet_peft():
        return peft.PeftModel.from_pretrained(base, str(folder / "policy"), is_trainable=True)


def save_merged(model: nn.Module, folder: str | Path) -> None:
    """Write the adapters folded into the base weights as a plain ``transformers`` model."""
    if not is_peft_model(model):
        model.save_pretrained(str(folder))  # type: ignore[operator]
        return
    with quiet_peft():
        merged = copy.deepcopy(model).merge_and_unload()  # type: ignore[operator]
    merged.save_pretrained(str(folder))


def enable_checkpointing(model: nn.Module) -> None:
    """Turn on ``transformers``' gradient checkpointing (non-reentrant: exact recompute, and no
    need for inputs that require grad, which a frozen LoRA base would not give)."""
    try:  # the block class whose training flag train() switches
        from transformers.modeling_layers import GradientCheckpointingLayer  # noqa: F401
    except ImportError as exc:
        raise ValueError(
            "gradient_checkpointing=True needs a transformers version with "
            "transformers.modeling_layers.GradientCheckpointingLayer; upgrade transformers"
        ) from exc
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"gradient_checkpointing=True: {type(model).__name__} does not support transformers' "
            "gradient checkpointing; use gradient_checkpointing=False"
        )
    kwargs = {"use_reentrant": False}
    if callable(getattr(model, "activation_checkpointing_enable", None)):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)  # type: ignore[operator]
    else:  # older transformers name it after gradients
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)  # type: ignore[operator]


def checkpointed_blocks(model: nn.Module) -> Iterator[nn.Module]:
    """The blocks of ``model`` that ``transformers`` checkpoints (when in training mode)."""
    return (block for block in transformer_blocks(model) if block.gradient_checkpointing)
