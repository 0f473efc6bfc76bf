"""The sandbox's value types: its limits, how a run ended, and what came back.

Re-exported by :mod:`marlhf.envs.coding.sandbox` (import them from there); kept apart so that the
process and I/O modules can name them without importing the runner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = [
    "ISOLATIONS",
    "CallResult",
    "CallsOutcome",
    "SandboxLimits",
    "SandboxResult",
    "Status",
]

#: Valid values of ``SandboxLimits.isolation``.
ISOLATIONS = ("bwrap", "unsafe-no-isolation")
#: The largest value of each numeric limit (seconds, MiB, tasks): past these a limit is a
#: mistake, and the kernel's own fields would overflow.
_LIMIT_RANGES: dict[str, float] = {
    "timeout_s": 86400.0,
    "cpu_s": 86400.0,
    "memory_mb": 2**30,
    "file_size_mb": 2**30,
    "disk_mb": 2**30,
    "max_processes": 2**22,
    "result_mb": 1024,
}


class Status(str, Enum):
    """How a sandboxed run ended."""

    PASSED = "passed"
    FAILED = "failed"
    COMPILE_ERROR = "compile_error"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    KILLED = "killed"


@dataclass(frozen=True)
class SandboxLimits:
    """Isolation and resource limits of one sandboxed run.

    :param timeout_s: wall-clock limit in seconds (default 5.0); the run is killed at it.
    :param cpu_s: CPU-time limit in seconds (``RLIMIT_CPU``, default 5).
    :param memory_mb: address-space limit in MiB (``RLIMIT_AS``, default 1024).
    :param file_size_mb: largest file the child may write, in MiB (``RLIMIT_FSIZE``, default
        16); also how much of stdout and of stderr is read (they are pipes: past it the parent
        closes its end and the child's writes fail).
    :param disk_mb: size of the private tmpfs work folder in MiB (default 64; bwrap only).
    :param max_processes: tasks (processes and threads) of one run: the run's ``pids.max``
        where the machine has cgroups, and ``RLIMIT_NPROC`` (default 64; Linux does not
        enforce the rlimit for root).
    :param allow_subprocess: let the program create processes (default False: refused by the
        seccomp filter under bwrap, and by the audit hook).
    :param site_packages: make the interpreter's site-packages importable (default False: the
        standard library only, which is what HumanEval needs).
    :param output_chars: how many trailing characters of stdout/stderr to keep (default 2000).
    :param isolation: ``"bwrap"`` (default) or ``"unsafe-no-isolation"`` (no namespaces: only
        the rlimits and the audit hook, for machines without bubblewrap and trusted code).
    :param audit_hook: install the in-process audit hook (default True; defence in depth, which
        the tests turn off to show that the namespaces and seccomp filter hold alone).
    :param result_mb: how much of the program's answers the parent reads, in MiB (default 1);
        past it the answers that did not fit count as missing.
    :raises ValueError: naming the field, for a value that is not a finite positive number (or
        an int where one is needed) or is larger than the kernel can take.
    """

    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 1024
    file_size_mb: int = 16
    disk_mb: int = 64
    max_processes: int = 64
    allow_subprocess: bool = False
    site_packages: bool = False
    output_chars: int = 2000
    isolation: str = "bwrap"
    audit_hook: bool = True
    result_mb: int = 1

    def __post_init__(self) -> None:
        for name, most in _LIMIT_RANGES.items():
            value = getattr(self, name)
            number = not isinstance(value, bool) and isinstance(value, int | float)
            if not number or not math.isfinite(value) or not 0 < value <= most:
                raise ValueError(
                    f"SandboxLimits.{name}={value!r} must be a finite number in (0, {most}]"
                )
        for name in ("memory_mb", "file_size_mb", "disk_mb", "max_processes", "result_mb"):
            value = getattr(self, name)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"SandboxLimits.{name}={value!r} must be a whole number")
            object.__setattr__(self, name, int(value))
        output = self.output_chars
        if isinstance(output, bool) or not isinstance(output, int) or not 0 <= output <= 10**7:
            raise ValueError(f"SandboxLimits.output_chars={output!r} must be an int in [0, 10**7]")
        for name in ("allow_subprocess", "site_packages", "audit_hook"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SandboxLimits.{name}={getattr(self, name)!r} must be a bool")
        if self.isolation not in ISOLATIONS:
            raise ValueError(
                f"SandboxLimits.isolation={self.isolation!r}; valid: {list(ISOLATIONS)}"
            )


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed, graded run.

    :param status: how it ended (:class:`Status`).
    :param passed: number of tests that passed.
    :param total: number of tests given.
    :param duration_s: wall-clock seconds from start to the end of the run.
    :param error: a short description of what went wrong (exception type and message, signal).
    :param returncode: the child's exit code (negative: killed by that signal), None if unknown.
    :param network_isolated: whether the child ran in an empty network namespace.
    :param stdout: the tail of the child's standard output.
    :param stderr: the tail of the child's standard error.
    """

    status: Status
    passed: int
    total: int
    duration_s: float
    error: str = ""
    returncode: int | None = None
    network_isolated: bool = False
    stdout: str = ""
    stderr: str = field(default="", repr=False)

    @property
    def pass_fraction(self) -> float | None:
        """Fraction of tests passed (None when no tests were given)."""
        return None if self.total == 0 else self.passed / self.total


@dataclass(frozen=True)
class CallResult:
    """What one call of the program's function gave back.

    :param kind: ``"value"`` (plain data in ``value``), ``"error"`` (it raised: ``error``),
        ``"unplain"`` (it returned something that is not plain data) or ``"missing"`` (no answer:
        the program ended or was stopped first).
    """

    kind: str
    value: Any = None
    error: str = ""


@dataclass(frozen=True)
class CallsOutcome:
    """Outcome of :func:`run_calls`.

    :param status: None when the program loaded and the calls ran; otherwise why not
        (compile or runtime error while loading, timeout, killed).
    :param results: one :class:`CallResult` per call, in order.
    """

    status: Status | None
    error: str
    results: list[CallResult]
    duration_s: float
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    network_isolated: bool = False
