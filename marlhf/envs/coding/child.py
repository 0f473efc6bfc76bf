"""The program that runs inside the sandbox, and the plain-data codec both sides share.

This file imports only the standard library: the sandbox runs it as a script
(``python -I -S sandbox_child.py MODE SPEC_FD RESULT_FD [REQUEST_FD]``), read-only bound into
the bubblewrap namespace, before any untrusted line. The trusted parent imports the same module
for :func:`encode` (of inputs); it decodes answers with
:func:`~marlhf.envs.coding.plain.decode_plain`, which hashes nothing. :func:`decode` here
builds real sets and dicts, so it runs only inside a sandbox (the judge), under its limits.

Modes:

- ``calls``: load the untrusted program, then call its entry point on each input and write one
  line per call: the result as plain data (:func:`encode`) or the exception's name. With
  ``interactive`` in the spec the inputs arrive one per line on stdin (from a ``judge``),
  otherwise they are in the spec. The verdict is not computed here.
- ``judge``: run trusted check code (the problem's prompt, its reference solution when given,
  and its tests; never the completion) with the candidate names (``candidate``) bound to a proxy
  that sends its arguments to a ``calls`` process and decodes the answer (here, inside the
  judge's sandbox and under its time limit); write one verdict line per test. A name the check
  calls directly (HumanEval/33 compares ``candidate(x)`` with ``sort_third(x)``) is the trusted
  reference's (without a reference, a call of the entry point by name is a runtime error),
  never the program's.
- ``program``: run a program and assertion snippets in one namespace, the verdict computed in the
  same process (only for programs that are not adversarial to their own grading).

The audit hook and resource limits applied here are defence in depth: the isolation is the
bubblewrap namespace around this process (see :mod:`marlhf.envs.coding.sandbox`).
"""

from __future__ import annotations

import json
import os
import sys

# Start-up time counts once per program: `typing` and `contextlib` cost the child ~20 ms to
# import, and annotations are strings here (mypy reads this name as typing's).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["PlainDataError", "decode", "encode"]

MAX_DEPTH = 100
MAX_NODES = 1_000_000


class PlainDataError(ValueError):
    """A value is not plain data (or is too deep or too large to be accepted)."""


def encode(value: Any, _depth: int = 0) -> Any:
    """``value`` as JSON-able tagged data, exact built-in types only.

    ``None``, ``bool``, ``int`` and ``str`` map to JSON; every other accepted type is a one-key
    object: ``{"float": repr}``, ``{"tuple": [...]}``, ``{"list": [...]}``, ``{"set": [...]}``,
    ``{"frozenset": [...]}``, ``{"dict": [[key, value], ...]}``, ``{"bytes": hex}``. A subclass of
    an accepted type (an ``int`` whose ``__eq__`` always says yes) is not accepted.

    :raises PlainDataError: on any other type, or nesting deeper than :data:`MAX_DEPTH`.
    """
    kind = type(value)
    if _depth > MAX_DEPTH:
        raise PlainDataError(f"nested deeper than {MAX_DEPTH}")
    if value is None or kind is bool or kind is int or kind is str:
        return value
    if kind is float:
        return {"float": float.__repr__(value)}
    if kind is bytes:
        return {"bytes": bytes.hex(value)}
    if kind in (list, tuple, set, frozenset):
        return {kind.__name__: [encode(v, _depth + 1) for v in value]}
    if kind is dict:
        return {"dict": [[encode(k, _depth + 1), encode(v, _depth + 1)] for k, v in value.items()]}
    raise PlainDataError(f"a {kind.__name__} is not plain data")


def decode(data: Any) -> Any:
    """The value that :func:`encode` encoded; strict about the format, bounded in size.

    :raises PlainDataError: when ``data`` is not exactly what :func:`encode` writes.
    """
    budget = [MAX_NODES]
    return _decode(data, 0, budget)


