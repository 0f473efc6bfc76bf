"""The interleaving harness of the TRL benchmarks (benchmarks/interleave.py): rounds rotate the
sides, a paused trainer advances one step per call, and the summary's ratios are per round."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from interleave import SteppedTrainer, run_rounds, summarise


def test_rounds_rotate_the_order_and_drop_the_warm_up() -> None:
    calls: list[str] = []
    seconds = {"a": iter([9.0, 1.0, 2.0, 3.0]), "b": iter([9.0, 2.0, 2.0, 6.0])}

    def side(name: str) -> Any:
        def run() -> float:
            calls.append(name)
            return next(seconds[name])

        return run

    times = run_rounds({"a": side("a"), "b": side("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert times == {"a": [1.0, 2.0, 3.0], "b": [2.0, 2.0, 6.0]}
    summary = summarise(times, "a")
    assert summary["sides"]["a"] == {"median": 2.0, "min": 1.0, "max": 3.0, "times": [1, 2, 3]}
    # Ratios per round (2, 1, 2), not the ratio of the medians (1.0).
    assert summary["ratios"]["b"] == {"median": 2.0, "min": 1.0, "max": 2.0, "per_round": [2, 1, 2]}
    assert "a" not in summary["ratios"] and len(summary["loadavg"]) == 3


def _fake_train(steps: int, log: list[str], fail_at: int | None = None) -> Any:
    """A ``train()`` that calls the callback hooks as a transformers Trainer does."""

    def run(callback: Any) -> None:
        callback.on_train_begin(None, None, None)
        for i in range(steps):
            log.append(f"step {i}")
            if i == fail_at:
                raise ValueError("broken step")
            time.sleep(0.01)
            callback.on_step_end(None, None, None)
        log.append("end")

    return run


def test_a_paused_trainer_takes_one_step_per_call() -> None:
    log: list[str] = []
    trainer = SteppedTrainer(_fake_train(4, log))
    time.sleep(0.05)
    assert log == []  # nothing runs before the first step is released
    first = trainer.step()
    assert log == ["step 0"] and first >= 0.01
    log.append("between")
    trainer.step()
    assert log == ["step 0", "between", "step 1"]
    trainer.close()  # the remaining steps run, untimed
    assert log[-3:] == ["step 2", "step 3", "end"]


def test_a_failing_trainer_raises_in_the_caller_and_a_finished_one_is_refused() -> None:
    trainer = SteppedTrainer(_fake_train(3, [], fail_at=1))
    trainer.step()
    with pytest.raises(RuntimeError, match="broken step"):
        trainer.step()
    short = SteppedTrainer(_fake_train(1, []))
    short.step()
    with pytest.raises(RuntimeError, match="finished before this step"):
        short.step()
    with pytest.raises(RuntimeError, match="has stopped"):
        short.step()


def test_a_step_runs_inside_its_context_in_the_trainers_thread() -> None:
    import contextlib
    import threading

    log: list[str] = []
    threads: list[int] = []

    @contextlib.contextmanager
    def context() -> Any:
        threads.append(threading.get_ident())
        log.append("enter")
        yield
        log.append("leave")

    trainer = SteppedTrainer(_fake_train(3, log))
    trainer.step(context)
    assert log == ["enter", "step 0", "leave"]
    trainer.step()  # no context: none is entered
    assert log == ["enter", "step 0", "leave", "step 1"]
    trainer.step(context)
    assert log[-3:] == ["enter", "step 2", "leave"]
    assert threads and all(t != threading.get_ident() for t in threads)
    trainer.close()
