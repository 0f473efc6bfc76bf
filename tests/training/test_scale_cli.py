"""`marlhf train` at scale: under torchrun (2 gloo ranks, each with half the envs; rank 0 writes
the run), and with LoRA adapters and gradient checkpointing from the config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from marlhf.cli.main import main
from tests.agents.ranks import free_port
from tests.extras import needs


def _torchrun(tmp_path: Path, *sets: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")]
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        "-m",
        "marlhf",
        "train",
        "--set",
        "num_threads=1",
        *(arg for s in sets for arg in ("--set", s)),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_train_under_torchrun_on_two_ranks(tmp_path: Path) -> None:
    out = tmp_path / "dp2"
    run = _torchrun(
        tmp_path,
        f"output_dir={out}",
        "total_timesteps=1024",
        "task.num_envs=8",
        "agent.batch_size=4",
        "checkpoint_every=1",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    printed = json.loads(run.stdout)  # rank 0 alone prints the result
    result = json.loads((out / "result.json").read_text())
    assert printed["tokens"] == result["tokens"] >= 1024
    assert (out / "final_weights" / "policy" / "config.json").is_file()
    with zipfile.ZipFile(out / "final.zip") as archive:
        assert json.loads(archive.read("data.json"))["world_size"] == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_refuses_a_num_envs_the_ranks_cannot_share(tmp_path: Path) -> None:
    bad = (f"output_dir={tmp_path / 'bad'}", "task.num_envs=7", "agent.batch_size=7")
    run = _torchrun(tmp_path, *bad)
    assert run.returncode != 0
    assert "task.num_envs=7 is not divisible by the world size 2" in run.stderr


@needs("peft")
def test_train_with_lora_writes_adapters_and_a_merged_model(tmp_path: Path, capsys) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    sets = [
        f"output_dir={out}",
        "total_timesteps=256",
        "task.num_envs=8",
        "agent.batch_size=4",
        "model.lora={r: 4}",
        "model.gradient_checkpointing=true",
    ]
    assert main(["train", *(a for s in sets for a in ("--set", s))]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == str(out / "final_merged")
    assert (out / "final_weights" / "policy" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(result["model"], local_files_only=True)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    settings = json.loads((out / "final_weights" / "actor_critic.json").read_text())
    assert settings["reference_mode"] == "adapters" and settings["gradient_checkpointing"]


def test_train_rejects_a_bad_lora_block(tmp_path: Path, capsys) -> None:
    sets = [f"output_dir={tmp_path / 'bad'}", "model.lora={rank: 4}"]
    assert main(["train", *(a for s in sets for a in ("--set", s))]) == 2
    assert "model.lora: unknown keys ['rank']" in capsys.readouterr().err
