"""reasoning-gym tasks: the verifier as reward, answer extraction, env checks, bad names."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

import marlhf  # noqa: F401  (registers the env ids)
from marlhf.envs import TokenEnv
from marlhf.envs.builtin.reasoning import ReasoningGymTask, available_datasets, extract_answer
from marlhf.tokenization import TokenCodec
from tests.envs.test_code import reward_batch
from tests.extras import NEEDS_REASONING_GYM

pytestmark = NEEDS_REASONING_GYM


@pytest.fixture(scope="module")
def task(bpe_codec: TokenCodec) -> ReasoningGymTask:
    return ReasoningGymTask(size=20, seed=3, codec=bpe_codec)


def test_correct_answer_scores_one_and_wrong_lower(task: ReasoningGymTask, bpe_codec) -> None:
    prompts = task.sample_prompts(np.random.default_rng(0), 6)
    answers = [p.metadata["answer"] for p in prompts]
    wrong = [str(int(a) + 1) for a in answers]  # chain_sum answers are integers
    batch = reward_batch(bpe_codec, prompts * 3, answers + wrong + [f"  {a}\n" for a in answers])
    scores = task.reward_fn(batch).tolist()
    assert scores[:6] == [1.0] * 6
    assert all(s < 1.0 for s in scores[6:12])
    assert scores[12:] == [1.0] * 6  # surrounding white space is not held against an answer


def test_prompts_are_seeded_and_carry_the_question(task: ReasoningGymTask, bpe_codec) -> None:
    a = task.sample_prompts(np.random.default_rng(5), 5)
    b = task.sample_prompts(np.random.default_rng(5), 5)
    assert [p.metadata["index"] for p in a] == [p.metadata["index"] for p in b]
    other = task.sample_prompts(np.random.default_rng(6), 5)  # the generator is used
    assert [p.metadata["index"] for p in other] != [p.metadata["index"] for p in a]
    for p in a:
        assert p.text is not None and p.text.endswith("\nAnswer: ")
        assert bpe_codec.decode(p.ids) == p.text and len(p.ids) <= task.max_prompt_len
    again = ReasoningGymTask(size=20, seed=3, codec=bpe_codec)
    assert [e["question"] for e in again.entries] == [e["question"] for e in task.entries]
    held = ReasoningGymTask(size=20, seed=3, split="eval", codec=bpe_codec)
    assert [e["question"] for e in held.entries] != [e["question"] for e in task.entries]


def test_tag_answer_format(bpe_codec: TokenCodec) -> None:
    assert extract_answer("think... <answer> 12 </answer>", "tag") == "12"
    assert extract_answer("<answer>1</answer> no, <answer>2</answer>", "tag") == "2"
    assert extract_answer("12", "tag") is None
    task = ReasoningGymTask(size=4, codec=bpe_codec, answer_format="tag")
    prompts = [task.prompt(0)] * 3
    a = prompts[0].metadata["answer"]
    batch = reward_batch(bpe_codec, prompts, [f"hmm <answer>{a}</answer>", a, "<answer>x</answer>"])
    assert task.reward_fn(batch).tolist() == [1.0, 0.0, 0.0]


def test_another_dataset_by_name(bpe_codec: TokenCodec) -> None:
    task = ReasoningGymTask(dataset="leg_counting", size=5, codec=bpe_codec)
    p = task.prompt(0)
    batch = reward_batch(bpe_codec, [p, p], [p.metadata["answer"], "no idea"])
    assert task.reward_fn(batch).tolist()[0] == 1.0 > task.reward_fn(batch).tolist()[1]


def test_env_constructs_with_defaults_and_passes_checkers() -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gymnasium.make("marlhf/ReasoningGym-v0")
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped)
    env = gymnasium.make("marlhf/ReasoningGym-v0", dataset="basic_arithmetic", size=8)
    assert isinstance(env.unwrapped, TokenEnv)
    assert "basic_arithmetic" in env.unwrapped.task.name
    env.close()


def test_bad_input(bpe_codec: TokenCodec) -> None:
    with pytest.raises(ValueError, match="'no_such_set' is not a reasoning-gym dataset") as err:
        ReasoningGymTask(dataset="no_such_set", codec=bpe_codec)
    assert "chain_sum" in str(err.value) and len(available_datasets()) > 50
    with pytest.raises(ValueError, match="size=0"):
        ReasoningGymTask(size=0, codec=bpe_codec)
    with pytest.raises(ValueError, match="answer_format='json'"):
        ReasoningGymTask(size=2, codec=bpe_codec, answer_format="json")
    with pytest.raises(ValueError, match="split='test'"):
        ReasoningGymTask(size=2, codec=bpe_codec, split="test")


def test_a_verifier_that_raises_scores_zero(task: ReasoningGymTask) -> None:
    class Fussy:
        def score_answer(self, answer: str | None, entry: dict) -> float:
            return float(int(str(answer)) == int(entry["answer"]))

    from marlhf.envs.builtin.reasoning import ReasoningGymReward

    reward = ReasoningGymReward(Fussy())
    entry = task.entries[0]
    assert reward.score(entry["answer"], entry) == 1.0
    assert reward.score("twelve", entry) == 0.0 and reward.verifier_errors == 1
