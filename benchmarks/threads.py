"""Thread policy: does one torch thread per process beat torch's default when runs share a CPU?

``marlhf compare`` trains its runs in ``workers`` parallel processes with ``threads_per_worker``
torch threads each (default 1). This benchmark times the same tiny MAPPO training (DelayedChoice,
tiny GPT-2) in ``P`` concurrent processes, each with torch's default thread count (``before``:
what a process gets when nothing sets it) or with one thread (``after``: the policy), and
reports the aggregate training throughput (tokens / s over all processes, import and model build
excluded) and the slowest process's training time. Settings alternate and repeat; the median
repeat is kept. The machine's load average is recorded beside the numbers: on a shared machine
the default thread count oversubscribes the cores other jobs already use.

Run: ``python benchmarks/threads.py [--procs 1 2] [--tokens 4096] [--repeats 3]``; prints a
table and writes ``benchmarks/results/threads.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import machine_stamp, print_table, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "threads.json"


def worker(threads: int | None, tokens: int) -> dict[str, Any]:
    """One training process: MAPPO ngram:5 on DelayedChoice (horizon 16, 16 envs, width 64)."""
    import gymnasium
    import torch
    from transformers.utils import logging

    import marlhf
    from marlhf.models import tiny_gpt2

    logging.set_verbosity_error()
    default = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    env = gymnasium.make_vec(
        "marlhf/DelayedChoice-v0", num_envs=16, horizon=16, vectorization_mode="vector_entry_point"
    )
    model = marlhf.MAPPO(
        tiny_gpt2(env.codec, n_layer=2, n_embd=64, n_head=4, seed=0),
        env,
        termination="ngram:5",
        batch_size=8,
        n_epochs=2,
        seed=0,
    )
    start = time.perf_counter()
    model.learn(tokens)
    return {
        "train_s": time.perf_counter() - start,
        "tokens": int(model.num_timesteps),
        "threads": torch.get_num_threads(),
        "default_threads": default,
    }


def run_setting(procs: int, threads: int | None, tokens: int) -> dict[str, Any]:
    """``procs`` concurrent worker processes; aggregate tokens/s and the slowest train time."""
    cmd = [sys.executable, __file__, "--worker", "--tokens", str(tokens)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    running = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(procs)
    ]
    outs = []
    for p in running:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"threads benchmark worker failed (exit {p.returncode})")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    slowest = max(o["train_s"] for o in outs)
    return {
        "train_s_max": slowest,
        "tokens_per_s": sum(o["tokens"] for o in outs) / slowest,
        "threads": outs[0]["threads"],
        "default_threads": outs[0]["default_threads"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokens", type=int, default=4096, help="tokens each process trains")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.threads, args.tokens)))
        return {}
    load_before = os.getloadavg()
    rows = []
    for procs in args.procs:
        per: dict[str, list[dict[str, Any]]] = {"default": [], "1": []}
        for r in range(args.repeats):  # alternate the settings so drifts in load hit both
            order = [("default", None), ("1", 1)]
            for name, threads in order if r % 2 == 0 else order[::-1]:
                per[name].append(run_setting(procs, threads, args.tokens))
        for name, runs in per.items():
            med = statistics.median(x["tokens_per_s"] for x in runs)
            rows.append(
                {
                    "procs": procs,
                    "threads": name,
                    "threads_per_proc": runs[0]["threads"],
                    "tokens_per_s": med,
                    "tokens_per_s_repeats": [x["tokens_per_s"] for x in runs],
                    "train_s_max_median": statistics.median(x["train_s_max"] for x in runs),
                }
            )
        d, one = rows[-2], rows[-1]
        one["speedup_vs_default"] = one["tokens_per_s"] / d["tokens_per_s"]
    result = {
        "benchmark": "threads",
        "question": "tokens/s of P concurrent tiny trainings: torch's default threads vs 1",
        "machine": machine_stamp(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "tokens_per_process": args.tokens,
        "repeats": args.repeats,
        "workload": "MAPPO ngram:5, DelayedChoice horizon 16, 16 envs, tiny GPT-2 2x64",
        "rows": rows,
    }
    print_table(
        f"threads: {args.tokens} tokens per process, median of {args.repeats} "
        f"(load average before {load_before[0]:.1f} on {os.cpu_count()} CPUs)",
        ["processes", "threads", "threads/proc", "tokens/s", "slowest train s", "1 vs default"],
        [
            [
                r["procs"],
                r["threads"],
                r["threads_per_proc"],
                f"{r['tokens_per_s']:.0f}",
                f"{r['train_s_max_median']:.1f}",
                f"{r['speedup_vs_default']:.2f}x" if "speedup_vs_default" in r else "",
            ]
            for r in rows
        ],
    )
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
