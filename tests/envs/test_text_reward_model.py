"""RewardModelReward: loads a local sequence-classification model, scores at the last real token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from marlhf.envs.builtin.reward_model import RewardModelReward
from marlhf.envs.builtin.text import TextReferenceTask
from marlhf.envs.core.tasks import Prompt
from marlhf.tokenization import TokenCodec
from tests.envs.test_code import reward_batch


@pytest.fixture(scope="module")
def rm_folder(bpe_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import GPT2ForSequenceClassification

    from marlhf.models import tiny_gpt2

    config = tiny_gpt2(bpe_tokenizer, n_layer=1, n_embd=32, n_head=2, n_positions=256).config
    config.num_labels = 1
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(config)
    folder = tmp_path_factory.mktemp("rm")
    model.save_pretrained(str(folder))
    bpe_tokenizer.save_pretrained(str(folder))
    return folder


def test_scores_match_the_last_real_token(rm_folder: Path, bpe_codec: TokenCodec) -> None:
    rm = RewardModelReward(rm_folder, batch_size=4)
    texts = ["def f(x):\n    return x", "a much longer text " * 8, "y", "import os"]
    batched = rm.score_texts(texts)
    alone = torch.cat([rm.score_texts([t]) for t in texts])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)  # padding never read
    # By hand: the score head on the hidden state of each text's last token.
    for text, score in zip(texts, batched.tolist(), strict=True):
        ids = torch.tensor([rm.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            hidden = rm.model.transformer(input_ids=ids).last_hidden_state[0, -1]
            by_hand = float(rm.model.score(hidden)[0])
        assert score == pytest.approx(by_hand, abs=1e-5)
    assert len(set(batched.tolist())) == len(texts)


def test_reward_function_reads_prompt_plus_response(rm_folder: Path, bpe_codec) -> None:
    rm = RewardModelReward(rm_folder, scale=2.0, shift=1.0)
    prompts = [
        Prompt(ids=bpe_codec.encode("Q: hi"), text="Q: hi"),
        Prompt(ids=bpe_codec.encode("x = ")),
    ]
    batch = reward_batch(bpe_codec, prompts, [" there", "1"])
    expected = rm.score_texts(["Q: hi there", "x = 1"])
    torch.testing.assert_close(rm(batch), expected)
    raw = RewardModelReward(rm_folder).score_texts(["Q: hi there"])
    assert float(expected[0]) == pytest.approx(2.0 * float(raw[0]) + 1.0, abs=1e-5)


def test_text_task_with_a_reward_model(rm_folder: Path, bpe_codec: TokenCodec) -> None:
    task = TextReferenceTask(reward=str(rm_folder), codec=bpe_codec)
    assert isinstance(task.reward_fn, RewardModelReward)
    batch = reward_batch(bpe_codec, [task.prompt(0)], ["Bike lanes."])
    assert task.reward_fn(batch).shape == (1,)


def test_bad_input(rm_folder: Path, bpe_tokenizer, tmp_path: Path) -> None:
    from transformers import GPT2ForSequenceClassification

    with pytest.raises(FileNotFoundError, match="not a model folder"):
        RewardModelReward(tmp_path)
    rm = RewardModelReward(rm_folder)
    two = GPT2ForSequenceClassification(
        rm.model.config.__class__(**{**rm.model.config.to_dict(), "num_labels": 2})
    )
    with pytest.raises(ValueError, match="num_labels=2"):
        RewardModelReward(two, tokenizer=bpe_tokenizer)
    with pytest.raises(ValueError, match="give `tokenizer`"):
        RewardModelReward(rm.model)
    with pytest.raises(ValueError, match="batch_size=0"):
        RewardModelReward(rm_folder, batch_size=0)