def split_leaf(data: Any) -> tuple[str | None, Any]:
    """One node of :func:`encode`'s data: ``(None, value)`` for a scalar (None, bool, int, str,
    float, bytes), or ``(tag, body)`` for a container (a tag whose body is a list).

    Shared by :func:`decode` (here, in the sandbox) and the trainer's hash-free decoder
    (:mod:`marlhf.envs.coding.plain`), so both read the scalars the same way.
    """
    kind = type(data)
    if data is None or kind is bool or kind is int or kind is str:
        return None, data
    if kind is not dict or len(data) != 1:
        raise PlainDataError(f"unexpected {kind.__name__} in plain data")
    ((tag, body),) = data.items()
    if tag == "float" and type(body) is str:
        try:
            return None, float(body)
        except ValueError as exc:
            raise PlainDataError(f"bad float {body[:40]!r}") from exc
    if tag == "bytes" and type(body) is str:
        try:
            return None, bytes.fromhex(body)
        except ValueError as exc:
            raise PlainDataError("bad bytes") from exc
    if type(body) is not list:
        raise PlainDataError(f"unknown tag {str(tag)[:40]!r}")
    return tag, body


def _decode(data: Any, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise PlainDataError("too deep or too large")
    tag, body = split_leaf(data)
    if tag is None:
        return body
    items = [_decode(v, depth + 1, budget) for v in body] if tag != "dict" else []
    try:
        if tag == "list":
            return items
        if tag == "tuple":
            return tuple(items)
        if tag == "set":
            return set(items)
        if tag == "frozenset":
            return frozenset(items)
        if tag == "dict":
            pairs = []
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise PlainDataError("a dict entry is not a [key, value] pair")
                pairs.append(
                    (_decode(pair[0], depth + 1, budget), _decode(pair[1], depth + 1, budget))
                )
            return dict(pairs)
    except TypeError as exc:  # an unhashable set member or dict key
        raise PlainDataError(str(exc)) from exc
    raise PlainDataError(f"unknown tag {str(tag)[:40]!r}")


def _describe(phase: str, exc: BaseException) -> str:
    """``phase: Type: message (line N)``, the line taken from the untrusted code's frames."""
    line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(("<program", "<setup", "<test", "<check")):
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"{phase}: {type(exc).__name__}: {str(exc)[:300]} (line {line})"


def _lock_down(spec: dict, root: str) -> bool:
    """Resource limits, no core dumps, an empty network namespace when possible (unsafe mode
    only: under bubblewrap the namespace is already empty). Returns whether the network is
    isolated."""
    import resource
    import signal

    lim = spec["limits"]
    mb = 1024 * 1024

    def setlim(kind: int, value: int) -> None:
        try:  # noqa: SIM105  (contextlib is not imported here)
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):
            pass

    resource.setrlimit(resource.RLIMIT_CPU, (int(lim["cpu_s"]), int(lim["cpu_s"]) + 1))
    setlim(resource.RLIMIT_AS, int(lim["memory_mb"]) * mb)
    setlim(resource.RLIMIT_FSIZE, int(lim["file_size_mb"]) * mb)
    setlim(resource.RLIMIT_NPROC, int(lim["max_processes"]))
    setlim(resource.RLIMIT_NOFILE, int(lim["max_open_files"]))
    setlim(resource.RLIMIT_CORE, 0)
    isolated = bool(spec["network_isolated"])
    if not isolated:  # unsafe mode: no namespace ends this process with the trainer
        parent = os.getppid()
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the trainer
            isolated = libc.unshare(0x40000000) == 0  # CLONE_NEWNET
        except Exception:
            isolated = False
        if os.getppid() != parent:  # the trainer died before the line above
            os._exit(1)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError instead
    os.chdir(root)
    sys.setrecursionlimit(10000)
    return isolated


