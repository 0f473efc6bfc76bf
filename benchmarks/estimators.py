"""What the credit-assignment estimators cost.

1. **Continuations from a forked cache** (``marlhf.agents.vine``), at 64 samples x 128 tokens,
   4 branch points per sample, K = 4 continuations each (1,024 continuation rows, run in chunks
   of 64 rows as the agent does): the cost of *starting* a continuation (fork: a batch-indexed
   copy of the cache plus one token; against a fresh prefill of prompt + prefix), and the cost
   of each *generated* token (decoding from forked caches against the plain rollout's decoding).
2. **One iteration per preset** (collect + score + estimate + update) on DelayedChoice at the
   same batch, against token PPO's, measured side by side in alternating repeats; critic-free
   estimators run no value forward and no value loss, Monte-Carlo ones pay for their
   continuations (counted in ``mc_tokens``).

Run: ``python benchmarks/estimators.py [--quick]``; writes ``benchmarks/results/estimators.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import RESULTS_DIR, machine_stamp, print_table, write_json

from marlhf.agents import PPO, CausalLMActorCritic
from marlhf.agents.vine import fork_state
from marlhf.models import tiny_gpt2


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def fork_costs(
    batch: int, length: int, branches: int, k: int, prompt: int, chunk: int, vocab: int
) -> dict[str, Any]:
    """Seconds per continuation start and per generated token: fork vs re-prefill vs plain."""
    torch.manual_seed(0)
    policy = CausalLMActorCritic(tiny_gpt2(vocab, n_layer=2, n_embd=128), reference=None)
    gen = torch.Generator().manual_seed(0)
    window = torch.randint(1, vocab, (batch, prompt), generator=gen)
    window_mask = torch.ones_like(window)
    response = torch.randint(1, vocab, (batch, length), generator=gen)

    # The plain rollout: prefill, then one token per step for the whole batch.
    state = policy.start(window, window_mask)
    start = time.perf_counter()
    for t in range(length - 1):
        state = policy.advance(state, response[:, t])
    plain_per_token = (time.perf_counter() - start) / (batch * (length - 1))

    # Branch points: evenly spread, K rows each; chunks of `chunk` rows.
    cols = torch.linspace(0, length - 2, branches).round().long()
    rows = torch.arange(batch).repeat_interleave(branches * k)
    starts = cols.repeat(batch).repeat_interleave(k)
    steps = 16  # tokens generated per continuation in the decode measurement
    fork_s = prefill_s = decode_fork_s = decode_prefill_s = 0.0
    for begin in range(0, len(rows), chunk):
        r, c = rows[begin : begin + chunk], starts[begin : begin + chunk]
        t0 = time.perf_counter()
        forked = fork_state(policy, state, window, window_mask, response, r, c)
        fork_s += time.perf_counter() - t0
        # The same states by prefilling prompt + prefix (left-padded to the longest prefix).
        width = prompt + int(c.max())
        ids = torch.zeros(len(r), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (row, t) in enumerate(zip(r.tolist(), c.tolist(), strict=True)):
            seq = torch.cat([window[row], response[row, :t]])
            ids[i, width - len(seq) :] = seq
            mask[i, width - len(seq) :] = 1
        t0 = time.perf_counter()
        fresh = policy.start(ids, mask)
        prefill_s += time.perf_counter() - t0
        tokens = torch.randint(1, vocab, (len(r), steps), generator=gen)
        for name, st in (("fork", forked), ("prefill", fresh)):
            t0 = time.perf_counter()
            for j in range(steps):
                st = policy.advance(st, tokens[:, j])
            elapsed = time.perf_counter() - t0
            if name == "fork":
                decode_fork_s += elapsed
            else:
                decode_prefill_s += elapsed
    n = len(rows)
    per_token_fork = decode_fork_s / (n * steps)
    return {
        "batch": batch,
        "length": length,
        "branch_points": branches,
        "k": k,
        "continuations": n,
        "chunk_rows": chunk,
        "plain_rollout_s_per_token": plain_per_token,
        "fork_start_s": fork_s / n,
        "prefill_start_s": prefill_s / n,
        "prefill_over_fork_start": prefill_s / fork_s,
        "forked_decode_s_per_token": per_token_fork,
        "prefilled_decode_s_per_token": decode_prefill_s / (n * steps),
        "forked_token_over_plain_token": per_token_fork / plain_per_token,
        # A continuation of `steps` tokens, start included, per generated token.
        "fork_continuation_over_plain_token": (fork_s + decode_fork_s)
        / (n * steps)
        / plain_per_token,
        "prefill_continuation_over_fork_continuation": (prefill_s + decode_prefill_s)
        / (fork_s + decode_fork_s),
    }


PRESETS = ("ppo", "ma-ppo", "grpo", "dr-grpo", "rloo", "reinforce++", "dapo", "gspo", "remax")
MC_PRESETS = ("vineppo", "spo-chain")


def iteration_costs(num_envs: int, horizon: int, repeats: int, mc: bool) -> list[dict[str, Any]]:
    """Seconds per iteration of each preset, alternating presets within each repeat."""
    import gymnasium as gym

    import marlhf  # noqa: F401  (registers the env ids)

    names = PRESETS + (MC_PRESETS if mc else ())
    algos = {}
    for name in names:
        env = gym.make_vec(
            "marlhf/DelayedChoice-v0",
            num_envs=num_envs,
            horizon=horizon,
            vectorization_mode="vector_entry_point",
        )
        algos[name] = PPO(
            tiny_gpt2(env.codec, n_layer=2, n_embd=64, n_head=4),
            env,
            preset=["toy", name],
            mask_actions=True,
            seed=0,
            device="cpu",
        )
        algos[name].learn(num_envs * horizon)  # warm-up iteration
    times: dict[str, list[float]] = {n: [] for n in names}
    tokens: dict[str, list[int]] = {n: [] for n in names}
    for _ in range(repeats):
        for name, algo in algos.items():
            before = algo.num_timesteps
            times[name].append(
                _timed(lambda a=algo: a.learn(num_envs * horizon, reset_num_timesteps=False))
            )
            tokens[name].append(algo.num_timesteps - before)
    base = statistics.median(times["ppo"])
    rows = []
    for name in names:
        med = statistics.median(times[name])
        algo = algos[name]
        rows.append(
            {
                "preset": name,
                "estimator": algo.config.estimator,
                "critic": bool(algo.rollout_buffer.has_values),
                "seconds_per_iteration": med,
                "over_ppo": med / base,
                "tokens_per_iteration": statistics.median(tokens[name]),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no MC presets")
    parser.add_argument("--out", default=str(RESULTS_DIR / "estimators.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    fork = fork_costs(64, 128, 4, 4, prompt=16, chunk=64, vocab=4096)
    print_table(
        "Continuations from a forked cache (64 x 128 tokens, 4 branch points, K = 4)",
        ["quantity", "value"],
        [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in fork.items()],
    )
    rows = iteration_costs(32, 32, repeats=2 if args.quick else 5, mc=not args.quick)
    print_table(
        "One iteration per preset (DelayedChoice, 32 envs x 32 tokens, 1 thread)",
        ["preset", "estimator", "critic", "s / iteration", "x PPO", "tokens / iteration"],
        [
            [
                r["preset"],
                r["estimator"],
                r["critic"],
                f"{r['seconds_per_iteration']:.3f}",
                f"{r['over_ppo']:.2f}",
                r["tokens_per_iteration"],
            ]
            for r in rows
        ],
    )
    write_json(
        args.out,
        {"machine": machine_stamp(), "quick": args.quick, "fork": fork, "iterations": rows},
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
