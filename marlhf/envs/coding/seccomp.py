"""The sandbox's kernel policy: an allow-list seccomp filter built with libseccomp.

The filter is compiled here, in the trusted parent, by **libseccomp** (the reference C library,
Debian package ``libseccomp2``, loaded through :mod:`ctypes`) and exported as classic BPF, which
bubblewrap installs (``--seccomp FD``) just before it starts the interpreter. Why this route:
the official Python bindings are not published on PyPI as wheels and Debian's
``python3-seccomp`` is built for the system interpreter only (a venv without system
site-packages cannot import it); the C library is the same one those bindings wrap, is present
wherever ``apt`` is (``apt`` depends on it), and its small, stable API (``seccomp_init``,
``seccomp_rule_add_array``, ``seccomp_export_bpf``) is all that is needed.

**Default deny**: every system call that is not listed in :data:`ALLOWED` (or allowed with an
argument condition below) fails with ``EPERM``; a call from another architecture ABI (x32 on
x86-64) kills the process. Refused, among everything else: ``memfd_create``, ``fallocate``,
``ptrace``, ``process_vm_*``, ``unshare``, ``setns``, ``mount`` and the new mount API,
``io_uring_*``, ``bpf``, ``perf_event_open``, ``keyctl``/``add_key``/``request_key``,
``userfaultfd``, SysV and POSIX shared memory and message queues, every socket call,
``chown``, ``set*id``, ``name_to_handle_at``/``open_by_handle_at``, ``pidfd_*``.

Conditional rules:

- ``clone``: threads only (``CLONE_THREAD`` set), and never with a namespace flag; with
  subprocesses allowed, any ``clone`` without namespace flags, plus ``fork`` and ``vfork``;
  with threads not allowed (no pids cgroup and ``RLIMIT_NPROC`` void), no ``clone`` at all.
  ``clone3`` (whose flags live in memory, out of the filter's sight) gets ``ENOSYS``, on which
  glibc falls back to ``clone``.
- ``chmod``/``fchmod``/``fchmodat``: only without the set-user-id and set-group-id bits.
- ``ioctl``: only the terminal and descriptor queries Python makes (``TCGETS``, ``TIOCGWINSZ``,
  ``TIOCGPGRP``, ``FIONREAD``, ``FIONBIO``, ``FIOCLEX``, ``FIONCLEX``).
- ``prctl``: only ``PR_SET_NAME``/``PR_GET_NAME`` (thread names).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

__all__ = ["ALLOWED", "SeccompUnavailableError", "seccomp_filter", "syscall_number"]

#: How to get libseccomp on Debian and Ubuntu (``make install`` runs it where it can).
LIBSECCOMP_INSTALL = "apt-get update && apt-get install -y libseccomp2"

# libseccomp's actions and comparison operators (seccomp.h).
_ACT_KILL_PROCESS = 0x80000000
_ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000
_CMP_EQ, _CMP_MASKED_EQ = 4, 7
_EPERM, _ENOSYS = 1, 38

#: System calls allowed without conditions (names; those this architecture lacks are skipped).
ALLOWED: tuple[str, ...] = (
    # files and descriptors (the writable file system is the private tmpfs only)
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "lseek", "open", "openat", "close", "close_range", "creat",
    "dup", "dup2", "dup3", "fcntl", "flock", "fsync", "fdatasync", "ftruncate", "truncate",
    "stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs", "access",
    "faccessat", "faccessat2", "getdents", "getdents64", "getcwd", "chdir", "fchdir",
    "readlink", "readlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir",
    "unlink", "unlinkat", "link", "linkat", "symlink", "symlinkat", "utime", "utimes",
    "utimensat", "futimesat", "umask", "pipe", "pipe2", "sendfile", "copy_file_range",
    "fadvise64", "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr",
    "flistxattr",
    # memory (bounded by RLIMIT_AS and the memory cgroup)
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore",
    # signals, inside the run's own PID namespace
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
    "rt_sigsuspend", "sigaltstack", "kill", "tgkill", "tkill", "pause", "alarm",
    "setitimer", "getitimer",
    # time
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time",
    "times",
    # about itself
    "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getgroups",
    "getresuid", "getresgid", "getpgrp", "getpgid", "getsid", "setsid", "setpgid",
    "getpriority", "getrlimit", "setrlimit", "prlimit64", "getrusage", "sysinfo", "uname",
    "getcpu", "sched_getaffinity", "sched_yield", "sched_getparam", "sched_getscheduler",
    "getrandom", "capget",
    # threads and the end of the process
    "set_robust_list", "get_robust_list", "set_tid_address", "futex", "rseq", "arch_prctl",
    "exit", "exit_group", "wait4", "waitid", "restart_syscall",
    # waiting on descriptors
    "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "timerfd_create",
    "timerfd_settime", "timerfd_gettime", "signalfd", "signalfd4",
    # replacing the program (how bubblewrap starts the interpreter; the filter, namespaces,
    # rlimits and cgroup stay, and no_new_privs makes set-id bits inert)
    "execve", "execveat",
)  # fmt: skip

_CLONE_THREAD = 0x00010000
#: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET (and NEWTIME, 0x80).
_CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
_CLONE_NAMESPACES |= 0x20000000 | 0x40000000 | 0x00000080
_SET_ID_BITS = 0o6000
#: TCGETS, TIOCGWINSZ, TIOCGPGRP, FIONREAD, FIONBIO, FIOCLEX, FIONCLEX (asm-generic/ioctls.h).
_IOCTLS = (0x5401, 0x5413, 0x540F, 0x541B, 0x5421, 0x5451, 0x5450)
_PRCTLS = (15, 16)  # PR_SET_NAME, PR_GET_NAME


class SeccompUnavailableError(RuntimeError):
    """libseccomp is missing or cannot build a filter for this architecture."""


class _ArgCmp(ctypes.Structure):
    """``struct scmp_arg_cmp``."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailableError(
            f"the sandbox's seccomp filter needs libseccomp ({exc}): run `{LIBSECCOMP_INSTALL}`"
        ) from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)
    ]  # fmt: skip
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _number(lib: ctypes.CDLL, name: str) -> int | None:
    nr = int(lib.seccomp_syscall_resolve_name(name.encode()))
    return nr if nr >= 0 else None


