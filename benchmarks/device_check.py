r"""One prepared check of a lent GPU (issue 28, item 5): CUDA tests, decode throughput against
the memory-bandwidth bound, agent/bare, one PPO and one GRPO iteration's split, NCCL with one rank.

Run on a lent machine. The device tool runs one bash command in the repository root of a copy
of the working tree, with no network and no ``.git``; its ``python3`` (3.12) holds torch with
CUDA, transformers and pytest, but not Gymnasium or Stable-Baselines3, which marlhf imports, and
the venv here (a 2 GB CPU build) cannot travel. So, here, once: ``bash
benchmarks/device_wheels.sh`` (their wheels into ``.whl/``, about 1.5 MB); then one device call
with ``carry=[".whl"]``, ``timeout_s=540`` and this command (the commit typed in)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site HF_HUB_OFFLINE=1 \
        PYTHONUNBUFFERED=1 && python3 benchmarks/device_check.py --commit <sha of main>

The default ``--budget-s`` (420 s) keeps the parts under 7 minutes; the start-up adds seconds.
Only what is written under ``$OUT`` comes back: ``$OUT/device.json`` is the default output when
``$OUT`` is set (else ``benchmarks/results/device.json``); it is written after every part (a run
cut short keeps what it measured), and a table is printed. Copy it into
``benchmarks/results/device.json`` here. If time allows, ``--device cuda --quick`` (under a
minute) first checks the script on the GPU; ``--decode-batches``, ``--decode-tokens``,
``--rounds`` and ``--iter-size`` change the sizes.

Parts, in the order they run (each its own function in ``benchmarks/device_parts.py``; a failing
part records its exact error and never stops the others; a part, or a decode batch size, whose
estimated seconds would overrun what is left of ``--budget-s`` is skipped with the reason):

1. ``nccl_one_rank``: in a child process with a timeout (a hung rendezvous cannot stall the
   run), ``init_process_group("nccl", rank=0, world_size=1)`` with MASTER_ADDR/PORT set in that
   process, an ``all_reduce`` of a known tensor (checked), its time, ``destroy_process_group``;
   ``gloo`` on the CPU.
2. ``decode``: the SmolLM2-135M architecture (``decode.smollm2_architecture``, random weights,
   float32) at B = 64 and 256, a 32-token prompt (``DelayedChoice`` behind 31 random symbols,
   :class:`device_parts.LongCueChoice`) and 128 new tokens (context 160 <= 512): the agent's
   rollout with ``decode="eager"``, ``"static"`` and ``"compiled"`` (on CUDA the compiled step is
   captured as a CUDA graph), the bare KV-cache loop and HF ``generate`` (dynamic cache, sampling
   among the env's tokens as the agent does), one warm-up round (which compiles:
   ``compile_s``) then 3 rounds in rotating order;
   tokens/s of each, agent/bare per round, and each one's fraction of the memory-bandwidth bound
   :func:`device_parts.bandwidth_bound_tok_s`: B tokens per step, a step reading the parameters
   once and every row's KV cache at the mean context, at the copy bandwidth measured on the
   device (a 1 GiB tensor copy, bytes read + written per second). Goals (issue 28): at least
   100k tokens/s at B = 256; agent/bare at least 0.9.
3. ``agent_vs_bare``: the tiny GPT-2 2x128 and 6x128 agent rollouts (B = 64, 64 tokens) over the
   bare loop: the median of 10 paired ratios (goal at least 0.9).
4. ``iteration_split``: one PPO and one GRPO (``preset="grpo"``, groups of 4) iteration of the
   SmolLM2 architecture in bf16 (32 rows, 32-token prompts, 64 tokens) after a warm-up one:
   seconds of ``collect`` (sampling), ``finish_rollout`` (scoring, shaping, advantages) and
   ``train`` (the update).
5. ``cuda_tests``: ``pytest tests/agents/test_cuda.py`` (the only test module skipped without
   CUDA) in a subprocess, with what is left of the budget as its timeout: passed, failed and
   skipped counts and the output's tail.

On CUDA each part also records its peak CUDA memory.
``--device cpu --quick`` runs every part tiny on the CPU (the tiny GPT-2 in place of SmolLM2,
float32, gloo) in well under a minute: a check of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, machine_stamp, print_table, write_json
from device_parts import PARTS, Budget, Plan

RESULTS = RESULTS_DIR / "device.json"


def default_out() -> Path:
    """``$OUT/device.json`` when ``$OUT`` is a folder (the device tool's: what is written there
    comes back), else ``benchmarks/results/device.json``."""
    out = os.environ.get("OUT")
    if out and Path(out).is_dir():
        return Path(out) / "device.json"
    return RESULTS


DEFAULT_BUDGET_S = 420.0


def run_parts(
    plan: Plan,
    budget: Budget,
    names: list[str],
    save: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Each part in turn: its result, its exact error, or the reason it was skipped.

    :param save: called with the parts so far after each one (a run cut short keeps them).
    """
    parts: dict[str, Any] = {}
    for name in names:
        fn, estimate = PARTS[name]
        est = estimate(plan)
        reason = budget.refuse(est)
        start = time.perf_counter()
        entry: dict[str, Any] = {"estimate_s": est}
        if plan.cuda:
            torch.cuda.reset_peak_memory_stats(plan.device)
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
        if plan.cuda:
            entry["peak_cuda_mb"] = torch.cuda.max_memory_allocated(plan.device) / 2**20
        parts[name] = entry
        if save is not None:
            save(parts)
        print(f"[{budget.elapsed():6.1f} s] {name}: {entry['status']}", flush=True)
    return parts


