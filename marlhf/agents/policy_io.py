"""The folder format of :class:`~marlhf.agents.policy.CausalLMActorCritic`: what its
``save_pretrained`` writes and its ``from_pretrained`` reads back.

A folder holds ``policy/`` (plain ``transformers``; with LoRA: the adapters in PEFT's format and
the frozen base in ``base/``), ``value_head.safetensors``, ``actor_critic.json`` (the settings
below), and ``reference/`` and ``critic/`` when they are separate models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marlhf.agents.lora import is_peft_model, load_peft_policy, save_peft_policy

if TYPE_CHECKING:
    from marlhf.agents.policy import CausalLMActorCritic

#: What ``from_pretrained`` needs besides the weights (reference mode, switches).
SETTINGS_FILE = "actor_critic.json"


def save_actor_critic(policy: CausalLMActorCritic, folder: str | Path, merged: bool) -> None:
    """The body of :meth:`CausalLMActorCritic.save_pretrained` (arguments as there)."""
    from safetensors.torch import save_file

    if policy.fsdp is not None:  # sharded: save an unsharded twin over the gathered weights
        policy.fsdp.twin().save_pretrained(folder, merged=merged)
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lora = policy.lora
    if is_peft_model(policy.model) and lora is not None:
        save_peft_policy(policy.model, folder)
        if merged:
            policy.save_merged(folder / "merged")
    else:
        policy.model.save_pretrained(str(folder / "policy"))  # type: ignore[operator]
    settings = {
        "reference_mode": policy.reference_mode,
        "gradient_checkpointing": policy.gradient_checkpointing,
        "lora": None if lora is None else lora.to_dict(),
    }
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True))
    if policy.critic is not None:
        policy.critic.save_pretrained(str(folder / "critic"))  # type: ignore[operator]
    if policy.ref_model is not None:
        policy.ref_model.save_pretrained(str(folder / "reference"))  # type: ignore[operator]
    head = {k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()}
    save_file(head, str(folder / "value_head.safetensors"))


def load_actor_critic(
    cls: type[CausalLMActorCritic], folder: str | Path, vocab_size: int | None
) -> CausalLMActorCritic:
    """The body of :meth:`CausalLMActorCritic.from_pretrained`: an instance of ``cls`` rebuilt
    from a folder written by :func:`save_actor_critic`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "policy").is_dir():
        raise ValueError(f"from_pretrained: {str(folder)!r} has no 'policy' folder")
    settings_file = folder / SETTINGS_FILE
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    critic = folder / "critic" if (folder / "critic").is_dir() else None
    ref: Any = folder / "reference" if (folder / "reference").is_dir() else None
    if ref is None and settings.get("reference_mode") == "adapters":
        ref = "adapters"
    adapters = (folder / "policy" / "adapter_config.json").is_file()
    model: Any = load_peft_policy(folder) if adapters else folder / "policy"
    policy = cls(
        model,
        critic=critic,
        reference=ref,
        vocab_size=vocab_size,
        gradient_checkpointing=bool(settings.get("gradient_checkpointing", False)),
    )
    policy.value_head.load_state_dict(load_file(str(folder / "value_head.safetensors")))
    return policy
