"""`marlhf compare`: the run folder, the report against its metrics file, resuming."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from marlhf.cli.main import main
from marlhf.config.commands import CompareConfig
from marlhf.config.parse import load_config
from marlhf.runs.report import FIELDS
from marlhf.runs.runner import RunSpec, train_run
from tests.training.conftest import TINY, sets

RUNS = ["ppo-token-seed0", "ppo-token-seed1", "mappo-ngram_5-seed0", "mappo-ngram_5-seed1"]


def _compare(out: Path, *extra: str) -> dict:
    argv = [
        "compare",
        *sets(*TINY, "seeds=[0, 1]", "total_timesteps=256", "agents=[]", f"output_dir={out}"),
    ]
    assert main([*argv, *sets(*extra)]) == 0
    return json.loads((out / "summary.json").read_text())


def _metrics(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == FIELDS
        return list(reader)


def _table(out: Path) -> dict[str, list[str]]:
    rows = {}
    for line in (out / "report.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ("ppo", "mappo ngram:5"):
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow  # two agents x two seeds trained end to end, then resumed
def test_compare_folder_report_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cmp"
    _compare(out, "workers=2")  # two worker processes
    streams = capsys.readouterr()
    assert "final score" in streams.err  # the rich table is printed, on stderr
    assert json.loads(streams.out)["output_dir"] == str(out)  # stdout: the result alone
    for name in ("config.yaml", "metrics.csv", "report.md", "summary.json"):
        assert (out / name).is_file()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(RUNS)

    # The report's numbers, recomputed independently from metrics.csv.
    rows = _metrics(out)
    assert {r["run"] for r in rows} == set(RUNS)
    table = _table(out)
    assert set(table) == {"ppo", "mappo ngram:5"}
    for agent, label in (("ppo", "ppo"), ("mappo", "mappo ngram:5")):
        finals, walls = [], []
        for seed in ("0", "1"):
            mine = [r for r in rows if r["agent"] == agent and r["seed"] == seed]
            scores = [
                float(r["value"])
                for r in sorted(mine, key=lambda r: int(r["tokens"]))
                if r["metric"] == "rollout/score_mean"
            ]
            assert len(scores) == 4  # 256 tokens / (8 envs x 8 tokens)
            finals.append(np.mean(scores[-5:]))
            walls.append(max(float(r["wall_time"]) for r in mine))
        assert table[label][1].startswith(f"{np.mean(finals):.3f} ± ")
        assert table[label][4] == f"{np.mean(walls):.1f}"
    assert table["ppo"][3] in ("1.00x", "-")

    # Interrupted: one run lost its result. A re-run trains only that one, identically (here in
    # this process: the same numbers as in the worker process).
    victim = out / "runs" / "mappo-ngram_5-seed1" / "result.json"
    before = json.loads(victim.read_text())
    mtimes = {n: (out / "runs" / n / "result.json").stat().st_mtime_ns for n in RUNS}
    victim.unlink()
    assert main(["compare", "--config", str(out / "config.yaml"), *sets("workers=1")]) == 0
    streams = capsys.readouterr()
    assert "skipping 3 finished run(s)" in streams.err
    result = json.loads(streams.out)
    assert result["trained"] == ["mappo-ngram_5-seed1"]
    for n in RUNS:
        if n != "mappo-ngram_5-seed1":
            assert (out / "runs" / n / "result.json").stat().st_mtime_ns == mtimes[n]
    after = json.loads(victim.read_text())
    assert [(r["tokens"], r["metric"], r["value"]) for r in after["rows"]] == [
        (r["tokens"], r["metric"], r["value"]) for r in before["rows"]
    ]


def test_compare_refuses_a_different_config_on_the_same_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", *sets(*TINY, "seeds=[0]", "total_timesteps=64", f"output_dir={out}")]
    assert main([*argv, *sets("include_ppo=false", "workers=1")]) == 0
    assert main([*argv, *sets("include_ppo=false", "agent.learning_rate=0.5")]) == 2
    assert "different 'agent'" in capsys.readouterr().err


# The constant default, and warm-up then linear decay: one schedule over the whole run, however
# the checkpoints cut it into learn() calls (each call used to run the schedule to its end: the
# learning rate was 0 at every update of a checkpointed run).
@pytest.mark.parametrize(
    "schedule", [[], ["agent.lr_schedule=linear", "agent.warmup_fraction=0.25"]]
)
def test_run_resumes_from_checkpoint_after_interruption(
    tmp_path: Path, schedule: list[str]
) -> None:
    config = load_config(CompareConfig, overrides=[*TINY, *schedule])
    kwargs: dict[str, Any] = {"task": config.task, "model": config.model, "agent": config.agent}
    spec = RunSpec("mappo", "ngram:3", seed=5)
    # uninterrupted, in one learn() call (no checkpoints): chunking must not change the result
    whole = train_run(spec, tmp_path / "whole", total_timesteps=192, checkpoint_every=0, **kwargs)

    def crash(tokens: int, total: int, score: float | None) -> None:
        if tokens >= 128:  # the dump of the 2nd iteration, before its checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(
            spec,
            tmp_path / "cut",
            total_timesteps=192,
            checkpoint_every=1,
            progress=crash,
            **kwargs,
        )
    assert not (tmp_path / "cut" / "result.json").exists()
    resumed = train_run(spec, tmp_path / "cut", total_timesteps=192, checkpoint_every=1, **kwargs)
    assert resumed["resumed_from"] == 64  # the checkpoint after the 1st iteration
    assert whole["resumed_from"] == 0
    assert [(r["tokens"], r["metric"]) for r in resumed["rows"]] == [
        (r["tokens"], r["metric"]) for r in whole["rows"]
    ]
    np.testing.assert_allclose(
        [r["value"] for r in resumed["rows"]], [r["value"] for r in whole["rows"]], rtol=1e-5
    )
    # (the rows above hold the learning rate of every update: the resumed run's followed the
    # same schedule; the schedule reads the budget done after each rollout, 1/3, 2/3 and 1)
    rates = [r["value"] for r in whole["rows"] if r["metric"] == "train/learning_rate"]
    assert len(rates) == 3 and rates[0] > 0
    assert rates == ([rates[0]] * 3 if not schedule else sorted(rates, reverse=True))
    assert len(set(rates)) == (1 if not schedule else 3)


def test_compare_a_five_agent_mix(tmp_path: Path) -> None:
    """Token PPO, MA-PPO, GRPO, RLOO and Dr. GRPO over macro actions, on the same task, seeds
    and token budget; the report and the curves show every agent."""
    out = tmp_path / "mix"
    argv = sets(
        *TINY,
        "seeds=[0]",
        "total_timesteps=128",
        "workers=1",
        "agents=[grpo, rloo, dr-grpo@ngram:2]",
        f"output_dir={out}",
    )
    assert main(["compare", *argv]) == 0
    summary = json.loads((out / "summary.json").read_text())
    agents = [row["agent"] for row in summary["summary"]]
    assert set(agents) == {"ppo", "mappo ngram:5", "grpo", "rloo", "dr-grpo ngram:2"}
    names = sorted(p.name for p in (out / "runs").iterdir())
    assert names == sorted(
        [
            "ppo-token-seed0",
            "mappo-ngram_5-seed0",
            "grpo-token-seed0",
            "rloo-token-seed0",
            "dr-grpo-ngram_2-seed0",
        ]
    )
    # The same budget for every agent, in generated tokens.
    tokens = {json.loads((out / "runs" / n / "result.json").read_text())["tokens"] for n in names}
    assert tokens == {128}, tokens  # 2 iterations x (8 envs x 8 tokens) for every run


@pytest.mark.parametrize(
    ("agents", "match"),
    [
        ("[nosuch]", r"agents: 'nosuch' names no preset; valid: \["),
        ("[grpo, grpo]", r"holds duplicates"),
        ("[grpo@nosuch:1]", r"unknown termination 'nosuch'"),
    ],
)
def test_compare_bad_agents(tmp_path: Path, agents: str, match: str, capsys: Any) -> None:
    argv = sets(*TINY, f"agents={agents}", f"output_dir={tmp_path / 'x'}")
    assert main(["compare", *argv]) == 2
    assert __import__("re").search(match, capsys.readouterr().err)
