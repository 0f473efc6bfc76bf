"""Run folders: a bad value is a one-line CLI error that leaves no folder behind; an exclusive
lock naming its holder; `kill -9` of compare leaves no process and a re-run resumes cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from marlhf.cli.main import main
from marlhf.config.parse import ConfigError, load_yaml
from marlhf.runs.runner import RunFolderBusy, locked_run_folder
from tests.training.conftest import TINY, sets

ROOT = Path(__file__).resolve().parents[2]

#: (command, overrides, what the one-line error must name)
BAD_VALUES = [
    ("train", ["agent.learning_rate=.inf"], "learning_rate=inf"),
    ("train", ["agent.learning_rate=-1e-3"], "learning_rate=-0.001"),
    ("train", ["model.n_embd=100000000"], "n_embd=100000000"),
    ("train", ["model.n_layer=100000", "model.n_embd=1024"], "model.n_layer=100000"),
    ("train", ["model.n_head=3"], "model.n_head=3 must divide n_embd=64"),
    ("train", ["task.num_envs=100000000"], "task.num_envs=100000000"),
    ("train", ["task.num_envs=0"], "task.num_envs=0"),
    ("train", ["seed=-1"], "seed=-1 must be an integer between 0 and 4294967295"),
    ("train", ["seed=4294967296"], "seed=4294967296"),
    ("train", ["num_threads=0"], "num_threads=0"),
    ("train", ["device=tpu"], "device='tpu' is not a device"),
    ("train", ["agent.batch_size=5"], "agent.batch_size=5 must divide task.num_envs=32"),
    ("train", ["model=3"], "config section 'model': expected a mapping, got 3"),
    ("train", ["task.kwargs=5"], "'task.kwargs': got 5"),
    ("train", ["task.kwargs.bogus=1"], "task.kwargs: marlhf/DelayedChoice-v0 takes no argument"),
    ("compare", ["task.kwargs.bogus=1"], "'bogus'; valid: ['horizon', 'num_choices'"),
    ("compare", ["seeds=[0, -2]"], "seeds[1]=-2"),
    ("compare", ["workers=0"], "workers=0"),
    ("compare", ["device=gpu"], "device='gpu'"),
    ("eval", ["episodes=0"], "episodes=0"),
    ("eval", ["temperature=.nan"], "temperature=nan"),
    ("sft", ["max_steps=0"], "max_steps=0 must be an integer >= 1, or -1"),
    ("sft", ["learning_rate=.inf"], "learning_rate=inf"),
    ("rm", ["epochs=0"], "epochs=0"),
    # finite yet overflowing, and a task argument only the task itself checks
    ("train", ["agent.learning_rate=1e300"], "agent.learning_rate=1e+300"),
    ("compare", ["agent.learning_rate=1e300"], "agent.learning_rate=1e+300"),
    ("train", ["agent.kl_coef=1e300"], "agent.kl_coef=1e+300 is out of range"),
    ("train", ["task.kwargs.horizon=-1"], "DelayedChoice: horizon=-1; valid"),
    ("compare", ["task.kwargs.horizon=-1"], "DelayedChoice: horizon=-1; valid"),
    ("compare", ["agents=[ppo, ppo]"], "holds duplicates"),
    ("train", ["checkpoint_minutes=-1"], "checkpoint_minutes=-1"),
]

#: (file name, bytes, what the error must name besides the file)
BAD_FILES = [
    ("dup.yaml", b"seed: 1\nseed: 2\n", "line 2, column 1: duplicate key 'seed'"),
    ("nested.yaml", b"task:\n  num_envs: 8\n  num_envs: 4\n", "duplicate key 'num_envs'"),
    ("latin1.yaml", "seed: 1 # caf\xe9\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9"),
    ("scalar.yaml", b"model: 3\n", "config section 'model': expected a mapping, got 3"),
    ("list.yaml", b"task: [1, 2]\n", "config section 'task': expected a mapping, got [1, 2]"),
    ("top.yaml", b"- seed\n", "expected a mapping at the top level"),
    ("broken.yaml", b"seed: [1\n", "is not valid YAML: line 2"),
]


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(("command", "overrides", "names"), BAD_VALUES)
def test_a_bad_value_is_a_one_line_error_and_touches_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture, command: str, overrides: list, names: str
) -> None:
    out = tmp_path / "out"
    where = [f"output={out}/samples.jsonl"] if command == "eval" else [f"output_dir={out}"]
    err = _one_line_error(capsys, [command, *sets(*overrides, *where)])
    assert err.startswith(f"marlhf {command}: error: ") and names in err, err
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "compare", "sft", "rm", "audit"])
def test_an_empty_output_dir_is_refused_and_nothing_lands_here(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # where an empty output_dir would have written
    err = _one_line_error(capsys, [command, *sets("output_dir= ")])
    assert "output_dir='' is empty; name a folder" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "raw", "names"), BAD_FILES)
def test_a_bad_config_file_is_a_one_line_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str, raw: bytes, names: str
) -> None:
    path = tmp_path / name
    path.write_bytes(raw)
    err = _one_line_error(capsys, ["train", "--config", str(path)])
    assert names in err, err
    if "section" not in names:
        assert repr(str(path)) in err, err


def test_yaml_merge_keys_still_override_and_set_refuses_duplicates(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {horizon: 8, num_choices: 2}\nkw:\n  <<: *b\n  horizon: 4\n")
    assert load_yaml(path)["kw"] == {"horizon": 4, "num_choices": 2}
    override = "task.kwargs={horizon: 8, horizon: 4}"
    err = _one_line_error(capsys, ["train", "--print-config", "--set", override])
    assert "duplicate key 'horizon'" in err
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        path.write_text("seed: 1\nseed: 1\n")  # even with the same value
        load_yaml(path)


def _holder(folder: Path) -> subprocess.Popen:
    """A process holding the lock of ``folder`` until it is killed."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from marlhf.runs.runner import locked_run_folder\n"
        "with locked_run_folder(Path(sys.argv[1]), 'a test holder'):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_an_output_dir_that_cannot_be_created_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "file").write_text("")
    err = _one_line_error(capsys, ["train", *sets(*TINY, f"output_dir={tmp_path}/file/run")])
    assert f"output_dir '{tmp_path}/file/run' cannot be used: " in err, err


