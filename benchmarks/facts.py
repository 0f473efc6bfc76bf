"""Numbers quoted in the prose of ``README.md`` and ``docs/``, each rendered from a results file.

A page quotes a measured number as ``<!-- n:NAME -->0.25 s<!-- /n -->``: the text between the
two comments is what the fact ``NAME`` renders from its results file (each
``benchmarks/facts_*.py`` module registers the facts of its pages), and
``python benchmarks/pages.py`` rewrites it (``--check`` fails on a difference, and the suite runs
the check). The comments do not show on the rendered page. Prose keeps its words; only the
figures are generated, so a re-run benchmark cannot leave a stale number behind in a sentence.

Each fact is a function of one results file's JSON; the figures it quotes are computed the way
the page's generated table computes them (``credit.json``'s means over seeds, for example), so a
number in the prose always matches the table beside it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, read_json

#: ``<!-- n:NAME -->TEXT<!-- /n -->`` on one line.
INLINE = re.compile(r"(<!-- n:([\w.-]+) -->)(.*?)(<!-- /n -->)")
OPEN, CLOSE = "<!-- n:", "<!-- /n -->"

Fact = Callable[[Any], str]
#: Fact name -> (results file, renderer of its JSON to the quoted text).
Facts = dict[str, tuple[Path, Fact]]


def registrar(table: Facts) -> Callable[[str, Path], Callable[[Fact], Fact]]:
    """A decorator factory: ``@fact(name, path)`` registers a function in ``table``.

    :param table: the registry of one module of facts (``benchmarks/facts_*.py``).
    """

    def fact(name: str, path: Path) -> Callable[[Fact], Fact]:
        def register(render: Fact) -> Fact:
            if name in table:
                raise ValueError(f"fact {name!r} is registered twice")
            table[name] = (path, render)
            return render

        return register

    return fact


def results(path: Path) -> Any:
    """The JSON of a committed results file.

    :raises FileNotFoundError: when it is missing or not valid JSON, naming it.
    """
    data = read_json(path)
    if data is None:
        raise FileNotFoundError(f"{path.relative_to(ROOT)} is missing or not valid JSON")
    return data


def span(values: Iterable[float], digits: int = 2, sep: str = "-") -> str:
    """``lo-hi`` of ``values`` at ``digits`` decimals (one number when both round alike).

    :param values: at least one number.
    :param digits: decimals shown.
    :param sep: what joins the two ends (a negative low end reads better with ``" and "``).
    """
    vals = sorted(values)
    if not vals:
        raise ValueError("span of no values")
    lo, hi = f"{vals[0]:.{digits}f}", f"{vals[-1]:.{digits}f}"
    return lo if lo == hi else f"{lo}{sep}{hi}"


def render_inline(text: str, table: Facts, where: str = "text") -> str:
    """``text`` with every ``<!-- n:NAME -->`` figure re-rendered from its results file.

    :param table: the facts to render from (``benchmarks/pages.py`` joins every module's).
    :param where: what ``text`` is, for the errors (a page's path).
    :raises KeyError: for a name the registry does not know, naming the known ones.
    :raises ValueError: for a marker that starts a line (Markdown would read the comment as an
        HTML block and split the paragraph there) or has no ``<!-- /n -->`` on its line.
    """
    for number, line in enumerate(text.splitlines(), 1):
        opened = line.count(OPEN)
        if opened and line.lstrip().startswith(OPEN):
            raise ValueError(
                f"{where}, line {number}: a quoted number must not start a line (move a word "
                f"before it): {line.strip()[:80]}"
            )
        if opened != len(INLINE.findall(line)):
            raise ValueError(f"{where}, line {number}: {OPEN} without {CLOSE} on the same line")
    cache: dict[Path, Any] = {}

    def one(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in table:
            raise KeyError(f"{where}: <!-- n:{name} -->: unknown fact; known: {sorted(table)}")
        path, render = table[name]
        if path not in cache:
            cache[path] = results(path)
        return match.group(1) + render(cache[path]) + match.group(4)

    return INLINE.sub(one, text)
