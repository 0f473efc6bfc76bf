"""Atomic checkpoints of an algorithm: a fresh weights folder, made current by one pointer file.

``save("run/model")`` writes::

    run/model_weights.<pid>-<n>/  a fresh folder: ``policy/`` (loadable by plain transformers),
                                  ``reference/`` and ``critic/`` when separate models,
                                  ``value_head.safetensors``
    run/model.zip                 the pointer: ``data.json`` (hyper-parameters, counters, the
                                  env's identity, the weights folder's name and the SHA-256 of
                                  each file in it) and ``state.pt`` (optimizer, KL controller and
                                  RNG states)
    run/model_weights             a link to the current weights folder (for transformers users)

The weights are written and flushed to disk first; then the zip is written under a temporary
name, flushed, and moved over ``run/model.zip`` by one ``os.replace``: that rename is the only
step that changes which checkpoint is current. A save killed before it leaves the previous
checkpoint whole (its zip names its own folder, which is not touched); after it, the new one is
whole. Re-pointing the link and removing the previous folder come after; a later save removes
whatever a killed one left behind. ``load`` checks every digest, so weights changed or damaged
after the save are refused, and it refuses an env whose task or codec differs from the one
saved (``force=True`` loads anyway).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from marlhf.checkpoint.data import (
    check_identity,
    env_identity,
    termination_data,
    termination_from_data,
)
from marlhf.parallel import distributed as dist_utils
from marlhf.parallel import fsdp
from marlhf.policy.actor_critic import CausalLMActorCritic

T = TypeVar("T")

DATA_FILE = "data.json"
STATE_FILE = "state.pt"
FORMAT = "marlhf-checkpoint"
#: 1: the weights in ``<name>_weights/``, terminations as spec strings (still loaded);
#: 2: a fresh weights folder per save with digests, the env's identity, structured terminations.
VERSION = 2
GENERATORS = ("sample", "shuffle", "predict", "termination", "mc")
_counter = itertools.count()


def write_step(name: str) -> None:
    """Called between the writes of a save; does nothing (tests inject a kill here)."""


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``(zip_path, weights_link)`` for a save path given with or without ``.zip``."""
    path = Path(path)
    zip_path = path if path.suffix == ".zip" else path.with_name(path.name + ".zip")
    weights = zip_path.with_name(zip_path.name[: -len(".zip")] + "_weights")
    return zip_path, weights


# ---------------------------------------------------------------------- files on disk
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    # A killed process that nobody has reaped yet (a zombie: its parent died too, and a
    # container's PID 1 may never reap it) still answers kill(0) but will write nothing more.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): trust kill(0)
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


def _temp_name(base: str, tag: str) -> str:
    return f"{base}.{os.getpid()}-{tag}"


def clean_stale(zip_path: Path, weights: Path, keep: str | None) -> list[Path]:
    """Remove what killed saves to this path left: temporary zips and links, and weights
    folders other than ``keep`` (the one the current zip names), unless written by another
    process that is still running (it may be saving now). Returns what was removed."""
    removed: list[Path] = []
    parent = zip_path.parent
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        for base in (zip_path.name, weights.name):
            tail = entry.name[len(base) + 1 :]
            if not entry.name.startswith(base + ".") or entry.name == keep:
                continue
            pid_text = tail.partition("-")[0]
            if not pid_text.isdigit():
                continue
            pid = int(pid_text)
            if pid != os.getpid() and _pid_alive(pid):
                continue
            _remove(entry)
            removed.append(entry)
    return removed


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_digests(folder: Path, sync: bool = False) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path (flushed to disk first if
    ``sync``)."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if sync:
            _fsync(path)
        out[path.relative_to(folder).as_posix()] = _sha256(path)
    return out


def _check_digests(zip_path: Path, folder: Path, digests: dict[str, str]) -> None:
    for rel, want in digests.items():
        path = folder / rel
        if not path.is_file():
            raise ValueError(
                f"load: {str(path)!r}, listed in {str(zip_path)!r}, is missing; the checkpoint's "
                "weights were moved or deleted after the save"
            )
        got = _sha256(path)
        if got != want:
            raise ValueError(
                f"load: {str(path)!r} does not match the SHA-256 recorded in {str(zip_path)!r} "
                f"({got[:12]}... != {want[:12]}...); the weights were changed or damaged after "
                "the save"
            )


