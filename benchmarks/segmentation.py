"""Segmentation cost of every built-in termination, against one PPO iteration.

Batch: 64 responses x 256 tokens. Inputs:

- ``ids``: random token ids (length-only rules; perplexity gets random reference log-probs);
- ``code``: 256-token windows of real Python from the standard library, starting at a ``def``
  or ``class`` line, tokenised with a byte-level BPE trained in process
  (:func:`marlhf.models.train_bpe_tokenizer`, 4096 tokens, cached);
- ``english``: 256-token windows of the standard library's docstrings (English prose), same BPE.

For each termination: milliseconds per batch of ``compute_starts`` (the rule plus validation),
and for rules that need text, the one-off cost of building the alignments
(``SegmentationBatch.build``), which a trainer pays once per batch whatever the rule.

The reference is one PPO iteration of the tiny 2-layer model at that batch, estimated as
forward + backward of ``tiny_gpt2(vocab=4096)`` on 64 x (64 prompt + 256 response) tokens,
times one epoch. Goals: n-gram under 1 ms; tree-sitter under 5% of the iteration.

Run: ``python benchmarks/segmentation.py`` (one to two minutes on two CPU cores); writes
``benchmarks/results/segmentation.json``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from marlhf.models import stdlib_source_files, tiny_gpt2, train_bpe_tokenizer
from marlhf.options import (
    SegmentationBatch,
    Termination,
    available_terminations,
    compute_starts,
    make_termination,
)
from marlhf.tokenization import HFCodec, TokenCodec

BATCH, RESPONSE, PROMPT = 64, 256, 64
RESULTS = Path(__file__).resolve().parent / "results" / "segmentation.json"

# (spec, input). Text rules run on the input a user would give them.
CASES: list[tuple[str, str]] = [
    ("ngram:1", "ids"),
    ("ngram:5", "ids"),
    ("ngram:inf", "ids"),
    ("random_ngram", "ids"),
    ("perplexity:rule=paper", "ids"),
    ("perplexity:rule=released", "ids"),
    ("punctuation", "english"),
    ("union:ngram:5|punctuation", "english"),
    ("min_length:3|punctuation", "english"),
    ("max_length:10|perplexity", "ids"),
    ("treesitter:python", "code"),
    ("treesitter:python;mode=cutoff;cutoff=10", "code"),
    ("parse", "english"),
]


def timed(fn: Callable[[], Any], min_reps: int, min_seconds: float) -> float:
    """Median wall time of ``fn`` in milliseconds (one warm-up call first)."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 1000:
            break
    return statistics.median(times)


def windows(codec: TokenCodec, texts: list[str], n: int, width: int) -> torch.Tensor:
    """``n`` rows of ``width`` tokens, one window per text (texts must be long enough)."""
    rows: list[list[int]] = []
    for text in texts:
        ids = codec.encode(text)
        if len(ids) >= width:
            rows.append(ids[:width])
        if len(rows) == n:
            return torch.tensor(rows)
    raise RuntimeError(f"only {len(rows)} of {n} texts have {width} tokens")


def code_texts() -> list[str]:
    """Source from each stdlib file's first top-level ``def``/``class`` on."""
    out = []
    for path in stdlib_source_files():
        try:
            src = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        cut = min((i for i in (src.find("\ndef "), src.find("\nclass ")) if i >= 0), default=-1)
        if cut >= 0:
            out.append(src[cut + 1 :])
    return out


def english_texts() -> list[str]:
    """Docstrings of the standard library, joined per file into paragraphs of prose."""
    out = []
    for path in stdlib_source_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        docs = [
            ast.get_docstring(node) or ""
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
        ]
        text = "\n\n".join(d for d in docs if len(d) > 80 and ">>>" not in d)
        if len(text) > 3000:
            out.append(text)
    return out


