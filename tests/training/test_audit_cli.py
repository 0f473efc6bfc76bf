"""`marlhf audit` end to end on tiny settings: files, a saved agent, saved rollouts, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marlhf.checkpoint.rollout_io import Rollouts
from marlhf.cli.main import main
from tests.training.conftest import TINY, sets

TINY_CREDIT = [
    "task.id=marlhf/CreditSum-v0",
    "task.kwargs={horizon: 6, num_symbols: 2, num_decisions: 2}",
    *TINY[1:],
]


def test_audit_writes_its_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "audit"
    argv = [
        "audit",
        *sets(
            *TINY_CREDIT, "train_timesteps=48", f"output_dir={out}", "schemes=[gae, gae@ngram:2]"
        ),
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["truth"] == "exact" and summary["episodes"] == 8
    assert set(summary["rmse"]) == {"gae", "gae@ngram:2"}
    report = json.loads((out / "audit.json").read_text())
    assert report["num_timesteps"] >= 48 + 8 * 6  # trained, then one more rollout audited
    assert len(report["schemes"]["gae"]["per_position"]["rmse"]) == 6
    assert "| `gae@ngram:2` |" in (out / "audit.md").read_text()
    assert (out / "audit.png").stat().st_size > 0
    assert Rollouts.load(out / "rollouts.safetensors").num_rows == 8


def test_audit_of_a_saved_agent_on_saved_rollouts_by_monte_carlo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = tmp_path / "train"
    assert main(["train", *sets(*TINY_CREDIT, "total_timesteps=48", f"output_dir={train}")]) == 0
    first = tmp_path / "first"
    base = [*TINY_CREDIT, f"model.path={train}/final", "algo=mappo"]
    assert main(["audit", *sets(*base, f"output_dir={first}")]) == 0
    capsys.readouterr()
    again = tmp_path / "again"
    # Another seed and half the envs: a fresh rollout would hold 4 other episodes, so the 8
    # episodes and the score below come only from the saved file.
    argv = sets(
        *base,
        "task.num_envs=4",
        "seed=1",
        f"output_dir={again}",
        f"rollouts={first}/rollouts.safetensors",
        "truth=mc",
        "mc_samples=8",
    )
    assert main(["audit", *argv]) == 0
    report = json.loads((again / "audit.json").read_text())
    assert report["truth"]["method"] == "mc" and report["truth"]["stderr_mean"] > 0
    assert not (again / "rollouts.safetensors").exists()  # the given rollouts were audited
    saved_report = json.loads((first / "audit.json").read_text())
    assert report["episodes"] == saved_report["episodes"] == 8
    assert report["score_mean"] == saved_report["score_mean"]
    capsys.readouterr()
    # Rollouts of another task (or of this task with other arguments) are refused in one line
    # that names the task they hold and the task asked for.
    saved = f"rollouts={first}/rollouts.safetensors"
    for task, kwargs in (
        ("marlhf/DelayedChoice-v0", "{horizon: 6}"),
        ("marlhf/CreditSum-v0", "{horizon: 8, num_symbols: 2, num_decisions: 2}"),
    ):
        argv = sets(
            *TINY[1:],
            f"task.id={task}",
            f"task.kwargs={kwargs}",
            saved,
            "truth=mc",
            f"output_dir={tmp_path}/other",
        )
        assert main(["audit", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"marlhf audit: error: {saved} holds episodes of marlhf/CreditSum-v0")
        assert f"the task asked for is {task}" in err and "task.id and task.kwargs" in err
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "other").exists()  # refused before any folder was made


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schemes=[gae@bogus:3]", "bogus"),
        ("schemes=[oracle]", "estimator='oracle' is unknown"),
        ("truth=guess", "truth"),
        ("mc_samples=1", "mc_samples=1"),
    ],
)
def test_bad_input_is_one_line(
    override: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", *sets(*TINY_CREDIT, override, f"output_dir={tmp_path}/a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("marlhf audit: error:") and message in err
    assert len(err.strip().splitlines()) == 1


TINY_TURNS = [*TINY[1:], "agent.mask_actions=true"]


def test_audit_of_a_multiturn_task_reports_per_turn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit"
    argv = sets(
        *TINY_TURNS, "task.id=marlhf/ToolLookup-v0", f"output_dir={out}", "schemes=[gae, gae@turn]"
    )
    assert main(["audit", *argv]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["truth"] == "exact" and summary["episodes"] == 8
    report = json.loads((out / "audit.json").read_text())
    assert report["truth"]["episode_starts"] >= 1  # the multi-turn tree was enumerated
    saved = Rollouts.load(out / "rollouts.safetensors")
    assert saved.turn_starts is not None
    turns = int((saved.turn_starts & saved.response_mask).sum())
    for name in ("gae", "gae@turn"):
        assert report["schemes"][name]["turns"]["count"] == turns
        assert sum(report["schemes"][name]["per_turn"]["count"]) == turns


def test_audit_of_a_multiturn_task_by_monte_carlo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit"
    argv = sets(
        *TINY_TURNS,
        "task.id=marlhf/GuessTheNumber-v0",
        "task.num_envs=2",
        "agent.batch_size=2",
        f"output_dir={out}",
        "schemes=[gae]",
        "truth=mc",
        "mc_samples=2",
    )
    assert main(["audit", *argv]) == 0
    capsys.readouterr()
    report = json.loads((out / "audit.json").read_text())
    assert report["truth"]["method"] == "mc" and report["truth"]["stderr_mean"] >= 0
    assert report["schemes"]["gae"]["turns"]["count"] >= 2


@pytest.mark.slow  # the check enumerates 20,000 of GuessTheNumber's decision points
def test_exact_audit_of_a_large_multiturn_task_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = sets(*TINY_TURNS, "task.id=marlhf/GuessTheNumber-v0", f"output_dir={tmp_path}/a")
    assert main(["audit", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("marlhf audit: error: truth=exact cannot audit marlhf/GuessTheNumber")
    assert "truth=mc" in err and len(err.strip().splitlines()) == 1
