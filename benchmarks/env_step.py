"""Throughput of the batched env step, and its cost relative to one tiny-model decoding step.

For each batch size B the benchmark times
- ``BatchedTokenEnv.step`` alone (no model; random in-vocabulary actions prepared beforehand)
  on two tasks: DelayedChoice (terminal reward at the horizon) and ReverseDense (a dense reward
  computed on every step);
- one single-token forward of ``tiny_gpt2`` (2 layers, 128 wide) with its KV cache, the
  per-token cost of sampling, at the same batch size and a cache as long as the episode.

The ratio env step / model step must be small: the env is not the bottleneck of a rollout.
Prints a table and writes ``benchmarks/results/env_step.json``.

Run: ``python benchmarks/env_step.py [--batch-sizes 64 256] [--device cpu] [--threads N]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from marlhf.envs import BatchedTokenEnv, DelayedChoiceTask, ReverseDenseTask, Task
from marlhf.models import tiny_gpt2

RESULTS = Path(__file__).resolve().parent / "results" / "env_step.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_env(task: Task, batch: int, device: torch.device, repeats: int) -> dict[str, float]:
    """Seconds per ``step()`` over whole episodes (reset excluded), best of ``repeats``."""
    env = BatchedTokenEnv(task, num_envs=batch, device=device, seed=0)
    gen = torch.Generator(device=device).manual_seed(0)
    probs = torch.as_tensor(task.action_mask(), device=device).float().expand(batch, -1)
    actions = torch.multinomial(
        probs.repeat(env.max_new_tokens, 1), 1, replacement=True, generator=gen
    ).view(env.max_new_tokens, batch)
    per_step = []
    for _ in range(repeats):
        env.reset()
        _sync(device)
        steps = 0
        start = time.perf_counter()
        while not env.all_done:
            env.step(actions[steps])
            steps += 1
        _sync(device)
        per_step.append((time.perf_counter() - start) / steps)
    best = min(per_step)
    return {"step_s": best, "steps_per_s": 1.0 / best, "row_steps_per_s": batch / best}


@torch.no_grad()
def time_model(
    vocab: int, batch: int, prompt_len: int, new_tokens: int, device: torch.device, repeats: int
) -> dict[str, float]:
    """Seconds per single-token KV-cache forward of tiny GPT-2, averaged over a decode of
    ``new_tokens`` after a ``prompt_len`` prefill (prefill excluded); best of ``repeats``."""
    model = tiny_gpt2(vocab, n_layer=2, n_embd=128, n_positions=prompt_len + new_tokens + 8)
    model.to(device).eval()
    # transformers >= 5 names the KV cache `cache`; older versions `past_key_values`.
    cache_arg = (
        "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    )
    ids = torch.randint(1, vocab, (batch, prompt_len), device=device)
    per_step = []
    for _ in range(repeats):
        mask = torch.ones(batch, prompt_len, dtype=torch.int64, device=device)
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        past = out[cache_arg]
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        start = time.perf_counter()
        for _ in range(new_tokens):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=token, attention_mask=mask, use_cache=True, **{cache_arg: past})
            past = out[cache_arg]
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        per_step.append((time.perf_counter() - start) / new_tokens)
    best = min(per_step)
    return {"step_s": best, "steps_per_s": 1.0 / best}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--horizon", type=int, default=64, help="DelayedChoice episode length")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, best kept")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    tasks: dict[str, Task] = {
        "DelayedChoice": DelayedChoiceTask(horizon=args.horizon),
        "ReverseDense": ReverseDenseTask(max_len=16, horizon=args.horizon),
    }
    rows: list[dict[str, Any]] = []
    for batch in args.batch_sizes:
        for name, task in tasks.items():
            env = time_env(task, batch, device, args.repeats)
            model = time_model(
                task.codec.vocab_size,
                batch,
                task.max_prompt_len,
                task.max_new_tokens,
                device,
                args.repeats,
            )
            rows.append(
                {
                    "task": name,
                    "batch": batch,
                    "env_steps_per_s": env["steps_per_s"],
                    "env_row_steps_per_s": env["row_steps_per_s"],
                    "env_step_ms": env["step_s"] * 1e3,
                    "model_step_ms": model["step_s"] * 1e3,
                    "env_over_model": env["step_s"] / model["step_s"],
                }
            )

    header = ["task", "B", "env steps/s", "env ms/step", "model ms/step", "env/model"]
    table = [
        [
            r["task"],
            str(r["batch"]),
            f"{r['env_steps_per_s']:.0f}",
            f"{r['env_step_ms']:.3f}",
            f"{r['model_step_ms']:.3f}",
            f"{r['env_over_model']:.3f}",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    print(
        f"BatchedTokenEnv.step vs tiny GPT-2 KV-cache step (device {device}, "
        f"{args.threads} thread(s), horizon {args.horizon})"
    )
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)))

    result = {
        "benchmark": "env_step",
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": args.threads,
        "horizon": args.horizon,
        "model": "tiny_gpt2(n_layer=2, n_embd=128, n_head=4), single-token step with KV cache",
        "rows": rows,
        "max_env_over_model": max(r["env_over_model"] for r in rows),
        "median_env_over_model": statistics.median(r["env_over_model"] for r in rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