def test_a_run_that_failed_to_start_does_not_hold_its_folder_to_its_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    argv = ["train", *sets(*TINY, "total_timesteps=64", f"output_dir={out}")]
    err = _one_line_error(capsys, [*argv, *sets("task.kwargs={horizon: 1}")])
    assert "horizon=1" in err  # the task's own check, when the env is built
    assert main([*argv, *sets("task.kwargs={horizon: 8}")]) == 0  # corrected: not refused
    capsys.readouterr()  # its progress lines and notes
    err = _one_line_error(capsys, [*argv, *sets("task.kwargs={horizon: 6}")])
    assert "holds runs made with a different 'task'" in err  # a trained folder still is


def test_a_locked_run_folder_is_refused_at_once_naming_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        for command in ("train", "compare"):
            started = time.perf_counter()
            err = _one_line_error(capsys, [command, *sets(*TINY, f"output_dir={out}")])
            assert time.perf_counter() - started < 10  # no waiting for the holder
            assert f"is in use by process {holder.pid} (a test holder, since " in err, err
        assert not (out / "config.yaml").exists()
    finally:
        holder.kill()  # kill -9: the system releases its lock
        holder.wait()
    busy = pytest.raises(RunFolderBusy, match=f"in use by process {os.getpid()} \\(this test")
    with locked_run_folder(out, "this test"), busy, locked_run_folder(out, "a second holder"):
        pass


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_kill_9_of_compare_leaves_no_process_and_a_rerun_resumes_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    settings = [*TINY, "seeds=[0]", "terminations=[ngram:2]", "total_timesteps=1024"]
    settings += ["checkpoint_every=1"]
    argv = ["compare", *sets(*settings, f"output_dir={out}")]
    code = "import sys; from marlhf.cli.main import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv, "--set", "workers=2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: a kill of ours would not reach it
    )
    checkpoints = [out / "runs" / run / "checkpoint.zip" for run in ("ppo-token-seed0",)]
    deadline = time.monotonic() + 240
    while not all(c.exists() for c in checkpoints):
        assert proc.poll() is None, "compare ended before it was killed"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    workers = _descendants(proc.pid)
    assert len(workers) >= 2  # the worker processes (and multiprocessing's helpers)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in workers if _alive(p)], "processes outlived compare"

    # The re-run (in this process) takes the folder at once and resumes from the checkpoints.
    assert main([*argv, "--set", "workers=1"]) == 0
    resumed = json.loads((out / "runs" / "ppo-token-seed0" / "result.json").read_text())
    assert resumed["resumed_from"] > 0 and resumed["tokens"] >= 1024
    straight = tmp_path / "straight"
    assert main(["compare", *sets(*settings, f"output_dir={straight}", "workers=1")]) == 0
    for run in ("ppo-token-seed0", "mappo-ngram_2-seed0"):
        a = json.loads((out / "runs" / run / "result.json").read_text())
        b = json.loads((straight / "runs" / run / "result.json").read_text())
        assert a["tokens"] == b["tokens"]
        values = [(r["tokens"], r["metric"], r["value"]) for r in a["rows"]]
        assert values == [(r["tokens"], r["metric"], r["value"]) for r in b["rows"]], run
    leftovers = [p.name for p in (out / "runs").rglob("*") if "checkpoint" in p.name]
    assert leftovers == []
