"""Where a rollout step's time goes: ms per step of the bare KV-cache loop and of the agent's
rollout, then a cProfile of each (host-side Python time; on a GPU the kernels run asynchronously,
so the profile shows what the CPU does while it issues them and where it waits at a sync).

Run: ``python benchmarks/profile_rollout.py [--device cuda] [--bf16] [--layers 2] [--batch 16]
[--new-tokens 256] [--top 18]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout import _sync, rollout_pair

from marlhf.envs import BatchedTokenEnv
from marlhf.models import tiny_gpt2


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--top", type=int, default=18, help="profile rows printed")
    args = p.parse_args(argv)
    dev, n = torch.device(args.device), args.new_tokens
    env = BatchedTokenEnv("DelayedChoice", num_envs=args.batch, device=dev, seed=0, horizon=n)
    model = tiny_gpt2(env.codec, n_layer=args.layers, n_embd=128, n_head=4, n_positions=n + 8)
    _, bare, agent = rollout_pair(
        model, env, n, n_epochs=1, batch_size=args.batch, seed=0, device=dev, bf16=args.bf16
    )
    for name, fn in (("bare", bare), ("agent", agent)):
        fn()
        _sync(dev)
        start = time.perf_counter()
        fn()
        _sync(dev)
        ms = (time.perf_counter() - start) * 1000 / n
        print(f"== {name}: {ms:.3f} ms/step ({args.layers} layers, B={args.batch}, N={n}, "
              f"bf16={args.bf16}, {dev})", flush=True)  # fmt: skip
        prof = cProfile.Profile()
        prof.enable()
        fn()
        _sync(dev)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
        print(out.getvalue(), flush=True)


if __name__ == "__main__":
    main()
