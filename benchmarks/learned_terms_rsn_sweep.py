"""Does RL raise the reasoning task's score at this scale? The learning-rate and fine-tuning sweep
behind its tokens-to-threshold setting (``learned_terms.T2T_SETUP``).

Tokens to threshold needs runs whose score rises from where they start: a threshold between
start and end then separates the rules. The reasoning task (:mod:`learned_terms_reasoning`)
starts from a fine-tuned tiny GPT-2; at the quick run's learning rate (1e-3) its first pilot's
score fell. This sweep trains the cheapest rule (``even``, budget
:data:`learned_terms.BUDGET`) on the pilot seed for a fixed number of ``learn`` calls from two
fine-tuning lengths at several learning rates, and records every rollout's score (mean of 32
episodes: its standard error is about 0.09 at a score of 0.5), and per run the mean score of
the first, the best and the last :data:`WINDOW` rollouts.

    python benchmarks/learned_terms_rsn_sweep.py            # the sweep below, one process
    python benchmarks/learned_terms_rsn_sweep.py --configs 1000:3e-4 --calls 20   # one run

Writes ``benchmarks/results/learned_terms_rsn_sweep.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import learned_terms as lt
from benchmarks.common import RESULTS_DIR, machine_stamp, write_json

RESULTS = RESULTS_DIR / "learned_terms_rsn_sweep.json"
#: (fine-tuning steps, learning rate): the benchmark's start (300) and a longer one (1000)
CONFIGS = [(300, 1e-3), (300, 3e-4), (300, 1e-4), (1000, 1e-3), (1000, 3e-4)]
#: rollouts averaged for the first, best and last score of a run
WINDOW = 10


def window_means(scores: list[float], width: int = WINDOW) -> dict[str, float]:
    """The mean score of the first, the best and the last ``width`` consecutive rollouts."""
    if len(scores) < width:
        raise ValueError(f"{len(scores)} rollouts: need at least width={width}")
    means = [statistics.fmean(scores[i : i + width]) for i in range(len(scores) - width + 1)]
    return {"first": means[0], "best": max(means), "last": means[-1]}


def run(sft_steps: int, learning_rate: float, calls: int, seed: int) -> dict[str, Any]:
    """One run of the ``even`` rule: ``calls`` learn calls of one rollout's tokens each."""
    start = time.perf_counter()
    algo = lt.make_agent(
        lt.REASONING, seed, f"even:budget={lt.BUDGET}", learning_rate, sft_steps=sft_steps
    )
    curve = lt.Curve()
    horizon = algo.env.task.max_new_tokens
    for _ in range(calls):
        lt.learn(algo, lt.NUM_ENVS * horizon, curve)
    scores = [p[2] for p in curve.points]
    return {
        "sft_steps": sft_steps,
        "learning_rate": learning_rate,
        "seed": seed,
        "rollouts": len(scores),
        "env_tokens": curve.points[-1][1],
        "scores": scores,
        **window_means(scores),
        "seconds": time.perf_counter() - start,
        "loadavg": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        default=None,
        help="comma-separated STEPS:LR pairs (default: the sweep in CONFIGS)",
    )
    parser.add_argument("--calls", type=int, default=100, help="learn calls per run")
    args = parser.parse_args(argv)
    configs = CONFIGS
    if args.configs:
        configs = [(int(a), float(b)) for a, b in (c.split(":") for c in args.configs.split(","))]
    torch.set_num_threads(1)
    out: dict[str, Any] = {"machine": machine_stamp(), "calls": args.calls, "window": WINDOW}
    out["runs"] = []
    for steps, lr in configs:
        out["runs"].append(run(steps, lr, args.calls, lt.PILOT_SEED))
        r = out["runs"][-1]
        print(
            f"sft {steps} lr {lr:g}: {r['rollouts']} rollouts, first {r['first']:.3f} "
            f"best {r['best']:.3f} last {r['last']:.3f} ({r['seconds']:.0f} s)",
            flush=True,
        )
        write_json(RESULTS, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
