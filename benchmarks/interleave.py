"""Interleaved timing of several trainers in one process: one iteration of each side per round.

A loaded machine drifts by seconds between blocks of iterations (the TRL rows moved 1.89-2.98 s
between rounds when each side ran its iterations in one block), so a ratio of block medians
swings with the load. Here every round runs one iteration of every side, in an order that
rotates from round to round, and each round gives its own ratio: the load a round saw is seen by
every side of it.

A ``transformers`` ``Trainer`` runs its whole loop in ``train()``: :class:`SteppedTrainer` runs
it in a thread that waits after each optimiser step (a ``TrainerCallback``), so it advances one
iteration per :meth:`SteppedTrainer.step`. Only one side runs at any time.

Pure Python (no torch import): the TRL benchmarks (in ``.venv-bench``) import it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np


class SteppedTrainer:
    """A trainer whose ``train()`` runs in a thread, one optimiser step per :meth:`step`.

    :param run: ``run(callback)`` builds the trainer with ``callback`` among its callbacks (a
        ``transformers.TrainerCallback``) and calls ``train()``; it is called in the thread.
    """

    def __init__(self, run: Callable[[Any], None]) -> None:
        from transformers import TrainerCallback

        self._go = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self._stamp = 0.0
        self._error: BaseException | None = None
        self._finished = False
        #: The context of the next step (entered in the trainer's thread), and the open one.
        self._context: Callable[[], Any] | None = None
        self._open: Any = None
        outer = self

        class Pause(TrainerCallback):  # type: ignore[misc]
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                outer._go.acquire()
                outer._enter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                outer._stamp = time.perf_counter()
                outer._leave()
                outer._done.release()
                outer._go.acquire()
                outer._enter()

        def target() -> None:
            try:
                run(Pause())
            except BaseException as err:  # re-raised in the caller's thread by step()
                self._error = err
            finally:
                self._finished = True
                self._done.release()

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def _enter(self) -> None:
        if self._context is not None:
            self._open = self._context()
            self._open.__enter__()

    def _leave(self) -> None:
        if self._open is not None:
            opened, self._open = self._open, None
            opened.__exit__(None, None, None)

    def step(self, context: Callable[[], Any] | None = None) -> float:
        """Let the trainer take one step; return its seconds (from the release to its end).

        :param context: a factory of a context manager that the step runs inside, entered and
            left in the trainer's thread (a profiler or a dispatch mode, which are per thread).
        """
        if self._finished:
            raise RuntimeError(f"SteppedTrainer: the trainer has stopped ({self._error!r})")
        self._context = context
        start = time.perf_counter()
        self._go.release()
        self._done.acquire()
        if self._error is not None:
            raise RuntimeError(f"the trainer failed: {self._error!r}") from self._error
        if self._finished:
            raise RuntimeError("SteppedTrainer: the trainer finished before this step")
        return self._stamp - start

    def close(self) -> None:
        """Let the trainer run to its end (its remaining steps untimed) and join its thread."""
        self._context = None
        while not self._finished:
            self._go.release()
            self._done.acquire()
        self._thread.join()


def run_rounds(
    sides: dict[str, Callable[[], float]],
    rounds: int,
    warmup: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """``warmup + rounds`` rounds of one iteration of every side, the order rotating each round;
    returns each side's seconds of the timed rounds (the warm-up rounds dropped).

    :param sides: name -> a function that runs one iteration and returns its seconds.
    """
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = sides[name]()
            if r >= warmup:
                times[name].append(seconds)
        if progress is not None:
            done = {n: round(t[-1], 3) for n, t in times.items() if r >= warmup}
            progress(f"round {r + 1}/{warmup + rounds} {'(warm-up)' if r < warmup else done}")
    return times


def summarise(times: dict[str, list[float]], baseline: str) -> dict[str, Any]:
    """Medians with ranges of every side, and each other side's per-round ratio to
    ``baseline`` (median and range), with the load averages now.

    :return: ``{"sides": {name: {"median", "min", "max", "times"}}, "ratios": {name: {"median",
        "min", "max", "per_round"}}, "loadavg": [1, 5, 15 min]}``.
    """
    out: dict[str, Any] = {"sides": {}, "ratios": {}, "loadavg": list(os.getloadavg())}
    for name, ts in times.items():
        a = np.array(ts)
        out["sides"][name] = {
            "median": float(np.median(a)),
            "min": float(a.min()),
            "max": float(a.max()),
            "times": [float(t) for t in a],
        }
    base = np.array(times[baseline])
    for name, ts in times.items():
        if name == baseline:
            continue
        per_round = np.array(ts) / base
        out["ratios"][name] = {
            "median": float(np.median(per_round)),
            "min": float(per_round.min()),
            "max": float(per_round.max()),
            "per_round": [float(r) for r in per_round],
        }
    return out
