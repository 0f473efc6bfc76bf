"""README.md's links resolve: every relative link names a file of the repository, and every
``#anchor`` names a heading of its target as the site's table of contents spells it.

``mkdocs build --strict`` checks the links between pages of ``docs/`` (tests/test_docs.py runs
it), but README.md is not a page of the site: this is its check, fast enough for every run.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: ``[text](target)``, not an image; the target stops at the first blank or ``)``.
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s<][^)\s]*)\)")
#: Every other way markdown names a target: an image ``![alt](target)``, a target in angle
#: brackets ``[text](<a b.md>)``, a reference definition ``[ref]: target`` and an HTML
#: ``href``/``src``.
OTHER_TARGETS = [
    re.compile(r"!\[[^\]]*\]\(([^)\s<]+)\)"),
    re.compile(r"\[[^\]]*\]\(<([^>]+)>\)"),
    re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^>\s]+)>?", re.MULTILINE),
    re.compile(r"\b(?:href|src)=\"([^\"]+)\""),
]
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```\s*$", re.DOTALL | re.MULTILINE)


def slug(heading: str) -> str:
    """The anchor Python-Markdown's ``toc`` extension gives a heading (its default slugify).

    :param heading: the heading's markdown text, without the leading ``#``.
    :return: the anchor, e.g. ``"the-comparison-grpo-and-rloo"`` for ``"The comparison: GRPO
        and RLOO"``.
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings (headings inside code blocks are not headings).

    :param path: a markdown file.
    :return: the set of its headings' slugs.
    """
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(match.group(1)) for match in HEADING.finditer(text)}


def broken_links(path: Path) -> list[str]:
    """The relative links of a markdown file that do not resolve, each with why.

    :param path: a markdown file; links are relative to its folder.
    :return: one ``"target: reason"`` a broken link; empty when all resolve.
    """
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    broken = []
    targets = LINK.findall(text) + [t for p in OTHER_TARGETS for t in p.findall(text)]
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not checked here
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor} in {resolved.name}")
    return broken


def test_readme_links_resolve() -> None:
    broken = broken_links(ROOT / "README.md")
    assert not broken, "README.md links that do not resolve:\n" + "\n".join(broken)


def test_readme_links_the_pages_it_promises() -> None:
    """The pages other pages send readers to through the README's table."""
    targets = set(LINK.findall((ROOT / "README.md").read_text(encoding="utf-8")))
    for page in (
        "docs/howto/write-a-preset.md",
        "docs/credit_learned.md",
        "docs/learned_terminations.md",
        "docs/howto/cli.md",
        "docs/credit_multiturn.md#the-comparison-every-turn-level-preset-beside-grpo-rloo-ppo-and-ma-ppo",
    ):
        assert page in targets, f"README.md does not link {page}"


def test_a_broken_link_or_anchor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "page.md").write_text("# Title\n\n## The comparison: A, B and C-D\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "[ok](page.md) [ok anchor](page.md#the-comparison-a-b-and-c-d) [web](https://x.org/a)\n"
        "[self](#top) [missing](nothing.md) [bad anchor](page.md#the-comparison)\n"
        "![plot](no.png) [spaced](<no such.md>) [ok spaced](<page.md>)\n"
        '<a href="no-href.md">x</a> <img src="page.md"> [by reference][r]\n'
        "\n[r]: no-ref.md\n"
        "```\n[in a code block](ignored.md)\n```\n# Top\n"
    )
    broken = sorted(line.split(":")[0] for line in broken_links(readme))
    assert broken == sorted(
        ["nothing.md", "page.md#the-comparison", "no.png", "no such.md", "no-href.md", "no-ref.md"]
    )


def test_slug_matches_the_site() -> None:
    assert slug("The comparison: every turn-level preset beside GRPO, RLOO, PPO and MA-PPO") == (
        "the-comparison-every-turn-level-preset-beside-grpo-rloo-ppo-and-ma-ppo"
    )
    assert slug("Mixing estimators: `A = sum_k w_k A_k`") == "mixing-estimators-a-sum_k-w_k-a_k"
