"""Writing a run's files while it trains: the live ``metrics.csv``, and saves that fail cleanly.

A full disk (``ENOSPC``) or any other ``OSError`` while a run saves ends it with one
:class:`SaveError` naming the run, the file and the cause; the agent's save is atomic
(:mod:`marlhf.checkpoint.save_util`), so the previous checkpoint stays whole and a re-run resumes
from it once the cause is fixed.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from marlhf.runs.report import write_metrics_csv

#: The tidy metrics file a run keeps up to date (the same columns as ``marlhf compare``'s).
METRICS_FILE = "metrics.csv"
#: Seconds between rewrites of the live metrics file (it is also written at each checkpoint).
METRICS_SECONDS = 10.0


class SaveError(RuntimeError):
    """A run's file could not be written (disk full, permissions, ...): one clear message."""


class RunsFailed(RuntimeError):
    """Some runs of a comparison raised (the others are kept): one message naming each."""


def describe_os_error(err: OSError) -> str:
    """``No space left on device (ENOSPC)``: the cause of ``err`` in words and errno name."""
    name = errno.errorcode.get(err.errno or 0, "")
    text = err.strerror or str(err) or type(err).__name__
    return f"{text} ({name})" if name else text


@contextlib.contextmanager
def saving(run: str, what: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``what`` for run ``run`` into a
    :class:`SaveError` that says what is kept and how to go on."""
    try:
        yield
    except OSError as err:
        raise SaveError(
            f"run {run}: writing {str(what)!r} failed: {describe_os_error(err)}. The previous "
            "checkpoint is kept whole; free space (or fix the folder) and re-run the same "
            "command to resume"
        ) from err


class LiveMetrics:
    """Keeps ``path`` (a tidy metrics CSV) up to date with a run's rows while it trains.

    :param path: the CSV file, rewritten atomically.
    :param result: the run's record (``run``, ``agent``, ``termination``, ``seed``) and its
        ``rows`` list, which training appends to.
    :param every: seconds between rewrites in :meth:`maybe_write`.
    """

    def __init__(self, path: Path, result: dict[str, Any], every: float = METRICS_SECONDS):
        self.path = path
        self.result = result
        self.every = every
        self.last = -float("inf")

    def write(self) -> None:
        """Rewrite the file now."""
        with saving(self.result["run"], self.path):
            write_metrics_csv(self.path, [self.result])
        self.last = time.perf_counter()

    def maybe_write(self) -> None:
        """Rewrite the file when ``every`` seconds have passed since the last write."""
        if time.perf_counter() - self.last >= self.every:
            self.write()
