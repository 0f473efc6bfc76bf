"""Progress of the ``marlhf`` commands, always on stderr (stdout carries the result only).

On a terminal: a live rich bar. Anywhere else (a log file, a pipe, a CI job): one plain line
every :func:`progress_seconds` seconds (``MARLHF_PROGRESS_SECONDS``, default 30) and one at the
end, so a long run shows that it is alive without filling the log.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

#: The environment variable holding the seconds between progress lines (0: every update).
SECONDS_VAR = "MARLHF_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0

#: ``update(name, tokens, score)``: one run's tokens generated and last score (None: none yet).
Update = Callable[[str, int, "float | None"], None]


def progress_seconds() -> float:
    """Seconds between progress lines off a terminal (``MARLHF_PROGRESS_SECONDS``)."""
    text = os.environ.get(SECONDS_VAR, "").strip()
    if not text:
        return DEFAULT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{SECONDS_VAR}={text!r}: expected seconds >= 0 (e.g. 30)")
    return value


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


class LineProgress:
    """Plain progress lines for runs of ``total`` tokens each (see the module doc).

    :param command: the line's prefix, e.g. ``"train"``.
    :param names: the runs, in order.
    :param total: tokens per run.
    :param every: seconds between lines (0: a line per update).
    :param stream: where lines go (default: stderr).
    """

    def __init__(
        self,
        command: str,
        names: list[str],
        total: int,
        every: float | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.command = command
        self.total = total
        self.every = progress_seconds() if every is None else every
        self.stream = stream
        self.tokens = dict.fromkeys(names, 0)
        self.scores: dict[str, float | None] = dict.fromkeys(names)
        self.started = time.perf_counter()
        self.first: dict[str, int] = {}  # tokens at each run's first update (a resume's start)
        self.last_line = -float("inf")

    def update(self, name: str, tokens: int, score: float | None) -> None:
        """Record a run's progress; print a line when ``every`` seconds have passed."""
        self.first.setdefault(name, tokens)
        self.tokens[name] = tokens
        if score is not None:
            self.scores[name] = score
        now = time.perf_counter()
        if now - self.last_line >= self.every:
            self.last_line = now
            self.print_line()

    def line(self) -> str:
        """The current state in one line."""
        elapsed = time.perf_counter() - self.started
        done = sum(min(t, self.total) for t in self.tokens.values())
        fresh = sum(t - self.first.get(n, t) for n, t in self.tokens.items())
        speed = f"{fresh / elapsed:,.0f} tok/s" if elapsed > 0 and fresh > 0 else "- tok/s"
        whole = self.total * len(self.tokens)
        parts = [f"{self.command}: {done:,}/{whole:,} tokens ({100 * done / whole:.0f}%)"]
        if len(self.tokens) > 1:
            finished = sum(t >= self.total for t in self.tokens.values())
            parts.append(f"{finished}/{len(self.tokens)} runs done")
        scores = [s for s in self.scores.values() if s is not None]
        if scores:
            label = "score" if len(scores) == 1 else "mean score"
            parts.append(f"{label} {sum(scores) / len(scores):.3f}")
        parts += [speed, f"elapsed {_clock(elapsed)}"]
        return "  ".join(parts)

    def print_line(self) -> None:
        print(self.line(), file=self.stream or sys.stderr, flush=True)


@contextlib.contextmanager
def progress_display(
    command: str, names: list[str], total: int, mode: str = "auto", verbose: bool = False
) -> Iterator[Update]:
    """A progress display for runs ``names`` of ``total`` tokens, on stderr; yields ``update``.

    :param mode: ``"bar"`` (rich, live), ``"lines"`` (:class:`LineProgress`), ``"off"``, or
        ``"auto"``: a bar on a terminal, lines elsewhere.
    :param verbose: a line per update (with the bar: logged under it).
    """
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "lines"
    if mode == "off":
        yield lambda name, tokens, score: None
        return
    if mode == "lines":
        lines = LineProgress(command, names, total, every=0.0 if verbose else None)
        try:
            yield lines.update
        finally:
            if lines.first:  # training started: the final state, whatever the cadence
                lines.print_line()
        return
    if mode != "bar":
        raise ValueError(f"progress mode {mode!r}; valid: auto, bar, lines, off")
    with _rich_bar(command, names, total, verbose) as update:
        yield update


@contextlib.contextmanager
def _rich_bar(command: str, names: list[str], total: int, verbose: bool) -> Iterator[Update]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [
        "{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        "tokens",
        TextColumn("score {task.fields[score]}"),
        TextColumn("{task.fields[speed]} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    bar = Progress(*columns, console=Console(stderr=True), transient=False)
    tasks = {n: bar.add_task(n if len(names) > 1 else command, total=total, score="-", speed="-")
             for n in names}  # fmt: skip
    started: dict[str, tuple[float, int]] = {}

    def update(name: str, tokens: int, score: float | None) -> None:
        now = time.perf_counter()
        if not started:  # shown once training starts (a config error prints no bar)
            bar.start()
        t0, k0 = started.setdefault(name, (now, tokens))  # the first: 0, or a resume's tokens
        speed = f"{(tokens - k0) / (now - t0):,.0f}" if now > t0 and tokens > k0 else "-"
        shown = "-" if score is None else f"{score:.3f}"
        bar.update(tasks[name], completed=min(tokens, total), score=shown, speed=speed)
        if verbose and tokens > k0:
            bar.console.log(f"{name}: tokens {tokens:,}/{total:,}  score {shown}  {speed} tok/s")

    try:
        yield update
    finally:
        if started:
            bar.stop()
