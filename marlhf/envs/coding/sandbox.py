"""Run untrusted Python (a model's completion) isolated, and judge it outside its process.

**Isolation** (``SandboxLimits.isolation="bwrap"``, the default): each program runs under
bubblewrap in its own user, PID, network, IPC, UTS and mount namespaces with every capability
dropped, an empty environment, a root file system that holds only read-only binds of what the
interpreter needs and a private tmpfs work folder of ``disk_mb`` MiB, and an allow-list seccomp
filter built with libseccomp (default deny: :mod:`~marlhf.envs.coding.seccomp`). Where the
machine has cgroups, each run has its own memory and pids groups
(:mod:`~marlhf.envs.coding.cgroup`). Nothing it writes is a host file: stdout, stderr and the
answers are pipes the parent reads with a byte limit. It cannot reach the network, see or signal
the trainer's processes, read its environment or files, or leave anything behind: when the run
ends (or the trainer dies), its PID namespace ends and every process in it dies. Without
``bwrap`` (or libseccomp) runs refuse to start (:class:`SandboxUnavailableError`, naming the
install command) unless ``isolation="unsafe-no-isolation"`` is chosen by name.

**Limits** (set by the child before any untrusted line runs; with capabilities dropped it cannot
raise them): CPU seconds, address space, largest file, open files, processes (``RLIMIT_NPROC``,
which Linux ignores for root: the pids cgroup is what holds there, or without one the filter
refuses threads), no core dumps; the parent kills the run at ``timeout_s`` wall-clock seconds.

**Defence in depth only**: the child also installs a PEP 578 audit hook (no sockets, process
creation, signals, ctypes, writes outside the work folder, other processes' ``/proc`` entries),
for clear messages. Audit hooks are not a security boundary (a program can switch this one off);
the namespaces, the seccomp filter and the cgroups are. In ``unsafe-no-isolation`` mode the
hook and the rlimits are all there is: the program runs as the calling user, can read what that
user can read, and routes the hook never sees are open.

**Verdicts**: :func:`run_calls` gives the program only the inputs; the results come back as plain
data (:func:`~marlhf.envs.coding.child.encode`), decoded here without hashing, within the byte
limit and the sample's deadline (:func:`~marlhf.envs.coding.plain.decode_plain`), and the
caller compares them in its own process. :func:`run_judged` runs trusted check code (and a
trusted reference solution for names the check calls directly) in a second sandbox whose
candidate function forwards plain-data arguments to the program's sandbox. :func:`run_program`
keeps the older form (tests run in the program's own namespace and process, so a hostile
program can forge them): use it for programs that are not adversarial, never for a reward.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from marlhf.envs.coding.channels import Capture
from marlhf.envs.coding.child import PlainDataError, encode
from marlhf.envs.coding.plain import PlainDataTimeout, decode_plain
from marlhf.envs.coding.process import (
    BWRAP_INSTALL,
    ChildRun,
    SandboxUnavailableError,
    require_bwrap,
    wait_all,
)
from marlhf.envs.coding.values import (
    ISOLATIONS,
    CallResult,
    CallsOutcome,
    SandboxLimits,
    SandboxResult,
    Status,
)

__all__ = [
    "BWRAP_INSTALL",
    "ISOLATIONS",
    "CallResult",
    "CallsOutcome",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailableError",
    "Status",
    "require_isolation",
    "run_calls",
    "run_judged",
    "run_many",
    "run_parallel",
    "run_program",
]

T = TypeVar("T")


def require_isolation(isolation: str = "bwrap") -> None:
    """Raise :class:`SandboxUnavailableError` (naming the install command) when ``isolation``
    is ``"bwrap"`` and bubblewrap is missing or cannot run here; nothing for the unsafe mode."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"sandbox isolation={isolation!r}; valid: {list(ISOLATIONS)}")
    if isolation == "bwrap":
        require_bwrap()


