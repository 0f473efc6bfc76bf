"""Atomic saving of an algorithm: a zip of its state plus ``save_pretrained`` weights beside it.

``save("run/model")`` writes ``run/model.zip`` (``data.json``: hyper-parameters and counters;
``state.pt``: optimizer, KL controller and RNG states) and ``run/model_weights/`` (``policy/``
loadable by plain ``transformers``, ``reference/``, ``value_head.safetensors``). The weights are
written first and the zip last, each through a temporary name and ``os.replace``, so a crash never
leaves a half-written checkpoint under the final names.
"""

from __future__ import annotations

import io
import json
import numbers
import os
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")

DATA_FILE = "data.json"
STATE_FILE = "state.pt"


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``(zip_path, weights_dir)`` for a save path given with or without ``.zip``."""
    path = Path(path)
    zip_path = path if path.suffix == ".zip" else path.with_name(path.name + ".zip")
    weights = zip_path.with_name(zip_path.name[: -len(".zip")] + "_weights")
    return zip_path, weights


def replace_dir(tmp: Path, final: Path) -> None:
    """Move folder ``tmp`` to ``final``, replacing an existing folder there."""
    old = final.with_name(final.name + f".old{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_zip(zip_path: Path, data: dict[str, Any], state: dict[str, Any]) -> None:
    """Write ``data`` (JSON) and ``state`` (``torch.save``) into ``zip_path`` atomically."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(zip_path.name + f".tmp{os.getpid()}")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(DATA_FILE, json.dumps(data, indent=2, sort_keys=True))
        # Tensors (optimizer moments, weights) barely compress: storing them saves minutes on
        # a 135M model for a few percent of disk.
        archive.writestr(STATE_FILE, buffer.getvalue(), compress_type=zipfile.ZIP_STORED)
    os.replace(tmp, zip_path)


def read_zip(zip_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(data, state)`` from a zip written by :func:`write_zip` (tensors on the CPU)."""
    if not zip_path.is_file():
        raise FileNotFoundError(f"load: no saved algorithm at {str(zip_path)!r}")
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        missing = {DATA_FILE, STATE_FILE} - names
        if missing:
            raise ValueError(f"load: {str(zip_path)!r} lacks {sorted(missing)}; not a marlhf save")
        data = json.loads(archive.read(DATA_FILE))
        state = torch.load(
            io.BytesIO(archive.read(STATE_FILE)), map_location="cpu", weights_only=True
        )
    return data, state


def _env_rng(env: Any) -> np.random.Generator | None:
    rng = getattr(env, "np_random", None)
    return rng if isinstance(rng, np.random.Generator) else None


GENERATORS = ("sample", "shuffle", "predict", "termination")


def _checked_spec(term: Any) -> str:
    """The termination's spec, checked to rebuild a rule of the same class and spec on load.

    :raises ValueError: before anything is written, when the rule cannot be rebuilt (not
        registered, or an argument with no spec form).
    """
    from marlhf.options import Termination, make_termination

    spec = term.spec  # raises for arguments with no spec form
    try:
        again = make_termination(spec)
    except ValueError as exc:
        raise ValueError(
            f"save: the termination {type(term).__name__} cannot be rebuilt from its spec "
            f"{spec!r} ({exc}); register it with @register_termination"
        ) from exc
    if type(again) is not type(term) or again.spec != spec:
        raise ValueError(
            f"save: the spec {spec!r} of {type(term).__name__} rebuilds "
            f"{type(again).__name__}({again.spec!r}); give it a `spec` property that names it"
        )
    # The default spec is written from the constructor's arguments: they must read back equal.
    if type(term).spec is Termination.spec and term._init_args is not None:
        ours, theirs = _plain(term._init_args), _plain(again._init_args or {})
        if ours != theirs:
            raise ValueError(
                f"save: {type(term).__name__}'s arguments {ours} would load back as {theirs} "
                f"from its spec {spec!r}; give it a `spec` property that keeps them"
            )
    return str(spec)


def _plain(value: Any) -> Any:
    """``value`` as the spec grammar reads it back: numbers as int/float, sequences as lists."""
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


def save_algorithm(algo: Any, path: str | Path) -> None:
    """Save an ``LMOnPolicyAlgorithm``: weights first, then the zip (see the module docstring)."""
    from marlhf.options import Termination

    zip_path, weights = checkpoint_paths(path)
    hp = dict(algo.hyperparams)
    if isinstance(hp["termination"], Termination):  # checked before anything is written
        hp["termination"] = _checked_spec(hp["termination"])
    tmp = weights.with_name(weights.name + f".tmp{os.getpid()}")
    algo.policy.save_pretrained(tmp)
    replace_dir(tmp, weights)
    env_rng = _env_rng(algo.env)
    data = {
        "class": type(algo).__name__,
        "hyperparams": hp,
        "preset": algo.preset,
        "seed": algo.seed,
        "verbose": algo.verbose,
        "tensorboard_log": algo.tensorboard_log,
        "num_timesteps": algo.num_timesteps,
        "n_updates": algo._n_updates,
        "iteration": algo._iteration,
        "env_seeded": algo._env_seeded,
        "weights": weights.name,
    }
    state = {
        "optimizer": algo.optimizer.state_dict(),
        "kl_ctl": algo.kl_ctl.state_dict(),
        "env_rng": None if env_rng is None else env_rng.bit_generator.state,
        **{
            f"{name}_generator": getattr(algo, f"{name}_generator").get_state()
            for name in GENERATORS
        },
    }
    write_zip(zip_path, data, state)


def load_algorithm(
    cls: type[T], path: str | Path, env: Any, device: Any, overrides: dict[str, Any]
) -> T:
    """Rebuild an algorithm of class ``cls`` saved by :func:`save_algorithm`."""
    from marlhf.agents.policy import CausalLMActorCritic

    zip_path, _ = checkpoint_paths(path)
    data, state = read_zip(zip_path)
    if data["class"] != cls.__name__:
        raise ValueError(f"load: {str(zip_path)!r} holds a {data['class']}, not a {cls.__name__}")
    weights = zip_path.with_name(data["weights"])
    vocab = None if env is None else int(env.codec.vocab_size)
    policy = CausalLMActorCritic.from_pretrained(weights, vocab_size=vocab)
    hp = {**data["hyperparams"], **overrides}
    algo: Any = cls(
        policy,  # type: ignore[call-arg]
        env,
        seed=data["seed"],
        verbose=data["verbose"],
        tensorboard_log=data["tensorboard_log"],
        device=device,
        **hp,
    )
    algo.preset = data["preset"]
    algo.optimizer.load_state_dict(state["optimizer"])
    algo.kl_ctl.load_state_dict(state["kl_ctl"])
    for name in GENERATORS:
        generator = getattr(algo, f"{name}_generator")
        try:
            generator.set_state(state[f"{name}_generator"])
        except RuntimeError:  # saved on another device type (a CUDA state on the CPU, say)
            warnings.warn(
                f"load: the {name} RNG state was saved on another device type; it restarts from "
                "the run's seed, so the continuation will not repeat an uninterrupted run",
                stacklevel=3,
            )
    algo.num_timesteps = int(data["num_timesteps"])
    algo._n_updates = int(data["n_updates"])
    algo._iteration = int(data["iteration"])
    # A fresh env (or none) has not been reset with the run's seed stream yet.
    algo._env_seeded = bool(data["env_seeded"]) and env is not None
    env_rng = _env_rng(env)
    if env_rng is not None and state["env_rng"] is not None:
        env_rng.bit_generator.state = state["env_rng"]
    return algo
