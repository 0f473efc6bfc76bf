"""Shared helpers of the benchmarks: machine stamp, JSON files, tables, statistics.

Pure functions (no torch import at module level) so that the benchmark driver, the TRL benchmark
(which runs in its own venv) and the unit tests can all import this file.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:  # imported as ``benchmarks.common`` or, with benchmarks/ on the path, as ``common``
    from benchmarks.provenance import source_tree
except ImportError:
    from provenance import source_tree  # type: ignore[no-redef]

# One definition of "tokens to reach the baseline's final score", shared with `marlhf compare`'s
# report (re-exported here for the benchmarks).
from marlhf.runs.report import final_score as final_value  # noqa: F401
from marlhf.runs.report import reach, tokens_to_reach, trailing_mean  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
DOCS_DIR = ROOT / "docs"
IMG_DIR = DOCS_DIR / "img"


# --------------------------------------------------------------------------- machine stamp
#: Paths whose changes the benchmarks make themselves: they do not make a checkout "dirty".
GENERATED = ("benchmarks/results/", "docs/benchmarks.md", "docs/img/")


def uncommitted_files(root: Path = ROOT) -> list[str]:
    """Tracked files that differ from HEAD, except the benchmarks' own outputs."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    paths = [line[3:].strip() for line in out.splitlines() if line.strip()]
    return [p for p in paths if not p.startswith(GENERATED)]


def git_commit(root: Path = ROOT) -> str:
    """The checked-out commit, with ``+dirty`` when tracked source files differ from it."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return sha + ("+dirty" if uncommitted_files(root) else "")


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_stamp() -> dict[str, Any]:
    """Commit, the measured code's tree id, date (UTC), CPU model, cores, Python, torch version
    and device of this run."""
    stamp: dict[str, Any] = {
        "commit": git_commit(),
        "uncommitted_files": uncommitted_files(),
        # the measured code, which resolves to a commit even if this one is later rewritten
        # (benchmarks/provenance.py)
        "source_tree": source_tree(ROOT),
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "python": platform.python_version(),
    }
    try:
        import torch

        stamp["torch"] = torch.__version__
        stamp["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            stamp["device"] = f"cuda ({torch.cuda.get_device_name(0)})"
        else:
            stamp["device"] = "cpu (no GPU on this machine)"
    except ImportError:
        stamp["torch"] = None
        stamp["device"] = "unknown (torch not importable)"
    return stamp


# --------------------------------------------------------------------------- files
def proc_status_kb(field: str) -> int:
    """This process's ``field`` of ``/proc/self/status`` in KiB (``VmRSS``, ``VmHWM``: the peak
    resident memory since the start or the last :func:`reset_peak_rss`)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Reset this process's ``VmHWM`` (peak resident memory) to its ``VmRSS`` (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (temp file then rename); NaN/inf become null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_json_safe(data), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.floating | np.integer):
        return _json_safe(value.item())
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``, or None when the file is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def replace_marked(doc: Path, begin: str, end: str, block: str) -> None:
    """Rewrite ``doc``'s text from the marker ``begin`` to the marker ``end`` as ``block``
    (which holds both markers: a generated block of a page).

    :raises ValueError: when either marker is missing from ``doc``, naming both.
    """
    text = doc.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        raise ValueError(f"{doc}: the markers {begin} and {end} are missing")
    head, rest = text.split(begin, 1)
    doc.write_text(head + block + rest.split(end, 1)[1], encoding="utf-8")


# --------------------------------------------------------------------------- tables
def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` significant decimals, None as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "not reached" if value > 0 else "-inf"
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells pass through :func:`fmt`.

    :raises ValueError: when a row's length differs from the header's.
    """
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(
                f"markdown_table: row {i} has {len(row)} cells, the header has {len(header)}"
            )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a plain-text table (aligned columns) under ``title``."""
    cells = [[str(h) for h in header]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for j, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


# --------------------------------------------------------------------------- statistics
def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.median,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (resampled with replacement).

    ``inf`` values are allowed (a seed that never reached a target); the bounds are then ``inf``
    where more than the tail's share of resamples have an infinite statistic.

    :param values: the per-seed values (at least one).
    :param statistic: maps a 1-D array to a number (default: the median).
    :param n_boot: bootstrap resamples (default 2000).
    :param level: coverage of the interval, in (0, 1) (default 0.95).
    :param seed: seed of the resampling generator (default 0).
    :returns: ``(low, high)``.
    :raises ValueError: on an empty input, NaN values, or ``level``/``n_boot`` out of range.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"bootstrap_ci: values must be a non-empty 1-D sequence, got {x.shape}")
    if np.isnan(x).any():
        raise ValueError("bootstrap_ci: values hold NaN; drop or replace them first")
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap_ci: level={level} must be in (0, 1)")
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot={n_boot} must be >= 1")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    stats = np.array([float(statistic(x[i])) for i in idx])
    tail = (1.0 - level) / 2.0
    # "lower"/"higher" pick observed values, so inf survives instead of becoming nan
    low = float(np.quantile(stats, tail, method="lower"))
    high = float(np.quantile(stats, 1.0 - tail, method="higher"))
    return low, high


def parity_summary(
    ppo_runs: Sequence[tuple[np.ndarray, np.ndarray]],
    agent_runs: Sequence[tuple[np.ndarray, np.ndarray]],
    window: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Tokens an agent needs to reach PPO's final score, as a fraction of PPO's budget.

    The target is PPO's final score averaged over its seeds. For each seed of the agent the
    ratio is (first token count where its smoothed curve reaches the target) / (PPO's total
    tokens, the mean of its runs' last logged counts); ``inf`` when never reached. Reported:
    the median over seeds, its bootstrap 95% interval over seeds, and each seed's ratio.

    :param ppo_runs: ``(tokens, values)`` per PPO seed.
    :param agent_runs: ``(tokens, values)`` per seed of the agent.
    :param window: smoothing window in logged points (default 5).
    :param seed: seed of the bootstrap (default 0).
    """
    if not ppo_runs or not agent_runs:
        raise ValueError(
            f"parity_summary: need runs of both (ppo: {len(ppo_runs)}, agent: {len(agent_runs)})"
        )
    budget = float(np.mean([t[-1] for t, _ in ppo_runs]))
    if budget <= 0:
        raise ValueError(f"parity_summary: PPO's total tokens {budget} must be > 0")
    hit = reach(ppo_runs, agent_runs, window)  # marlhf compare's definition, per seed
    ratios = [tokens / budget for tokens in hit["per_seed"]]
    low, high = bootstrap_ci(ratios, seed=seed)
    return {
        "target_score": hit["target"],
        "ppo_tokens": budget,
        "median": float(np.median(ratios)),
        "ci95": [low, high],
        "per_seed": ratios,
        "reached": int(sum(math.isfinite(r) for r in ratios)),
        "seeds": len(ratios),
    }


def stdlib_text(max_chars: int) -> str:
    """The first ``max_chars`` characters of the standard library's sorted ``.py`` files."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    total = 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "".join(parts)[:max_chars]