def run_calls(
    program: str,
    entry_point: str,
    calls: Sequence[tuple[Sequence[Any], dict[str, Any]]],
    limits: SandboxLimits | None = None,
) -> CallsOutcome:
    """Run ``program``, then call ``entry_point(*args, **kwargs)`` for each call, sandboxed.

    Only the inputs enter the sandbox; each result comes back as plain data (or as the
    exception it raised). Judge the results in your own process.

    :param program: Python source of the untrusted program.
    :param entry_point: the name of the function to call.
    :param calls: ``(args, kwargs)`` per call, plain data
        (:func:`~marlhf.envs.coding.child.encode`).
    :param limits: isolation and limits; default :class:`SandboxLimits()`.
    :raises TypeError: when an input is not plain data.
    """
    if not isinstance(program, str):
        raise TypeError(f"run_calls: `program` must be str, got {type(program).__name__}")
    try:
        encoded = [{"args": encode(tuple(a)), "kwargs": encode(dict(kw))} for a, kw in calls]
    except PlainDataError as exc:
        raise TypeError(f"run_calls: an input is not plain data ({exc})") from exc
    limits = limits or SandboxLimits()
    bwrap = limits.isolation == "bwrap"
    start, deadline = time.perf_counter(), time.monotonic() + limits.timeout_s
    spec = {"program": program, "entry_point": entry_point, "interactive": False}
    run = ChildRun("program", "calls", {**spec, "calls": encoded}, limits)
    wait_all([run], limits.timeout_s)
    records = _records(run.result)
    stdout = run.stdout.text(limits.output_chars)
    stderr = run.stderr.text(limits.output_chars)
    status, error = _ended(run)
    try:
        results = _call_results(records, len(encoded), deadline)
    except PlainDataTimeout as exc:
        results = [CallResult("missing", error=str(exc))] * len(encoded)
        status, error = status or Status.TIMEOUT, error or str(exc)
    duration = time.perf_counter() - start
    if status is None:
        first = records[0] if records else {}
        if first.get("event") in ("compile_error", "runtime_error"):
            status, error = Status(first["event"]), str(first.get("error", ""))[:1000]
        elif first.get("event") != "loaded":
            status = Status.RUNTIME_ERROR
            error = f"exited with code {run.proc.returncode} before reporting a result"
    code = run.returncode()
    # Under bwrap the namespace is empty whatever the program says; unsafe mode reports the
    # child's own attempt (informational: the program could claim anything).
    isolated = bwrap or bool(records and records[0].get("network_isolated") is True)
    return CallsOutcome(status, error, results, duration, code, stdout, stderr, isolated)


