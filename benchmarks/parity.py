"""The paper's claim: MAPPO reaches token-level PPO's final score with fewer tokens.

Each task is one ``marlhf compare`` run (:func:`marlhf.commands.compare.run_compare`: the same
runner as the CLI, so no second training loop): PPO and MAPPO with several terminations, one run
per seed, identical hyper-parameters. From its ``metrics.csv`` this script computes, per agent:

- the final score (mean of the last 5 logged ``rollout/score_mean`` values), mean over seeds
  with a 95% Student-t interval;
- tokens to parity: per seed, the first token count where the agent's smoothed curve reaches
  PPO's final score (mean over PPO's seeds), divided by PPO's total tokens; the median over seeds
  with a bootstrap 95% interval (``inf``/null: not reached within the budget);
- the sanity row: MAPPO with ``ngram:1`` must reproduce PPO exactly, seed by seed.

Run: ``python benchmarks/parity.py --mode quick`` (a reduced set, minutes) or ``--mode full``
(every termination, 5 seeds, hours). Writes ``benchmarks/results/parity.json`` and the curves as
``docs/img/parity_<task>.png``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    IMG_DIR,
    RESULTS_DIR,
    ROOT,
    final_value,
    machine_stamp,
    parity_summary,
    print_table,
    write_json,
)

SMOOTH = 5
METRIC = "rollout/score_mean"
NGRAMS_FULL = ["ngram:1", "ngram:3", "ngram:5", "ngram:10", "ngram:inf", "random_ngram"]


@dataclass(frozen=True)
class ParityTask:
    """One task of the benchmark.

    :param key: short name (file names, JSON keys).
    :param env_id: the registered env id.
    :param kwargs: task keyword arguments.
    :param terminations: MAPPO termination specs compared with PPO.
    :param total_timesteps: tokens per run.
    :param why: one line on what the task tests.
    :param num_envs: episodes per iteration (default 32).
    :param agent: overrides of the shared agent settings (default none): learning rate 1e-3,
        4 epochs, minibatch 16 episodes, KL coefficient 0 (as ``examples/configs/``).
    :param seeds: this task's seeds (default: the mode's).
    """

    key: str
    env_id: str
    kwargs: dict[str, Any]
    terminations: tuple[str, ...]
    total_timesteps: int
    why: str
    num_envs: int = 32
    agent: tuple[tuple[str, Any], ...] = ()
    seeds: tuple[int, ...] | None = None


def tasks_for(mode: str) -> tuple[list[ParityTask], list[int]]:
    """The tasks and seeds of ``mode`` (``"quick"`` for ``make bench``, ``"full"``)."""
    if mode == "quick":
        return [
            ParityTask(
                "delayed_choice_h32",
                "marlhf/DelayedChoice-v0",
                {"horizon": 32, "num_choices": 4},
                ("ngram:1", "ngram:5"),
                20_480,
                "pure delayed credit: the first token decides, the score comes 31 tokens later",
                seeds=(0, 1, 2, 3, 4),
            ),
            ParityTask(
                "reverse_l10",
                "marlhf/Reverse-v0",
                {"num_symbols": 6, "min_len": 6, "max_len": 10},
                ("ngram:5",),
                16_000,
                "structured output, terminal partial credit over up to 11 tokens",
            ),
            ParityTask(
                "expr_target",
                "marlhf/ExprTarget-v0",
                {"horizon": 12, "max_target": 30},
                ("ngram:5", "treesitter:python;mode=cutoff;cutoff=3"),
                12_000,
                "syntax task (Python integer expressions): n-grams vs tree-sitter macros",
            ),
        ], [0, 1, 2]
    if mode == "full":
        seeds = [0, 1, 2, 3, 4]
        common = (*NGRAMS_FULL, "perplexity")
        return [
            ParityTask(
                "delayed_choice_h32",
                "marlhf/DelayedChoice-v0",
                {"horizon": 32, "num_choices": 4},
                common,
                81_920,
                "pure delayed credit: the first token decides, the score comes 31 tokens later",
            ),
            ParityTask(
                "delayed_choice_h128",
                "marlhf/DelayedChoice-v0",
                {"horizon": 128, "num_choices": 4},
                common,
                327_680,
                "pure delayed credit over 127 tokens",
            ),
            ParityTask(
                "reverse_l20",
                "marlhf/Reverse-v0",
                {"num_symbols": 6, "min_len": 10, "max_len": 20},
                common,
                150_000,
                "structured output, terminal partial credit over up to 21 tokens",
            ),
            ParityTask(
                "expr_target",
                "marlhf/ExprTarget-v0",
                {"horizon": 12, "max_target": 30},
                (
                    *common,
                    "treesitter:python",
                    "treesitter:python;mode=cutoff;cutoff=3",
                ),
                40_000,
                "syntax task (Python integer expressions): n-grams vs tree-sitter macros",
            ),
            ParityTask(
                "humaneval_small",
                "marlhf/HumanEval-v0",
                {"split": "train", "max_problems": 32, "max_new_tokens": 64},
                ("ngram:1", "ngram:5", "ngram:10", "treesitter:python"),
                16_384,
                "the code task at small scale: a tiny random GPT-2 (1024-token BPE) completing "
                "HumanEval functions, unit tests in the sandbox; expect scores near 0",
                num_envs=8,
                agent=(("batch_size", 4), ("learning_rate", 1e-4), ("kl_coef", 0.05)),
            ),
        ], seeds
    raise ValueError(f"parity: mode={mode!r} is not one of 'quick', 'full'")


def _series(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[int, Any]]:
    """``{(agent, termination): {seed: (tokens, values)}}`` of :data:`METRIC`."""
    grouped: dict[tuple[str, str], dict[int, list[tuple[int, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in rows:
        if r["metric"] == METRIC:
            grouped[(r["agent"], r["termination"])][r["seed"]].append((r["tokens"], r["value"]))
    out: dict[tuple[str, str], dict[int, Any]] = {}
    for key, per_seed in grouped.items():
        out[key] = {}
        for seed, points in per_seed.items():
            points.sort()
            out[key][seed] = (
                np.array([p[0] for p in points], dtype=float),
                np.array([p[1] for p in points], dtype=float),
            )
    return out


def analyse(rows: list[dict[str, Any]], wall: dict[tuple[str, str], float]) -> dict[str, Any]:
    """Final scores, tokens to parity and the n = 1 sanity check from tidy metric rows."""
    from marlhf.runs.report import mean_ci95

    series = _series(rows)
    ppo_key = ("ppo", "token")
    if ppo_key not in series:
        raise ValueError("parity: the comparison has no PPO runs")
    ppo_runs = [series[ppo_key][s] for s in sorted(series[ppo_key])]
    agents = []
    for key in sorted(series, key=lambda k: (k != ppo_key, k)):
        runs = [series[key][s] for s in sorted(series[key])]
        finals = [final_value(v, SMOOTH) for _, v in runs]
        mean, ci = mean_ci95(finals)
        parity = parity_summary(ppo_runs, runs, window=SMOOTH)
        agents.append(
            {
                "agent": "ppo" if key == ppo_key else f"mappo {key[1]}",
                "termination": key[1],
                "seeds": sorted(series[key]),
                "final_score": mean,
                "final_score_ci95": ci,
                "final_per_seed": finals,
                "tokens_to_parity": parity,
                "wall_time_s": wall.get(key),
            }
        )
    sanity = None
    one = ("mappo", "ngram:1")
    if one in series:
        diffs = []
        for seed in sorted(set(series[one]) & set(series[ppo_key])):
            (t1, v1), (t0, v0) = series[one][seed], series[ppo_key][seed]
            same_grid = t1.shape == t0.shape and bool(np.all(t1 == t0))
            diffs.append(float(np.max(np.abs(v1 - v0))) if same_grid else float("inf"))
        sanity = {
            "max_abs_score_diff_per_seed": diffs,
            "identical": bool(diffs) and max(diffs) == 0.0,
        }
    return {"agents": agents, "ngram1_equals_ppo": sanity}


def run_task(
    task: ParityTask, seeds: list[int], out_root: Path, workers: int, checkpoint_every: int
) -> dict[str, Any]:
    """Train (or resume) the task's comparison, then analyse it and copy its curves."""
    from marlhf.commands.compare import run_compare
    from marlhf.config.commands import AgentConfig, CompareConfig, ModelConfig, TaskConfig
    from marlhf.runs.report import read_metrics_csv

    config = CompareConfig(
        model=ModelConfig(n_layer=2, n_embd=64, n_head=4),
        task=TaskConfig(id=task.env_id, kwargs=dict(task.kwargs), num_envs=task.num_envs),
        agent=AgentConfig(
            **{
                "learning_rate": 1e-3,
                "n_epochs": 4,
                "batch_size": 16,
                "kl_coef": 0.0,
                **dict(task.agent),
            }
        ),
        terminations=list(task.terminations),
        seeds=list(seeds),
        total_timesteps=task.total_timesteps,
        output_dir=str(out_root / task.key),
        workers=workers,
        threads_per_worker=1,
        checkpoint_every=checkpoint_every,
    )
    started = time.perf_counter()
    run_compare(config)
    rows = read_metrics_csv(Path(config.output_dir) / "metrics.csv")
    wall: dict[tuple[str, str], list[float]] = defaultdict(list)
    last: dict[tuple[str, str, int], float] = defaultdict(float)
    for r in rows:
        k = (r["agent"], r["termination"], r["seed"])
        last[k] = max(last[k], r["wall_time"])
    for (agent, term, _), w in last.items():
        wall[(agent, term)].append(w)
    result = analyse(rows, {k: float(np.mean(v)) for k, v in wall.items()})
    IMG_DIR.mkdir(parents=True, exist_ok=True)
    plot = IMG_DIR / f"parity_{task.key}.png"
    shutil.copyfile(Path(config.output_dir) / "curves.png", plot)
    result.update(
        {
            "env_id": task.env_id,
            "kwargs": task.kwargs,
            "why": task.why,
            "total_timesteps": task.total_timesteps,
            "num_envs": config.task.num_envs,
            "model": "tiny GPT-2, 2 layers, width 64, 4 heads (random init, seeded per run)",
            "agent": {
                k: v for k, v in vars(config.agent).items() if v is not None and k != "extra"
            },
            "seeds": seeds,
            "plot": str(plot.relative_to(ROOT)),
            "run_folder": config.output_dir,
            "elapsed_s": time.perf_counter() - started,
        }
    )
    return result


