"""Syntax-aware macro actions for code: the ``treesitter`` termination.

The decoded response is parsed with tree-sitter (error-tolerant, so partial code as generated
mid-episode parses too) and cut in one of two modes:

- ``mode="statement"`` (default): a macro action begins at the start of every statement, so a
  block header (``def f(x):``, ``if ...:``, ``for ...:``) is one macro and each statement of its
  body is another. Clauses (``elif``/``else``/``except``/``finally``, ``catch``, ``case``) and
  comments that open a line also begin one. A statement nested in a statement that starts on
  the *same line* (``if x: return y``, ``for (let i = 0; ...)``, ``export function``) does not:
  a one-line compound statement stays one macro.
- ``mode="cutoff"``: the depth-first rule of MA-RLHF's parsing-based termination, applied to the
  syntax tree. A subtree whose text covers fewer than ``cutoff`` policy tokens becomes one macro;
  otherwise the node is split into its children, recursively. A child covering a single policy
  token (a keyword such as ``for`` or ``in``, a ``:``, a short name) and not a statement is a
  *leftover*: it joins the previous macro (the paper's merge rule), except that a leftover that
  comes first in its parent opens a macro that the next piece joins, so ``for`` stays with its
  target and ``(`` with the first argument (see :func:`merge_leftovers`). A statement always
  begins a macro; the ``{`` opening a block joins its header.

Offsets: tree-sitter reports *byte* offsets of the UTF-8 text; they are mapped to characters and
then to token indices through the batch's :class:`~marlhf.tokenization.TokenAlignment`. A macro
begins at the token that holds its first character (a token straddling a boundary starts the
macro; a character split across tokens belongs to the token that completes it). Whitespace
before the first macro joins it.

Fallback (declared, counted in ``stats.fallbacks``, one per row that needed it): inside every
``ERROR`` region of the parse, each non-blank line also begins a macro; valid parts of the tree
(statements tree-sitter recovered, inside or outside the error) are used as usual. The number of
``ERROR`` regions is kept in ``stats.extra["error_nodes"]``.

Languages come from a small table (:func:`register_language` adds one); Python and JavaScript are
built in. Parsers and queries are built once per language and cached.
"""

from __future__ import annotations

import importlib
import re
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from marlhf.options.base import SegmentationBatch, Termination
from marlhf.options.registry import register_termination
from marlhf.options.textcuts import (
    LEADING,
    LEFTOVER,
    MACRO,
    SUBTREE,
    UNIT,
    byte_to_token,
    merge_leftovers,
    text_rows,
)
from marlhf.tokenization import TokenAlignment

__all__ = [
    "SyntaxLanguage",
    "TreeSitterTermination",
    "available_languages",
    "register_language",
]

MODES: tuple[str, ...] = ("statement", "cutoff")
DEFAULT_CUTOFF = 10  # policy tokens; the paper's best fixed n for code is 10

_PYTHON_STATEMENTS = (
    "expression_statement return_statement pass_statement break_statement continue_statement "
    "raise_statement assert_statement delete_statement global_statement nonlocal_statement "
    "import_statement import_from_statement future_import_statement print_statement "
    "exec_statement type_alias_statement if_statement elif_clause else_clause for_statement "
    "while_statement try_statement except_clause except_group_clause finally_clause "
    "with_statement match_statement case_clause function_definition class_definition "
    "decorated_definition decorator"
)
_JAVASCRIPT_STATEMENTS = (
    "expression_statement return_statement break_statement continue_statement debugger_statement "
    "throw_statement import_statement export_statement labeled_statement if_statement "
    "else_clause for_statement for_in_statement while_statement do_statement try_statement "
    "catch_clause finally_clause switch_statement switch_case switch_default with_statement "
    "function_declaration generator_function_declaration class_declaration lexical_declaration "
    "variable_declaration using_declaration method_definition field_definition"
)


@dataclass(frozen=True)
class SyntaxLanguage:
    """How to load one tree-sitter grammar and which of its nodes are statements.

    :param name: the language's name in specs (``treesitter:<name>``).
    :param module: an importable module whose ``language()`` returns the grammar (the
        ``tree_sitter_<lang>`` packages all have this form).
    :param statements: node types that begin a macro in statement mode. Types the installed
        grammar does not know are ignored, so one table serves several grammar versions.
    :param comments: node types of comments; they begin a macro only when they open a line.
    """

    name: str
    module: str
    statements: frozenset[str]
    comments: frozenset[str] = frozenset({"comment"})


_LANGUAGES: dict[str, SyntaxLanguage] = {}


