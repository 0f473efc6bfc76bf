"""What a checkpoint records of its env and termination, as JSON data, and reading it back.

The env's identity (its id and task keyword arguments, the task's name and a fingerprint of the
codec's vocabulary) lets ``load`` refuse another task or codec than the one trained on; a
termination is written as ``{"name", "kwargs"}`` (or ``{"spec"}``), checked before anything is
written to rebuild the same rule. Used by :mod:`marlhf.checkpoint.save_util`.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from pathlib import Path
from typing import Any

from marlhf.options import Termination, build_termination, make_termination, registry

#: Keys of a Gymnasium spec's kwargs that say how the env is run, not which task it is.
RUN_KWARGS = frozenset(
    {"task", "seed", "num_envs", "vectorization_mode", "device", "render_mode", "vector_kwargs"}
)


# ---------------------------------------------------------------------- identity
def codec_fingerprint(codec: Any) -> str:
    """SHA-256 (16 hex digits) of the vocabulary: size, pad and EOS ids, every token's bytes."""
    h = hashlib.sha256()
    size = int(codec.vocab_size)
    eos = codec.eos_token_id
    h.update(
        json.dumps([size, int(codec.pad_token_id), None if eos is None else int(eos)]).encode()
    )
    for i in range(size):
        piece = codec.token_bytes(i)
        h.update(len(piece).to_bytes(4, "little") + piece)
    return h.hexdigest()[:16]


def _plain_kwarg(value: Any) -> Any:
    """A task keyword argument as JSON data; an object (a tokenizer) by its type's name."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain_kwarg(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain_kwarg(v) for k, v in value.items()}
    return f"<{type(value).__name__}>"


def env_identity(env: Any) -> dict[str, Any]:
    """What a checkpoint records of its env: the env id and task keyword arguments (known when
    the env came from ``gymnasium.make_vec``), the task's name and the codec's fingerprint."""
    spec = getattr(env, "spec", None)
    env_id = getattr(spec, "id", None)
    kwargs = None
    if spec is not None and env_id is not None:
        kwargs = {k: _plain_kwarg(v) for k, v in sorted(spec.kwargs.items()) if k not in RUN_KWARGS}
    task = getattr(getattr(env, "task", None), "name", None)
    return {
        "env_id": env_id,
        "task": task if isinstance(task, str) else type(env).__name__,
        "task_kwargs": kwargs,
        "codec": codec_fingerprint(env.codec),
    }


def describe_env(identity: dict[str, Any]) -> str:
    """``env_id {kwargs} (codec FINGERPRINT)`` of an :func:`env_identity`, for messages."""
    name = identity.get("env_id") or identity.get("task")
    kwargs = identity.get("task_kwargs")
    return f"{name}" + ("" if kwargs is None else f" {kwargs}") + f" (codec {identity['codec']})"


def identity_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys in which two :func:`env_identity` records differ. The env id and the task's
    keyword arguments count only where both records know them (a task built without a
    registered id has neither); the task's name and the codec always count."""
    differs = [
        key
        for key in ("env_id", "task_kwargs")
        if saved.get(key) is not None and now[key] is not None and saved[key] != now[key]
    ]
    return differs + [key for key in ("task", "codec") if saved.get(key) != now[key]]


def check_identity(zip_path: Path, saved: dict[str, Any], env: Any) -> None:
    """Raise when ``env`` is another task or codec than the one ``saved`` (naming both)."""
    now = env_identity(env)
    differs = identity_differences(saved, now)
    if differs:
        raise ValueError(
            f"load: {str(zip_path)!r} was trained on {describe_env(saved)}; the env given is "
            f"{describe_env(now)} (differs in {', '.join(differs)}); pass an env of the saved "
            "task, or force=True to load onto this one anyway"
        )


# ---------------------------------------------------------------------- terminations
def termination_data(term: Any) -> dict[str, Any]:
    """The termination as checkpoint data: ``{"name", "kwargs"}``, checked to rebuild the same
    rule; a rule whose arguments are not plain data falls back to ``{"spec"}`` when its spec
    rebuilds it with the same arguments (a plugged-in rule with its own ``spec`` property).

    :raises ValueError: before anything is written, when neither form rebuilds it.
    """
    name = type(term).__name__
    try:
        config = registry.termination_config(term)
        again = registry.build_termination(config)
        if _rule(again) == _rule(term):
            return config
        problem = f"{config} rebuilds {type(again).__name__}{_plain(again.config_kwargs())}"
    except ValueError as exc:
        problem = str(exc)
    try:
        spec = str(term.spec)  # raises for arguments with no spec form
        again = make_termination(spec)
    except ValueError as exc:
        raise ValueError(
            f"save: the termination {name} cannot be saved: as data, {problem}; as a spec, "
            f"{exc}; register it with @register_termination and pass plain-data arguments"
        ) from exc
    if type(again) is not type(term) or again.spec != spec:
        raise ValueError(
            f"save: the termination {name} cannot be saved: as data, {problem}; its spec "
            f"{spec!r} rebuilds {type(again).__name__}({again.spec!r}); give it a `spec` "
            "property that names it"
        )
    # The default spec is written from the constructor's arguments: they must read back equal.
    if type(term).spec is Termination.spec and term._init_args is not None:
        ours, theirs = _plain(term._init_args), _plain(again._init_args or {})
        if ours != theirs:
            raise ValueError(
                f"save: {name}'s arguments {ours} would load back as {theirs} from its spec "
                f"{spec!r}; give it a `spec` property that keeps them"
            )
    return {"spec": spec}


def _rule(term: Any) -> tuple[type, Any]:
    """A termination's class and arguments, nested rules included (what makes it the same)."""
    return type(term), _plain(term.config_kwargs())


def _plain(value: Any) -> Any:
    """``value`` as the spec grammar reads it back: numbers as int/float, sequences as lists."""
    if isinstance(value, Termination):
        return _rule(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def termination_from_data(value: Any) -> Any:
    """Rebuild what :func:`termination_data` wrote (a version-1 spec string too)."""
    if value is None:
        return None
    if isinstance(value, str):  # version 1
        return make_termination(value)
    if isinstance(value, dict) and set(value) == {"spec"}:
        return make_termination(value["spec"])
    return build_termination(value)