def ppo_iteration_ms(vocab: int) -> float:
    """Forward + backward of the tiny 2-layer GPT-2 on the batch (one epoch)."""
    model = tiny_gpt2(vocab, n_positions=PROMPT + RESPONSE)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (BATCH, PROMPT + RESPONSE), generator=gen)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()

    return timed(step, min_reps=2, min_seconds=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results path")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    tokenizer = train_bpe_tokenizer(vocab_size=4096)
    codec = HFCodec(tokenizer)
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "ids": torch.randint(2, codec.vocab_size, (BATCH, RESPONSE), generator=gen),
        "code": windows(codec, code_texts(), BATCH, RESPONSE),
        "english": windows(codec, english_texts(), BATCH, RESPONSE),
    }
    mask = torch.ones(BATCH, RESPONSE, dtype=torch.bool)
    ref = -torch.rand(BATCH, RESPONSE, generator=gen) * 5
    iteration = ppo_iteration_ms(codec.vocab_size)

    def build(requires: frozenset[str], ids: torch.Tensor) -> SegmentationBatch:
        return SegmentationBatch.build(
            ids,
            mask,
            requires,
            codec=codec,
            logprobs=ref,
            ref_logprobs=ref,
            generator=torch.Generator().manual_seed(1),
        )

    registered = set(available_terminations())
    rows: list[dict[str, Any]] = []
    align_ms: dict[str, float] = {}
    for spec, source in CASES:
        name = spec.split(":", 1)[0]
        if name not in registered:
            rows.append({"spec": spec, "input": source, "skipped": "not registered"})
            continue
        try:
            term: Termination = make_termination(spec)
            batch = build(term.requires, inputs[source])
            fast = "text" not in term.requires and name not in ("parse", "treesitter")
            ms = timed(
                lambda t=term, b=batch: compute_starts(t, b, isolate_last=True),
                min_reps=20 if fast else 3,
                min_seconds=0.5 if fast else 1.0,
            )
        except (ImportError, OSError) as exc:  # e.g. the spaCy pipeline is not installed
            rows.append({"spec": spec, "input": source, "skipped": f"{type(exc).__name__}: {exc}"})
            continue
        if "text" in term.requires and source not in align_ms:
            align_ms[source] = timed(
                lambda s=source: build(frozenset({"text"}), inputs[s]), min_reps=3, min_seconds=1
            )
        starts = compute_starts(term, batch, isolate_last=True)
        rows.append(
            {
                "spec": spec,
                "input": source,
                "ms_per_batch": ms,
                "alignment_ms": align_ms.get(source) if "text" in term.requires else 0.0,
                "fraction_of_ppo_iteration": ms / iteration,
                "mean_macro_len": float(mask.sum() / starts.sum()),
                "fallback_rows": term.stats.fallbacks,
            }
        )

    print(
        f"segmentation of {BATCH} x {RESPONSE} tokens; PPO iteration (tiny GPT-2 fwd+bwd, "
        f"{BATCH} x {PROMPT + RESPONSE}): {iteration:.0f} ms on {args.threads} threads"
    )
    columns = ("ms/batch", "% iter", "align ms", "mean len")
    header = f"{'termination':42s} {'input':8s} " + " ".join(f"{c:>9s}" for c in columns)
    print(header)
    print("-" * len(header))
    for r in rows:
        if "skipped" in r:
            print(f"{r['spec']:42s} {r['input']:8s} skipped: {r['skipped']}")
            continue
        print(
            f"{r['spec']:42s} {r['input']:8s} {r['ms_per_batch']:9.3f} "
            f"{100 * r['fraction_of_ppo_iteration']:8.2f}% {r['alignment_ms']:9.1f} "
            f"{r['mean_macro_len']:9.2f}"
        )
    done = {r["spec"]: r for r in rows if "skipped" not in r}
    goals = {
        "ngram_under_1ms": all(
            done[s]["ms_per_batch"] < 1.0 for s in done if s.startswith("ngram")
        ),
        "treesitter_under_5pct": all(
            done[s]["fraction_of_ppo_iteration"] < 0.05 for s in done if s.startswith("treesitter")
        ),
    }
    print("goals:", ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in goals.items()))
    result = {
        "batch": BATCH,
        "response_tokens": RESPONSE,
        "prompt_tokens": PROMPT,
        "ppo_iteration_ms": iteration,
        "alignment_ms": align_ms,
        "rows": rows,
        "goals": goals,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "total_seconds": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