def register_language(
    name: str,
    module: str,
    statements: Iterable[str],
    comments: Iterable[str] = ("comment",),
    *,
    overwrite: bool = False,
) -> SyntaxLanguage:
    """Add a tree-sitter grammar to the table ``treesitter:<name>`` reads.

    :param name: the language's name in specs.
    :param module: importable module providing ``language()`` (e.g. ``"tree_sitter_rust"``).
    :param statements: node types that begin a macro in statement mode.
    :param comments: comment node types (a macro starts at a comment that opens a line).
    :param overwrite: replace an existing entry of the same name (default False: an error).
    """
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"register_language: name {name!r} must be alphanumeric or _")
    if name in _LANGUAGES and not overwrite:
        raise ValueError(f"register_language: {name!r} is already registered; pass overwrite=True")
    spec = SyntaxLanguage(name, module, frozenset(statements), frozenset(comments))
    _LANGUAGES[name] = spec
    _compiled.cache_clear()
    return spec


def available_languages() -> list[str]:
    """Sorted names of the languages ``treesitter:<name>`` accepts."""
    return sorted(_LANGUAGES)


@dataclass(frozen=True)
class _Compiled:
    parser: Any  # tree_sitter.Parser
    query: Any  # tree_sitter.Query: statements as @s, errors as @e
    statements: frozenset[str]
    comments: frozenset[str]


