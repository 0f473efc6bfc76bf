"""What a sandboxed child writes, read by the parent through pipes with a byte limit.

A child's stdout, stderr and result channel are pipes, never host files: nothing it writes
lands on the host's disk, outlives the run, or can be ``fallocate``-d, ``fchmod``-ed or grown
past the limit. :func:`drain` reads every pipe of a run while it runs (so a chatty child never
blocks on a full pipe) and stops reading a pipe once it has given more than its limit: the
parent closes its end and the child's next write fails with ``EPIPE``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Sequence

__all__ = ["Capture", "drain"]

CHUNK = 65536


class Capture:
    """The parent's end of one pipe: at most ``limit`` bytes are read; ``keep`` trailing bytes
    are kept (None: everything read is kept).

    :param fd: the read end (made non-blocking; owned by this object from now on).
    :param limit: bytes read before the pipe is closed.
    :param keep: trailing bytes kept (stdout/stderr), or None to keep all (a result channel).
    """

    def __init__(self, fd: int, limit: int, keep: int | None) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd
        self.limit, self.keep = limit, keep
        self.total = 0
        self.overflowed = False
        self._data = bytearray()

    def feed(self, data: bytes) -> None:
        """Account for ``data`` just read; closes the pipe past the limit."""
        room = self.limit - self.total
        self.total += len(data)
        if self.keep is None:
            self._data += data[: max(0, room)]
        else:
            self._data += data
            del self._data[: max(0, len(self._data) - self.keep)]
        if self.total > self.limit:
            self.overflowed = True
            self.close()

    def read_once(self) -> bool:
        """Read what is there now; False once the pipe has ended (or was closed)."""
        if self.fd is None:
            return False
        try:
            data = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self.close()
            return False
        self.feed(data)
        return self.fd is not None

    def read_available(self) -> None:
        """Read until the pipe is empty, ended or over its limit (after the writer is gone)."""
        while self.fd is not None:
            try:
                data = os.read(self.fd, CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                return
            self.feed(data)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @property
    def data(self) -> bytes:
        return bytes(self._data)

    def text(self, chars: int) -> str:
        """The last ``chars`` characters of what was kept."""
        return self.data.decode("utf-8", errors="replace")[-chars:] if chars else ""

    def lines(self) -> list[bytes]:
        """The complete (newline-terminated) lines that were kept."""
        return self.data.split(b"\n")[:-1]


def _exited_without_reaping(proc: subprocess.Popen) -> bool:
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def drain(captures: Sequence[Capture], procs: Sequence[subprocess.Popen], timeout_s: float) -> bool:
    """Read ``captures`` until every process has exited and every pipe has ended, or until
    ``timeout_s`` has passed; returns whether the time ran out with a process still running.

    When a process exits, its process group is killed at once (so a descendant that holds a
    pipe open cannot keep the read going); processes are not reaped here.
    """
    deadline = time.monotonic() + timeout_s
    poller = select.poll()
    by_fd: dict[int, Capture] = {}
    for capture in captures:
        if capture.fd is not None:
            by_fd[capture.fd] = capture
            poller.register(capture.fd, select.POLLIN)
    pidfds: dict[int, subprocess.Popen] = {}
    live = list(procs)
    try:
        for proc in procs:
            with contextlib.suppress(AttributeError, OSError):
                fd = os.pidfd_open(proc.pid)
                pidfds[fd] = proc
                poller.register(fd, select.POLLIN)
        while live or by_fd:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            tick = remaining if len(pidfds) == len(procs) else min(remaining, 0.02)
            for fd, _ in poller.poll(max(1, int(tick * 1000))):
                if fd in pidfds:
                    poller.unregister(fd)
                    _ended(pidfds.pop(fd), live)
                    os.close(fd)
                elif fd in by_fd and not by_fd[fd].read_once():
                    poller.unregister(fd)
                    del by_fd[fd]
            for proc in [p for p in live if p not in pidfds.values()]:
                if _exited_without_reaping(proc):
                    _ended(proc, live)
        return bool(live)
    finally:
        for fd in pidfds:
            os.close(fd)


def _ended(proc: subprocess.Popen, live: list[subprocess.Popen]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc in live:
        live.remove(proc)
