"""`marlhf sft` and `marlhf rm` on tiny local data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from marlhf.cli.main import main
from marlhf.models import stdlib_source_files
from tests.training.conftest import sets

TINY_MODEL = ("model.n_layer=1", "model.n_embd=32", "model.n_head=2")


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


def test_sft_on_stdlib_source_lowers_eval_loss(tmp_path: Path, capsys) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = [str(p) for p in stdlib_source_files(limit=3)]
    out = tmp_path / "sft"
    argv = ["sft", *sets(f"data={files}", f"output_dir={out}", "vocab_size=300", *TINY_MODEL)]
    assert main([*argv, *sets("block_size=32", "max_steps=40", "batch_size=8")]) == 0
    result = json.loads((out / "marlhf_sft.json").read_text())["result"]
    assert result["eval_loss_after"] < result["eval_loss_before"] - 0.3
    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert model.config.vocab_size == len(tokenizer) == 300
    assert _leftovers(tmp_path) == []


def test_sft_jsonl_errors(tmp_path: Path, capsys) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a b c"}\n\n{"text": "d e"\n')
    out = tmp_path / "sft"
    assert main(["sft", *sets(f"data=[{data}]", f"output_dir={out}")]) == 2
    assert f"{data}:3: malformed JSON line" in capsys.readouterr().err
    data.write_text('{"text": "a b c"}\n{"body": "d e"}\n')
    assert main(["sft", *sets(f"data=[{data}]", f"output_dir={out}")]) == 2
    assert f"{data}:2: missing field 'text'" in capsys.readouterr().err
    assert main(["sft", *sets(f"data=[{tmp_path / 'none.txt'}]", f"output_dir={out}")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_sft_refuses_a_foreign_output_folder(tmp_path: Path, capsys) -> None:
    data = tmp_path / "d.txt"
    data.write_text("x = 1\n" * 200)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["sft", *sets(f"data=[{data}]", f"output_dir={out}")]) == 2
    assert "is not an earlier result" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def _preference_file(path: Path, n: int, seed: int = 0) -> None:
    """Chosen answers carry a positive word, rejected ones a negative word; half HH-style."""
    rng = random.Random(seed)
    good, bad = ["great", "helpful", "correct", "clear"], ["wrong", "rude", "useless", "vague"]
    filler = ["the", "answer", "is", "this", "that", "very", "quite", "and", "it"]
    lines = []
    for i in range(n):
        q = "Q: " + " ".join(rng.choices(filler, k=4)) + "\nA:"

        def answer(words: list[str]) -> str:
            return " " + " ".join(
                [*rng.choices(filler, k=3), rng.choice(words), *rng.choices(filler, k=2)]
            )

        c, r = answer(good), answer(bad)
        if i % 2:
            lines.append({"prompt": q, "chosen": c, "rejected": r})
        else:
            lines.append({"chosen": q + c, "rejected": q + r})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_rm_learns_a_learnable_preference(tmp_path: Path, capsys) -> None:
    from marlhf.envs.builtin.reward_model import RewardModelReward

    data, out = tmp_path / "pairs.jsonl", tmp_path / "rm"
    _preference_file(data, 160)
    argv = ["rm", *sets(f"data={data}", f"output_dir={out}", "vocab_size=300", *TINY_MODEL)]
    assert main([*argv, *sets("max_length=32", "epochs=3", "model.n_layer=1")]) == 0
    result = json.loads((out / "marlhf_rm.json").read_text())["result"]
    assert result["eval_pairs"] == 32
    assert result["eval_accuracy"] >= 0.85 > result["eval_accuracy_before"] + 0.2

    # H6's reward function loads the folder and ranks fresh pairs the same way.
    reward = RewardModelReward(str(out))
    _preference_file(tmp_path / "fresh.jsonl", 20, seed=1)
    fresh = [json.loads(x) for x in (tmp_path / "fresh.jsonl").read_text().splitlines()]
    texts = [r.get("prompt", "") + r["chosen"] for r in fresh]
    texts += [r.get("prompt", "") + r["rejected"] for r in fresh]
    scores = reward.score_texts(texts)
    assert float((scores[:20] > scores[20:]).float().mean()) >= 0.85


def test_rm_bad_records(tmp_path: Path, capsys) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        '{"chosen": "a", "rejected": "b"}\n{"chosen": "a", "rejected": "b"}\n{"chosen": "c"}\n'
    )
    assert main(["rm", *sets(f"data={data}", f"output_dir={tmp_path / 'rm'}")]) == 2
    assert f"{data}:3: missing field 'rejected'" in capsys.readouterr().err
    assert main(["rm", *sets(f"output_dir={tmp_path / 'rm'}")]) == 2
    assert "no preference file" in capsys.readouterr().err
    assert not (tmp_path / "rm").exists()


@pytest.mark.parametrize("command", ["sft", "rm"])
def test_bad_model_folder(tmp_path: Path, capsys, command: str) -> None:
    data = tmp_path / "d.jsonl"
    row = {"text": "x = 1", "chosen": "a", "rejected": "b"}
    data.write_text((json.dumps(row) + "\n") * 4)
    from marlhf.models import tiny_gpt2

    tiny_gpt2(300, n_layer=1, n_embd=16, n_head=2).save_pretrained(str(tmp_path / "lm"))
    value = f"[{data}]" if command == "sft" else str(data)
    argv = [command, *sets(f"data={value}", f"model.path={tmp_path / 'lm'}")]
    assert main([*argv, *sets(f"output_dir={tmp_path / 'out'}")]) == 2
    assert "has no tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
