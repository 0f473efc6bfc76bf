"""One sandboxed child process: its bubblewrap command line, seccomp filter, files and lifetime.

Flags (bubblewrap 0.8, Debian package ``bubblewrap``): ``--unshare-all`` (new user where the
kernel allows, PID, network, IPC, UTS and cgroup namespaces; no ``--share-net``, so the network
namespace is empty), ``--die-with-parent``, ``--new-session``, ``--clearenv``,
``--cap-drop ALL`` (as root, the user namespace would otherwise keep every capability: raising
rlimits, for one); a new root with
read-only binds of ``/usr``, ``/lib*``, ``/bin``, ``/sbin`` and the interpreter's own prefix, a
private procfs (only the sandbox's processes) and ``/dev`` (null, zero, random, ...), a tmpfs work
folder of bounded size, and this package's ``sandbox_child.py`` bound read-only. Nothing else of
the host file system (no ``/home``, ``/root``, ``/etc``, ``/tmp``, the trainer's files) exists
inside.

When subprocesses are not allowed, a seccomp filter refuses process creation in the kernel
(``fork``, ``vfork``, ``clone`` without ``CLONE_THREAD``, ``clone3``), whatever route the program
takes (``os.posix_spawn``, ``_posixsubprocess``, ``ctypes``): ``RLIMIT_NPROC`` does not hold for
root, this does. Threads stay possible and are bounded by the address-space limit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from marlhf.envs.sandbox import SandboxLimits

__all__ = [
    "BWRAP_INSTALL",
    "ChildRun",
    "SandboxUnavailableError",
    "bwrap_command",
    "read_lines",
    "require_bwrap",
    "tail",
    "wait_all",
]

#: How to get bubblewrap on Debian and Ubuntu (``make install`` runs it where it can).
BWRAP_INSTALL = "apt-get update && apt-get install -y bubblewrap"
#: The work folder inside the sandbox (a private tmpfs).
WORKDIR = "/sandbox"
CHILD_INSIDE = "/run/marlhf/sandbox_child.py"
CHILD_PATH = str(Path(__file__).with_name("sandbox_child.py"))


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


# Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _ERRNO, _KILL = 0x7FFF0000, 0x00050000, 0x80000000
_EPERM, _ENOSYS, _CLONE_THREAD = 1, 38, 0x00010000
#: machine -> (audit arch, fork/vfork numbers, clone, clone3, has the x32 ABI)
_ARCH = {
    "x86_64": (0xC000003E, (57, 58), 56, 435, True),
    "aarch64": (0xC00000B7, (), 220, 435, False),
}


def seccomp_filter() -> bytes | None:
    """A BPF program that refuses process creation (None on an architecture it does not know)."""
    if platform.machine() not in _ARCH:
        return None
    arch, forks, clone, clone3, x32 = _ARCH[platform.machine()]
    # (opcode, jump-if-true, jump-if-false, operand); a jump names a return label or is 0 (next).
    prog: list[tuple[int, int | str, int | str, int]] = [
        (_LD_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ, 0, "kill", arch),
        (_LD_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    if x32:  # x32 system calls carry this bit; refuse them all
        prog.append((_JGE, "eperm", 0, 0x40000000))
    prog += [(_JEQ, "eperm", 0, nr) for nr in forks]
    prog.append((_JEQ, "enosys", 0, clone3))  # glibc then falls back to clone
    prog.append((_JEQ, 0, "allow", clone))
    prog.append((_LD_ABS, 0, 0, 16))  # low half of args[0], the clone flags (little-endian)
    prog.append((_JSET, "allow", "eperm", _CLONE_THREAD))  # threads yes, processes no
    returns = {"allow": _ALLOW, "eperm": _ERRNO | _EPERM, "enosys": _ERRNO | _ENOSYS}
    returns["kill"] = _KILL
    where = {label: len(prog) + i for i, label in enumerate(returns)}

    def jump(at: int, target: int | str) -> int:
        return target if isinstance(target, int) else where[target] - at - 1

    words = [(op, jump(i, t), jump(i, f), k) for i, (op, t, f, k) in enumerate(prog)]
    words += [(_RET, 0, 0, value) for value in returns.values()]
    return b"".join(struct.pack("=HBBI", *w) for w in words)


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


def tail(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4 * chars))
            return fh.read().decode("utf-8", errors="replace")[-chars:] if chars else ""
    except OSError:
        return ""


def read_lines(path: Path) -> list[dict]:
    """The JSON-object lines of a result file (anything else is skipped)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError, RecursionError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