@cache
def _compiled(name: str) -> _Compiled:
    """Parser and query for ``name``, built once (tree-sitter is imported here, lazily)."""
    from tree_sitter import Language, Parser, Query

    spec = _LANGUAGES[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        package = spec.module.replace("_", "-")
        raise ImportError(
            f"treesitter: language {name!r} needs the grammar module {spec.module!r}; "
            f"install it with `pip install {package}`"
        ) from exc
    language = Language(module.language())
    known = sorted(t for t in spec.statements | spec.comments if language.id_for_node_kind(t, True))
    if not known:
        raise ValueError(f"treesitter: grammar {spec.module!r} has none of the statement types")
    source = "[" + " ".join(f"({t})" for t in known) + "] @s (ERROR) @e"
    return _Compiled(Parser(language), Query(language, source), spec.statements, spec.comments)


register_language("python", "tree_sitter_python", _PYTHON_STATEMENTS.split())
register_language("javascript", "tree_sitter_javascript", _JAVASCRIPT_STATEMENTS.split())


_LINE_START = re.compile(rb"(?m)^[ \t\f]*(?=[^ \t\f\r\n])")


@register_termination("treesitter")
class TreeSitterTermination(Termination):
    """Macro actions at syntactic units of code, from a tree-sitter parse of the response text.

    Spec: ``treesitter:python`` (statement mode), ``treesitter:javascript;mode=statement``,
    ``treesitter:python;mode=cutoff;cutoff=10``. See the module docstring for the rules, the
    offset mapping and the fallback on unparsable code.

    :param language: grammar name, one of :func:`available_languages` (default ``"python"``).
    :param mode: ``"statement"`` (default) or ``"cutoff"``.
    :param cutoff: in cutoff mode, a subtree covering fewer than this many policy tokens is one
        macro (an int >= 1; default 10). Not accepted in statement mode.
    """

    requires = frozenset({"text"})

    def __init__(
        self, language: str = "python", mode: str = "statement", cutoff: int | None = None
    ):
        super().__init__()
        if language not in _LANGUAGES:
            raise ValueError(
                f"treesitter: unknown language={language!r}; valid: {available_languages()} "
                "(register_language adds one)"
            )
        if mode not in MODES:
            raise ValueError(f"treesitter: unknown mode={mode!r}; valid: {list(MODES)}")
        if mode == "statement" and cutoff is not None:
            raise ValueError(
                f"treesitter: cutoff={cutoff!r} only applies to mode='cutoff', not mode={mode!r}"
            )
        if cutoff is None:
            cutoff = DEFAULT_CUTOFF
        if isinstance(cutoff, bool) or not isinstance(cutoff, int) or cutoff < 1:
            raise ValueError(
                f"treesitter: cutoff must be an int >= 1 (policy tokens), got {cutoff!r}"
            )
        self.language = language
        self.mode = mode
        self.cutoff = cutoff
        self.stats.extra.setdefault("error_nodes", 0)
        _compiled(language)  # fail early on a missing grammar

    @property
    def _compiled(self) -> _Compiled:
        # Looked up (cached) rather than stored, so the termination pickles and deep-copies.
        return _compiled(self.language)

    @property
    def spec(self) -> str:
        tail = f";cutoff={self.cutoff}" if self.mode == "cutoff" else ""
        return f"{self.name}:{self.language};mode={self.mode}{tail}"

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        """``bool[B, T]``: True on the token that begins each syntactic macro action."""
        alignments, lengths = text_rows(batch, self.display_name())
        from tree_sitter import QueryCursor

        cursor = QueryCursor(self._compiled.query)
        rows: list[int] = []
        cols: list[int] = []
        for b, (alignment, n) in enumerate(zip(alignments, lengths, strict=True)):
            if n == 0:
                continue
            found = self._row_starts(alignment, cursor)
            rows.extend([b] * len(found))
            cols.extend(found)
        out = torch.zeros(batch.mask.shape, dtype=torch.bool)
        if rows:
            out[torch.tensor(rows), torch.tensor(cols)] = True
        return out.to(batch.mask.device)

    def _row_starts(self, alignment: TokenAlignment, cursor: Any) -> list[int]:
        data = alignment.text.encode("utf-8")
        if not data.strip():
            return [0]
        b2t = byte_to_token(alignment, data)
        tree = self._compiled.parser.parse(data)
        needed = self.mode == "statement" or tree.root_node.has_error
        captures = cursor.captures(tree.root_node) if needed else {}
        errors = _outermost(captures.get("e", []))
        if self.mode == "statement":
            boundaries = self._statement_bytes(captures.get("s", []), data)
            tokens = {b2t[i] for i in boundaries}
        else:
            tokens = self._cutoff_tokens(tree.root_node, b2t)
        if errors:
            self.stats.fallbacks += 1
            self.stats.extra["error_nodes"] += len(errors)
            tokens.update(b2t[i] for i in _line_starts_in(data, errors))
        lead = b2t[len(data) - len(data.lstrip())]  # leading whitespace joins the first macro
        return [0, *sorted(t for t in tokens if t > lead)]

    def _statement_bytes(self, nodes: list[Any], data: bytes) -> list[int]:
        """Start bytes of statements, skipping ones nested on their enclosing statement's line."""
        spans = sorted((n.start_byte, -n.end_byte, n.start_point[0], n.type) for n in nodes)
        comments = self._compiled.comments
        open_: list[tuple[int, int]] = []  # (end byte, start row) of enclosing statements
        out: list[int] = []
        for start, neg_end, row, kind in spans:
            if start == -neg_end:
                continue  # zero-width (MISSING) node
            while open_ and open_[-1][0] <= start:
                open_.pop()
            same_line = bool(open_) and open_[-1][1] == row
            if kind in comments:
                line = data.rfind(b"\n", 0, start) + 1
                if not data[line:start].strip():
                    out.append(start)
                continue
            open_.append((-neg_end, row))
            if not same_line:
                out.append(start)
        return out

    def _cutoff_tokens(self, root: Any, b2t: list[int]) -> set[int]:
        """Depth-first: a node covering fewer than ``cutoff`` tokens is one macro, else split.

        Emits the events :func:`merge_leftovers` turns into boundaries. Every statement opens a
        unit (so it begins a macro); a child covering a single token that is not a statement is
        a leftover, leading when it comes first in its parent, unless a statement follows it
        (the ``{`` of a block joins its header).
        """
        units = self._compiled.statements
        events: list[tuple[int, int]] = []
        stack: list[tuple[Any, int]] = [(root, SUBTREE)]
        while stack:
            node, kind = stack.pop()
            start, end = node.start_byte, node.end_byte
            if kind != SUBTREE:
                events.append((kind, b2t[start]))
                continue
            if node.type in units:
                events.append((UNIT, b2t[start]))
            children = [c for c in node.children if c.end_byte > c.start_byte]
            if b2t[end - 1] - b2t[start] + 1 < self.cutoff or not children:
                events.append((MACRO, b2t[start]))
                continue
            for i in range(len(children) - 1, -1, -1):
                child = children[i]
                if child.type in units or b2t[child.start_byte] != b2t[child.end_byte - 1]:
                    stack.append((child, SUBTREE))
                elif i == 0 and not (len(children) > 1 and children[1].type in units):
                    stack.append((child, LEADING))
                else:
                    stack.append((child, LEFTOVER))
        return merge_leftovers(events)


def _outermost(nodes: list[Any]) -> list[tuple[int, int]]:
    """Byte spans of the ERROR nodes not inside another ERROR node."""
    out: list[tuple[int, int]] = []
    for start, neg_end in sorted((n.start_byte, -n.end_byte) for n in nodes):
        if start < -neg_end and (not out or start >= out[-1][1]):
            out.append((start, -neg_end))
    return out


def _line_starts_in(data: bytes, spans: list[tuple[int, int]]) -> list[int]:
    """First non-blank byte of every line that lies inside one of ``spans``."""
    firsts = [m.end() for m in _LINE_START.finditer(data)]
    out: list[int] = []
    for start, end in spans:
        i = bisect_left(firsts, start)
        while i < len(firsts) and firsts[i] < end:
            out.append(firsts[i])
            i += 1
    return out
