"""Rollout decode paths: eager, static KV cache, and static + ``torch.compile``, vs a bare loop.

For each model (tiny GPT-2s, and the SmolLM2-135M architecture with random weights: the step
time does not depend on their values) one PPO agent per decode path (``decode="eager"``,
``"static"``, ``"compiled"``, :mod:`marlhf.policy.static_decode`) rolls out ``batch`` rows of
``DelayedChoice`` for exactly ``new_tokens`` tokens (stepping the env; the no-grad scoring after
the rollout is not run), and the bare KV-cache loop of ``benchmarks/rollout.py`` samples as many
tokens from the same model, and so does Hugging Face's ``generate`` (sampling at temperature 1,
no top-k or top-p, exactly ``new_tokens`` tokens, from the same vocabulary as the agent). Every
round runs each side once, in an order that rotates from round
to round, after one untimed warm-up round (which compiles: its time is reported as
``compile_s``); each side's median and range over the rounds, and per-round ratios against the
eager agent and against the bare loop (median and range), with the load average before and
after.

The SmolLM2-135M architecture's vocabulary is 49,152 tokens; the env's is DelayedChoice's, so
the agent samples from the first rows of the logits (the LM head still computes all of them),
and so does ``generate`` (a logits processor keeps those columns); the bare loop samples from
all of them. A DelayedChoice prompt is one token, so every row's context is ``1 + new_tokens``.

Run: ``python benchmarks/decode.py [--quick] [--rounds R] [--models tiny,smollm2]``; writes
``benchmarks/results/decode.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, machine_stamp, print_table, write_json
from rollout import rollout_pair

from marlhf.envs import BatchedTokenEnv
from marlhf.models import tiny_gpt2

RESULTS = RESULTS_DIR / "decode.json"
PATHS = ("eager", "static", "compiled")


def smollm2_architecture(vocab: int = 49_152) -> Any:
    """SmolLM2-135M's architecture (30 layers, 576 wide, 9 heads over 3 KV heads, a tied
    49,152-token head) with seeded random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100_000.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _rounds(sides: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each side per round; the order rotates from round to round."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def first_columns(vocab: int) -> Any:
    """A logits-processor list for ``generate`` that keeps the first ``vocab`` columns of the
    scores, so the next token is sampled among them: the env's tokens, as the agent samples
    (``policy_kwargs={"vocab_size": ...}``) when the model's head is wider than the env's
    vocabulary."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class FirstColumns(LogitsProcessor):  # type: ignore[misc]
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            return scores[:, :vocab]

    return LogitsProcessorList([FirstColumns()])


def hf_generate(model: Any, env: BatchedTokenEnv, n_new: int) -> Callable[[], Any]:
    """Hugging Face's ``generate`` on the env's first prompts (as the bare loop takes them):
    ``n_new`` sampled tokens per row from the env's vocabulary (the logits' first columns, as
    the agent samples), temperature 1, no top-k or top-p, the global stream seeded before each
    call."""
    from transformers import GenerationConfig

    vocab = env.codec.vocab_size

    prompt, _ = env.reset(seed=0)
    ids = prompt["input_ids"][:, -env.max_prompt_len :]
    config = GenerationConfig(
        do_sample=True,
        max_new_tokens=n_new,
        min_new_tokens=n_new,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        pad_token_id=0,
        eos_token_id=None,
    )

    def generate() -> Any:
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=config,
                logits_processor=first_columns(vocab),
            )
        made = out[:, ids.shape[1] :]
        if made.shape[1] != n_new or int(made.max()) >= vocab:  # (the same work as the agent's)
            raise RuntimeError(
                f"generate made {made.shape[1]} tokens (of {n_new}), max id {made.max()}"
            )
        return out

    return generate


def matmul_floor(model: Any, batch: int, repeats: int = 20) -> float:
    """Seconds per decode step of the model's matrix products alone: every projection (the
    blocks' ``nn.Linear`` or GPT-2's ``Conv1D``, and the LM head) applied to a ``[batch, in]``
    input, as one decode step applies them, with nothing else (no attention, norms,
    activations, sampling or Python around them). Compilation fuses the operations between the
    products, never the products themselves, so the eager step time over this is about the most
    a compiled step can gain. Median of ``repeats`` timed passes after one untimed one."""
    from transformers.pytorch_utils import Conv1D

    products: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):  # y = x W^T + b
            products.append((torch.randn(batch, m.in_features), m.weight.t(), m.bias))
        elif isinstance(m, Conv1D):  # y = x W + b, W [in, out]
            products.append((torch.randn(batch, m.weight.shape[0]), m.weight, m.bias))

    def one_pass() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for x, w, b in products:
                torch.mm(x, w) if b is None else torch.addmm(b, x, w)
        return time.perf_counter() - start

    one_pass()
    return statistics.median(one_pass() for _ in range(repeats))


def run_case(model_name: str, model: Any, batch: int, n_new: int, rounds: int) -> dict[str, Any]:
    """One model at one batch size and length: every decode path and the bare loop."""

    def make_env() -> BatchedTokenEnv:
        return BatchedTokenEnv("DelayedChoice", num_envs=batch, seed=0, horizon=n_new)

    common: dict[str, Any] = {"n_epochs": 1, "batch_size": batch, "seed": 0, "device": "cpu"}
    sides: dict[str, Callable[[], Any]] = {}
    bare: Callable[[], Any] | None = None
    for path in PATHS:
        env = make_env()  # (the policy samples the env's tokens: the head's first rows)
        policy_kwargs = {"decode": path, "vocab_size": env.codec.vocab_size}
        _, bare_loop, agent = rollout_pair(
            copy.deepcopy(model), env, n_new, policy_kwargs=policy_kwargs, **common
        )
        sides[path] = agent
        bare = bare if bare is not None else bare_loop
    assert bare is not None
    sides["bare"] = bare
    sides["generate"] = hf_generate(model, make_env(), n_new)
    load_before = os.getloadavg()
    warm: dict[str, float] = {}
    for name, side in sides.items():  # warm-up; the compiled agent compiles here
        start = time.perf_counter()
        side()
        warm[name] = time.perf_counter() - start
    times = _rounds(sides, rounds)
    tokens = batch * n_new
    floor = matmul_floor(model, batch)

    def ratio(num: str, den: str) -> dict[str, float]:
        return _summary([d / n for n, d in zip(times[num], times[den], strict=True)])

    row: dict[str, Any] = {
        "model": model_name,
        "batch": batch,
        "new_tokens": n_new,
        "rounds": rounds,
        "compile_s": warm["compiled"] - warm["static"],
        "seconds": {name: _summary(t) for name, t in times.items()},
        "tok_s": {name: tokens / statistics.median(t) for name, t in times.items()},
        # speed-ups per round (> 1: faster than the denominator)
        "speedup_over_eager": {p: ratio(p, "eager") for p in ("static", "compiled")},
        "agent_over_bare": {p: ratio(p, "bare") for p in PATHS},
        "agent_over_generate": {p: ratio(p, "generate") for p in PATHS},
        # the products' share of an eager step, and so the most compiling can gain
        "matmul_floor_s": floor,
        "eager_step_s": statistics.median(times["eager"]) / n_new,
        "compile_ceiling": statistics.median(times["eager"]) / n_new / floor,
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
    }
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny 2-layer model only")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument(
        "--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2 (default both)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON output path")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit(f"decode: --rounds={args.rounds} must be at least 1")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - {"tiny", "smollm2"})
    if unknown:
        raise SystemExit(f"decode: --models has {unknown}; valid: tiny, smollm2")
    torch.set_num_threads(1)
    codec = BatchedTokenEnv("DelayedChoice", num_envs=1, seed=0).codec
    cases: list[tuple[str, Callable[[], Any], int, int]] = []
    if "tiny" in models:
        cases.append(
            ("tiny GPT-2 2x128", lambda: tiny_gpt2(codec, n_layer=2, n_embd=128, n_head=4), 16, 64)
        )
        if not args.quick:
            cases.append(
                (
                    "tiny GPT-2 6x128",
                    lambda: tiny_gpt2(codec, n_layer=6, n_embd=128, n_head=4),
                    64,
                    64,
                )
            )
    if "smollm2" in models and not args.quick:
        cases.append(("SmolLM2-135M arch", smollm2_architecture, 32, 32))
    rows: list[dict[str, Any]] = []
    for name, build, batch, n_new in cases:
        row = run_case(name, build(), batch, n_new, args.rounds)
        rows.append(row)
        # written after every case: a long run keeps what it measured
        write_json(args.out, {"machine": machine_stamp(), "threads": 1, "results": rows})
        sp = row["speedup_over_eager"]
        print(
            f"{name} B={batch} N={n_new}: static x{sp['static']['median']:.2f}, compiled "
            f"x{sp['compiled']['median']:.2f} (compile {row['compile_s']:.0f} s), load "
            f"{row['load_before'][0]:.1f}-{row['load_after'][0]:.1f}",
            flush=True,
        )
    header = [
        "model",
        "B",
        "N",
        "eager tok/s",
        "static x",
        "compiled x",
        "compiled/bare",
        "eager/generate",
        "ceiling x",
        "compile s",
    ]
    table = [
        [
            r["model"], r["batch"], r["new_tokens"], round(r["tok_s"]["eager"]),
            r["speedup_over_eager"]["static"]["median"],
            r["speedup_over_eager"]["compiled"]["median"],
            r["agent_over_bare"]["compiled"]["median"],
            r["agent_over_generate"]["eager"]["median"], r["compile_ceiling"],
            round(r["compile_s"]),
        ]
        for r in rows
    ]  # fmt: skip
    print_table("Rollout decode paths (CPU, 1 thread)", header, table)
    write_json(args.out, {"machine": machine_stamp(), "threads": 1, "results": rows})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
