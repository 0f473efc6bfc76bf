"""The benchmark driver: ``make bench`` (``--mode quick``, about 15 minutes on 2 cores) and
``make bench-full`` (``--mode full``, hours).

It runs every benchmark as its own process (so each one's peak RSS is measured alone, by
``wait4``), collects their JSON from ``benchmarks/results/``, and writes
``benchmarks/results/summary.json`` and ``docs/benchmarks.md`` (with plots under ``docs/img/``),
both stamped with the commit, the machine and the date.

=======================  ===================================================================
step                     what runs
=======================  ===================================================================
env_step                 ``benchmarks/env_step.py``: batched env step vs one model step
segmentation             ``benchmarks/segmentation.py``: ms per 64 x 256 batch per termination
rollout                  ``benchmarks/rollout.py`` (its ``run_case`` over the grid of the mode):
                         agent rollout vs bare KV-cache loop
decode                   ``benchmarks/decode.py``: eager, static and compiled decoding (quick:
                         the tiny model, 3 rounds; full: also 6 layers and SmolLM2-135M)
iteration                this file, one process per termination: seconds per PPO/MAPPO
                         iteration and peak RSS (``mappo_vs_ppo_iteration``, ``peak_rss_mb``)
trl                      ``benchmarks/trl_ppo.py`` in ``.venv-bench``: marlhf vs TRL's PPO
trl_grpo                 ``benchmarks/trl_grpo.py`` in ``.venv-bench``: marlhf vs TRL's GRPOTrainer
parity                   ``benchmarks/parity.py``: tokens MAPPO needs to reach PPO's score
credit                   ``benchmarks/credit.py``: the credit audit of PPO, MA-PPO and GRPO on
                         CreditSum during training (``--quick`` in quick mode)
evidence                 ``benchmarks/evidence.py``: every estimator preset, learning beside
                         its audit (``--mode quick``: one task and seed, a few presets)
=======================  ===================================================================
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_doc import kept_full_parity_files, render_doc, rollout_file
from common import RESULTS_DIR, ROOT, machine_stamp, print_table, read_json, write_json

PY = sys.executable
BENCH_PY = ROOT / ".venv-bench" / "bin" / "python"
#: ``make bench``'s decode run: the tiny model, 3 rounds, in its own file (decode.json keeps the
#: full run's SmolLM2 rows).
DECODE_QUICK = ["--quick", "--rounds", "3", "--out", "benchmarks/results/decode_quick.json"]
#: Terminations timed against PPO in the iteration step (PPO is timed first and last).
ITERATION_SPECS = {
    "quick": ["ngram:5", "random_ngram", "perplexity", "treesitter:python"],
    "full": ["ngram:1", "ngram:5", "ngram:10", "random_ngram", "perplexity", "treesitter:python"],
}
ITERATION_SETUP: dict[str, Any] = {
    "task": "DelayedChoice",
    "horizon": 64,
    "batch": 32,
    "minibatch": 16,
}
ROLLOUT_GRID = {
    "quick": {"layers": [2, 6], "batches": [16, 64], "lengths": [64], "repeats": 2},
    "full": {"layers": [2, 6], "batches": [16, 64], "lengths": [64, 256], "repeats": 2},
}


def run_step(name: str, cmd: list[str], capture: bool = False, env: Any = None) -> dict[str, Any]:
    """Run ``cmd`` as a child process; return its exit code, wall time, peak RSS (MB), output.

    :param capture: keep the child's stdout (returned as ``stdout``) instead of streaming it.
    """
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out if capture else None, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode("utf-8", "replace") if capture else ""
    result = {
        "rc": proc.returncode,
        "wall_s": time.perf_counter() - started,
        "peak_rss_mb": usage.ru_maxrss / 1024.0,  # Linux reports KiB
        "stdout": text,
    }
    print(f"=== {name}: rc={result['rc']} {result['wall_s']:.0f} s", flush=True)
    return result


# ----------------------------------------------------------------------------- child: iteration
def _build_agent(spec: str) -> Any:
    """The PPO (``spec == "token"``) or MAPPO of the iteration step, seeded."""
    from marlhf.algorithms import MAPPO, PPO
    from marlhf.envs import BatchedTokenEnv
    from marlhf.models import tiny_gpt2

    s = ITERATION_SETUP
    env = BatchedTokenEnv(s["task"], num_envs=s["batch"], seed=0, horizon=s["horizon"])
    model = tiny_gpt2(env.codec, n_layer=2, n_embd=128, n_positions=s["horizon"] + 8, seed=0)
    kw: dict[str, Any] = {"n_epochs": 4, "batch_size": s["minibatch"], "seed": 0, "device": "cpu"}
    return PPO(model, env, **kw) if spec == "token" else MAPPO(model, env, termination=spec, **kw)


def _one_iteration(algo: Any) -> float:
    s = ITERATION_SETUP
    start = time.perf_counter()
    algo.learn(s["batch"] * s["horizon"], reset_num_timesteps=False)
    return time.perf_counter() - start


def child_timing(specs: list[str], warmup: int, rounds: int) -> None:
    """Round-robin iterations of PPO and every MAPPO in one process (drift hits all alike).

    Prints ``{spec: [seconds of each timed iteration]}`` as JSON on the last line.
    """
    import torch

    torch.set_num_threads(1)
    agents = {spec: _build_agent(spec) for spec in ["token", *specs]}
    times: dict[str, list[float]] = {spec: [] for spec in agents}
    for r in range(warmup + rounds):
        for spec, algo in agents.items():
            t = _one_iteration(algo)
            if r >= warmup:
                times[spec].append(t)
    print(json.dumps(times))


def child_memory(spec: str) -> None:
    """Two iterations of one agent alone in this process (the parent reads its peak RSS)."""
    import torch

    torch.set_num_threads(1)
    algo = _build_agent(spec)
    for _ in range(2):
        _one_iteration(algo)


def iteration_step(mode: str) -> dict[str, Any]:
    """Seconds per iteration, MAPPO over PPO, paired round by round in one process; then each
    agent alone in its own process for its peak RSS (PPO first and last)."""
    warmup, rounds = (1, 5) if mode == "quick" else (2, 15)
    specs = ITERATION_SPECS[mode]
    cmd = [PY, __file__, "--child-timing", *specs, "--warmup", str(warmup), "--iters", str(rounds)]
    res = run_step("iteration timing", cmd, capture=True)
    out: dict[str, Any] = {
        "setup": {**ITERATION_SETUP, "model": "tiny_gpt2 2 layers, width 128", "n_epochs": 4},
        "warmup": warmup,
        "rounds": rounds,
        "machine": machine_stamp(),
    }
    if res["rc"] != 0:
        out["error"] = f"timing process exited with code {res['rc']}"
        write_json(RESULTS_DIR / "iteration.json", out)
        return out
    times = json.loads(res["stdout"].strip().splitlines()[-1])
    ppo = times["token"]
    # per round MAPPO / PPO, then the median over rounds: paired, so slow phases cancel
    ratios = {
        spec: statistics.median(m / p for m, p in zip(times[spec], ppo, strict=True))
        for spec in specs
    }
    rss: dict[str, float] = {}
    mem_runs = []
    for i, spec in enumerate(["token", *specs, "token"]):
        r = run_step(f"memory {spec}", [PY, __file__, "--child-memory", spec], capture=True)
        mem_runs.append({"spec": spec, "order": i, "rc": r["rc"], "peak_rss_mb": r["peak_rss_mb"]})
    ppo_rss = max(r["peak_rss_mb"] for r in mem_runs if r["spec"] == "token")
    for r in mem_runs:
        if r["spec"] != "token":
            rss[r["spec"]] = r["peak_rss_mb"] / ppo_rss
    out.update(
        {
            "s_per_iter": {spec: statistics.median(t) for spec, t in times.items()},
            "times": times,
            "mappo_over_ppo": ratios,
            "memory_runs": mem_runs,
            "ppo_peak_rss_mb": ppo_rss,
            "rss_over_ppo": rss,
        }
    )
    write_json(RESULTS_DIR / "iteration.json", out)
    print_table(
        "MAPPO / PPO seconds per iteration (paired rounds) and peak RSS",
        ["termination", "s/iter (median)", "MAPPO/PPO", "peak RSS MB", "RSS / PPO"],
        [
            [
                spec,
                out["s_per_iter"][spec],
                ratios.get(spec),
                next(r["peak_rss_mb"] for r in mem_runs if r["spec"] == spec),
                rss.get(spec),
            ]
            for spec in times
        ],
    )
    return out


def rollout_step(mode: str) -> list[str]:
    """The command of the rollout step.

    Full mode runs ``benchmarks/rollout.py`` as its author wrote it (its whole grid). Quick mode
    runs its ``run_case`` over a smaller grid (64 new tokens only), passing only the arguments
    its signature has, so that the step survives additions to it.
    """
    if mode == "full":
        return [PY, "benchmarks/rollout.py"]
    g = ROLLOUT_GRID[mode]
    code = (
        "import inspect, sys, torch; sys.path.insert(0, 'benchmarks'); import rollout; "
        "from common import machine_stamp, write_json, RESULTS_DIR; torch.set_num_threads(1); "
        f"g = {g!r}; rows = []; params = inspect.signature(rollout.run_case).parameters; "
        "kw = {'iter_repeats': 1} if 'iter_repeats' in params else {}\n"
        "for L in g['layers']:\n for B in g['batches']:\n  for N in g['lengths']:\n"
        "   r = rollout.run_case(L, B, N, torch.device('cpu'), g['repeats'], **kw)\n"
        "   rows.append(r)\n"
        "   print(f\"layers={L} B={B} N={N}: agent/bare {r['agent_over_bare']:.3f}\", flush=True)\n"
        "write_json(RESULTS_DIR / 'rollout_quick.json', "
        "{'machine': machine_stamp(), 'threads': 1, 'grid': g, 'results': rows})\n"
    )
    return [PY, "-c", code]


# ----------------------------------------------------------------------------- summary
def summarize(
    mode: str, steps: dict[str, dict[str, Any]], stamp: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The headline numbers of ``summary.json`` from the step results and their JSON files.

    :param stamp: the machine stamp taken when the run started (default: taken now); the commit
        at the end is added when it differs (someone committed during the run).
    """
    end = machine_stamp()
    summary: dict[str, Any] = {"mode": mode, "machine": stamp or end}
    if stamp is not None and stamp["commit"] != end["commit"]:
        summary["commit_at_end"] = end["commit"]
    gpu = read_json(RESULTS_DIR / "gpu.json")
    summary["gpu"] = (
        gpu_summary(gpu) if gpu else "none on this machine, and no kept GPU run (gpu.json)"
    )

    roll = read_json(RESULTS_DIR / rollout_file(mode))
    if _ok(steps, "rollout") and roll:
        summary["rollout_vs_bare"] = {
            f"L{r['n_layer']}_B{r['batch']}_N{r['new_tokens']}": r["agent_over_bare"]
            for r in roll["results"]
        }
        summary["rollout_vs_bare_min"] = min(summary["rollout_vs_bare"].values())
    else:
        summary["rollout_vs_bare"] = None
        summary["rollout_vs_bare_error"] = _step_error(steps, "rollout")

    trl = read_json(RESULTS_DIR / "trl_ppo.json")
    if _ok(steps, "trl") and trl and trl.get("ratio") is not None:
        summary["marlhf_vs_trl"] = trl["ratio"]
        summary["marlhf_vs_trl_detail"] = [
            {k: v for k, v in s.items() if not k.endswith("times")}
            for s in trl["settings"]
            if "ratio" in s
        ]
        summary["trl_version"] = trl.get("trl_version")
    else:
        summary["marlhf_vs_trl"] = None
        summary["marlhf_vs_trl_error"] = (trl or {}).get("error") or _step_error(steps, "trl")

    grpo = read_json(RESULTS_DIR / "trl_grpo.json")
    if _ok(steps, "trl_grpo") and grpo and grpo.get("ratio") is not None:
        summary["marlhf_vs_trl_grpo"] = grpo["ratio"]
        summary["marlhf_vs_trl_grpo_detail"] = [
            {k: v for k, v in s.items() if k not in ("sides", "ratios", "traceback")}
            | {
                "ratios": {
                    n: {k: r[k] for k in ("median", "min", "max")} for n, r in s["ratios"].items()
                }
            }
            for s in grpo["settings"]
            if "ratio" in s
        ]
    else:
        summary["marlhf_vs_trl_grpo"] = None
        summary["marlhf_vs_trl_grpo_error"] = (grpo or {}).get("error") or _step_error(
            steps, "trl_grpo"
        )

    it = read_json(RESULTS_DIR / "iteration.json")
    summary["mappo_vs_ppo_iteration"] = it.get("mappo_over_ppo") if it else None
    if it and "error" in it:
        summary["mappo_vs_ppo_iteration_error"] = it["error"]
    seg = read_json(RESULTS_DIR / "segmentation.json")
    if seg and "rows" in seg:
        summary["segmentation_ms"] = {r["spec"]: r["ms_per_batch"] for r in seg["rows"]}
    else:
        summary["segmentation_ms"] = None
        summary["segmentation_error"] = _step_error(steps, "segmentation")

    rss = {name: round(s["peak_rss_mb"], 1) for name, s in steps.items() if "peak_rss_mb" in s}
    if it and "memory_runs" in it:
        for r in it["memory_runs"]:
            rss[f"iteration alone: {r['spec']} (#{r['order']})"] = round(r["peak_rss_mb"], 1)
        summary["mappo_vs_ppo_peak_rss"] = it["rss_over_ppo"]
    summary["peak_rss_mb"] = rss

    par = read_json(RESULTS_DIR / "parity.json")
    if par and par.get("mode") == mode:
        summary["steps_to_parity"] = parity_summary_of(par)
        summary["ngram1_equals_ppo"] = {
            k: t["ngram1_equals_ppo"] for k, t in par["tasks"].items() if t["ngram1_equals_ppo"]
        }
    else:
        summary["steps_to_parity"] = None
        summary["steps_to_parity_error"] = _step_error(steps, "parity")
    if mode == "quick":  # the kept full-settings runs, reported beside the quick ones
        kept = {f.name: read_json(f) for f in kept_full_parity_files()}
        summary["steps_to_parity_full"] = {
            name: {"commit": par["machine"]["commit"], "date_utc": par["machine"]["date_utc"],
                   "tasks": parity_summary_of(par)}
            for name, par in kept.items() if par
        }  # fmt: skip
    summary["credit"] = credit_summary(mode, steps)
    summary["steps"] = {
        k: {
            "rc": s["rc"],
            "wall_s": round(s["wall_s"], 1),
            **({"skipped": True} if s.get("skipped") else {}),
        }
        for k, s in steps.items()
    }
    return summary


