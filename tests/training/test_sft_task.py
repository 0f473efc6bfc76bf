"""`marlhf sft` on a task's own solutions: data, masking, tokenizer identity with the RL env,
and the errors a user meets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from marlhf.cli.main import main
from marlhf.commands.sft_data import (
    EXAMPLES_FILE,
    IGNORE,
    build_task,
    collate,
    task_examples,
)
from marlhf.config.commands import ModelConfig, SftConfig, SftTaskConfig, TaskConfig
from marlhf.config.parse import ConfigError, from_dict
from marlhf.envs.builtin.reasoning import ReasoningGymTask
from marlhf.envs.core.registration import register_task
from tests.extras import NEEDS_REASONING_GYM
from tests.training.conftest import sets

pytestmark = NEEDS_REASONING_GYM

ENV = "marlhf/ReasoningGym-v0"
KWARGS: dict[str, Any] = {
    "dataset": "chain_sum",
    "size": 50,
    "dataset_kwargs": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
    "max_new_tokens": 6,
}
TINY = ("model.n_layer=1", "model.n_embd=32", "model.n_head=2", "vocab_size=300")


def _task_sets(out: Path, *more: str) -> list[str]:
    return sets(
        f"task.id={ENV}",
        f"task.kwargs={json.dumps(KWARGS)}",
        f"output_dir={out}",
        *TINY,
        *more,
    )


class NoSolutions(ReasoningGymTask):
    """A text task that cannot write solutions."""

    solution = None  # type: ignore[assignment]


register_task("SftTestNoSolutions", NoSolutions)


def test_examples_mask_the_prompt_and_end_with_eos(bpe_codec) -> None:
    task = build_task(SftTaskConfig(id=ENV, kwargs=KWARGS), bpe_codec.tokenizer)
    examples = task_examples(task, 12, seed=4)
    assert [e.prompt_ids for e in task_examples(task, 12, seed=4)] == [
        e.prompt_ids for e in examples
    ]  # seeded
    eos = bpe_codec.eos_token_id
    for e in examples:
        assert e.prompt.endswith("\nAnswer: ") and bpe_codec.encode(e.prompt) == e.prompt_ids
        assert e.completion_ids[-1] == eos and eos not in e.completion_ids[:-1]
        assert bpe_codec.decode(e.completion_ids[:-1]) == e.completion
        row = e.row()
        assert row["input_ids"] == e.prompt_ids + e.completion_ids
        assert row["labels"][: len(e.prompt_ids)] == [IGNORE] * len(e.prompt_ids)
        assert row["labels"][len(e.prompt_ids) :] == e.completion_ids
        entry = task.entries[[x["question"] for x in task.entries].index(e.prompt[:-9])]
        assert task.reward_fn.score(e.completion, entry) == 1.0

    batch = collate([examples[0].row(), examples[1].row()], pad_id=bpe_codec.pad_token_id)
    lengths = [len(examples[i].row()["input_ids"]) for i in (0, 1)]
    for i, n in enumerate(lengths):
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch["labels"][i, n:] == IGNORE).all()
        assert (batch["input_ids"][i, n:] == bpe_codec.pad_token_id).all()
        assert batch["labels"][i, :n].tolist() == examples[i].row()["labels"]


def test_solution_in_both_answer_formats_and_its_errors(bpe_codec) -> None:
    task = ReasoningGymTask(size=5, seed=1, codec=bpe_codec)
    prompt = task.prompt(2)
    answer = task.entries[2]["answer"]
    assert task.solution(prompt) == answer
    tagged = ReasoningGymTask(size=5, seed=1, codec=bpe_codec, answer_format="tag")
    assert tagged.solution(tagged.prompt(2)) == f"<answer>{answer}</answer>"

    foreign = type(prompt)(ids=prompt.ids, metadata={"index": 2})
    with pytest.raises(ValueError, match="needs a prompt of this task"):
        task.solution(foreign)
    empty = task.prompt(2)
    empty.metadata["entry"]["answer"] = None
    with pytest.raises(ValueError, match="has no reference answer"):
        task.solution(empty)

    class HalfCredit:  # a dataset whose verifier never gives its own answer full marks
        def score_answer(self, answer: str | None, entry: dict) -> float:
            return 0.5

    task.reward_fn.dataset = HalfCredit()
    with pytest.raises(ValueError, match=r"verifier scores its own answer .* 0.5 < 1.0"):
        task.solution(task.prompt(2))


def test_sft_on_a_task_and_the_env_tokenises_prompts_as_sft_did(tmp_path: Path) -> None:
    from marlhf.runs.runner import build_env_and_model

    out = tmp_path / "sft"
    argv = ["sft", *_task_sets(out, "task.examples=64", "max_steps=30", "batch_size=16")]
    assert main([*argv, "--quiet"]) == 0
    result = json.loads((out / "marlhf_sft.json").read_text())["result"]
    assert result["train_blocks"] + result["eval_blocks"] == 64
    assert result["eval_loss_after"] < result["eval_loss_before"]
    records = [json.loads(line) for line in (out / EXAMPLES_FILE).read_text().splitlines()]
    assert len(records) == 64

    # `marlhf train` with model.path=out builds this env: the SFT folder's tokenizer, same task
    env, lm, tokenizer = build_env_and_model(
        TaskConfig(ENV, dict(KWARGS), 4), ModelConfig(path=str(out)), 0, "cpu"
    )
    assert lm.config.vocab_size == env.codec.vocab_size == len(tokenizer)
    again = env.task.sample_prompts(np.random.default_rng(0), 64)  # SFT's draw (seed 0)
    assert [list(p.ids) for p in again] == [r["prompt_ids"] for r in records]
    for r in records:
        assert env.codec.encode(r["prompt"]) == r["prompt_ids"]
        assert [*env.codec.encode(r["completion"]), env.codec.eos_token_id] == r["completion_ids"]
    obs, _ = env.reset(options={"prompts": again[:4]})
    for i in range(4):
        row = obs["input_ids"][i][obs["attention_mask"][i].bool()].tolist()
        assert row == records[i]["prompt_ids"]  # left padding stripped: the same ids

    # and `marlhf train` runs from it (one GRPO iteration of the recipe's kind)
    rl = tmp_path / "rl"
    argv = sets(
        f"model.path={out}",
        f"task.id={ENV}",
        f"task.kwargs={json.dumps(KWARGS)}",
        "task.num_envs=8",
        "agent.preset=[toy, grpo]",
        "agent.batch_size=4",
        "algo=ppo",
        "total_timesteps=48",
        f"output_dir={rl}",
    )
    assert main(["train", *argv, "--quiet"]) == 0
    assert (rl / "final_weights" / "policy" / "tokenizer.json").exists()


def test_sft_task_errors(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sft"
    cases = [
        (sets(f"task.id={ENV}", "data=[x.txt]"), "give one source, not both"),
        (sets("task.id=marlhf/Nope-v0"), "unknown env id 'marlhf/Nope-v0'"),
        (sets("task.id=marlhf/DelayedChoice-v0"), "needs a text task"),
        (sets(f"task.id={ENV}", "task.kwargs={sizes: 3}"), "takes no argument 'sizes'"),
        (sets(f"task.id={ENV}", "task.kwargs={tokenizer: x}"), "set by marlhf sft"),
        (sets(f"task.id={ENV}", "task.examples=1"), "task.examples=1 must be an integer"),
        (
            sets("task.id=marlhf/SftTestNoSolutions-v0", "task.kwargs={size: 4}", *TINY),
            "cannot write solutions",
        ),
        (_task_sets(out, "block_size=8", "task.examples=4"), "block_size=8: an example"),
    ]
    for argv, message in cases:
        code = main(["sft", *sets(f"output_dir={out}"), *argv])
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert message in err and "Traceback" not in err, (message, err)
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def test_sft_task_config_from_yaml_mapping() -> None:
    config = from_dict(
        SftConfig, {"task": {"id": ENV, "kwargs": KWARGS, "examples": 10}, "seed": 3}
    )
    assert config.task == SftTaskConfig(ENV, KWARGS, 10) and config.data == []
    with pytest.raises(ConfigError, match=r"unknown config key .task\.example."):
        from_dict(SftConfig, {"task": {"example": 3}})


def test_the_two_recipe_configs_fit_together() -> None:
    from marlhf.config.commands import TrainConfig
    from marlhf.config.parse import load_config

    configs = Path(__file__).resolve().parents[2] / "examples" / "configs"
    sft = load_config(SftConfig, configs / "reasoning_sft.yaml")
    rl = load_config(TrainConfig, configs / "reasoning_rl.yaml")
    assert rl.model.path == sft.output_dir  # RL starts from the SFT folder
    assert (rl.task.id, rl.task.kwargs) == (sft.task.id, sft.task.kwargs)  # same task
    assert rl.agent.credit.estimator == "grpo"
