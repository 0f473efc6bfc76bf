"""Thread policy: torch's default thread count, one thread, or ``min(cores, k)`` per process?

The question behind :mod:`marlhf.threads`' default. Each setting is a value of
``MARLHF_NUM_THREADS`` (``torch``: torch's own default, one thread per core; ``1``; ``k``), given
to fresh processes doing what a user does:

- ``api``: the Python API (MAPPO ngram:5 on DelayedChoice, tiny GPT-2), ``P`` processes at once;
  aggregate training tokens/s over the processes (import and model build excluded);
- ``train``: ``marlhf train`` on its default task with a small budget; the command's wall time;
- ``compare``: ``marlhf compare`` (PPO and ngram:5, one seed, 2 workers) with
  ``threads_per_worker`` of 1 or the core count; the command's wall time;
- ``quickstart``: ``python examples/quickstart.py`` as shipped; its wall time.

A command still running after ``--cap`` seconds (an API process: ``--cap`` seconds of
training, after its imports and build) is stopped and reported as ``> cap``. Settings
alternate and repeat (the median repeat is kept), and the load average is recorded before each
measurement: the machine this ran on is shared, so the load is part of the result, and a
setting that oversubscribes cores other processes use shows it. ``OMP_WAIT_POLICY=PASSIVE``
with torch's default is measured as its own setting (whether the OpenMP spin-wait matters).

Run: ``python benchmarks/threads.py [--workloads api train compare quickstart] [--repeats 3]``;
prints a table and writes ``benchmarks/results/threads.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import machine_stamp, print_table, write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "threads.json"
WORKLOADS = ("api", "train", "compare", "quickstart")


def worker(tokens: int) -> dict[str, Any]:
    """One training process through the Python API (the thread policy applies at the agent)."""
    import gymnasium
    import torch
    from transformers.utils import logging

    import marlhf
    from marlhf.models import tiny_gpt2

    logging.set_verbosity_error()
    default = torch.get_num_threads()
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
    print("ready", flush=True)  # imports and the build done: the cap counts training only
    start = time.perf_counter()
    model.learn(tokens)
    return {
        "train_s": time.perf_counter() - start,
        "tokens": int(model.num_timesteps),
        "threads": torch.get_num_threads(),
        "default_threads": default,
    }


def child_env(setting: str) -> dict[str, str]:
    """The environment of a measured process: ``setting`` as ``MARLHF_NUM_THREADS``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        MARLHF_PROGRESS_SECONDS="3600",
        MARLHF_NUM_THREADS=setting.removesuffix("+passive"),
    )
    if setting.endswith("+passive"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def timed(cmd: list[str], setting: str, cap: float, cwd: Path) -> float | None:
    """Wall seconds of ``cmd`` in a fresh process; None when it ran past ``cap`` (stopped)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=child_env(setting), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _, err = proc.communicate(timeout=cap)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {err[-2000:]!r}")
    return time.perf_counter() - start


def run_api(setting: str, procs: int, tokens: int, cap: float) -> dict[str, Any]:
    """``procs`` concurrent API processes: aggregate tokens/s and the slowest train time
    (``seconds`` None, 0 tokens/s, when a process ran past ``cap`` seconds and was stopped)."""
    cmd = [sys.executable, __file__, "--worker", "--tokens", str(tokens)]
    running = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=child_env(setting))
        for _ in range(procs)
    ]
    for p in running:  # every process built (imports take long on a loaded machine)
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("threads benchmark worker failed before training")
    deadline = time.perf_counter() + cap
    outs = []
    for p in running:
        try:
            out, _ = p.communicate(timeout=max(0.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            for q in running:
                q.kill()
                q.communicate()
            return {"seconds": None, "tokens_per_s": 0.0, "threads": None, "capped": True}
        if p.returncode != 0:
            raise RuntimeError(f"threads benchmark worker failed (exit {p.returncode})")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    slowest = max(o["train_s"] for o in outs)
    return {
        "seconds": slowest,
        "tokens_per_s": sum(o["tokens"] for o in outs) / slowest,
        "threads": outs[0]["threads"],
        "capped": False,
    }


def run_command(workload: str, setting: str, cap: float, tokens: int) -> dict[str, Any]:
    """Wall time of one CLI command or example under ``setting``."""
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="threads-bench-") as tmp:
        cwd = Path(tmp)
        if workload == "train":
            cmd = [sys.executable, "-m", "marlhf", "train", "-q", "--set",
                   f"total_timesteps={tokens}", "--set", "output_dir=run"]  # fmt: skip
        elif workload == "compare":
            threads = setting.removesuffix("+passive")
            per = cores if threads == "torch" else int(threads)
            cmd = [sys.executable, "-m", "marlhf", "compare", "-q", "-s", "agents=[]",
                   "-s", "seeds=[0]", "-s", f"total_timesteps={tokens}", "-s", "output_dir=run",
                   "-s", f"threads_per_worker={per}"]  # fmt: skip
        else:
            cmd = [sys.executable, str(ROOT / "examples" / "quickstart.py")]
        seconds = timed(cmd, setting, cap, cwd)
    return {"seconds": seconds, "capped": seconds is None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="api: processes")
    parser.add_argument("--tokens", type=int, default=4096, help="api: tokens per process")
    parser.add_argument("--cli-tokens", type=int, default=4096, help="train/compare: budget")
    parser.add_argument("--k", type=int, nargs="+", default=[4], help="min(cores, k) settings")
    parser.add_argument("--passive", action="store_true", help="also torch + OMP_WAIT_POLICY")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cap", type=float, default=180.0, help="seconds before a run stops")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.tokens)))
        return {}
    cores = os.cpu_count() or 1
    settings = ["torch", "1", *sorted({str(min(cores, k)) for k in args.k} - {"1", str(cores)})]
    if args.passive:
        settings.append("torch+passive")
    cases: list[tuple[str, int]] = []
    for workload in args.workloads:
        cases += [(workload, p) for p in args.procs] if workload == "api" else [(workload, 1)]
    rows = []
    for workload, procs in cases:
        per: dict[str, list[dict[str, Any]]] = {s: [] for s in settings}
        for r in range(args.repeats if workload in ("api", "train") else 1):
            # alternate the order so that drifts in the load hit every setting
            for setting in settings if r % 2 == 0 else settings[::-1]:
                load = os.getloadavg()[0]
                if workload == "api":
                    m = run_api(setting, procs, args.tokens, args.cap)
                else:
                    m = run_command(workload, setting, args.cap, args.cli_tokens)
                per[setting].append({**m, "load_1min": load})
                print(f"{workload} x{procs} {setting}: {m} (load {load:.1f})", file=sys.stderr)
        for setting, runs in per.items():
            secs = [x["seconds"] if x["seconds"] is not None else float("inf") for x in runs]
            rows.append(
                {
                    "workload": workload,
                    "procs": procs,
                    "setting": setting,
                    "seconds_median": statistics.median(secs),
                    "seconds_repeats": secs,
                    "tokens_per_s_median": statistics.median(x["tokens_per_s"] for x in runs)
                    if workload == "api"
                    else None,
                    "capped": sum(x["capped"] for x in runs),
                    "load_1min": [round(x["load_1min"], 2) for x in runs],
                }
            )
        one = next(r for r in rows[-len(settings) :] if r["setting"] == "1")
        for r in rows[-len(settings) :]:
            r["one_thread_speedup"] = r["seconds_median"] / one["seconds_median"]
        result = {
            "benchmark": "threads",
            "question": "seconds of the same work under MARLHF_NUM_THREADS=torch (torch's "
            "default), 1, and min(cores, k), with OpenMP's default (active) wait policy or "
            "OMP_WAIT_POLICY=PASSIVE: API training, marlhf train, marlhf compare, the quickstart",
            "machine": machine_stamp(),
            "cpu_count": cores,
            "settings": settings,
            "cap_s": args.cap,
            "repeats": args.repeats,
            "api_tokens_per_process": args.tokens,
            "cli_tokens": args.cli_tokens,
            "rows": rows,
        }
        write_json(args.out, result)  # after each workload: a stopped run keeps what it has
    print_table(
        f"threads: median of {args.repeats} (compare, quickstart: 1) on {cores} CPUs; '> cap' = "
        "stopped "
        f"at {args.cap:.0f} s",
        ["workload", "procs", "MARLHF_NUM_THREADS", "seconds", "tokens/s", "load (1 min)", "vs 1"],
        [
            [
                r["workload"],
                r["procs"],
                r["setting"],
                "> cap" if r["seconds_median"] == float("inf") else f"{r['seconds_median']:.1f}",
                "" if r["tokens_per_s_median"] is None else f"{r['tokens_per_s_median']:.0f}",
                " ".join(f"{x:.1f}" for x in r["load_1min"]),
                f"{r['one_thread_speedup']:.2f}x",
            ]
            for r in rows
        ],
    )
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
