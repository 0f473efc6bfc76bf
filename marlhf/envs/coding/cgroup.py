"""Kernel-counted memory and task limits for sandboxed runs: one control group per run.

Each run gets its own cgroup whose **memory** limit counts everything the kernel charges to the
run (its pages, its tmpfs work folder, shared memory, pipe buffers) and whose **pids** limit
counts every task (threads included: a thread bomb with tiny stacks stops at ``pids.max``, not
at the address-space limit). Two layouts are understood:

- cgroup v2 (``/sys/fs/cgroup`` of type ``cgroup2``): a child of this process's own cgroup,
  with ``memory.max``, ``memory.swap.max = 0`` and ``pids.max``; the parent cgroup must have
  ``memory`` and ``pids`` in ``cgroup.subtree_control`` (or let us add them).
- cgroup v1 (``memory`` and ``pids`` hierarchies mounted separately, as in many containers): a
  child of this process's cgroup in each, with ``memory.limit_in_bytes`` (and
  ``memory.memsw.limit_in_bytes``, so swap does not extend it) and ``pids.max``.

:func:`cgroup_support` probes once per process (creating and removing a test group) and says
which layout works or why none does; without one the sandbox falls back to rlimits and seccomp
(:mod:`~marlhf.envs.coding.process`). The launcher moves itself into the run's groups before it
executes bubblewrap (:data:`JOIN_SCRIPT`), so no process of the run ever starts outside them.

Groups are named ``marlhf-sandbox-<pid>-<n>`` after the trainer's pid: :func:`clean_stale`
removes those of processes that no longer exist (a killed trainer), killing what is left in them.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["JOIN_SCRIPT", "RunCgroup", "cgroup_support", "clean_stale", "create"]

PREFIX = "marlhf-sandbox-"
#: ``sh -c JOIN_SCRIPT sh PROCS_FILE... -- COMMAND...``: join each group, then exec COMMAND.
JOIN_SCRIPT = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
_MOUNTS = "/proc/self/mountinfo"
_CGROUPS = "/proc/self/cgroup"
_counter = itertools.count()


@dataclass(frozen=True)
class _Layout:
    """Where runs' groups go: ``version`` 2 (one base) or 1 (memory base, pids base)."""

    version: int
    memory_base: Path
    pids_base: Path


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per controller (``""`` for the v2 unified hierarchy)."""
    paths: dict[str, str] = {}
    for line in Path(_CGROUPS).read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """``(mount point, root of the hierarchy mounted there, type, super options)`` of every
    cgroup mount."""
    found = []
    for line in Path(_MOUNTS).read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _source, options = [*right.split(), "", ""][:3]
        fields = left.split()
        if fstype in ("cgroup", "cgroup2") and len(fields) > 4:
            found.append((fields[4], fields[3], fstype, set(options.split(","))))
    return found


def _under(point: str, root: str, path: str) -> Path | None:
    """Where group ``path`` (as ``/proc/self/cgroup`` names it) is under a mount of ``root``."""
    root = root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        return None
    return Path(point + path[len(root) :])


def _layout() -> _Layout | None:
    own = _own_paths()
    mounts = _mounts()
    for point, root, fstype, _ in mounts:
        base = _under(point, root, own[""]) if fstype == "cgroup2" and "" in own else None
        if base is not None:
            controllers = (base / "cgroup.controllers").read_text().split()
            if {"memory", "pids"} <= set(controllers):
                return _Layout(2, base, base)
    bases: dict[str, Path] = {}
    for point, root, fstype, options in mounts:
        for name in ("memory", "pids"):
            if fstype == "cgroup" and name in options and name in own:
                found = _under(point, root, own[name])
                if found is not None:
                    bases[name] = found
    if len(bases) == 2:
        return _Layout(1, bases["memory"], bases["pids"])
    return None


@dataclass
class RunCgroup:
    """The groups of one run: write a pid to each of ``procs`` to put it in them."""

    folders: list[Path]
    version: int

    @property
    def procs(self) -> list[str]:
        return [str(f / "cgroup.procs") for f in self.folders]

    def oom_kills(self) -> int:
        """How many processes the kernel killed for the memory limit (``oom_kill`` of
        ``memory.events``, v2, or ``memory.oom_control``, v1)."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            text = (self.folders[0] / name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def remove(self) -> None:
        """Kill whatever is still in the groups, then remove them."""
        for folder in self.folders:
            _remove(folder)