def _summary_rows(parts: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for name, entry in parts.items():
        rows.append([name, entry["status"], round(entry["seconds"], 1), _headline(name, entry)])
    return rows


def _decode_rows(parts: dict[str, Any]) -> list[list[Any]]:
    entry = parts.get("decode", {})
    if entry.get("status") != "ok":
        return []
    rows: list[list[Any]] = []
    for case in entry["result"]["cases"]:
        if case.get("status") != "ok":
            continue
        rows.append([case["batch"], case["context"], "bound", round(case["bound_tok_s"]), 1.0, "-"])
        for side, tok_s in case["tok_s"].items():
            ratio = case["agent_over_bare"].get(side, {}).get("median", "-")
            rows.append([case["batch"], case["context"], side, round(tok_s),
                         case["fraction_of_bound"][side], ratio])  # fmt: skip
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
            best = max(tok, key=tok.get, default=None)
            if best is None:
                out.append(f"B={case['batch']}: every side failed")
                continue
            out.append(
                f"B={case['batch']}: {best} {tok[best]:.0f} tok/s "
                f"({case['fraction_of_bound'][best]:.2f} of bound)"
                + (f", {len(case['errors'])} side(s) failed" if case.get("errors") else "")
            )
        return "; ".join(out)
    if name == "agent_vs_bare":
        return "; ".join(
            f"{c['model']} {c['agent_over_bare']['median']:.2f}" if "error" not in c
            else f"error {c['error'][:40]}"
            for c in r["cases"]
        )  # fmt: skip
    if name == "iteration_split":
        return "; ".join(
            f"{algo} " + "/".join(f"{s:.2f}" for s in split["seconds"].values())
            if "error" not in split else f"{algo} error {split['error'][:40]}"
            for algo, split in r["algorithms"].items()
        )  # fmt: skip
    return ""


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _positive(parser: argparse.ArgumentParser, flag: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        parser.error(f"{flag}={value} must be a positive integer")
    return value


def _ints(parser: argparse.ArgumentParser, flag: str, text: str | None) -> list[int] | None:
    """``"64,256"`` -> ``[64, 256]``; a clear error for anything but positive integers."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        parser.error(f"{flag}={text!r} must be positive integers separated by commas")
    return values


def _pair(parser: argparse.ArgumentParser, flag: str, text: str | None) -> tuple[int, int] | None:
    values = _ints(parser, flag, text)
    if values is None:
        return None
    if len(values) != 2:
        parser.error(f"{flag}={text!r} must be two integers: rows,tokens")
    return values[0], values[1]


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
    parser.add_argument(
        "--decode-batches", default=None, help="decode batch sizes, e.g. 64,256 (the default)"
    )
    parser.add_argument("--decode-tokens", type=int, default=None, help="decode new tokens (128)")
    parser.add_argument("--rounds", type=int, default=None, help="decode timed rounds (3)")
    parser.add_argument(
        "--iter-size", default=None, help="iteration split rows,tokens, e.g. 32,64 (the default)"
    )
    parser.add_argument("--commit", default=None, help="commit to stamp (no .git on the device)")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON output path (default: see default_out)"
    )
    args = parser.parse_args(argv)
    out: Path = args.out or default_out()
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
    plan = Plan(
        device=device,
        quick=args.quick,
        decode_batches=_ints(parser, "--decode-batches", args.decode_batches),
        decode_tokens=_positive(parser, "--decode-tokens", args.decode_tokens),
        rounds=_positive(parser, "--rounds", args.rounds),
        iter_size=_pair(parser, "--iter-size", args.iter_size),
    )
    stamp = machine_stamp()
    if args.commit:
        stamp["commit"] = args.commit
    result: dict[str, Any] = {
        "machine": stamp,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": _version("transformers"),
        "quick": args.quick,
        "budget_s": args.budget_s,
        "load_before": list(os.getloadavg()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        result["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        result["gpu_sms"] = props.multi_processor_count

    def save(parts: dict[str, Any]) -> None:
        result["parts"] = parts
        result["total_s"] = budget.elapsed()
        result["load_after"] = list(os.getloadavg())
        write_json(out, result)

    save(run_parts(plan, budget, names, save))
    print_table(
        f"Device check ({result['gpu'] or device}, {result['total_s']:.0f} s)",
        ["part", "status", "s", "result"],
        _summary_rows(result["parts"]),
    )
    decode_rows = _decode_rows(result["parts"])
    if decode_rows:
        print_table(
            "Decode tokens/s against the memory-bandwidth bound",
            ["B", "context", "side", "tok/s", "of bound", "agent/bare"],
            decode_rows,
        )
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