def _install_audit_hook(root: str, allow_subprocess: bool) -> None:
    """Refuse sockets, process creation, signals, ctypes, writes outside ``root`` and other
    processes' ``/proc`` entries (PEP 578 hooks: a guard, not a boundary)."""
    me = str(os.getpid())
    blocked = {"os.kill", "os.killpg", "signal.pthread_kill", "sys.addaudithook"}
    blocked |= {"gc.get_objects", "gc.get_referrers", "gc.get_referents"}
    spawn = {"os.fork", "os.forkpty", "os.vfork", "os.posix_spawn", "os.spawn", "os.exec"}
    spawn |= {"os.system", "os.popen", "subprocess.Popen", "pty.spawn"}
    path_events = {"os.remove", "os.rmdir", "os.rename", "os.replace", "os.truncate", "os.chmod"}
    path_events |= {"os.chown", "os.link", "os.symlink", "os.mkdir", "os.utime", "shutil.rmtree"}
    path_events |= {"shutil.move", "shutil.copyfile", "os.chflags", "os.lchown", "os.mkfifo"}
    path_events |= {"os.mknod"}
    realpath, join, sep = os.path.realpath, os.path.join, os.sep
    writing_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC

    def inside(p: str) -> bool:
        return p == root or p.startswith(root + sep)

    def resolve(p: Any) -> str | None:
        if isinstance(p, int):
            return None
        if isinstance(p, bytes):
            p = os.fsdecode(p)
        return realpath(join(root, str(p)))

    def deny(event: str) -> None:
        raise PermissionError(f"sandbox: {event} is not allowed")

    def hook(event: str, args: tuple) -> None:
        if event in blocked or event.startswith(("socket.", "ctypes.", "_ctypes.")):
            deny(event)
        if event in spawn and not allow_subprocess:
            deny(event)
        if event == "open":
            path, mode, flags = args
            p = resolve(path)
            if p is None:
                return
            if p.startswith("/proc/"):
                part = p.split("/")[2]
                if part.isdigit() and part != me:
                    deny(f"reading {p}")
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                flags is not None and flags & writing_flags
            )
            if writing and not inside(p):
                deny(f"writing {p}")
        elif event in path_events:
            for a in args[:2]:
                if isinstance(a, str | bytes | os.PathLike):
                    p = resolve(os.fspath(a))
                    if p is not None and not inside(p):
                        deny(f"{event} on {p}")

    sys.addaudithook(hook)


def _load_program(source: str, ns: dict) -> tuple[str, str]:
    """Compile and run ``source`` in ``ns``: ``("ok", "")`` or ``(status, error)``."""
    try:
        code = compile(source, "<program>", "exec")
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as exc:
        return "compile_error", _describe("compile", exc)
    try:
        exec(code, ns)
    except BaseException as exc:  # SystemExit included: leaving early is an error
        return "runtime_error", _describe("program", exc)
    return "ok", ""


def _run_calls(spec: dict, out: Any, isolated: bool) -> None:
    def emit(record: dict) -> None:
        out.write(json.dumps(record) + "\n")
        out.flush()

    ns: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    status, error = _load_program(spec["program"], ns)
    if status != "ok":
        emit({"event": status, "error": error})
        return
    fn = ns.get(spec["entry_point"])
    if not callable(fn):
        emit({"event": "runtime_error", "error": f"program: no function {spec['entry_point']!r}"})
        return
    emit({"event": "loaded", "network_isolated": isolated})
    requests = (json.loads(line) for line in sys.stdin) if spec["interactive"] else spec["calls"]
    for k, request in enumerate(requests):
        try:
            args, kwargs = decode(request["args"]), decode(request["kwargs"])
            value = fn(*args, **kwargs)
        except BaseException as exc:
            emit({"i": k, "error": _describe("call", exc)})
            continue
        try:
            emit({"i": k, "value": encode(value)})
        except PlainDataError as exc:
            emit({"i": k, "unplain": str(exc)})
        except RecursionError:
            emit({"i": k, "unplain": "nested too deep"})
    emit({"event": "done"})


class _Proxy:
    """Stands for the candidate in trusted check code: plain data out, plain data back."""

    def __init__(self, requests: Any, answers: Any, limit: int) -> None:
        self.requests, self.answers, self.limit = requests, answers, limit
        self.status = answers.readline(limit)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.requests.write(json.dumps({"args": encode(args), "kwargs": encode(kwargs)}) + "\n")
        self.requests.flush()
        line = self.answers.readline(self.limit)
        if not line:
            raise ConnectionError("the program stopped answering")
        if not line.endswith("\n"):
            raise ConnectionError(f"the program's answer is longer than {self.limit} characters")
        answer = json.loads(line)
        if "value" in answer:
            return decode(answer["value"])
        if "unplain" in answer:  # not plain data: fails the assertion it appears in
            raise AssertionError(f"result is not plain data: {str(answer['unplain'])[:200]}")
        raise RuntimeError(str(answer.get("error", "no answer"))[:400])


