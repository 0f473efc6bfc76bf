"""`marlhf train` keeps its work: metrics as it goes, checkpoints by iterations or minutes, a
resume when re-run after a kill, and one clear message (previous checkpoint whole, no temporary
file) when a save fails, e.g. on a full disk."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from marlhf.algorithms.ppo import PPO
from marlhf.checkpoint import save_util
from marlhf.cli.main import main
from marlhf.config.commands import CompareConfig
from marlhf.config.parse import load_config
from marlhf.runs.run_files import SaveError
from marlhf.runs.runner import RunSpec, train_run
from tests.training.conftest import TINY, sets

ROOT = Path(__file__).resolve().parents[2]


def _metric_tokens(path: Path) -> list[int]:
    with open(path, newline="") as fh:
        return sorted({int(r["tokens"]) for r in csv.DictReader(fh)})


@pytest.mark.slow  # two processes, one killed midway and one that finishes the run
def test_killed_train_resumes_when_rerun(tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "marlhf", "train"]
    argv += sets(*TINY, "total_timesteps=1280", "checkpoint_every=1", f"output_dir={run}")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "MARLHF_PROGRESS_SECONDS": "0",
    }
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not ((run / "checkpoint.zip").exists() and (run / "metrics.csv").exists()):
        assert first.poll() is None, first.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    _, err = first.communicate()
    assert b"train: " in err and b"tokens" in err  # progress lines, stderr not a terminal
    assert not (run / "result.json").exists()
    assert _metric_tokens(run / "metrics.csv")[0] >= 64  # metrics written while training

    second = subprocess.run(argv, env=env, capture_output=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads(second.stdout)["tokens"] >= 1280
    result = json.loads((run / "result.json").read_text())
    assert result["resumed_from"] >= 64  # it went on from the checkpoint, not from zero
    tokens = _metric_tokens(run / "metrics.csv")
    assert tokens == list(range(64, 1281, 64))  # every iteration once, before and after


def _tiny_run(folder: Path, **kwargs: Any) -> dict[str, Any]:
    config = load_config(CompareConfig, overrides=TINY)
    return train_run(
        RunSpec("ppo", "token", seed=3),
        folder,
        task=config.task,
        model=config.model,
        agent=config.agent,
        total_timesteps=192,
        **kwargs,
    )


def test_minutes_cadence_and_live_metrics(tmp_path: Path) -> None:
    seen: list[list[int]] = []

    def crash(tokens: int, total: int, score: float | None) -> None:
        if (tmp_path / "run" / "metrics.csv").exists():
            seen.append(_metric_tokens(tmp_path / "run" / "metrics.csv"))
        if tokens >= 128:  # the dump of the 2nd iteration
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        # checkpoint_every=100 iterations would save none; the minutes cadence saves each
        _tiny_run(
            tmp_path / "run",
            checkpoint_every=100,
            checkpoint_minutes=1e-9,
            metrics_file=True,
            progress=crash,
        )
    assert [64] in seen  # metrics.csv held the first iteration before the run ended
    resumed = _tiny_run(tmp_path / "run", checkpoint_every=100, metrics_file=True)
    assert resumed["resumed_from"] == 64
    assert _metric_tokens(tmp_path / "run" / "metrics.csv") == [64, 128, 192]


def _no_space(at_save: int) -> Any:
    """A ``write_step`` that raises ENOSPC at the ``at_save``-th save, its zip half written."""
    saves = {"n": 0}

    def step(name: str) -> None:
        if name == "folder created":
            saves["n"] += 1
        if saves["n"] == at_save and name == "zip written":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return step


def test_full_disk_ends_in_one_message_and_keeps_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(save_util, "write_step", _no_space(at_save=2))
    folder = tmp_path / "run"
    with pytest.raises(SaveError) as info:
        _tiny_run(folder, checkpoint_every=1)
    message = str(info.value)
    assert "run ppo-token-seed3" in message and "No space left on device (ENOSPC)" in message
    assert "previous checkpoint is kept whole" in message
    assert not [p.name for p in folder.iterdir() if ".tmp" in p.name or "-tmp" in p.name]
    weights = [p.name for p in folder.iterdir() if p.name.startswith("checkpoint_weights.")]
    assert len(weights) == 1  # the new folder went; the previous one stays
    loaded = PPO.load(folder / "checkpoint", device="cpu")
    assert loaded.num_timesteps == 64  # the first checkpoint, whole
    monkeypatch.setattr(save_util, "write_step", lambda name: None)
    assert _tiny_run(folder, checkpoint_every=1)["resumed_from"] == 64


def test_full_disk_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(save_util, "write_step", _no_space(at_save=1))
    run = tmp_path / "run"
    argv = ["train", *sets(*TINY, "total_timesteps=128", "checkpoint_every=1", f"output_dir={run}")]
    assert main(argv) == 1
    captured = capsys.readouterr()
    errors = [x for x in captured.err.splitlines() if x.startswith("marlhf train: error:")]
    assert len(errors) == 1 and "ENOSPC" in errors[0] and "Traceback" not in captured.err
    assert captured.out == ""