class ChildRun:
    """One sandboxed child: spec and output files in a private host folder, its process."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        mode: str,
        spec: dict,
        limits: SandboxLimits,
        stdin: Any = subprocess.DEVNULL,
        result_fd: int | None = None,
        request_fd: int | None = None,
    ) -> None:
        bwrap = limits.isolation == "bwrap"
        self.stdout, self.stderr = tmp / f"{name}.out", tmp / f"{name}.err"
        self.result = tmp / f"{name}.result"
        own_result = result_fd is None
        if result_fd is None:
            result_fd = os.open(self.result, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        out_fd: int = result_fd
        workdir = Path(WORKDIR) if bwrap else tmp / f"{name}.work"
        if not bwrap:
            workdir.mkdir(mode=0o700)
        spec = {**spec, "workdir": str(workdir), "network_isolated": bwrap}
        spec["limits"] = {
            "cpu_s": max(1, int(limits.cpu_s + 0.999)),
            "memory_mb": limits.memory_mb,
            "file_size_mb": limits.file_size_mb,
            "max_processes": limits.max_processes,
            "allow_subprocess": limits.allow_subprocess,
            "audit_hook": limits.audit_hook,
        }
        spec_path = tmp / f"{name}.spec"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        spec_fd = os.open(spec_path, os.O_RDONLY)
        child_fds = [spec_fd, out_fd] + ([request_fd] if request_fd is not None else [])
        opened = [spec_fd] + ([out_fd] if own_result else [])
        passed = list(child_fds)
        if bwrap:
            bpf = None if limits.allow_subprocess else seccomp_filter()
            bpf_fd = None
            if bpf is not None:
                (tmp / f"{name}.bpf").write_bytes(bpf)
                bpf_fd = os.open(tmp / f"{name}.bpf", os.O_RDONLY)
                opened.append(bpf_fd)
                passed.append(bpf_fd)
            argv, child = bwrap_command(
                require_bwrap(), limits.site_packages, limits.disk_mb, bpf_fd
            )
            env: dict[str, str] = {}  # bwrap's own process is visible inside: nothing to read
        else:
            argv, child = [interpreter(limits.site_packages)[0]], CHILD_PATH
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8"}
        flags = ["-I"] if limits.site_packages else ["-I", "-S"]
        command = [*argv, *flags, child, mode, *(str(fd) for fd in child_fds)]
        try:
            with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
                self.proc = subprocess.Popen(
                    command,
                    stdin=stdin,
                    stdout=out,
                    stderr=err,
                    cwd=tmp if bwrap else workdir,
                    env=env,
                    close_fds=True,
                    pass_fds=tuple(passed),
                    start_new_session=True,
                )
        finally:
            for fd in opened:
                os.close(fd)
        self.timed_out = False

    def kill(self) -> None:
        """Kill the run's process group: bwrap (then its PID namespace) or the unsafe child."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def signal(self, bwrap: bool) -> int | None:
        """The signal that ended the program (bwrap reports it as 128 + number)."""
        code = self.proc.returncode
        if code is not None and code < 0:
            return -code
        if bwrap and code is not None and code > 128 and code - 128 in signal.valid_signals():
            return code - 128
        return None

    def process_status(self, bwrap: bool) -> tuple[str | None, str]:
        """``"timeout"`` or ``"killed"`` from how the process ended, else ``(None, "")``."""
        if self.timed_out:
            return "timeout", "wall-clock limit reached"
        sig = self.signal(bwrap)
        if sig == signal.SIGXCPU:
            return "timeout", "CPU-time limit reached"
        if sig is not None:
            return "killed", f"killed by {_signal_name(sig)}"
        return None, ""

    def returncode(self, bwrap: bool) -> int | None:
        sig = self.signal(bwrap)
        return -sig if sig is not None else self.proc.returncode


def _exits_within(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Whether ``proc`` ends within ``timeout_s``; a pidfd wakes us at once (``Popen.wait``
    with a timeout polls, up to 50 ms late)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        ready = poller.poll(max(0, int(timeout_s * 1000)))
    finally:
        os.close(pidfd)
    return bool(ready)


def wait_all(runs: Sequence[ChildRun], timeout_s: float) -> None:
    """Wait for every run until ``timeout_s`` has passed, kill what is left, then reap all."""
    deadline = time.monotonic() + timeout_s
    for run in runs:
        if not _exits_within(run.proc, max(0.0, deadline - time.monotonic())):
            run.timed_out = True
            for other in runs:
                other.kill()
    for run in runs:
        run.kill()  # whatever the program left behind in its group dies with it
        run.proc.wait()
