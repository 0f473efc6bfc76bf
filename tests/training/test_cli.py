"""The marlhf CLI end to end on tiny settings, and its bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marlhf.cli.main import COMMANDS, main
from tests.training.conftest import TINY, sets


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--set KEY=VALUE" in out and "config keys" in out
    if command in ("train", "compare"):
        assert "marlhf/DelayedChoice-v0" in out and "ngram" in out


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--print-config", *sets("agent.kl_coef=0.3")]) == 0
    assert "kl_coef: 0.3" in capsys.readouterr().out


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"marlhf {argv[0]}: error:")
    return err


def test_bad_config_values(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = _error(["train", *sets("agent.kl_coef=abc")], capsys)
    assert "'agent.kl_coef'" in err and "expected float" in err
    err = _error(["compare", *sets("agent.lr=1")], capsys)
    assert "agent.learning_rate" in err
    err = _error(["train", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert "does not exist" in err


def test_unknown_task_lists_registered(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    err = _error(["train", *sets("task.id=marlhf/Nope-v0", f"output_dir={out}")], capsys)
    assert "marlhf/Nope-v0" in err and "marlhf/DelayedChoice-v0" in err
    assert not out.exists()


def test_unknown_termination(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = _error(["compare", *sets("terminations=[bogus:3]", f"output_dir={tmp_path}/c")], capsys)
    assert "bogus" in err and "ngram" in err


def test_train_then_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train"
    argv = ["train", *sets(*TINY, "total_timesteps=128", f"output_dir={out}", "seed=3")]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] >= 128
    assert (out / "result.json").exists() and (out / "metrics.csv").exists()
    assert (out / "final_weights" / "policy" / "config.json").exists()
    # the same folder with another seed would mix runs: refused; with the same settings: reused
    assert main([*argv[:-1], "seed=4"]) == 2
    assert "different 'seed'" in capsys.readouterr().err
    mtime = (out / "result.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == result
    assert (out / "result.json").stat().st_mtime_ns == mtime

    samples = tmp_path / "samples.jsonl"
    argv = ["eval", *sets("model.path=" + str(out / "final"), "task.kwargs={horizon: 8}")]
    assert main([*argv, *sets("episodes=5", f"output={samples}")]) == 0
    summary = json.loads(capsys.readouterr().out)
    lines = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(lines) == summary["episodes"] == 5
    assert {"prompt", "response", "score"} <= set(lines[0])
    assert summary["score_mean"] == pytest.approx(sum(r["score"] for r in lines) / 5)
    assert all(len(r["response"]) == 8 for r in lines)  # DelayedChoice: horizon symbols


def test_eval_bad_model_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(["eval", *sets(f"model.path={tmp_path / 'missing'}")], capsys)
    assert "does not exist" in err
    err = _error(["eval"], capsys)
    assert "model.path is required" in err


def test_text_task_model_without_tokenizer(tmp_path: Path, capsys) -> None:
    from marlhf.models import tiny_gpt2

    folder = tmp_path / "lm"
    tiny_gpt2(300, n_layer=1, n_embd=16, n_head=2).save_pretrained(str(folder))
    argv = ["eval", *sets(f"model.path={folder}", "task.id=marlhf/TextReference-v0")]
    err = _error([*argv, *sets("task.kwargs={reward: lexical}")], capsys)
    assert "has no tokenizer" in err and str(folder) in err


def test_train_warm_starts_from_a_saved_policy(tmp_path: Path, capsys) -> None:
    """A toy-task policy (no tokenizer: the task has its own symbols) is a valid model.path."""
    first, second = tmp_path / "a", tmp_path / "b"
    base = [*TINY, "total_timesteps=64"]
    assert main(["train", *sets(*base, f"output_dir={first}")]) == 0
    policy = first / "final_weights" / "policy"
    assert main(["train", *sets(*base, f"output_dir={second}", f"model.path={policy}")]) == 0
    assert json.loads((second / "result.json").read_text())["tokens"] >= 64


def test_model_context_shorter_than_the_task(tmp_path: Path, capsys) -> None:
    from marlhf.models import tiny_gpt2

    folder = tmp_path / "short"
    tiny_gpt2(7, n_layer=1, n_embd=16, n_head=2, n_positions=16).save_pretrained(str(folder))
    argv = ["train", *sets(*TINY, "task.kwargs={horizon: 32}", f"model.path={folder}")]
    err = _error([*argv, *sets(f"output_dir={tmp_path / 'out'}")], capsys)
    assert "has 16 positions" in err and "33 tokens" in err


def test_text_task_train_then_eval(tmp_path: Path, capsys) -> None:
    """A text task's tokenizer is saved with the policy, so eval can rebuild the task from it."""
    out = tmp_path / "text"
    task = ["task.id=marlhf/TextReference-v0", "task.kwargs={reward: lexical, max_new_tokens: 4}"]
    argv = ["train", *sets(*TINY[1:], *task, "total_timesteps=32", f"output_dir={out}")]
    assert main(argv) == 0
    assert (out / "final_weights" / "policy" / "tokenizer.json").is_file()
    capsys.readouterr()
    argv = ["eval", *sets(*task, f"model.path={out / 'final'}", "episodes=3")]
    assert main([*argv, *sets(f"output={tmp_path / 's.jsonl'}")]) == 0
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 3
