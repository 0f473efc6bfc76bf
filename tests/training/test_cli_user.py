"""The CLI from a user's side: --version, --import, --quiet/--verbose, progress, tensorboard,
and eval on the task the model was trained on."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import gymnasium
import pytest

import marlhf
from marlhf.cli.main import main
from marlhf.envs.core import registration
from marlhf.options import registry as term_registry
from tests.training.conftest import TINY, sets

TASK_FILE = Path(__file__).resolve().parents[2] / "examples" / "custom_task.py"
SMALL = ["task.num_envs=8", "model.n_layer=1", "model.n_embd=16", "model.n_head=2",
         "agent.batch_size=4", "agent.n_epochs=1", "total_timesteps=64"]  # fmt: skip


@pytest.fixture
def user_task() -> Iterator[None]:
    """Forget the example's task and termination after the test."""
    tasks, terms = dict(registration._TASKS), dict(term_registry._REGISTRY)
    yield
    registration._TASKS.clear()
    registration._TASKS.update(tasks)
    term_registry._REGISTRY.clear()
    term_registry._REGISTRY.update(terms)
    gymnasium.registry.pop("marlhf/RepeatFirst-v0", None)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"marlhf {marlhf.__version__}"


def test_import_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["train", "--import", "no_such_module_xyz", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no module named 'no_such_module_xyz'" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("imports: [no_such_module_xyz]\n")
    assert main(["train", "-c", str(bad), "--print-config"]) == 2
    assert "marlhf train: error: imports: no module named" in capsys.readouterr().err


def test_import_brings_a_user_task_to_help_train_and_eval(
    user_task: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--import", str(TASK_FILE), "--help"])
    out = capsys.readouterr().out
    assert "marlhf/RepeatFirst-v0" in out and "letter_runs" in out
    run = tmp_path / "run"
    argv = ["train", "--import", str(TASK_FILE), "--quiet"]
    task = ["task.id=marlhf/RepeatFirst-v0", "task.kwargs={horizon: 4}", "termination=letter_runs"]
    assert main([*argv, *sets(*SMALL, *task, f"output_dir={run}")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["tokens"] >= 64  # stdout: the result only
    assert captured.err == ""  # --quiet: no progress bar
    assert "imports" in (run / "config.yaml").read_text()

    # eval, with no task named: the trained task, its kwargs, and the module it lives in
    registration._TASKS.pop("RepeatFirst")  # as in a new process: nothing registered
    gymnasium.registry.pop("marlhf/RepeatFirst-v0")
    for name in [n for n, m in sys.modules.items() if getattr(m, "__file__", "") == str(TASK_FILE)]:
        del sys.modules[name]
    out_file = tmp_path / "s.jsonl"
    assert (
        main(["eval", *sets(f"model.path={run / 'final'}", "episodes=3", f"output={out_file}")])
        == 0
    )
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["task"] == "marlhf/RepeatFirst-v0" and summary["task_source"] == "trained"
    assert summary["task_kwargs"] == {"horizon": 4}
    assert captured.err.count("--- sample") == 3  # a few completions shown
    assert len(summary["examples"]) == 3
    saved = json.loads(out_file.with_suffix(".summary.json").read_text())
    assert saved["examples"] == summary["examples"]  # written beside the scores
    assert all(r["length"] == 4 for r in summary["examples"])  # horizon 4 kept


def test_eval_on_another_task_is_explicit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["train", "-q", *sets(*TINY, "total_timesteps=64", f"output_dir={run}")]) == 0
    capsys.readouterr()
    other = ["task.id=marlhf/DelayedChoice-v0", "task.kwargs={horizon: 3}"]
    assert main(["eval", "-q", *sets(f"model.path={run / 'final'}", "episodes=2", *other)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task_kwargs"] == {"horizon": 3}  # named task: only the kwargs given
    assert summary["task_source"] == "trained"  # same id: the recorded kwargs, updated
    # no run folder record: the agent save's own record of its env
    (run / "config.yaml").unlink()
    assert main(["eval", "-q", *sets(f"model.path={run / 'final'}", "episodes=2")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task_source"] == "trained" and summary["task_kwargs"]["horizon"] == 8
    assert summary["run_record"].endswith("final.zip")
    # a plain model folder: the task must be named
    policy = tmp_path / "policy"
    shutil.copytree(run / "final_weights" / "policy", policy)
    assert main(["eval", *sets(f"model.path={policy}")]) == 2
    assert "no run record" in capsys.readouterr().err
    assert main(["eval", "-q", *sets(f"model.path={policy}", "episodes=2", *other)]) == 0
    assert json.loads(capsys.readouterr().out)["task_source"] == "named"


def test_train_progress_and_tensorboard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    argv = [
        "train",
        "-v",
        *sets(*TINY, "total_timesteps=128", "tensorboard=true", f"output_dir={run}"),
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)
    assert "tokens" in captured.err and "score" in captured.err and "tok/s" in captured.err
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