def _no_reference(name: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"the check calls {name}() by name and no reference solution was given")

    return refuse


def _run_judge(spec: dict, out: Any, request_fd: int) -> None:
    def emit(record: dict) -> None:
        out.write(json.dumps(record) + "\n")
        out.flush()

    requests = os.fdopen(request_fd, "w", encoding="utf-8")
    proxy = _Proxy(requests, sys.stdin, int(spec["limits"]["answer_bytes"]))
    try:
        loaded = json.loads(proxy.status) if proxy.status else {"event": "runtime_error"}
        event = loaded.get("event") if isinstance(loaded, dict) else None
    except ValueError:
        event = None
    if event != "loaded":
        bad = event in ("compile_error", "runtime_error")
        emit({"event": event if bad else "runtime_error", "error": "the program did not load"})
        return
    ns: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(spec["prompt"], "<check prompt>", "exec"), ns)
    if spec["reference"]:  # the trusted solution: names the check calls directly are its own
        exec(compile(spec["reference"], "<check reference>", "exec"), ns)
    else:  # no trusted value for a direct call (the prompt's stub would return None)
        ns[spec["entry_point"]] = _no_reference(spec["entry_point"])
    exec(compile(spec["setup"], "<check setup>", "exec"), ns)
    for name in spec["candidate_names"]:
        ns[name] = proxy
    emit({"event": "loaded"})
    for k, test in enumerate(spec["tests"]):
        try:
            exec(compile(test, f"<check test {k}>", "exec"), ns)
            emit({"i": k, "outcome": "passed"})
        except AssertionError as exc:
            emit({"i": k, "outcome": "failed", "error": _describe(f"test {k}", exc)})
        except Exception as exc:
            emit({"i": k, "outcome": "runtime_error", "error": _describe(f"test {k}", exc)})
    requests.close()
    emit({"event": "done"})


def _run_program(spec: dict, out: Any, isolated: bool) -> None:
    nonce = spec["nonce"]
    ns: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    record: dict[str, Any] = {"status": "passed", "passed": 0, "total": len(spec["tests"])}
    record["error"] = ""
    record["network_isolated"] = isolated

    def report() -> None:
        out.write(nonce + " " + json.dumps(record) + "\n")
        out.flush()

    status, error = _load_program(spec["program"], ns)
    if status == "ok" and spec["setup"]:
        try:
            exec(compile(spec["setup"], "<setup>", "exec"), ns)
        except BaseException as exc:
            status, error = "runtime_error", _describe("program", exc)
    if status != "ok":
        record.update(status=status, error=error)
        report()
        return
    errors = []
    for k, test in enumerate(spec["tests"]):
        try:
            exec(compile(test, f"<test {k}>", "exec"), ns)
            record["passed"] += 1
        except AssertionError as exc:
            errors.append(("failed", _describe(f"test {k}", exc)))
        except BaseException as exc:
            errors.append(("runtime_error", _describe(f"test {k}", exc)))
    if errors:
        kinds = [e[0] for e in errors]
        record["status"] = "runtime_error" if "runtime_error" in kinds else "failed"
        record["error"] = errors[0][1]
    report()


def main(argv: list[str]) -> None:
    """``MODE SPEC_FD RESULT_FD [REQUEST_FD]``: read the spec, lock down, run the mode."""
    mode, spec_fd, result_fd = argv[0], int(argv[1]), int(argv[2])
    with os.fdopen(spec_fd, encoding="utf-8") as fh:
        spec = json.load(fh)
    out = os.fdopen(result_fd, "w", encoding="utf-8")
    root = os.path.realpath(spec["workdir"])
    isolated = _lock_down(spec, root)
    if mode != "judge" and spec["limits"]["audit_hook"]:  # the judge runs only trusted code
        _install_audit_hook(root, bool(spec["limits"]["allow_subprocess"]))
    sys.argv = ["<program>"]
    if mode == "calls":
        _run_calls(spec, out, isolated)
    elif mode == "judge":
        _run_judge(spec, out, int(argv[3]))
    else:
        _run_program(spec, out, isolated)


if __name__ == "__main__":
    main(sys.argv[1:])
