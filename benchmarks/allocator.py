"""The time cost of marlhf's allocator policy (:mod:`marlhf.allocator`), side by side.

With the policy, glibc gives every block of 128 KiB or more a memory map of its own and returns
it when freed, so each such block's pages are faulted in (and zeroed by the kernel) again;
glibc's own dynamic threshold serves them from its heap instead. The cost, if any, is in the
update, whose activations are blocks of a few MiB. Each round runs one process per side, the
order alternating from round to round: ``policy`` (the default) and ``glibc``
(``MARLHF_MMAP_THRESHOLD=glibc``). A process builds a policy of the SmolLM2-135M architecture
(seeded random weights, ``layers`` of its 30 blocks, no download) and Adam, runs one warm-up
update (forward, backward, step; Adam's moments are made there), then times ``updates`` more;
its time is their median. Also kept per process: the peak RSS of the timed updates. One thread.

Run: ``python benchmarks/allocator.py [--rounds 3] [--layers 8] [--batch 32]``; writes
``benchmarks/results/allocator.json``.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_stamp, write_json

OUT = RESULTS_DIR / "allocator.json"
#: The sides: name -> MARLHF_MMAP_THRESHOLD (None: unset, the policy's default).
SIDES: dict[str, str | None] = {"policy": None, "glibc": "glibc"}
PROMPT, RESPONSE = 16, 32


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(layers: int, batch: int, updates: int) -> dict[str, Any]:
    """One side's process: warm-up update, then ``updates`` timed ones."""
    import torch
    from decode import smollm2_architecture

    from marlhf import allocator
    from marlhf.policy.actor_critic import CausalLMActorCritic

    torch.set_num_threads(1)
    applied = allocator.apply_allocator_policy()  # (what building an agent does)
    model = smollm2_architecture()
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
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

    update()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    seconds = []
    for _ in range(updates):
        start = time.perf_counter()
        update()
        seconds.append(time.perf_counter() - start)
    return {
        "seconds": statistics.median(seconds),
        "peak_rss_mb": _rss_kb("VmHWM") / 1024,
        "applied_threshold": applied,
    }


def _run_side(side: str, layers: int, batch: int, updates: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "MARLHF_MMAP_THRESHOLD"}
    if SIDES[side] is not None:
        env["MARLHF_MMAP_THRESHOLD"] = str(SIDES[side])
    args = ["--child", "--layers", str(layers), "--batch", str(batch), "--updates", str(updates)]
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
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("rounds", "layers", "batch", "updates"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)} must be at least 1")
    if args.child:
        print(json.dumps(child(args.layers, args.batch, args.updates)))
        return
    load_before = list(os.getloadavg())
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    ratios = []
    for r in range(args.rounds):
        order = list(SIDES) if r % 2 == 0 else list(SIDES)[::-1]
        for side in order:
            runs[side].append(_run_side(side, args.layers, args.batch, args.updates))
            print(f"allocator: round {r}: {side}: {runs[side][-1]}", flush=True)
        ratios.append(runs["policy"][-1]["seconds"] / runs["glibc"][-1]["seconds"])
    result = {
        "layers": args.layers,
        "batch": args.batch,
        "tokens_per_row": PROMPT + RESPONSE,
        "updates_per_process": args.updates,
        "rounds": args.rounds,
        "seconds": {s: _spread([x["seconds"] for x in runs[s]]) for s in SIDES},
        "peak_rss_mb": {s: _spread([x["peak_rss_mb"] for x in runs[s]]) for s in SIDES},
        "applied_threshold": {s: runs[s][0]["applied_threshold"] for s in SIDES},
        "policy_over_glibc": _spread(ratios),
        "load_before": load_before,
        "load_after": list(os.getloadavg()),
        "machine": machine_stamp(),
    }
    write_json(OUT, result)
    print(f"allocator: policy/glibc {result['policy_over_glibc']}; {OUT}")


if __name__ == "__main__":
    main()