def _remove(folder: Path) -> None:
    for attempt in range(50):
        try:
            folder.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            with contextlib.suppress(OSError):
                if (folder / "cgroup.kill").exists():
                    (folder / "cgroup.kill").write_text("1")
                for pid in (folder / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.002 * (attempt + 1))


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _make(layout: _Layout, name: str, memory_bytes: int, tasks: int) -> RunCgroup:
    if layout.version == 2:
        folder = layout.memory_base / name
        folder.mkdir()
        group = RunCgroup([folder], 2)
        try:
            _write(folder / "memory.max", str(memory_bytes))
            with contextlib.suppress(FileNotFoundError):
                _write(folder / "memory.swap.max", "0")
            _write(folder / "pids.max", str(tasks))
        except BaseException:
            group.remove()
            raise
        return group
    memory, pids = layout.memory_base / name, layout.pids_base / name
    memory.mkdir()
    group = RunCgroup([memory], 1)
    try:
        pids.mkdir()
        group.folders.append(pids)
        _write(memory / "memory.limit_in_bytes", str(memory_bytes))
        with contextlib.suppress(FileNotFoundError):
            _write(memory / "memory.memsw.limit_in_bytes", str(memory_bytes))
        _write(pids / "pids.max", str(tasks))
    except BaseException:
        group.remove()
        raise
    return group


_probe_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _probe_once() -> tuple[_Layout | None, str]:
    try:
        layout = _layout()
    except OSError as exc:
        return None, f"cannot read the cgroup mounts ({exc})"
    if layout is None:
        return None, "no cgroup v2 with memory and pids, nor cgroup v1 memory and pids hierarchies"
    if layout.version == 2:
        control = layout.memory_base / "cgroup.subtree_control"
        with contextlib.suppress(OSError):
            if not {"memory", "pids"} <= set(control.read_text().split()):
                _write(control, "+memory +pids")
    clean_stale(layout)
    try:
        group = _make(layout, f"{PREFIX}{os.getpid()}-probe", 64 * 2**20, 8)
    except OSError as exc:
        return None, f"cannot create a cgroup under {layout.memory_base} ({exc})"
    try:  # the launcher must be able to join it, exactly as runs will
        sh = shutil.which("sh") or "/bin/sh"
        argv = [sh, "-c", JOIN_SCRIPT, "sh", *group.procs, "--", sh, "-c", "exit 0"]
        joined = subprocess.run(argv, capture_output=True, timeout=30)
        problem = joined.stderr.decode(errors="replace").strip()[-300:]
        problem = "" if joined.returncode == 0 else problem or f"exit {joined.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    finally:
        group.remove()
    if problem:
        return None, f"cannot join a cgroup under {layout.memory_base} ({problem})"
    return layout, ""


def _probe() -> tuple[_Layout | None, str]:
    """The layout runs use (None when there is none) and why not; probed once per process."""
    with _probe_lock:
        return _probe_once()


def cgroup_support() -> str:
    """``""`` when runs get their own memory and pids cgroups here, else why not."""
    return _probe()[1]


def create(memory_bytes: int, tasks: int) -> RunCgroup | None:
    """New groups for one run, limited to ``memory_bytes`` and ``tasks``; None when this
    machine offers none (see :func:`cgroup_support`)."""
    layout, _ = _probe()
    if layout is None:
        return None
    return _make(layout, f"{PREFIX}{os.getpid()}-{next(_counter)}", memory_bytes, tasks)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(layout: _Layout | None = None) -> list[Path]:
    """Remove the groups left by trainers that no longer run; returns what was removed."""
    layout = layout or _probe()[0]
    if layout is None:
        return []
    removed = []
    for base in {layout.memory_base, layout.pids_base}:
        with contextlib.suppress(OSError):
            for folder in base.iterdir():
                owner = folder.name[len(PREFIX) :].split("-")[0]
                if folder.name.startswith(PREFIX) and owner.isdigit() and not _alive(int(owner)):
                    _remove(folder)
                    removed.append(folder)
    return removed
