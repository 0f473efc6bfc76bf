"""One prepared check of a lent GPU (issue 28, item 5): CUDA tests, decode throughput against
the memory-bandwidth bound, agent/bare, one PPO and one GRPO iteration's split, NCCL with one rank.

Run on a lent machine (the device tool runs a bash command in the repository root; there is no
network there, so ``make install`` is not possible: carry the venv, ``carry=[".venv"]``)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/device_check.py --commit $(git rev-parse HEAD)

(``--commit`` from this machine: the copy on the device has no ``.git``.) It writes
``benchmarks/results/device.json`` (or ``--out``) and prints a table; give the device call a
``timeout_s`` of about 540 (the default ``--budget-s`` is 420 s, so the run stays under 8 minutes
with the start-up).

Parts (each its own function; a failing part records its exact error and never stops the
others; a part whose estimated seconds would overrun ``--budget-s`` is skipped with the reason):

1. ``nccl_one_rank``: ``init_process_group("nccl", world_size=1)`` in-process, an ``all_reduce``
   of a known tensor (checked), its time, ``destroy_process_group`` (``gloo`` on the CPU).
2. ``cuda_tests``: ``pytest tests/agents/test_cuda.py`` (the only module skipped without CUDA)
   in a subprocess: passed/failed/skipped counts and the output's tail.
3. ``decode``: the SmolLM2-135M architecture (``decode.smollm2_architecture``, random weights,
   float32) at B = 64 and 256, a 32-token prompt and 128 new tokens (context <= 512): the agent's
   rollout with ``decode="eager"``, ``"static"`` and ``"compiled"`` (on CUDA the compiled step is
   captured as a CUDA graph), the bare KV-cache loop and HF ``generate``, in rotating rounds;
   tokens/s each, and each one's fraction of the memory-bandwidth bound
   (:func:`bandwidth_bound_tok_s`, from the measured copy bandwidth). Goals (issue 28): at least
   100k tokens/s at B = 256; agent/bare at least 0.9.
4. ``agent_vs_bare``: the tiny GPT-2 2x128 and 6x128 agent rollouts over the bare loop; the
   median of paired ratios (goal at least 0.9).
5. ``iteration_split``: one PPO and one GRPO iteration of the SmolLM2 architecture in bf16
   (32 rows, 64 tokens), after one warm-up iteration: seconds of ``collect`` (sampling),
   ``finish_rollout`` (scoring, shaping, advantages) and ``train`` (the update).

``--device cpu --quick`` runs every part tiny on the CPU (the tiny GPT-2 in place of SmolLM2,
float32, gloo) in well under a minute: a check of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, machine_stamp, print_table, write_json
from device_parts import PARTS, Budget, Plan

RESULTS = RESULTS_DIR / "device.json"
DEFAULT_BUDGET_S = 420.0


def run_parts(plan: Plan, budget: Budget, names: list[str]) -> dict[str, Any]:
    """Each part in turn: its result, its exact error, or the reason it was skipped."""
    parts: dict[str, Any] = {}
    for name in names:
        fn, estimate = PARTS[name]
        est = estimate(plan)
        reason = budget.refuse(est)
        start = time.perf_counter()
        entry: dict[str, Any] = {"estimate_s": est}
        if reason is not None:
            entry.update(status="skipped", reason=reason)
        else:
            try:
                entry.update(status="ok", result=fn(plan, budget))
            except Exception as exc:  # a failing part never stops the others
                import traceback

                entry.update(
                    status="error",
                    error=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc()[-4000:],
                )
        entry["seconds"] = time.perf_counter() - start
        parts[name] = entry
        print(f"[{budget.elapsed():6.1f} s] {name}: {entry['status']}", flush=True)
    return parts


def _summary_rows(parts: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for name, entry in parts.items():
        rows.append([name, entry["status"], round(entry["seconds"], 1), _headline(name, entry)])
    return rows


def _headline(name: str, entry: dict[str, Any]) -> str:
    """One line of a part's result for the table."""
    if entry["status"] != "ok":
        return str(entry.get("reason") or entry.get("error"))[:90]
    r = entry["result"]
    if name == "cuda_tests":
        return f"passed {r['passed']}, failed {r['failed']}, skipped {r['skipped']}"
    if name == "nccl_one_rank":
        return f"{r['backend']} all_reduce ok={r['correct']} in {r['all_reduce_s'] * 1e3:.2f} ms"
    if name == "decode":
        out = []
        for case in r["cases"]:
            if "tok_s" not in case:
                out.append(f"B={case['batch']} {case.get('status', '?')}")
                continue
            tok = case["tok_s"]
            out.append(
                f"B={case['batch']}: compiled {tok['compiled']:.0f} tok/s "
                f"({case['fraction_of_bound']['compiled']:.2f} of bound)"
            )
        return "; ".join(out)
    if name == "agent_vs_bare":
        return "; ".join(f"{c['model']} {c['agent_over_bare']['median']:.2f}" for c in r["cases"])
    if name == "iteration_split":
        return "; ".join(
            f"{algo} " + "/".join(f"{s:.2f}" for s in split["seconds"].values())
            for algo, split in r["algorithms"].items()
        )
    return ""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="every part tiny (a script check)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds for all parts (default {DEFAULT_BUDGET_S:g})",
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}"
    )
    parser.add_argument("--commit", default=None, help="commit to stamp (no .git on the device)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON output path")
    args = parser.parse_args(argv)
    names = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in names if p not in PARTS]
    if unknown:
        parser.error(f"--parts has {unknown}; valid: {', '.join(PARTS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu --quick)")
    budget = Budget(args.budget_s)
    if device.type == "cpu":
        torch.set_num_threads(1)
    plan = Plan(device=device, quick=args.quick)
    stamp = machine_stamp()
    if args.commit:
        stamp["commit"] = args.commit
    result: dict[str, Any] = {
        "machine": stamp,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "quick": args.quick,
        "budget_s": args.budget_s,
        "load_before": list(os.getloadavg()),
    }
    result["parts"] = run_parts(plan, budget, names)
    result["total_s"] = budget.elapsed()
    result["load_after"] = list(os.getloadavg())
    write_json(args.out, result)
    print_table(
        f"Device check ({result['gpu'] or device}, {result['total_s']:.0f} s)",
        ["part", "status", "s", "result"],
        _summary_rows(result["parts"]),
    )
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
