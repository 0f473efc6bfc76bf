"""A training run killed at any write of a checkpoint (the agent's save and the progress record
beside it) resumes on the re-run to exactly the uninterrupted run's metrics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from marlhf.checkpoint import save_util
from marlhf.config.commands import CompareConfig
from marlhf.config.parse import load_config
from marlhf.runs import runner
from marlhf.runs.runner import RunSpec, train_run
from tests.training.conftest import TINY

SPEC = RunSpec("mappo", "ngram:3", seed=5)
TOTAL = 256  # 4 iterations of 64 tokens: checkpoints after the 1st, 2nd and 3rd


#: State that must travel through a checkpoint: an adaptive KL coefficient (with a KL to pay)
#: and a learning-rate schedule with warm-up and decay.
STATEFUL = [
    "agent.kl_coef=0.05",
    "agent.kl_target=0.01",
    "agent.lr_schedule=linear",
    "agent.warmup_fraction=0.25",
]


def _kwargs() -> dict[str, Any]:
    config = load_config(CompareConfig, overrides=[*TINY, *STATEFUL])
    return {
        "task": config.task,
        "model": config.model,
        "agent": config.agent,
        "total_timesteps": TOTAL,
        "checkpoint_every": 1,
    }


def _hook(monkeypatch: Any, event: Any) -> None:
    """Call ``event(name)`` at every write of a run: the save's steps and each JSON record."""
    write_json = runner.atomic_write_json

    def recorded(path: Path, data: Any) -> None:
        event(f"before {Path(path).name}")
        write_json(path, data)
        event(f"after {Path(path).name}")

    monkeypatch.setattr(save_util, "write_step", event)
    monkeypatch.setattr(runner, "atomic_write_json", recorded)


def _die_at(point: int) -> Any:
    calls = iter(range(10**6))

    def die(name: str) -> None:
        if next(calls) == point:
            os._exit(0)  # a kill: no exception handler, no finally, no atexit runs

    return die


def _rows(result: dict[str, Any]) -> list[tuple[int, str, float]]:
    return [(r["tokens"], r["metric"], r["value"]) for r in result["rows"]]


@pytest.mark.slow
def test_a_run_killed_at_every_write_of_a_checkpoint_resumes_exactly(
    tmp_path: Path, monkeypatch: Any
) -> None:
    straight = train_run(SPEC, tmp_path / "straight", **_kwargs())
    events: list[str] = []
    with monkeypatch.context() as patch:
        _hook(patch, events.append)
        train_run(SPEC, tmp_path / "count", **_kwargs())
    # the writes of the second checkpoint: after the first one's last record, up to its own
    ends = [i for i, e in enumerate(events) if e == f"after {runner.PROGRESS_FILE}"]
    window = range(ends[1] + 1, ends[3] + 1)
    assert len(window) >= 12
    survived = 0
    for point in window:
        folder = tmp_path / f"kill{point}"
        pid = os.fork()
        if pid == 0:  # the child: train until write event `point`, then die without cleanup
            try:
                _hook(monkeypatch, _die_at(point))
                train_run(SPEC, folder, **_kwargs())
            finally:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0, f"kill point {point} was not reached"
        resumed = train_run(SPEC, folder, **_kwargs())
        assert resumed["resumed_from"] in (64, 128), events[point]
        assert _rows(resumed) == _rows(straight), f"killed at {events[point]!r}"
        survived += 1
    assert survived == len(window)
    print(f"run kill points survived / tried: {survived}/{len(window)}")
