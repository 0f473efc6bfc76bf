"""One sandboxed child process: its bubblewrap command line, kernel policy, pipes and lifetime.

Flags (bubblewrap 0.8, Debian package ``bubblewrap``): ``--unshare-all`` (new user where the
kernel allows, PID, network, IPC, UTS and cgroup namespaces; no ``--share-net``, so the network
namespace is empty), ``--die-with-parent``, ``--new-session``, ``--clearenv``,
``--cap-drop ALL`` (as root, the user namespace would otherwise keep every capability: raising
rlimits, for one); a new root with read-only binds of ``/usr``, ``/lib*``, ``/bin``, ``/sbin``
and the interpreter's own prefix, a private procfs (only the sandbox's processes) and a
read-only ``/dev`` (null, zero, random, ...; bwrap makes it an unsized tmpfs, so it and its
``shm`` must not be writable), a tmpfs work folder of bounded size, and this package's
``sandbox_child.py`` bound read-only. Nothing else of the host file system (no ``/home``,
``/root``, ``/etc``, ``/tmp``, the trainer's files) exists inside; the tmpfs ends with the
run's mount namespace, so nothing is left even when the trainer is killed.

``--seccomp`` installs the allow-list filter of :mod:`~marlhf.envs.coding.seccomp` (default
deny) before the interpreter starts. Where the machine has cgroups the launcher joins the run's
own memory and pids groups (:mod:`~marlhf.envs.coding.cgroup`) before it executes bubblewrap;
otherwise (the documented fallback) ``RLIMIT_AS``, ``RLIMIT_NOFILE``, ``RLIMIT_NPROC`` hold, and
as root, where ``RLIMIT_NPROC`` is void, the filter refuses threads too.

Nothing of the run is a host file: the spec is a sealed memfd the parent made, the seccomp
program a pipe, stdout, stderr and the result channel pipes read with a byte limit
(:mod:`~marlhf.envs.coding.channels`). Only the unsafe mode has a host work folder
(``marlhf-sandbox-<pid>-*`` in the temporary folder; stale ones are removed at start).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marlhf.envs.coding.cgroup import JOIN_SCRIPT, RunCgroup, cgroup_support
from marlhf.envs.coding.cgroup import create as create_cgroup
from marlhf.envs.coding.channels import Capture, drain
from marlhf.envs.coding.seccomp import SeccompUnavailableError, seccomp_filter

if TYPE_CHECKING:
    from marlhf.envs.coding.values import SandboxLimits

__all__ = [
    "BWRAP_INSTALL",
    "ChildRun",
    "SandboxUnavailableError",
    "bwrap_command",
    "clean_stale_folders",
    "kernel_limits",
    "require_bwrap",
    "wait_all",
]

#: How to get bubblewrap on Debian and Ubuntu (``make install`` runs it where it can).
BWRAP_INSTALL = "apt-get update && apt-get install -y bubblewrap libseccomp2"
#: The work folder inside the sandbox (a private tmpfs).
WORKDIR = "/sandbox"
CHILD_INSIDE = "/run/marlhf/sandbox_child.py"
CHILD_PATH = str(Path(__file__).with_name("child.py"))
#: The unsafe mode's host work folders: ``marlhf-sandbox-<trainer pid>-<random>``.
FOLDER_PREFIX = "marlhf-sandbox-"
#: ``RLIMIT_NOFILE`` of the child (Python needs a handful; this bounds what files can pin).
MAX_OPEN_FILES = 64
#: What bubblewrap and the interpreter need above ``memory_mb`` in the run's memory cgroup.
CGROUP_SLACK_BYTES = 64 * 2**20


class SandboxUnavailableError(RuntimeError, ValueError):
    """bubblewrap is missing or cannot create its namespaces on this machine (a ValueError too:
    the configured isolation cannot run here, and the CLI reports configuration errors in one
    line)."""


def interpreter(site_packages: bool) -> tuple[str, list[str]]:
    """The Python to run and the host folders it needs (bound read-only at the same path)."""
    exe = sys.executable if site_packages else os.path.realpath(sys.executable)
    roots = {os.path.realpath(sys.base_prefix), str(Path(os.path.realpath(exe)).parents[1])}
    if site_packages:
        import site

        roots |= {sys.prefix, *(os.path.realpath(p) for p in site.getsitepackages())}
    system = ("/usr/", "/lib/", "/lib64/")
    return exe, sorted(r for r in roots if not (r + "/").startswith(system))


def bwrap_command(
    bwrap: str, site_packages: bool, disk_mb: int, seccomp_fd: int | None
) -> tuple[list[str], str]:
    """``(argv prefix up to the interpreter, child path inside)`` of one sandboxed run."""
    exe, roots = interpreter(site_packages)
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
    argv += ["--cap-drop", "ALL"]  # as root the namespace would keep every capability
    for path in ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"):
        argv += ["--ro-bind-try", path, path]
    for root in roots:
        argv += ["--ro-bind", root, root]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--size", str(disk_mb * 1024 * 1024), "--tmpfs", WORKDIR, "--chdir", WORKDIR]
    argv += ["--ro-bind", CHILD_PATH, CHILD_INSIDE]
    argv += ["--remount-ro", "/"]  # the root tmpfs itself: only the work folder is writable
    argv += ["--remount-ro", "/dev"]  # bwrap's /dev (and /dev/shm) is an unsized tmpfs
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return [*argv, "--", exe], CHILD_INSIDE


@functools.lru_cache(maxsize=4)
def _probe(bwrap: str) -> str:
    """'' when bubblewrap runs the interpreter with our flags here, else what went wrong."""
    argv, _ = bwrap_command(bwrap, False, 1, None)
    try:
        done = subprocess.run(
            [*argv, "-I", "-S", "-c", "pass"], capture_output=True, env={}, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return "" if done.returncode == 0 else done.stderr.decode(errors="replace").strip()[-500:]


def require_bwrap() -> str:
    """The path of a working ``bwrap``.

    :raises SandboxUnavailableError: naming the install command when it is missing, or what
        failed when it cannot create its namespaces (as a non-root user it needs unprivileged
        user namespaces).
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailableError(
            "code execution needs bubblewrap (`bwrap`), which is not installed: run "
            f"`{BWRAP_INSTALL}` (as root; `make install` does it where it can), or choose the "
            "isolation 'unsafe-no-isolation' by name (HumanEval's `sandbox` keyword) to run "
            "programs without it"
        )
    try:
        seccomp_filter(False)
    except SeccompUnavailableError as exc:
        raise SandboxUnavailableError(str(exc)) from exc
    cgroup_support()  # probed here, once, before runs start in several threads
    problem = _probe(bwrap)
    if problem:
        raise SandboxUnavailableError(
            f"bubblewrap ({bwrap}) cannot create its sandbox here: {problem}. As a non-root "
            "user it needs unprivileged user namespaces (sysctl user.max_user_namespaces > 0, "
            "and kernel.unprivileged_userns_clone=1 where that exists); or choose the isolation "
            "'unsafe-no-isolation' by name (HumanEval's `sandbox` keyword) to run programs "
            "without it"
        )
    return bwrap


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _sealed_memfd(data: bytes) -> int:
    """A read-only-in-effect in-memory file holding ``data`` (sealed: no write, grow or shrink),
    positioned at its start: how the spec reaches the child without a host file."""
    fd = os.memfd_create("marlhf-sandbox-spec", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _filled_pipe(data: bytes) -> int:
    """The read end of a pipe that holds ``data`` and then ends (``data`` must fit in it)."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
    finally:
        os.close(write_fd)
    return read_fd


@functools.lru_cache(maxsize=1)
def clean_stale_folders() -> list[str]:
    """Remove the unsafe mode's work folders left by trainers that no longer run (named
    ``marlhf-sandbox-<pid>-*`` in the temporary folder); once per process."""
    removed = []
    root = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for folder in root.glob(f"{FOLDER_PREFIX}*"):
            owner = folder.name[len(FOLDER_PREFIX) :].split("-")[0]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(str(folder))
    return removed


def kernel_limits() -> str:
    """How memory and task counts are bounded here: ``"cgroup"`` or ``"rlimit"`` (the fallback:
    ``RLIMIT_AS``, ``RLIMIT_NPROC``, ``RLIMIT_NOFILE``, and no threads as root)."""
    return "cgroup" if not cgroup_support() else "rlimit"


class ChildRun:
    """One sandboxed child process: its spec in a sealed memfd, stdout, stderr and (unless
    given) its result channel as pipes the parent reads with a byte limit, its own cgroups
    where the machine has them, and no file on the host (the unsafe mode's work folder aside).
    """

    def __init__(
        self,
        name: str,
        mode: str,
        spec: dict,
        limits: SandboxLimits,
        stdin: Any = subprocess.DEVNULL,
        result_fd: int | None = None,
        request_fd: int | None = None,
    ) -> None:
        self.name = name
        self.bwrap = bwrap = limits.isolation == "bwrap"
        self.timed_out = False
        self.oom_killed = False
        self.cgroup: RunCgroup | None = None
        self.folder: str | None = None
        output_limit = limits.file_size_mb * 2**20
        keep = 4 * limits.output_chars
        opened: list[int] = []  # ours to close once the child has them
        self.captures: list[Capture] = []
        try:
            out_r, out_w = os.pipe()
            opened.append(out_w)
            self.stdout = Capture(out_r, output_limit, keep)
            err_r, err_w = os.pipe()
            opened.append(err_w)
            self.stderr = Capture(err_r, output_limit, keep)
            self.captures += [self.stdout, self.stderr]
            self.result: Capture | None = None
            if result_fd is None:
                res_r, result_fd = os.pipe()
                opened.append(result_fd)
                self.result = Capture(res_r, limits.result_mb * 2**20, None)
                self.captures.append(self.result)
            if bwrap:
                workdir = WORKDIR
            else:
                clean_stale_folders()
                self.folder = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
                workdir = self.folder
            spec = {**spec, "workdir": workdir, "network_isolated": bwrap}
            spec["limits"] = {
                "cpu_s": max(1, math.ceil(limits.cpu_s)),
                "memory_mb": limits.memory_mb,
                "file_size_mb": limits.file_size_mb,
                "max_processes": limits.max_processes,
                "max_open_files": MAX_OPEN_FILES,
                "allow_subprocess": limits.allow_subprocess,
                "audit_hook": limits.audit_hook,
                "answer_bytes": limits.result_mb * 2**20,
            }
            spec_fd = _sealed_memfd(json.dumps(spec).encode())
            opened.append(spec_fd)
            child_fds = [spec_fd, result_fd] + ([request_fd] if request_fd is not None else [])
            passed = list(child_fds)
            if bwrap:
                try:
                    self.cgroup = create_cgroup(
                        limits.memory_mb * 2**20 + CGROUP_SLACK_BYTES, limits.max_processes
                    )
                except OSError as exc:  # e.g. the machine's cgroup count ran out mid-training
                    warnings.warn(
                        f"sandbox: cannot create this run's cgroups ({exc}); it runs under the "
                        "fallback limits (rlimits, and no threads as root)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                threads = self.cgroup is not None or os.geteuid() != 0
                bpf_fd = _filled_pipe(seccomp_filter(limits.allow_subprocess, threads))
                opened.append(bpf_fd)
                passed.append(bpf_fd)
                argv, child = bwrap_command(
                    require_bwrap(), limits.site_packages, limits.disk_mb, bpf_fd
                )
                if self.cgroup is not None:
                    sh = shutil.which("sh") or "/bin/sh"
                    argv = [sh, "-c", JOIN_SCRIPT, "sh", *self.cgroup.procs, "--", *argv]
                env: dict[str, str] = {}  # bwrap's own process is visible inside: nothing there
            else:
                argv, child = [interpreter(limits.site_packages)[0]], CHILD_PATH
                env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8"}
            flags = ["-I"] if limits.site_packages else ["-I", "-S"]
            command = [*argv, *flags, child, mode, *(str(fd) for fd in child_fds)]
            self.proc = subprocess.Popen(
                command,
                stdin=stdin,
                stdout=out_w,
                stderr=err_w,
                cwd="/" if bwrap else workdir,
                env=env,
                close_fds=True,
                pass_fds=tuple(passed),
                start_new_session=True,
            )
        except BaseException:
            for capture in self.captures:
                capture.close()
            self.release()
            raise
        finally:
            for fd in opened:
                os.close(fd)

    def kill(self) -> None:
        """Kill the run's process group: bwrap (then its PID namespace) or the unsafe child."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def release(self) -> None:
        """Remove the run's cgroups and work folder (after its processes have ended)."""
        if self.cgroup is not None:
            self.oom_killed = self.cgroup.oom_kills() > 0
            self.cgroup.remove()
            self.cgroup = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def signal(self) -> int | None:
        """The signal that ended the program (bwrap reports it as 128 + number)."""
        code = self.proc.returncode
        if code is not None and code < 0:
            return -code
        valid = signal.valid_signals()
        if self.bwrap and code is not None and code > 128 and code - 128 in valid:
            return code - 128
        return None

    def process_status(self) -> tuple[str | None, str]:
        """``"timeout"`` or ``"killed"`` from how the process ended, else ``(None, "")``."""
        if self.timed_out:
            return "timeout", "wall-clock limit reached"
        sig = self.signal()
        if sig == signal.SIGXCPU:
            return "timeout", "CPU-time limit reached"
        if sig is not None and self.oom_killed:
            return "killed", f"killed by {_signal_name(sig)}: the memory limit (cgroup) was reached"
        if sig is not None:
            return "killed", f"killed by {_signal_name(sig)}"
        return None, ""

    def returncode(self) -> int | None:
        sig = self.signal()
        return -sig if sig is not None else self.proc.returncode


def wait_all(runs: Sequence[ChildRun], timeout_s: float) -> None:
    """Read every run's pipes until it ends or ``timeout_s`` has passed (then kill them all),
    reap every process, and release every run's cgroups and folder."""
    try:
        # Nothing is reaped before the kills below: a reaped pid could be reused.
        timed_out = drain(
            [c for run in runs for c in run.captures], [run.proc for run in runs], timeout_s
        )
        for run in runs:
            run.timed_out = timed_out
    finally:
        for run in runs:
            run.kill()  # whatever the program left behind in its group dies with it
        for run in runs:
            run.proc.wait()
            for capture in run.captures:
                capture.read_available()  # what was written before the end, within the limit
                capture.close()
            run.release()
