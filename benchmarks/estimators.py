"""What the credit-assignment estimators cost.

1. **Continuations from a forked cache** (``marlhf.credit.vine``), at 64 samples x 128 tokens,
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
from typing import Any, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import RESULTS_DIR, machine_stamp, print_table, read_json, write_json
from provenance import describe

from marlhf.algorithms import PPO, CausalLMActorCritic
from marlhf.credit.vine import fork_state
from marlhf.models import tiny_gpt2


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


#: Tokens generated per continuation in the decode measurement of :func:`fork_costs`.
CONTINUATION_TOKENS = 16
#: The iteration measurement's setting: DelayedChoice episodes and their horizon, and the
#: tiny GPT-2's layers and width (its table in ``docs/estimators.md`` states them).
ITERATION = {"num_envs": 32, "horizon": 32, "n_layer": 2, "n_embd": 64}


@torch.no_grad()
def fork_costs(
    batch: int, length: int, branches: int, k: int, prompt: int, chunk: int, vocab: int
) -> dict[str, Any]:
    """Seconds per continuation start and per generated token: fork vs re-prefill vs plain."""
    torch.manual_seed(0)
    policy = CausalLMActorCritic(tiny_gpt2(vocab, n_layer=2, n_embd=128), reference=None)
    gen = torch.Generator().manual_seed(0)
    window = torch.randint(1, vocab, (batch, prompt), generator=gen)
    # Left-padded prompts of 8..16 tokens, as the env's window holds them.
    lengths = torch.randint(prompt // 2, prompt + 1, (batch,), generator=gen)
    window_mask = (torch.arange(prompt)[None, :] >= prompt - lengths[:, None]).long()
    window = window * window_mask
    response = torch.randint(1, vocab, (batch, length), generator=gen)

    # The plain rollout: prefill, then one token per step for the whole batch. Its steps are
    # timed in pieces interleaved with the continuations below (this machine's load varies).
    plain = policy.start(window, window_mask)
    state = plain
    for t in range(length - 1):
        state = policy.advance(state, response[:, t])
    plain = policy.start(window, window_mask)
    plain_t, plain_s = 0, 0.0

    # Branch points: evenly spread, K rows each; chunks of `chunk` rows.
    cols = torch.linspace(0, length - 2, branches).round().long()
    rows = torch.arange(batch).repeat_interleave(branches * k)
    starts = cols.repeat(batch).repeat_interleave(k)
    order = torch.argsort(starts, stable=True)  # as monte_carlo_values orders its branches
    rows, starts = rows[order], starts[order]
    steps = CONTINUATION_TOKENS
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
        piece = min(length - 1 - plain_t, max(1, (length - 1) // (len(rows) // chunk)))
        t0 = time.perf_counter()
        for _ in range(piece):
            plain = policy.advance(plain, response[:, plain_t])
            plain_t += 1
        plain_s += time.perf_counter() - t0
    while plain_t < length - 1:  # the rest of the plain rollout, if any
        t0 = time.perf_counter()
        plain = policy.advance(plain, response[:, plain_t])
        plain_s += time.perf_counter() - t0
        plain_t += 1
    plain_per_token = plain_s / (batch * (length - 1))
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
            tiny_gpt2(
                cast(Any, env).codec,
                n_layer=ITERATION["n_layer"],
                n_embd=ITERATION["n_embd"],
                n_head=4,
            ),
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
                "estimator": algo.config.credit.estimator,
                "critic": algo.rollout_buffer is not None and algo.rollout_buffer.has_values,
                "seconds_per_iteration": med,
                "over_ppo": med / base,
                "tokens_per_iteration": statistics.median(tokens[name]),
            }
        )
    return rows


DOC = Path(__file__).resolve().parent.parent / "docs" / "estimators.md"


def render_doc(data: dict[str, Any]) -> str:
    """``docs/estimators.md`` from the JSON this script wrote (no number typed by hand)."""
    f = data["fork"]
    # Files written before the settings were recorded ran at this module's constants.
    steps = f.get("continuation_tokens", CONTINUATION_TOKENS)
    it = data.get("iteration", ITERATION)
    lines = [
        "# What the estimators cost",
        "",
        "Rendered by `python benchmarks/estimators.py` from `benchmarks/results/estimators.json`"
        f" (commit {describe(data['machine'], RESULTS_DIR / 'estimators.json')},"
        f" {data['machine'].get('cpu', '?')},"
        " one torch thread; other jobs shared this machine, so ratios are measured side by side"
        " and only they are meant to be read).",
        "",
        "## Continuations from a forked KV cache",
        "",
        f"{f['batch']} samples x {f['length']} tokens, {f['branch_points']} branch points per "
        f"sample, K = {f['k']}: {f['continuations']} continuations in chunks of "
        f"{f['chunk_rows']} rows (`marlhf.credit.vine`).",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| starting a continuation: re-prefill / fork | {f['prefill_over_fork_start']:.1f}x |",
        f"| a generated token: forked decoding / the plain rollout's | "
        f"{f['forked_token_over_plain_token']:.2f}x |",
        f"| a {steps}-token continuation, start included, per token / plain rollout token | "
        f"{f['fork_continuation_over_plain_token']:.2f}x |",
        f"| a {steps}-token continuation: re-prefill / fork | "
        f"{f['prefill_continuation_over_fork_continuation']:.2f}x |",
        "",
        "Forking is a batch-indexed copy of the cache and one token of compute, against a "
        "prefill of prompt + prefix: that is where the large ratio is. Once started, a forked "
        "continuation decodes like any left-padded batch (the forked and the re-prefilled "
        "decodes cost the same per token); over a whole continuation the start's share, and so "
        "the ratio to re-prefilling, shrinks as the continuation grows.",
        "",
        "## One iteration per preset",
        "",
        f"DelayedChoice, {it['num_envs']} envs x {it['horizon']} tokens, tiny GPT-2 "
        f"({it['n_layer']} x {it['n_embd']}), medians of alternating "
        "repeats; tokens per iteration include greedy rollouts (ReMax) and continuations "
        "(VinePPO, SPO-chain), which `marlhf compare` counts against the same budget.",
        "",
        "| preset | estimator | critic | s / iteration | x PPO | tokens / iteration |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["iterations"]:
        lines.append(
            f"| {r['preset']} | {r['estimator']} | {'yes' if r['critic'] else 'no'} | "
            f"{r['seconds_per_iteration']:.3f} | {r['over_ppo']:.2f} | "
            f"{r['tokens_per_iteration']:.0f} |"
        )
    lines += [
        "",
        "Critic-free estimators run no value forward and no value loss (`critic` no); whether "
        "that shows in the `x PPO` column depends on the machine's load while the repeats ran "
        "(the tiny model's value head is a small share of an iteration). Monte-Carlo "
        "estimators pay for their continuations "
        "(`mc_rollouts` x up to `mc_max_starts` branch points per sample), which is why a fair "
        "comparison matches budgets in generated tokens, not iterations.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no MC presets")
    parser.add_argument("--out", default=str(RESULTS_DIR / "estimators.json"))
    parser.add_argument("--doc-only", action="store_true", help="re-render the doc from --out")
    args = parser.parse_args()
    if args.doc_only:
        DOC.write_text(render_doc(read_json(args.out)), encoding="utf-8")
        print(f"wrote {DOC}")
        return
    torch.set_num_threads(1)
    fork = fork_costs(64, 128, 4, 4, prompt=16, chunk=64, vocab=4096)
    print_table(
        "Continuations from a forked cache (64 x 128 tokens, 4 branch points, K = 4)",
        ["quantity", "value"],
        [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in fork.items()],
    )
    rows = iteration_costs(
        ITERATION["num_envs"],
        ITERATION["horizon"],
        repeats=2 if args.quick else 5,
        mc=not args.quick,
    )
    print_table(
        f"One iteration per preset (DelayedChoice, {ITERATION['num_envs']} envs x "
        f"{ITERATION['horizon']} tokens, 1 thread)",
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
        {
            "machine": machine_stamp(),
            "quick": args.quick,
            "fork": {**fork, "continuation_tokens": CONTINUATION_TOKENS},
            "iteration": ITERATION,
            "iterations": rows,
        },
    )
    print(f"wrote {args.out}")
    if not args.quick:
        DOC.write_text(render_doc(read_json(args.out)), encoding="utf-8")
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