def _records(capture: Capture | None) -> list[dict]:
    """The JSON-object lines of a result channel (anything else is skipped); the channel was
    read with a byte limit, so each parse is bounded."""
    records = []
    for line in capture.lines() if capture is not None else []:
        with contextlib.suppress(ValueError, RecursionError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def _ended(run: ChildRun) -> tuple[Status | None, str]:
    """TIMEOUT or KILLED when the process ended that way, else ``(None, "")``."""
    how, error = run.process_status()
    return (Status(how) if how else None), error


def _call_results(records: list[dict], n: int, deadline: float) -> list[CallResult]:
    """The first answer for each call index, decoded without hashing before ``deadline``;
    what is not plain data counts as such.

    :raises PlainDataTimeout: when decoding runs past ``deadline``.
    """
    found: dict[int, CallResult] = {}
    for record in records:
        k = record.get("i")
        if type(k) is not int or not 0 <= k < n or k in found:
            continue
        if "value" in record:
            try:
                found[k] = CallResult("value", decode_plain(record["value"], deadline))
            except PlainDataTimeout:
                raise
            except (PlainDataError, RecursionError) as exc:
                found[k] = CallResult("unplain", error=str(exc))
        elif "error" in record:
            found[k] = CallResult("error", error=str(record["error"])[:1000])
        else:
            found[k] = CallResult("unplain", error=str(record.get("unplain", ""))[:1000])
    return [found.get(k, CallResult("missing", error="no answer")) for k in range(n)]


def tally(
    outcomes: Sequence[tuple[str, str]],
    duration_s: float,
    returncode: int | None = None,
    network_isolated: bool = False,
    stdout: str = "",
    stderr: str = "",
) -> SandboxResult:
    """A :class:`SandboxResult` from per-test ``(outcome, error)`` pairs (outcome ``passed``,
    ``failed`` or ``runtime_error``): any runtime error makes the run one, else any failure."""
    passed = sum(o == "passed" for o, _ in outcomes)
    kinds = {o for o, _ in outcomes}
    status = Status.RUNTIME_ERROR if "runtime_error" in kinds else Status.FAILED
    status = status if kinds - {"passed"} else Status.PASSED
    error = next((e for o, e in outcomes if o != "passed"), "")
    return SandboxResult(
        status, passed, len(outcomes), duration_s, error, returncode, network_isolated,
        stdout, stderr,
    )  # fmt: skip


def run_judged(
    program: str,
    entry_point: str,
    prompt: str,
    setup: str,
    tests: Sequence[str],
    candidate_names: Sequence[str] = ("candidate",),
    limits: SandboxLimits | None = None,
    reference: str = "",
) -> SandboxResult:
    """Run trusted check code against the program, each in its own sandbox.

    The judge executes ``prompt`` (trusted helpers, e.g. HumanEval's ``poly``), ``reference``
    (a trusted solution, e.g. the canonical one), ``setup`` and each test in one namespace
    where ``candidate_names`` are a proxy: a call sends its arguments as plain data to the
    program's sandbox (:func:`run_calls`'s interactive form) and returns the plain-data answer,
    decoded inside the judge's sandbox. Every other name is trusted: a check that calls
    ``entry_point`` by name gets the reference's function (without a reference, such a call
    is a runtime error: the prompt's stub would return None), never the program's. The
    program never sees the tests or the verdict; a test that raises ``AssertionError``
    failed, any other exception is a runtime error.
    """
    limits = limits or SandboxLimits()
    bwrap = limits.isolation == "bwrap"
    start = time.perf_counter()
    ask_r, ask_w = os.pipe()  # judge -> program: arguments
    answer_r, answer_w = os.pipe()  # program -> judge: results
    try:
        spec = {"program": program, "entry_point": entry_point, "interactive": True}
        prog = ChildRun("program", "calls", spec, limits, stdin=ask_r, result_fd=answer_w)
        judge_spec: dict[str, Any] = {"prompt": prompt, "reference": reference}
        judge_spec["setup"] = setup
        judge_spec["entry_point"] = entry_point
        judge_spec |= {"tests": list(tests), "candidate_names": list(candidate_names)}
        try:
            judge = ChildRun("judge", "judge", judge_spec, limits, answer_r, None, ask_w)
        except BaseException:
            wait_all([prog], 0.0)
            raise
    finally:
        for fd in (ask_r, ask_w, answer_r, answer_w):
            os.close(fd)
    wait_all([prog, judge], limits.timeout_s)
    duration = time.perf_counter() - start
    records = _records(judge.result)
    stdout = prog.stdout.text(limits.output_chars)
    stderr = prog.stderr.text(limits.output_chars)
    code = prog.returncode()
    status, error = _ended(prog)
    if status is None and judge.timed_out:
        status, error = Status.TIMEOUT, "wall-clock limit reached"
    first = records[0] if records else {}
    if status is None and first.get("event") != "loaded":
        event = first.get("event")
        status = Status(event) if event in ("compile_error", "runtime_error") else None
        status = status or Status.RUNTIME_ERROR
        error = str(first.get("error", "the judge reported nothing"))[:1000]
    if status is not None:
        return SandboxResult(status, 0, len(tests), duration, error, code, bwrap, stdout, stderr)
    found: dict[int, tuple[str, str]] = {}
    for record in records[1:]:
        k, outcome = record.get("i"), record.get("outcome")
        if type(k) is int and outcome in ("passed", "failed", "runtime_error"):
            found.setdefault(k, (outcome, str(record.get("error", ""))[:1000]))
    outcomes = [found.get(k, ("runtime_error", "no verdict")) for k in range(len(tests))]
    return tally(outcomes, duration, code, bwrap, stdout, stderr)


def run_program(
    program: str,
    tests: Sequence[str] = (),
    setup: str = "",
    limits: SandboxLimits | None = None,
) -> SandboxResult:
    """Run ``program``, then ``setup``, then each test in one namespace, sandboxed.

    The tests run in the program's own process, so a program written to forge its result can
    (the sandbox still contains it): use :func:`run_calls` or :func:`run_judged` for rewards.
    A test passes when it raises nothing; ``AssertionError`` fails it, any other exception is a
    runtime error; all tests run even after one fails.

    :param program: Python source of the program (e.g. prompt + completion).
    :param tests: Python snippets, each one test, run in the program's namespace.
    :param setup: Python source run after the program and before the tests (test helpers).
    :param limits: isolation and limits; default :class:`SandboxLimits()`.
    """
    if not isinstance(program, str):
        raise TypeError(f"run_program: `program` must be str, got {type(program).__name__}")
    tests = list(tests)
    for k, t in enumerate(tests):
        if not isinstance(t, str):
            raise TypeError(f"run_program: tests[{k}] must be str, got {type(t).__name__}")
    limits = limits or SandboxLimits()
    bwrap = limits.isolation == "bwrap"
    nonce = secrets.token_hex(16)
    start = time.perf_counter()
    spec = {"nonce": nonce, "program": program, "setup": setup, "tests": tests}
    run = ChildRun("program", "program", spec, limits)
    wait_all([run], limits.timeout_s)
    duration = time.perf_counter() - start
    stdout = run.stdout.text(limits.output_chars)
    stderr = run.stderr.text(limits.output_chars)
    record = _read_record(run.result, nonce)
    status, error = _ended(run)
    code = run.returncode()
    if status is None:
        status, error, record = _judge_record(record, len(tests), run.proc.returncode)
    return SandboxResult(
        status,
        passed=int(record["passed"]) if record is not None else 0,
        total=len(tests),
        duration_s=duration,
        error=error,
        returncode=code,
        network_isolated=bool(record.get("network_isolated")) if record is not None else bwrap,
        stdout=stdout,
        stderr=stderr,
    )


def _read_record(capture: Capture | None, nonce: str) -> dict | None:
    lines = capture.lines() if capture is not None else []
    for line in (raw.decode("utf-8", errors="replace") for raw in reversed(lines)):
        if line.startswith(nonce + " "):
            with contextlib.suppress(ValueError, RecursionError):
                record = json.loads(line[len(nonce) + 1 :])
                return record if isinstance(record, dict) else None
            return None
    return None


def _judge_record(
    record: dict | None, total: int, code: int | None
) -> tuple[Status, str, dict | None]:
    if record is None:
        return Status.RUNTIME_ERROR, f"exited with code {code} before reporting a result", None
    passed, status = record.get("passed"), record.get("status")
    consistent = False
    if isinstance(passed, int) and 0 <= passed <= total:
        consistent = status in {"passed", "failed", "compile_error", "runtime_error"}
        consistent &= passed == total if status == "passed" else True
        consistent &= passed < total if status == "failed" else True
    if not consistent:  # only a program that tampered with it gets here
        return Status.RUNTIME_ERROR, f"inconsistent result record {record!r}", None
    if status == "passed" and code != 0:  # cannot happen with a genuine record
        return Status.RUNTIME_ERROR, f"exited with code {code} after the tests", record
    return Status(status), str(record.get("error", "")), record


def run_parallel(tasks: Sequence[Callable[[], T]], max_workers: int = 2) -> list[T]:
    """Call each task on a thread pool of ``max_workers``; results in the tasks' order."""
    if max_workers < 1:
        raise ValueError(f"run_parallel: max_workers={max_workers} must be >= 1")
    if not tasks:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(tasks))) as pool:
        return list(pool.map(lambda task: task(), tasks))


def run_many(
    jobs: Sequence[tuple[str, Sequence[str], str]],
    limits: SandboxLimits | None = None,
    max_workers: int = 2,
) -> list[SandboxResult]:
    """:func:`run_program` on several ``(program, tests, setup)`` jobs concurrently.

    :param jobs: one ``(program, tests, setup)`` triple per run.
    :param limits: limits applied to every run (default :class:`SandboxLimits()`).
    :param max_workers: how many children run at once (default 2).
    """
    if max_workers < 1:
        raise ValueError(f"run_many: max_workers={max_workers} must be >= 1")
    tasks = [functools.partial(run_program, p, t, s, limits) for p, t, s in jobs]
    return run_parallel(tasks, max_workers)