def credit_summary(mode: str, steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Where the credit audit and the estimator comparison of this run are, and per task of the
    comparison its closest-to-the-truth and fastest method (details: docs/credit.md)."""
    suffix = "" if mode == "full" else "_quick"
    credit = read_json(RESULTS_DIR / f"credit{suffix}.json")
    evidence = read_json(RESULTS_DIR / f"evidence{suffix}.json")
    out: dict[str, Any] = {
        "credit_json": f"benchmarks/results/credit{suffix}.json" if credit else None,
        "evidence_json": f"benchmarks/results/evidence{suffix}.json" if evidence else None,
    }
    if credit:
        out["audit_seconds_max"] = credit.get("audit_seconds_max")
    else:
        out["credit_error"] = _step_error(steps, "credit")
    if evidence:
        out["evidence_tasks"] = {
            key: {
                "closest_by_corr": t["analysis"]["closest_by_corr"],
                "fastest": t["analysis"]["fastest"],
                "best_final": t["analysis"]["best_final"],
            }
            for key, t in evidence.get("tasks", {}).items()
        }
    else:
        out["evidence_error"] = _step_error(steps, "evidence")
    return out


def parity_summary_of(par: dict[str, Any]) -> dict[str, Any]:
    """Per task and agent: tokens to parity (median, interval, seeds) and the final score."""
    return {
        key: {
            a["agent"]: {
                "median": a["tokens_to_parity"]["median"],
                "ci95": a["tokens_to_parity"]["ci95"],
                "seeds_reaching": a["tokens_to_parity"]["reached"],
                "seeds": a["tokens_to_parity"]["seeds"],
                "final_score": a["final_score"],
                "final_score_ci95": a["final_score_ci95"],
            }
            for a in task["agents"]
        }
        for key, task in par["tasks"].items()
    }


def gpu_row_key(row: dict[str, Any]) -> str:
    """``SmolLM2-135M_B16_N128_bf16_pretrained``: one row of ``gpu.json``."""
    weights = "pretrained" if str(row.get("weights", "")).startswith("pretrained") else "random"
    dtype = "bf16" if row["bf16"] else "fp32"
    return f"{row['model']}_B{row['batch']}_N{row['new_tokens']}_{dtype}_{weights}"


def gpu_summary(gpu: dict[str, Any]) -> dict[str, Any]:
    """The headline ratios of the kept GPU run (``benchmarks/gpu.py``, on a CUDA machine)."""
    rows = gpu["results"]
    return {
        "device": gpu["machine"].get("device"),
        "commit": gpu["machine"].get("commit"),
        "date_utc": gpu["machine"].get("date_utc"),
        "torch": gpu["machine"].get("torch"),
        "rollout_vs_bare": {gpu_row_key(r): r["agent_over_bare"] for r in rows},
        "mappo_vs_ppo_iteration": {
            gpu_row_key(r): r["mappo_over_ppo_by_termination"] for r in rows
        },
        # only rows measured per iteration above the resident memory (rollout.iteration_peak_mb);
        # older runs measured each agent with the others resident and are not comparable
        "mappo_vs_ppo_peak_mb": {
            gpu_row_key(r): r["mappo_over_ppo_peak_mb"] for r in rows if "iteration_peak_mb" in r
        },
    }


def _ok(steps: dict[str, dict[str, Any]], name: str) -> bool:
    """Whether a step succeeded; a skipped step counts (its earlier JSON is reused)."""
    return name not in steps or steps[name]["rc"] == 0


def _step_error(steps: dict[str, dict[str, Any]], name: str) -> str:
    s = steps.get(name)
    if s is None:
        return f"step {name!r} was not run"
    return (
        s.get("error")
        or f"step {name!r} exited with code {s['rc']} (see the console output of the run)"
    )


def main(mode: str = "quick", skip: list[str] | None = None) -> dict[str, Any]:
    """Run every step of ``mode`` (except ``skip``), then write summary.json and the doc."""
    skip = skip or []
    stamp = machine_stamp()
    started = time.perf_counter()
    steps: dict[str, dict[str, Any]] = {}
    env_full = [] if mode == "quick" else ["--repeats", "5"]
    plan: list[tuple[str, Any]] = [
        ("env_step", [PY, "benchmarks/env_step.py", *env_full]),
        ("segmentation", [PY, "benchmarks/segmentation.py"]),
        ("rollout", rollout_step(mode)),
        (
            "decode",
            [
                PY,
                "benchmarks/decode.py",
                *(DECODE_QUICK if mode == "quick" else []),
            ],
        ),
        ("iteration", None),
        ("trl", [str(BENCH_PY), "benchmarks/trl_ppo.py", *([] if mode == "quick" else ["--full"])]),
        (
            "trl_grpo",
            [str(BENCH_PY), "benchmarks/trl_grpo.py", *([] if mode == "quick" else ["--full"])],
        ),
        ("parity", [PY, "benchmarks/parity.py", "--mode", mode]),
        ("credit", [PY, "benchmarks/credit.py", *(["--quick"] if mode == "quick" else [])]),
        ("evidence", [PY, "benchmarks/evidence.py", "--mode", mode]),
    ]
    for name, cmd in plan:
        if name in skip:  # its earlier results file is reused; the page says so
            steps[name] = {"rc": 0, "wall_s": 0.0, "skipped": True}
            continue
        if name == "iteration":
            t0 = time.perf_counter()
            iteration_step(mode)
            steps[name] = {"rc": 0, "wall_s": time.perf_counter() - t0}
            continue
        if name in ("trl", "trl_grpo") and not BENCH_PY.exists():
            steps[name] = {
                "rc": 1,
                "wall_s": 0.0,
                "error": f"{BENCH_PY} does not exist; `make bench` creates .venv-bench with TRL",
            }
            result = "trl_ppo.json" if name == "trl" else "trl_grpo.json"
            write_json(RESULTS_DIR / result, {"ratio": None, "error": steps[name]["error"]})
            continue
        env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1"}
        steps[name] = run_step(name, cmd, env=env)
    summary = summarize(mode, steps, stamp)
    summary["total_wall_s"] = time.perf_counter() - started
    write_json(RESULTS_DIR / "summary.json", summary)
    doc = render_doc(summary)
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "benchmarks.md").write_text(doc, encoding="utf-8")
    print(
        f"\nwrote benchmarks/results/summary.json and docs/benchmarks.md "
        f"({summary['total_wall_s']:.0f} s)"
    )
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--mode", choices=["quick", "full"], default="quick")
    parser.add_argument(
        "--skip", nargs="*", default=[], help="steps to skip (their JSON is reused)"
    )
    parser.add_argument(
        "--doc-only", action="store_true", help="only re-render from the JSON files"
    )
    parser.add_argument("--child-timing", nargs="*", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--iters", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_timing is not None:
        child_timing(args.child_timing, args.warmup, args.iters)
    elif args.child_memory is not None:
        child_memory(args.child_memory)
    elif args.doc_only:
        summary = read_json(RESULTS_DIR / "summary.json")
        if summary is None:
            raise SystemExit("--doc-only: benchmarks/results/summary.json is missing; run first")
        (ROOT / "docs" / "benchmarks.md").write_text(render_doc(summary), encoding="utf-8")
    else:
        main(args.mode, args.skip)