def write_zip(zip_path: Path, data: dict[str, Any], state: dict[str, Any]) -> None:
    """Write ``data`` (JSON) and ``state`` (``torch.save``) into ``zip_path`` atomically."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(_temp_name(zip_path.name, "tmp"))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(DATA_FILE, json.dumps(data, indent=2, sort_keys=True))
            write_step("zip data written")
            # Tensors (optimizer moments, weights) barely compress: storing them saves minutes
            # on a 135M model for a few percent of disk.
            archive.writestr(STATE_FILE, buffer.getvalue(), compress_type=zipfile.ZIP_STORED)
        write_step("zip written")
        _fsync(tmp)
        write_step("zip synced")
        os.replace(tmp, zip_path)  # the commit
    except OSError:  # a full disk, say: no half-written temporary zip is left behind
        tmp.unlink(missing_ok=True)
        raise
    write_step("committed")
    _fsync(zip_path.parent)
    write_step("folder synced")


def read_zip(zip_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(data, state)`` from a zip written by :func:`write_zip` (tensors on the CPU).

    :raises FileNotFoundError: when there is no file at ``zip_path``.
    :raises ValueError: naming the path, for a truncated, damaged or foreign file.
    """
    if not zip_path.is_file():
        raise FileNotFoundError(f"load: no saved algorithm at {str(zip_path)!r}")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = set(archive.namelist())
            missing = {DATA_FILE, STATE_FILE} - names
            if missing:
                raise ValueError(
                    f"load: {str(zip_path)!r} lacks {sorted(missing)}; not a marlhf save"
                )
            data = json.loads(archive.read(DATA_FILE))
            raw = archive.read(STATE_FILE)
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except ValueError as exc:
        if str(exc).startswith("load:"):
            raise
        raise _unreadable(zip_path, exc) from exc
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, KeyError) as exc:
        raise _unreadable(zip_path, exc) from exc
    if not isinstance(data, dict) or not isinstance(state, dict) or "class" not in data:
        raise ValueError(f"load: {str(zip_path)!r} is not a marlhf save (no algorithm class)")
    return data, state


def _unreadable(zip_path: Path, exc: BaseException) -> ValueError:
    return ValueError(
        f"load: {str(zip_path)!r} is truncated, damaged or not a marlhf save "
        f"({type(exc).__name__}: {exc})"
    )


