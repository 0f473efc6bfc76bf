"""Rewrite flat reads of the agent config (``config.clip_range``) to their group paths
(``config.loss.clip_range``), using the one table ``marlhf.algorithms.groups.FLAT_KEYS``.

Two ways to find the reads:

- ``--mypy FILE``: the output of ``mypy --show-column-numbers`` over the code; every error
  ``"PPOConfig" has no attribute "clip_range"`` (also ``MAPPOConfig``, ``AgentConfig``) is
  rewritten at its line and column. Use this for typed code: mypy knows which object is a config.
- ``--bases a,b.c``: in the files named, every ``<base>.<flat name>`` whose base is written as
  one of these expressions (``config``, ``self.config``, ``cfg``). Use this for code that reads a
  config typed ``Any`` (the estimators), and review the diff.

Only the attribute name moves: ``x.clip_range`` becomes ``x.loss.clip_range`` (``x.group_std``
becomes ``x.credit.grpo.group_std``); a read already on its group is left alone.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marlhf.algorithms.groups import FLAT_KEYS

CONFIG_CLASSES = ("PPOConfig", "MAPPOConfig", "AgentConfig")
_MYPY = re.compile(
    r'^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): error: "(?P<cls>\w+)" has no attribute '
    r'"(?P<attr>\w+)"'
)


def _missing(node: ast.Attribute) -> str:
    """The part of the knob's group path its base lacks (``"loss."``, ``"grpo."``), or ``""``."""
    chain: list[str] = []
    base = node.value
    while isinstance(base, ast.Attribute):
        chain.insert(0, base.attr)
        base = base.value
    groups = FLAT_KEYS[node.attr][:-1]
    if chain and chain[-1] == groups[-1]:  # already on the knob's own section
        return ""
    for j in range(len(groups), 0, -1):  # the longest start of the path the base ends with
        if chain[len(chain) - j :] == list(groups[:j]):
            return "".join(part + "." for part in groups[j:])
    return "".join(part + "." for part in groups)


def _flat_reads(tree: ast.AST) -> list[ast.Attribute]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in FLAT_KEYS and _missing(node)
    ]


def _insert(text: str, nodes: list[ast.Attribute]) -> str:
    """Insert ``<group>.`` before each node's attribute name (last node first)."""
    lines = text.splitlines(keepends=True)
    done = set()
    for node in sorted(nodes, key=lambda n: (n.end_lineno, n.end_col_offset), reverse=True):
        key = (node.end_lineno, node.end_col_offset)
        if key in done or node.end_lineno is None or node.end_col_offset is None:
            continue
        done.add(key)
        row = lines[node.end_lineno - 1].encode()
        at = node.end_col_offset - len(node.attr)
        assert row[at : node.end_col_offset].decode() == node.attr, (node.lineno, node.attr)
        lines[node.end_lineno - 1] = (row[:at] + _missing(node).encode() + row[at:]).decode()
    return "".join(lines)


def rewrite_bases(path: Path, bases: set[str]) -> int:
    """Rewrite ``<base>.<flat>`` for the named bases in ``path``; the number of rewrites."""
    text = path.read_text(encoding="utf-8")
    nodes = [n for n in _flat_reads(ast.parse(text)) if ast.unparse(n.value) in bases]
    if nodes:
        path.write_text(_insert(text, nodes), encoding="utf-8")
    return len(nodes)


def rewrite_mypy(report: str) -> int:
    """Rewrite every flat read a mypy report names; the number of rewrites."""
    wanted: dict[str, set[tuple[int, int, str]]] = defaultdict(set)
    for line in report.splitlines():
        m = _MYPY.match(line)
        if m and m["cls"] in CONFIG_CLASSES and m["attr"] in FLAT_KEYS:
            wanted[m["file"]].add((int(m["line"]), int(m["col"]) - 1, m["attr"]))
    total = 0
    for file, places in wanted.items():
        path = Path(file)
        text = path.read_text(encoding="utf-8")
        reads = _flat_reads(ast.parse(text))
        nodes = [n for n in reads if (n.lineno, n.col_offset, n.attr) in places]
        found = {(n.lineno, n.col_offset, n.attr) for n in nodes}
        for line_no, col, attr in sorted(places - found):  # a column mypy counts otherwise
            same = [n for n in reads if n.lineno == line_no and n.attr == attr]
            if len(same) == 1:
                nodes.append(same[0])
            else:
                print(f"{file}:{line_no}:{col + 1}: {attr}: not rewritten (ambiguous)")
        if nodes:
            path.write_text(_insert(text, nodes), encoding="utf-8")
        total += len(nodes)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mypy", help="a mypy report (--show-column-numbers) to act on")
    parser.add_argument("--bases", help="comma-separated base expressions, e.g. config,cfg")
    parser.add_argument("files", nargs="*", help="files for --bases")
    args = parser.parse_args(argv)
    total = 0
    if args.mypy:
        total += rewrite_mypy(Path(args.mypy).read_text(encoding="utf-8"))
    if args.bases:
        bases = set(args.bases.split(","))
        for file in args.files:
            total += rewrite_bases(Path(file), bases)
    print(f"{total} reads rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
