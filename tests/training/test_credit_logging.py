"""`credit_every` in train and compare (the credit audit logged during training), and budgets
counted in generated tokens, Monte-Carlo continuations and greedy rollouts included."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from marlhf.cli.main import main
from marlhf.config.commands import CompareConfig
from marlhf.config.parse import load_config
from marlhf.runs.runner import RunSpec, train_run
from tests.training.conftest import TINY, sets

OWN = "credit/gae@ngram:5"  # MAPPO's own scheme (the train default: mappo ngram:5)


def _metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_logs_the_credit_audit_at_its_cadence(tmp_path: Path) -> None:
    out = tmp_path / "t"
    argv = sets(
        *TINY,
        "total_timesteps=192",  # three iterations of 8 episodes x 8 tokens
        "credit_every=2",
        "credit_schemes=['gae gae_lambda=1.0']",
        "tensorboard=true",
        f"output_dir={out}",
    )
    assert main(["train", *argv]) == 0
    rows = _metrics(out / "metrics.csv")
    audited = sorted({int(r["tokens"]) for r in rows if r["metric"] == f"{OWN}/rmse"})
    assert audited == [64, 192]  # iterations 0 and 2, logged at the end of each
    names = {r["metric"] for r in rows}
    assert {f"{OWN}/corr", f"{OWN}/sign", f"{OWN}/segment_corr", "credit/truth_abs_mean"} <= names
    assert "credit/gae,gae_lambda=1.0/rmse" in names
    assert all(float(r["value"]) >= 0 for r in rows if r["metric"].endswith("/rmse"))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert f"{OWN}/rmse" in events.Tags()["scalars"]


@pytest.mark.slow  # two spawned worker processes, each importing and training (77 s loaded)
def test_compare_workers_log_the_credit_audit(tmp_path: Path) -> None:
    out = tmp_path / "c"
    argv = sets(
        *TINY,
        "seeds=[0]",
        "total_timesteps=128",
        "terminations=[]",
        "agents=[grpo]",
        "agent.group_size=2",
        "credit_every=1",
        "workers=2",
        f"output_dir={out}",
    )
    assert main(["compare", *argv]) == 0
    rows = _metrics(out / "metrics.csv")
    by_run = {(r["run"], r["metric"]) for r in rows}
    assert ("ppo-token-seed0", "credit/gae/rmse") in by_run
    assert ("grpo-token-seed0", "credit/grpo/corr") in by_run


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("credit_every=-1", r"credit_every=-1 must be an integer >= 0 \(0: off\)"),
        ("credit_truth=oracle", r"credit_truth.*'oracle'.*exact.*mc"),
        ("credit_mc_samples=1", r"credit_mc_samples=1 must be an integer between 2"),
        ("credit_schemes=[nosuch]", r"credit_schemes\[0\]: .*nosuch"),
    ],
)
@pytest.mark.parametrize("command", ["train", "compare"])
def test_bad_credit_values_are_named(
    tmp_path: Path, command: str, override: str, match: str, capsys: Any
) -> None:
    argv = sets(*TINY, override, f"output_dir={tmp_path / 'x'}")
    assert main([command, *argv]) == 2
    err = capsys.readouterr().err
    assert __import__("re").search(match, err), err
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()  # no folder, for train (no runs/) as for compare


def test_exact_truth_on_a_task_too_large_to_enumerate_fails_before_training(
    tmp_path: Path, capsys: Any
) -> None:
    argv = sets(
        *TINY,
        "task.id=marlhf/Reverse-v0",
        "task.kwargs={}",
        "credit_every=1",
        f"output_dir={tmp_path / 'r'}",
    )
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert "credit_truth=exact cannot audit marlhf/Reverse-v0" in err
    assert "continuations per prompt" in err and "credit_truth=mc" in err
    assert "max_sequences" not in err and "method=" not in err  # CLI keys, not Python names
    assert not (tmp_path / "r" / "result.json").exists()


@pytest.mark.parametrize(
    ("agent", "baseline"),
    [("vineppo", ["agent.mc_rollouts=2", "agent.mc_max_starts=2"]), ("remax", [])],
)
def test_budget_counts_continuations_and_greedy_rollouts(
    tmp_path: Path, agent: str, baseline: list[str]
) -> None:
    """A run stops at the first iteration whose generated tokens, its baselines' included,
    reach the budget: tokens = iterations x (8 episodes x 8 tokens) + every baseline token."""
    config = load_config(CompareConfig, overrides=[*TINY, *baseline])
    kwargs: dict[str, Any] = {"task": config.task, "model": config.model, "agent": config.agent}
    budget = 600
    spec = RunSpec(agent, "token", 0)
    result = train_run(spec, tmp_path / agent, total_timesteps=budget, **kwargs)
    steps = sorted({r["tokens"] for r in result["rows"]})
    extra = [r["value"] for r in result["rows"] if r["metric"] == "rollout/mc_tokens"]
    assert len(extra) == len(steps) and min(extra) > 0  # every iteration paid for its baseline
    assert result["tokens"] == steps[-1] == len(steps) * 64 + sum(extra)
    assert steps[-2] < budget <= steps[-1]  # stopped on the tokens, baselines included
    assert len(steps) < budget / 64  # a plain rollout-only count would have run longer
    saved = json.loads((tmp_path / agent / "result.json").read_text())
    assert saved["tokens"] == result["tokens"]
