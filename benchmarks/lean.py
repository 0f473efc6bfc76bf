"""The lean MLP and RMSNorm (:mod:`marlhf.policy.lean`) on the SmolLM2-135M architecture: what
the update's graph saves, its time, and its gradients, against the eager forms.

One policy (the SmolLM2-135M architecture with random weights, no download; the shared value
head) scores ``batch`` rows of 16 prompt and 32 response tokens and back-propagates the
log-probs and values, with the lean forms installed and removed in turn on the same weights:

- ``saved_mb``: the distinct storages the autograd graph saved for the backward, parameters
  excluded (what the backward needs resident at its start);
- ``seconds``: forward and backward, interleaved rounds after a warm-up round (the order
  alternating), median and range per side and of the per-round ratio lean / plain;
- ``gradients_bitwise_equal``: every parameter's gradient, lean against plain (``torch.equal``).

Run: ``python benchmarks/lean.py [--batch 8] [--rounds 4]``; writes
``benchmarks/results/lean.json`` with the load average before and after.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_stamp, write_json
from decode import smollm2_architecture

from marlhf.policy import lean
from marlhf.policy.actor_critic import CausalLMActorCritic
from marlhf.policy.lean import saved_bytes

OUT = RESULTS_DIR / "lean.json"
PROMPT, RESPONSE = 16, 32


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(batch: int, rounds: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    policy = CausalLMActorCritic(smollm2_architecture(), reference=None)
    policy.train()
    ids = torch.randint(0, 49_152, (batch, PROMPT + RESPONSE))
    mask = torch.ones_like(ids)
    response = torch.ones(batch, RESPONSE, dtype=torch.bool)
    params = {p.untyped_storage().data_ptr() for p in policy.parameters()}

    def loss() -> torch.Tensor:
        logp, _, values = policy.evaluate_actions(ids, mask, response, entropy="none")
        assert values is not None
        return -(logp.mean() + values.mean())

    def use(side: str) -> None:
        (lean.make_plain if side == "plain" else lean.make_lean)(policy.model)

    saved = {}
    for side in ("plain", "lean"):
        use(side)
        saved[side] = saved_bytes(loss(), params) / 2**20
    seconds: dict[str, list[float]] = {"plain": [], "lean": []}
    grads: dict[str, list[torch.Tensor]] = {}
    for r in range(rounds + 1):  # round 0 warms up
        for side in ("lean", "plain") if r % 2 == 0 else ("plain", "lean"):
            use(side)
            policy.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss().backward()
            elapsed = time.perf_counter() - start
            if r:
                seconds[side].append(elapsed)
            grads[side] = [p.grad for p in policy.trainable_parameters() if p.grad is not None]
    ratios = [a / b for a, b in zip(seconds["lean"], seconds["plain"], strict=True)]
    equal = len(grads["lean"]) == len(grads["plain"]) and all(
        torch.equal(a, b) for a, b in zip(grads["lean"], grads["plain"], strict=True)
    )
    return {
        "batch": batch,
        "tokens_per_row": PROMPT + RESPONSE,
        "rounds": rounds,
        "saved_mb": saved,
        "saved_lean_over_plain": saved["lean"] / saved["plain"],
        "seconds": {side: _summary(v) for side, v in seconds.items()},
        "lean_over_plain": _summary(ratios),
        "gradients_bitwise_equal": equal,
        "lean_modules": lean.lean_modules(policy.model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if args.batch < 1 or args.rounds < 1:
        parser.error(f"--batch={args.batch} and --rounds={args.rounds} must be at least 1")
    load_before = list(os.getloadavg())
    result = measure(args.batch, args.rounds)
    result["load_before"] = load_before
    result["load_after"] = list(os.getloadavg())
    result["machine"] = machine_stamp()
    write_json(OUT, result)
    print(
        f"lean: saved {result['saved_mb']['plain']:.0f} -> {result['saved_mb']['lean']:.0f} MB, "
        f"time lean/plain {result['lean_over_plain']['median']:.3f}, gradients bitwise equal: "
        f"{result['gradients_bitwise_equal']}; {OUT}"
    )


if __name__ == "__main__":
    main()