def _point_link(weights: Path, fresh: Path) -> None:
    """Make ``weights`` a link to ``fresh`` (a sibling); a real folder there (a version-1 save)
    is moved aside first and removed after."""
    aside = None
    if weights.exists() and not weights.is_symlink():
        aside = weights.with_name(_temp_name(weights.name, "old"))
        os.replace(weights, aside)
        write_step("old folder moved aside")
    tmp = weights.with_name(_temp_name(weights.name, "link"))
    _remove(tmp)
    os.symlink(fresh.name, tmp)
    os.replace(tmp, weights)
    write_step("link replaced")
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def remove_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint: its zip, the weights folder it names, its link, and the leftovers
    of killed saves."""
    zip_path, weights = checkpoint_paths(path)
    current = _current_weights(zip_path)
    zip_path.unlink(missing_ok=True)
    _remove(weights)
    if current is not None and _plain_name(current):
        _remove(zip_path.with_name(current))
    clean_stale(zip_path, weights, keep=None)


def _plain_name(name: str) -> bool:
    """Whether ``name`` is a bare file name (no path), as the zip must hold."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def _current_weights(zip_path: Path) -> str | None:
    """The weights folder the zip at ``zip_path`` names (None when absent or unreadable)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            name = json.loads(archive.read(DATA_FILE)).get("weights")
    except Exception:  # absent or unreadable: it protects nothing
        return None
    return name if isinstance(name, str) else None


# ---------------------------------------------------------------------- save / load
def _env_rng(env: Any) -> np.random.Generator | None:
    rng = getattr(env, "np_random", None)
    return rng if isinstance(rng, np.random.Generator) else None


def save_algorithm(algo: Any, path: str | Path) -> None:
    """Save an ``LMOnPolicyAlgorithm`` (see the module docstring for the protocol); every rank
    calls it."""
    sharded = algo.policy.fsdp
    # FSDP: the sharded reference is gathered whole for the save (a collective).
    with sharded.whole_reference() if sharded is not None else contextlib.nullcontext():
        _save_algorithm(algo, path)


def _save_algorithm(algo: Any, path: str | Path) -> None:
    zip_path, weights = checkpoint_paths(path)
    hp = dict(algo.hyperparams)
    term = getattr(algo, "termination", None)
    hp["termination"] = None if term is None else termination_data(term)  # before any write
    env_rng = _env_rng(algo.env)
    # Several ranks: every rank's random streams go into rank 0's checkpoint (a collective:
    # every rank calls save), and only rank 0 writes.
    world = dist_utils.world()
    rank_states = dist_utils.all_gather_objects(_rank_state(algo))
    # Sharded (FSDP): the optimizer's moments are gathered whole (a collective), as one
    # process's; the weights are saved from whole tensors too (policy.save_pretrained).
    sharded = algo.policy.fsdp is not None
    optimizer = fsdp.optimizer_state(algo.optimizer) if sharded else algo.optimizer.state_dict()
    if not world.is_main:
        dist_utils.barrier()  # returns once rank 0 has written the checkpoint
        return
    data: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "class": type(algo).__name__,
        "hyperparams": hp,
        "preset": algo.preset,
        "seed": algo.seed,
        "verbose": algo.verbose,
        "tensorboard_log": algo.tensorboard_log,
        "num_timesteps": algo.num_timesteps,
        "schedule_timesteps": algo.schedule_timesteps,
        "mc_tokens": algo.mc_tokens,
        "n_updates": algo._n_updates,
        "iteration": algo._iteration,
        "env_seeded": algo._env_seeded,
        "env": None if algo.env is None else env_identity(algo.env),
        "world_size": world.world_size,
    }
    state = {
        "optimizer": optimizer,
        "kl_ctl": algo.kl_ctl.state_dict(),
        "env_rng": None if env_rng is None else env_rng.bit_generator.state,
        **{
            f"{name}_generator": getattr(algo, f"{name}_generator").get_state()
            for name in GENERATORS
        },
    }
    if world.distributed:
        state["rank_states"] = rank_states
    json.dumps(data)  # fails here, before any write, on a value JSON cannot hold
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    previous = _current_weights(zip_path)
    clean_stale(zip_path, weights, keep=previous)
    write_step("stale cleaned")
    fresh = weights.with_name(_temp_name(weights.name, str(next(_counter))))
    fresh.mkdir()
    try:
        write_step("folder created")
        algo.policy.save_pretrained(fresh)
        write_step("weights written")
        data["weights"] = fresh.name
        data["weights_sha256"] = file_digests(fresh, sync=True)
        _fsync(fresh.parent)
        write_step("weights synced")
        write_zip(zip_path, data, state)
    except OSError:
        # A full disk or another write error before the commit: the previous checkpoint stays
        # current and whole; the new folder, which nothing names, goes.
        if _current_weights(zip_path) != fresh.name:
            _remove(fresh)
        raise
    _point_link(weights, fresh)
    if previous is not None and previous != weights.name and previous != fresh.name:
        _remove(zip_path.with_name(previous))
    write_step("previous removed")
    if world.distributed:
        dist_utils.barrier()


def _rank_state(algo: Any) -> dict[str, Any]:
    """This rank's random streams (the env's prompt sampler and the algorithm's generators)."""
    env_rng = _env_rng(algo.env)
    return {
        "env_rng": None if env_rng is None else env_rng.bit_generator.state,
        **{f"{n}_generator": getattr(algo, f"{n}_generator").get_state() for n in GENERATORS},
    }


