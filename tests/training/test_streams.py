"""Streams by convention: every command's result (one JSON object) alone on stdout; progress,
tables, samples and library logs on stderr; progress lines even when stderr is not a terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marlhf.cli.main import main
from marlhf.runs.progress import SECONDS_VAR, LineProgress, progress_seconds
from tests.training.conftest import TINY, sets


def _result(out: str) -> dict:
    """stdout parsed as exactly one JSON object (fails on anything printed beside it)."""
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


def test_train_prints_progress_lines_off_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECONDS_VAR, "0")  # a line per update (capsys' stderr is no terminal)
    run = tmp_path / "run"
    assert main(["train", *sets(*TINY, "total_timesteps=192", f"output_dir={run}")]) == 0
    captured = capsys.readouterr()
    assert _result(captured.out)["tokens"] >= 192
    lines = [x for x in captured.err.splitlines() if x.startswith("train: ")]
    # the start, each of the 3 iterations (8 envs x 8 tokens), and the final line
    assert len(lines) >= 4, captured.err
    assert "64/192 tokens (33%)" in lines[1] and "score" in lines[1] and "tok/s" in lines[1]
    assert "192/192 tokens (100%)" in lines[-1]


def test_quiet_train_prints_nothing_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECONDS_VAR, "0")
    argv = ["train", "-q", *sets(*TINY, "total_timesteps=64", f"output_dir={tmp_path / 'r'}")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert _result(captured.out)["tokens"] >= 64 and captured.err == ""


def test_line_progress_waits_between_lines() -> None:
    shown: list[str] = []

    class Sink:
        def write(self, text: str) -> None:
            shown.append(text)

        def flush(self) -> None:
            pass

    lines = LineProgress("compare", ["a", "b"], 100, every=3600, stream=Sink())  # type: ignore[arg-type]
    lines.update("a", 0, None)  # the first update prints at once
    lines.update("a", 50, 0.5)
    lines.update("b", 100, 0.25)
    assert len([s for s in shown if s.strip()]) == 1
    lines.print_line()
    last = shown[-2]
    assert "150/200 tokens (75%)" in last and "1/2 runs done" in last
    assert "mean score 0.375" in last


def test_progress_seconds_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECONDS_VAR, "soon")
    with pytest.raises(ValueError, match=SECONDS_VAR):
        progress_seconds()
    monkeypatch.setenv(SECONDS_VAR, "2.5")
    assert progress_seconds() == 2.5


def test_compare_result_alone_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECONDS_VAR, "0")
    out = tmp_path / "cmp"
    argv = sets(*TINY, "seeds=[0]", "terminations=[]", "agents=[]", "workers=1")
    assert main(["compare", *argv, *sets("total_timesteps=64", f"output_dir={out}")]) == 0
    captured = capsys.readouterr()
    assert _result(captured.out)["trained"] == ["ppo-token-seed0"]
    assert "final score" in captured.err  # the table
    assert "compare: 64/64 tokens (100%)" in captured.err  # the progress line
    assert f"report: {out / 'report.md'}" in captured.err


def test_sft_trainer_logs_go_to_stderr_and_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.txt"
    data.write_text("def f(x):\n    return x + 1\n" * 80)
    out = tmp_path / "sft"
    argv = sets(f"data=[{data}]", f"output_dir={out}", "vocab_size=300", "model.n_layer=1")
    more = sets("model.n_embd=16", "model.n_head=2", "block_size=16", "max_steps=4")
    assert main(["sft", *argv, *more]) == 0
    captured = capsys.readouterr()
    assert set(_result(captured.out)) >= {"train_loss", "eval_loss_after"}
    assert "sft: step" in captured.err and "loss" in captured.err
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in logged) and any("eval_loss" in r for r in logged)


def test_eval_samples_go_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "-q", *sets(*TINY, "total_timesteps=64", f"output_dir={run}")]) == 0
    capsys.readouterr()
    argv = sets(f"model.path={run / 'final'}", "episodes=3", f"output={tmp_path / 's.jsonl'}")
    assert main(["eval", *argv]) == 0
    captured = capsys.readouterr()
    assert _result(captured.out)["episodes"] == 3
    assert captured.err.count("--- sample") == 3


def test_rm_and_audit_results_alone_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(12)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = sets(f"data={pairs}", f"output_dir={tmp_path / 'rm'}", "vocab_size=300", "epochs=1")
    assert main(["rm", *argv, *sets("model.n_layer=1", "model.n_embd=16", "model.n_head=2")]) == 0
    assert "eval_accuracy" in _result(capsys.readouterr().out)
    # task.kwargs alone: audit's own default task (CreditSum) keeps its id
    task = "task.kwargs={horizon: 4, num_symbols: 2, num_decisions: 2}"
    audit = sets(task, *TINY[1:], "schemes=[gae]", f"output_dir={tmp_path / 'a'}")
    assert main(["audit", *audit]) == 0, capsys.readouterr().err
    assert _result(capsys.readouterr().out)["truth"] == "exact"
