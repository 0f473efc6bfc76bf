"""Per-token overhead of the agent's rollout over the bare KV-cache loop, in operations and time.

On the smallest grid cell of ``benchmarks/rollout.py`` (tiny GPT-2 2 x 128, batch 16, 64 new
tokens on ``DelayedChoice``) a step costs about as much per torch operation as per FLOP, so the
agent's extra operations (env step, masks, buffer) are what separates it from the bare loop:

- ``ops_per_step``: aten operations per generated token (a ``TorchDispatchMode`` counting every
  call) of the bare loop and of the agent's rollout, and the agent's extra operations by name;
- ``agent_over_bare``: tokens/s of the agent's rollout over the bare loop's, best of alternating
  runs (``rollout._alternate``, at least ``--min-seconds`` of bare loop);
- ``pair_ratios`` (with ``--pairs``): that many more bare/agent pairs run back to back, each
  pair's ratio (bare time over agent time): median, quartiles and range. A pair's two runs share
  the load of their moment, so the median resists a shared machine's swings better than a ratio
  of bests.

Run: ``python benchmarks/rollout_ops.py --label after``; merges ``{label: entry}`` into
``benchmarks/results/rollout_ops.json`` (run it with another checkout first on ``PYTHONPATH`` to
record that code under another label).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_stamp, read_json, write_json
from rollout import _alternate, _timed, rollout_pair

from marlhf.envs import BatchedTokenEnv
from marlhf.models import tiny_gpt2

OUT = RESULTS_DIR / "rollout_ops.json"
LAYERS, BATCH, NEW = 2, 16, 64


class _Count(TorchDispatchMode):
    """Counts every aten operation dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls[str(func)] += 1
        return func(*args, **(kwargs or {}))


def pair_ratios(bare: Any, agent: Any, pairs: int, device: torch.device) -> dict[str, Any]:
    """Bare-loop time over agent time of ``pairs`` pairs run back to back (bare first):
    ``median``, ``q1``, ``q3``, ``min``, ``max`` and ``pairs``."""
    if pairs < 2:
        raise ValueError(f"rollout_ops: pairs={pairs} must be at least 2 (--pairs)")
    ratios = sorted(_timed(bare, device) / _timed(agent, device) for _ in range(pairs))
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return {
        "median": statistics.median(ratios),
        "q1": q1,
        "q3": q3,
        "min": ratios[0],
        "max": ratios[-1],
        "pairs": pairs,
    }


def measure(min_seconds: float, pairs: int = 0) -> dict[str, Any]:
    """The entry of one run (see the module docstring); ``pairs`` > 0 adds ``pair_ratios``."""
    torch.set_num_threads(1)
    device = torch.device("cpu")
    env = BatchedTokenEnv("DelayedChoice", num_envs=BATCH, device=device, seed=0, horizon=NEW)
    model = tiny_gpt2(env.codec, n_layer=LAYERS, n_embd=128, n_head=4, n_positions=NEW + 8)
    _, bare, agent = rollout_pair(
        model, env, NEW, n_epochs=1, batch_size=BATCH, seed=0, device=device
    )
    counts = {}
    for name, fn in (("bare", bare), ("agent", agent)):
        fn()
        with _Count() as count:
            fn()
        counts[name] = count.calls
    extra = {
        op: (counts["agent"][op] - counts["bare"][op]) / NEW
        for op in set(counts["agent"]) | set(counts["bare"])
        if counts["agent"][op] != counts["bare"][op]
    }
    bare_s, agent_s, alternated = _alternate(
        bare, agent, 3, device, warmup=True, min_seconds=min_seconds
    )
    paired = {"pair_ratios": pair_ratios(bare, agent, pairs, device)} if pairs else {}
    return {
        "model": f"tiny GPT-2 {LAYERS} x 128",
        "batch": BATCH,
        "new_tokens": NEW,
        "ops_per_step": {k: sum(v.values()) / NEW for k, v in counts.items()},
        "agent_extra_ops_by_name": dict(sorted(extra.items(), key=lambda kv: -abs(kv[1]))),
        "bare_s": bare_s,
        "agent_s": agent_s,
        "agent_over_bare": bare_s / agent_s,
        "pairs": alternated,
        **paired,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", required=True, help="the entry's name (e.g. before, after)")
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument(
        "--pairs", type=int, default=0, help="bare/agent pairs for pair_ratios (0: none)"
    )
    args = parser.parse_args()
    load_before = list(os.getloadavg())
    entry = measure(args.min_seconds, args.pairs)
    entry["load_before"] = load_before
    entry["load_after"] = list(os.getloadavg())
    entry["machine"] = machine_stamp()
    data = read_json(OUT) or {}
    data[args.label] = entry
    write_json(OUT, data)
    print(
        f"rollout_ops {args.label}: agent {entry['ops_per_step']['agent']:.1f} ops/step, bare "
        f"{entry['ops_per_step']['bare']:.1f}; agent/bare {entry['agent_over_bare']:.3f}"
        + (f", pairs median {entry['pair_ratios']['median']:.3f}" if args.pairs else "")
        + f"; {OUT}"
    )


if __name__ == "__main__":
    main()
