"""The scaffolding the TRL comparisons and the memory benchmark share (benchmarks/trl_common.py):
the prompt windows, the measuring loop that keeps a failed setting's error, and marlhf's side of
both TRL comparisons running one iteration on a tiny setting (TRL itself is not needed)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import trl_grpo
import trl_ppo
from trl_common import (
    PROMPT_LEN,
    against_trl,
    even_fraction_reward,
    fixed_prompts_task,
    measure_settings,
    ratio_cell,
    stdlib_windows,
)


@dataclass(frozen=True)
class Tiny:
    batch: int


def test_a_failed_setting_keeps_its_error_and_the_next_one_gives_the_ratio() -> None:
    def measure(s: Tiny) -> dict[str, Any]:
        if s.batch == 1:
            raise RuntimeError("out of memory")
        return {"sides": {"trl": 2.0}, "ratio_per_round": [0.5]}

    def figures(s: Tiny, result: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        return {"ratio": 0.5 * s.batch}, [f"B={s.batch}"]

    out: dict[str, Any] = {}
    rows = measure_settings(out, [Tiny(1), Tiny(3)], measure, figures)
    assert rows == [["B=3"]]
    failed, good = out["settings"]
    assert failed["batch"] == 1 and failed["error"] == "RuntimeError: out of memory"
    assert "Traceback" in failed["traceback"] and "ratio" not in failed
    assert good == {
        "batch": 3,
        "prompt_len": PROMPT_LEN,
        "sides": {"trl": 2.0},
        "ratio_per_round": [0.5],
        "ratio": 1.5,
    }
    assert out["ratio"] == 1.5 and "error" not in out


def test_every_setting_failing_is_an_error_and_no_ratio() -> None:
    def measure(s: Tiny) -> dict[str, Any]:
        raise ValueError(f"bad batch {s.batch}")

    out: dict[str, Any] = {}
    assert measure_settings(out, [Tiny(1), Tiny(2)], measure, lambda s, r: ({}, [])) == []
    assert out["ratio"] is None
    assert out["error"] == "every setting failed: ValueError: bad batch 1; ValueError: bad batch 2"


class FakeTrainer:
    """TRL's paused trainer as the harness sees it: one step a call, then closed."""

    def __init__(self, seconds: list[float]) -> None:
        self.seconds = iter(seconds)
        self.closed = False

    def step(self) -> float:
        return next(self.seconds)

    def close(self) -> None:
        self.closed = True


def test_against_trl_gives_each_marlhf_side_its_ratio_per_round() -> None:
    trl = FakeTrainer([9.0, 2.0, 4.0])
    marlhf = iter([9.0, 1.0, 1.0])
    out = against_trl(trl, lambda: {"marlhf": lambda: next(marlhf)}, 2, 1, "test")
    assert trl.closed
    assert out["sides"]["trl"]["times"] == [2.0, 4.0]
    assert out["ratios"]["marlhf"]["per_round"] == [0.5, 0.25]


def test_against_trl_closes_the_trainer_when_a_side_cannot_be_built() -> None:
    trl = FakeTrainer([])

    def broken() -> dict[str, Any]:
        raise RuntimeError("no model")

    with pytest.raises(RuntimeError, match="no model"):
        against_trl(trl, broken, 2, 1, "test")
    assert trl.closed


def test_ratio_cell() -> None:
    assert ratio_cell({"median": 0.5104, "min": 0.456, "max": 0.571}) == "0.510 (0.46-0.57)"


def test_prompt_windows_are_seeded_and_of_one_length(bpe_tokenizer: Any) -> None:
    a = stdlib_windows(bpe_tokenizer, 8, seed=0, chars=20_000)
    assert a == stdlib_windows(bpe_tokenizer, 8, seed=0, chars=20_000)
    assert a != stdlib_windows(bpe_tokenizer, 8, seed=1, chars=20_000)
    assert {len(w) for w in a} == {PROMPT_LEN}
    special = set(bpe_tokenizer.all_special_ids)
    assert not special & {t for w in a for t in w}


def test_the_fixed_prompts_task_samples_its_prompts_and_never_stops(bpe_tokenizer: Any) -> None:
    import numpy as np

    prompts = [[5, 6, 7], [8, 9]]
    task = fixed_prompts_task(bpe_tokenizer, prompts, 4, even_fraction_reward(), name="T")
    assert task.name == "T" and task.max_prompt_len == 3 and task.max_new_tokens == 4
    assert task.codec.eos_token_id is None
    drawn = task.sample_prompts(np.random.default_rng(0), 6)
    assert all(p.ids in prompts for p in drawn)


@pytest.mark.parametrize("which", ["grpo", "grpo_scored", "ppo_critic", "ppo_shared"])
def test_marlhf_side_of_each_trl_comparison_runs_an_iteration(
    bpe_tokenizer: Any, which: str
) -> None:
    windows = stdlib_windows(bpe_tokenizer, 8, chars=20_000)
    if which.startswith("grpo"):
        s = trl_grpo.Setting(batch=4, group=2, response_length=4, n_layer=1, n_embd=32)
        texts = [bpe_tokenizer.decode(w) for w in windows]
        iteration = trl_grpo.marlhf_side(bpe_tokenizer, texts, s, skip=which == "grpo")
    else:
        setting = trl_ppo.Setting(
            batch=4, response_length=4, minibatch=2, n_epochs=1, n_layer=1, n_embd=32
        )
        iteration = trl_ppo.marlhf_side(bpe_tokenizer, windows, setting, which == "ppo_critic")
    assert iteration() > 0
    assert iteration() > 0  # a second rollout continues the same agent
