"""Train a Bradley-Terry reward model with `marlhf rm`, then optimise a policy against it.

    python examples/reward_model.py

The preference pairs here are synthetic (chosen answers are polite, rejected ones are not); any
JSON-lines file of ``{"prompt", "chosen", "rejected"}`` or HH-RLHF style ``{"chosen",
"rejected"}`` works the same. The saved folder is a transformers sequence-classification model
with its tokenizer; TextReference-v0 takes it as ``reward=<folder>``. ``MARLHF_SMALL=1``
shrinks every step to a smoke test.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from marlhf.cli.main import main as cli

CONFIGS = Path(__file__).resolve().parent / "configs"


def write_pairs(path: Path, n: int, seed: int = 0) -> None:
    """``n`` synthetic preference pairs as JSON lines (polite answers are preferred)."""
    rng = random.Random(seed)
    polite, rude = ["please", "thanks", "kindly", "glad to help"], ["whatever", "go away", "ugh"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for _ in range(n):
            q = rng.choice(["How do I sort a list?", "What is a dict?", "Why use tests?"])
            pair = {
                "prompt": q + "\n",
                "chosen": " " + rng.choice(polite) + ", see the docs.",
                "rejected": " " + rng.choice(rude) + ", see the docs.",
            }
            fh.write(json.dumps(pair) + "\n")


def marlhf(command: str, *overrides: str, config: Path | None = None) -> None:
    """``marlhf COMMAND [--config FILE] --set KEY=VALUE ...``, stopping on an error."""
    argv = [command, *(["--config", str(config)] if config else [])]
    for o in overrides:
        argv += ["--set", o]
    if cli(argv) != 0:
        raise SystemExit(f"marlhf {command} failed")


def main() -> None:
    small = os.environ.get("MARLHF_SMALL") == "1"
    path = Path("runs/example-pairs.jsonl")
    write_pairs(path, 40 if small else 400)
    marlhf("rm", f"data={path}", "output_dir=runs/example-rm", "epochs=1" if small else "epochs=2")
    marlhf(
        "train",
        "task.kwargs.reward=runs/example-rm",
        "output_dir=runs/example-rlhf",
        "total_timesteps=32" if small else "total_timesteps=1024",
        *(["task.kwargs.max_new_tokens=4"] if small else []),
        config=CONFIGS / "text_reference.yaml",
    )


if __name__ == "__main__":
    main()
