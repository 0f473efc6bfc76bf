"""What ``make demo`` shows, as a results file: ``benchmarks/results/demo.json``.

Runs ``marlhf compare`` with its default config (what ``make demo`` runs) into a fresh folder,
as a child process, and records its summary (each scheme's final score with its 95% interval,
tokens to reach PPO's final score, wall time per run), the command's own wall time, the machine
stamp and the load average before, during (sampled every few seconds) and after the run. The
README and ``docs/demo.md`` render their numbers from this file (:mod:`benchmarks.pages`), and
``docs/compare_demo.png`` is the run's ``curves.png``.

Usage: ``python benchmarks/demo.py`` (several minutes on 2 cores; run it under ``nice`` on a
shared machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DOCS_DIR, RESULTS_DIR, machine_stamp, read_json, write_json

RESULT = RESULTS_DIR / "demo.json"
PLOT = DOCS_DIR / "compare_demo.png"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (``os.getloadavg``)."""
    return [round(x, 2) for x in os.getloadavg()]


class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every ``period`` seconds until :meth:`stop`."""

    def __init__(self, period: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.samples: list[float] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.period):
            self.samples.append(load_average()[0])

    def stop(self) -> list[float]:
        self._stop_event.set()
        self.join()
        return self.samples


def run_config(out_dir: Path) -> dict[str, Any]:
    """What the comparison ran (from its ``config.yaml``) and the task's reference returns."""
    import yaml

    from marlhf.envs.core.registration import make_task

    config = yaml.safe_load((out_dir / "config.yaml").read_text(encoding="utf-8"))
    task = make_task(config["task"]["id"], **config["task"]["kwargs"])
    keys = ("task", "agents", "terminations", "seeds", "total_timesteps", "workers")
    return {
        "config": {k: config[k] for k in keys if k in config},
        "random_return": float(task.random_return),
        "optimal_return": float(task.optimal_return),
    }


def run_demo(out_dir: Path) -> dict[str, Any]:
    """Run the default ``marlhf compare`` into ``out_dir`` and return the results record."""
    command = [sys.executable, "-m", "marlhf", "compare", "-s", f"output_dir={out_dir}"]
    before = load_average()
    sampler = LoadSampler()
    sampler.start()
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    samples = sampler.stop()
    after = load_average()
    summary = read_json(out_dir / "summary.json")
    if summary is None:
        raise SystemExit(f"{out_dir / 'summary.json'} is missing: the compare run failed")
    return {
        "command": "make demo (marlhf compare, default config)",
        "machine": machine_stamp(),
        "wall_s": round(wall, 1),
        "load_average": {
            "before": before,
            "after": after,
            "during_1min_mean": round(sum(samples) / len(samples), 2) if samples else None,
            "during_1min_max": max(samples) if samples else None,
        },
        **run_config(out_dir),
        "metric": summary["metric"],
        "compare_wall_s": round(float(summary["wall_time"]), 1),
        "summary": summary["summary"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="run folder to keep (else temp)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="marlhf-demo-") as tmp:
        out = args.keep or Path(tmp) / "compare"
        record = run_demo(out)
        shutil.copyfile(out / "curves.png", PLOT)
    write_json(RESULT, record)
    print(f"wrote {RESULT.relative_to(RESULTS_DIR.parent.parent)} ({record['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
