"""Compare token-level PPO with several MAPPO terminations from Python (what `marlhf compare` does).

    python examples/compare_terminations.py

The same as ``marlhf compare --config examples/configs/delayed_choice.yaml --set
'terminations=[ngram:3, ngram:10]' --set seeds=[0,1] --set total_timesteps=20480 --set
output_dir=runs/example-compare``. ``MARLHF_SMALL=1`` shrinks it to a smoke test.
"""

from __future__ import annotations

import os
from pathlib import Path

from marlhf.commands.compare import run_compare
from marlhf.config.commands import CompareConfig
from marlhf.config.parse import load_config

CONFIG = Path(__file__).resolve().parent / "configs" / "delayed_choice.yaml"


def main() -> None:
    small = os.environ.get("MARLHF_SMALL") == "1"
    config = load_config(
        CompareConfig,
        CONFIG,
        overrides=[
            "terminations=[ngram:3, ngram:10]",
            "seeds=[0]" if small else "seeds=[0, 1]",
            "total_timesteps=256" if small else "total_timesteps=20480",
            *(["task.num_envs=8", "agent.batch_size=8", "task.kwargs.horizon=8"] if small else []),
            "output_dir=runs/example-compare",
        ],
    )
    result = run_compare(
        config
    )  # prints the table; report.md, curves.png, metrics.csv in the folder
    for row in result["summary"]:
        print(row["agent"], round(row["final_score"], 3), row["speedup_vs_ppo"])


if __name__ == "__main__":  # compare's worker processes import this file: run only when executed
    main()
