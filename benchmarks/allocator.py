"""The time cost of marlhf's allocator policy (:mod:`marlhf.allocator`), side by side.

With the policy, glibc gives every block of 128 KiB or more a memory map of its own and returns
it when freed, so each such block's pages are faulted in (and zeroed by the kernel) again;
glibc's own dynamic threshold serves them from its heap instead. The cost, if any, is in the
update, whose activations are blocks of a few MiB. Each round runs one process per side, the
order rotating from round to round: ``policy`` (the default, 128 KiB), ``2mib``
(``MARLHF_MMAP_THRESHOLD=2097152``: only blocks of 2 MiB or more mapped) and ``glibc``
(``MARLHF_MMAP_THRESHOLD=glibc``). A process builds a policy of the SmolLM2-135M architecture
(seeded random weights, ``layers`` of its 30 blocks, no download) and Adam, runs one warm-up
update (forward, backward, step; Adam's moments are made there), then times ``updates`` more;
its time is their median. Also kept per process: the peak RSS of the timed updates and the
minor page faults per timed update (median; the kernel's count, which the load does not
change). One thread.

``--model tiny`` measures the other end: whole PPO iterations of a 2-layer, 128-wide toy GPT-2
(DelayedChoice, horizon 64, 32 envs, minibatches of 16, 4 epochs), sides ``128kib``
(``MARLHF_MMAP_THRESHOLD=131072``, forced: the policy leaves a model this small alone) and
``glibc``; the time is per iteration, the page faults per iteration.

Run: ``python benchmarks/allocator.py [--rounds 3] [--layers 8] [--batch 32]``; writes
``benchmarks/results/allocator.json`` (``--model tiny``: ``allocator_tiny.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_stamp, proc_status_kb, reset_peak_rss, write_json

OUT = RESULTS_DIR / "allocator.json"
OUT_TINY = RESULTS_DIR / "allocator_tiny.json"
#: The sides per model: name -> MARLHF_MMAP_THRESHOLD (None: unset, the policy's default).
SIDES_BY_MODEL: dict[str, dict[str, str | None]] = {
    "smollm2": {"policy": None, "2mib": str(2 << 20), "glibc": "glibc"},
    "tiny": {"128kib": str(128 << 10), "glibc": "glibc"},
}
PROMPT, RESPONSE = 16, 32


def _minor_faults() -> int:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])  # minflt: the 10th field, the 8th after the command's name


def child(layers: int, batch: int, updates: int) -> dict[str, Any]:
    """One side's process: warm-up update, then ``updates`` timed ones."""
    import torch
    from decode import smollm2_architecture

    from marlhf import allocator
    from marlhf.policy.actor_critic import CausalLMActorCritic

    torch.set_num_threads(1)
    model = smollm2_architecture()
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    # (what building an agent does)
    applied = allocator.apply_allocator_policy(sum(p.numel() for p in model.parameters()))
    policy = CausalLMActorCritic(model, reference=None)
    policy.train()
    optimizer = torch.optim.Adam(list(policy.trainable_parameters()), lr=1e-6, eps=1e-5)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49_152, (batch, PROMPT + RESPONSE), generator=generator)
    mask = torch.ones_like(ids)
    response = torch.ones(batch, RESPONSE, dtype=torch.bool)

    def update() -> None:
        logp, _, values = policy.evaluate_actions(ids, mask, response, entropy="none")
        assert values is not None
        (-(logp.mean() + values.mean())).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _timed(update, updates, applied)


def _timed(work: Callable[[], object], times: int, applied: int | None) -> dict[str, Any]:
    """Run ``work`` once (warm-up), then ``times`` timed runs: their median seconds and minor
    page faults, and the peak RSS over the timed runs."""
    work()
    reset_peak_rss()
    seconds, faults = [], []
    for _ in range(times):
        start, faulted = time.perf_counter(), _minor_faults()
        work()
        seconds.append(time.perf_counter() - start)
        faults.append(_minor_faults() - faulted)
    return {
        "seconds": statistics.median(seconds),
        "minor_faults": statistics.median(faults),
        "peak_rss_mb": proc_status_kb("VmHWM") / 1024,
        "applied_threshold": applied,
    }


def child_tiny(updates: int) -> dict[str, Any]:
    """One side's process for ``--model tiny``: a warm-up PPO iteration, then ``updates`` timed
    ones (the policy is applied by building the agent, as in a run)."""
    import gymnasium as gym
    import torch

    from marlhf import PPO, allocator
    from marlhf.models import tiny_gpt2

    torch.set_num_threads(1)
    env = gym.make_vec(
        "marlhf/DelayedChoice-v0",
        num_envs=32,
        horizon=64,
        vectorization_mode="vector_entry_point",
    )
    model = PPO(
        tiny_gpt2(env.codec, n_layer=2, n_embd=128, n_head=4),  # type: ignore[attr-defined]
        env,
        batch_size=16,
        n_epochs=4,
        learning_rate=1e-3,
        seed=0,
    )
    return _timed(
        lambda: model.learn(32 * 64, reset_num_timesteps=False),
        updates,
        allocator.applied_threshold(),
    )


def _run_side(model: str, side: str, layers: int, batch: int, updates: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "MARLHF_MMAP_THRESHOLD"}
    threshold = SIDES_BY_MODEL[model][side]
    if threshold is not None:
        env["MARLHF_MMAP_THRESHOLD"] = threshold
    args = ["--child", "--model", model, "--layers", str(layers), "--batch", str(batch)]
    args += ["--updates", str(updates)]
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--model", choices=sorted(SIDES_BY_MODEL), default="smollm2")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("rounds", "layers", "batch", "updates"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)} must be at least 1")
    if args.child:
        if args.model == "tiny":
            print(json.dumps(child_tiny(args.updates)))
        else:
            print(json.dumps(child(args.layers, args.batch, args.updates)))
        return
    sides = SIDES_BY_MODEL[args.model]
    load_before = list(os.getloadavg())
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    names = list(sides)
    ratios: dict[str, list[float]] = {side: [] for side in names if side != "glibc"}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for side in order:
            runs[side].append(_run_side(args.model, side, args.layers, args.batch, args.updates))
            print(f"allocator: round {r}: {side}: {runs[side][-1]}", flush=True)
        for side in ratios:
            ratios[side].append(runs[side][-1]["seconds"] / runs["glibc"][-1]["seconds"])
    result = {
        "model": args.model,
        "layers": args.layers,
        "batch": args.batch,
        "tokens_per_row": PROMPT + RESPONSE,
        "updates_per_process": args.updates,
        "rounds": args.rounds,
        "seconds": {s: _spread([x["seconds"] for x in runs[s]]) for s in sides},
        "peak_rss_mb": {s: _spread([x["peak_rss_mb"] for x in runs[s]]) for s in sides},
        "minor_faults": {s: _spread([x["minor_faults"] for x in runs[s]]) for s in sides},
        "applied_threshold": {s: runs[s][0]["applied_threshold"] for s in sides},
        "over_glibc": {side: _spread(values) for side, values in ratios.items()},
        "load_before": load_before,
        "load_after": list(os.getloadavg()),
        "machine": machine_stamp(),
    }
    out = OUT_TINY if args.model == "tiny" else OUT
    write_json(out, result)
    print(f"allocator: over glibc {result['over_glibc']}; {out}")


if __name__ == "__main__":
    main()