def syscall_number(name: str) -> int | None:
    """The number of system call ``name`` on this architecture (None when it has none)."""
    return _number(_library(), name)


def _rule(
    lib: ctypes.CDLL, ctx: int, action: int, name: str, *conds: tuple[int, int, int, int]
) -> None:
    """Add ``action`` for system call ``name`` when every ``(arg, op, a, b)`` holds."""
    nr = _number(lib, name)
    if nr is None:
        return
    array = (_ArgCmp * max(1, len(conds)))(*(_ArgCmp(*c) for c in conds))
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(conds), array)
    if rc < 0:
        raise SeccompUnavailableError(f"libseccomp refused the rule for {name}: errno {-rc}")


@functools.lru_cache(maxsize=4)
def seccomp_filter(allow_subprocess: bool, allow_threads: bool = True) -> bytes:
    """The allow-list filter as classic BPF (what ``bwrap --seccomp`` reads).

    :param allow_subprocess: also allow ``fork``, ``vfork`` and ``clone`` of processes (still
        never with namespace flags).
    :param allow_threads: allow ``clone`` of threads (default True; the sandbox turns it off
        where no pids cgroup counts them and ``RLIMIT_NPROC`` does not hold, i.e. as root).
    :raises SeccompUnavailableError: when libseccomp is missing or fails.
    """
    lib = _library()
    ctx = lib.seccomp_init(_ACT_ERRNO | _EPERM)
    if not ctx:
        raise SeccompUnavailableError(f"seccomp_init failed on {platform.machine()}")
    try:
        for name in ALLOWED:
            _rule(lib, ctx, _ACT_ALLOW, name)
        _rule(lib, ctx, _ACT_ERRNO | _ENOSYS, "clone3")
        if allow_subprocess:
            _rule(lib, ctx, _ACT_ALLOW, "fork")
            _rule(lib, ctx, _ACT_ALLOW, "vfork")
            _rule(lib, ctx, _ACT_ALLOW, "clone", (0, _CMP_MASKED_EQ, _CLONE_NAMESPACES, 0))
        elif allow_threads:
            mask = _CLONE_NAMESPACES | _CLONE_THREAD
            _rule(lib, ctx, _ACT_ALLOW, "clone", (0, _CMP_MASKED_EQ, mask, _CLONE_THREAD))
        for name, mode_arg in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2)):
            _rule(lib, ctx, _ACT_ALLOW, name, (mode_arg, _CMP_MASKED_EQ, _SET_ID_BITS, 0))
        for request in _IOCTLS:
            _rule(lib, ctx, _ACT_ALLOW, "ioctl", (1, _CMP_EQ, request, 0))
        for option in _PRCTLS:
            _rule(lib, ctx, _ACT_ALLOW, "prctl", (0, _CMP_EQ, option, 0))
        read_fd, write_fd = os.pipe()
        try:
            rc = lib.seccomp_export_bpf(ctx, write_fd)
            os.close(write_fd)
            write_fd = -1
            if rc < 0:
                raise SeccompUnavailableError(f"seccomp_export_bpf failed: errno {-rc}")
            chunks = []
            while chunk := os.read(read_fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        return b"".join(chunks)
    finally:
        lib.seccomp_release(ctx)