def main(
    mode: str = "quick",
    workers: int = 2,
    resume: bool = False,
    only: list[str] | None = None,
    out_root: Path | None = None,
) -> dict[str, Any]:
    """Run every task of ``mode``; write ``benchmarks/results/parity.json``; return its content.

    :param mode: ``"quick"`` (``make bench``) or ``"full"`` (``make bench-full``).
    :param workers: runs trained in parallel processes, one torch thread each (default 2).
    :param resume: keep finished runs in the run folders (default False: start afresh, so the
        numbers come from the current code).
    :param only: task keys to run (default: all of the mode).
    :param out_root: run folders (default ``runs/bench-parity-<mode>``).
    """
    tasks, seeds = tasks_for(mode)
    if only:
        unknown = sorted(set(only) - {t.key for t in tasks})
        if unknown:
            raise ValueError(f"parity: --only {unknown} not in {[t.key for t in tasks]}")
        tasks = [t for t in tasks if t.key in only]
    out_root = out_root or ROOT / "runs" / f"bench-parity-{mode}"
    results: dict[str, Any] = {"mode": mode, "machine": machine_stamp(), "tasks": {}}
    for task in tasks:
        if not resume:
            shutil.rmtree(out_root / task.key, ignore_errors=True)
        print(f"\n== parity: {task.key} ({task.env_id} {task.kwargs})", flush=True)
        res = run_task(
            task, list(task.seeds or seeds), out_root, workers, 10 if mode == "full" else 0
        )
        results["tasks"][task.key] = res
        print_table(
            f"parity {task.key}: {METRIC}",
            ["agent", "final score", "± ci95", "tokens to PPO final / PPO tokens", "95% CI"],
            [
                [
                    a["agent"],
                    a["final_score"],
                    a["final_score_ci95"],
                    a["tokens_to_parity"]["median"],
                    "[{}, {}]".format(*(f"{x:.2f}" for x in a["tokens_to_parity"]["ci95"])),
                ]
                for a in res["agents"]
            ],
        )
        if res["ngram1_equals_ppo"] is not None:
            print(f"ngram:1 == PPO: {res['ngram1_equals_ppo']}")
        # partial results survive an interruption (the .tmp suffix keeps them out of git)
        write_json(RESULTS_DIR / f"parity_{mode}_partial.tmp", results)
    write_json(RESULTS_DIR / "parity.json", results)
    return results


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mode", choices=["quick", "full"], default="quick")
    p.add_argument("--workers", type=int, default=2, help="parallel runs (default 2)")
    p.add_argument("--resume", action="store_true", help="keep finished runs of the run folders")
    p.add_argument("--only", nargs="*", default=None, help="task keys to run")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = _parse(None)
    main(args.mode, args.workers, args.resume, args.only)