def load_algorithm(
    cls: type[T], path: str | Path, env: Any, device: Any, overrides: dict[str, Any]
) -> T:
    """Rebuild an algorithm of class ``cls`` saved by :func:`save_algorithm`.

    ``overrides`` are hyper-parameters to change, plus ``force=True`` to load onto an env whose
    task or codec differs from the saved one.
    """
    overrides = dict(overrides)
    force = bool(overrides.pop("force", False))

    zip_path, _ = checkpoint_paths(path)
    data, state = read_zip(zip_path)
    if data["class"] != cls.__name__:
        raise ValueError(f"load: {str(zip_path)!r} holds a {data['class']}, not a {cls.__name__}")
    world = dist_utils.world()
    saved_world = int(data.get("world_size", 1))
    if saved_world != world.world_size:
        raise ValueError(
            f"load: {str(zip_path)!r} was saved by {saved_world} rank(s) but this run has world "
            f"size {world.world_size}; launch it with torchrun --nproc-per-node {saved_world} "
            "(each rank's random streams are in the checkpoint)"
        )
    if world.distributed:  # this rank's own streams
        state = {**state, **state["rank_states"][world.rank]}
    name = data.get("weights")
    if not isinstance(name, str) or not _plain_name(name):
        raise ValueError(f"load: {str(zip_path)!r} names no valid weights folder ({name!r})")
    weights = zip_path.with_name(name)
    if not weights.is_dir():
        raise ValueError(
            f"load: {str(zip_path)!r} names the weights folder {str(weights)!r}, which does not "
            "exist (moved or deleted after the save)"
        )
    if "weights_sha256" in data:  # version 1 saves have no digests
        _check_digests(zip_path, weights, data["weights_sha256"])
    if env is not None and data.get("env") is not None and not force:
        check_identity(zip_path, data["env"], env)
    vocab = None if env is None else int(env.codec.vocab_size)
    policy = CausalLMActorCritic.from_pretrained(weights, vocab_size=vocab)
    hp = dict(data["hyperparams"])
    hp["termination"] = termination_from_data(hp.get("termination"))
    hp.update(overrides)
    algo: Any = cls(
        policy,  # type: ignore[call-arg]
        None,  # attached below: any number of envs (learn checks the minibatch size)
        seed=data["seed"],
        verbose=data["verbose"],
        tensorboard_log=data["tensorboard_log"],
        device=device,
        **hp,
    )
    if env is not None:
        algo._attach_env(env)
    algo.preset = data["preset"]
    if algo.policy.fsdp is not None:  # whole moments, cut to this rank's shards
        fsdp.load_optimizer_state(algo.optimizer, state["optimizer"])
    else:
        algo.optimizer.load_state_dict(state["optimizer"])
    algo.kl_ctl.load_state_dict(state["kl_ctl"])
    for gen_name in GENERATORS:
        generator = getattr(algo, f"{gen_name}_generator")
        if f"{gen_name}_generator" not in state:  # a checkpoint older than this generator
            continue
        try:
            generator.set_state(state[f"{gen_name}_generator"])
        except RuntimeError:  # saved on another device type (a CUDA state on the CPU, say)
            warnings.warn(
                f"load: the {gen_name} RNG state was saved on another device type; it restarts "
                "from the run's seed, so the continuation will not repeat an uninterrupted run",
                stacklevel=3,
            )
    algo.num_timesteps = int(data["num_timesteps"])
    schedule = data.get("schedule_timesteps")  # (absent from saves before it existed)
    algo.schedule_timesteps = None if schedule is None else int(schedule)
    algo.mc_tokens = int(data.get("mc_tokens", 0))
    algo._n_updates = int(data["n_updates"])
    algo._iteration = int(data["iteration"])
    # A fresh env (or none) has not been reset with the run's seed stream yet.
    algo._env_seeded = bool(data["env_seeded"]) and env is not None
    env_rng = _env_rng(env)
    if env_rng is not None and state["env_rng"] is not None:
        env_rng.bit_generator.state = state["env_rng"]
    return algo
