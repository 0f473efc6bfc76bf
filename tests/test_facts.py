"""Numbers quoted in prose (``<!-- n:NAME -->...<!-- /n -->``, benchmarks/facts.py): rendered
back from their results file, refused where Markdown would break them, and every quoted name
registered and every registered fact quoted."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import pages  # noqa: E402
from benchmarks.facts import INLINE, Facts, registrar, render_inline, span  # noqa: E402
from benchmarks.facts_learning import in_every  # noqa: E402


@pytest.fixture
def registry(tmp_path: Path) -> Facts:
    """One fact, ``audit-s``, the slowest audit of a small results file written here."""
    path = tmp_path / "audit.json"
    path.write_text(json.dumps({"seconds": [0.21, 0.254, 0.18]}), encoding="utf-8")
    table: Facts = {}

    @registrar(table)("audit-s", path)
    def audit_s(data: dict[str, Any]) -> str:
        return f"{max(data['seconds']):.2f} s"

    return table


def test_a_typed_number_is_rendered_back_from_its_results_file(registry: Facts) -> None:
    page = "The audit takes at most <!-- n:audit-s -->0.19 s<!-- /n --> wall.\n"
    assert render_inline(page, registry) == (
        "The audit takes at most <!-- n:audit-s -->0.25 s<!-- /n --> wall.\n"
    )


def test_a_new_results_file_moves_the_quoted_number(registry: Facts) -> None:
    path, _ = registry["audit-s"]
    page = "at most <!-- n:audit-s -->0.25 s<!-- /n -->"
    assert render_inline(page, registry) == page
    path.write_text(json.dumps({"seconds": [1.5]}), encoding="utf-8")
    assert render_inline(page, registry) == "at most <!-- n:audit-s -->1.50 s<!-- /n -->"


def test_an_unknown_fact_names_the_known_ones(registry: Facts) -> None:
    with pytest.raises(KeyError, match=r"n:nope.*unknown fact; known: \['audit-s'\]"):
        render_inline("took <!-- n:nope -->3 s<!-- /n -->", registry)


def test_a_quoted_number_may_not_start_a_line(registry: Facts) -> None:
    # Markdown reads a comment that starts a line as an HTML block and ends the paragraph there.
    with pytest.raises(ValueError, match="text, line 2: a quoted number must not start a line"):
        render_inline("The audit takes at most\n  <!-- n:audit-s -->0.25 s<!-- /n -->.", registry)


def test_an_unclosed_quote_is_refused(registry: Facts) -> None:
    with pytest.raises(ValueError, match=r"docs/x.md, line 1: <!-- n: without <!-- /n -->"):
        render_inline("at most <!-- n:audit-s -->0.25 s wall", registry, "docs/x.md")


def test_a_fact_registered_twice_is_refused(registry: Facts) -> None:
    path, render = registry["audit-s"]
    with pytest.raises(ValueError, match="'audit-s' is registered twice"):
        registrar(registry)("audit-s", path)(render)


def test_span() -> None:
    assert span([0.38, 0.103, 0.27]) == "0.10-0.38"
    assert span([0.5, 0.501]) == "0.50"
    assert span([-0.203, 0.005], sep=" and ") == "-0.20 and 0.01"
    assert span([7.3, 9.04], 0) == "7-9"
    with pytest.raises(ValueError, match="no values"):
        span([])


def test_in_every() -> None:
    assert in_every(3, 3, "seed") == "in every seed"
    assert in_every(2, 3, "seed") == "in 2 of 3 seeds"


def _quoted(path: Path) -> list[str]:
    return [m.group(2) for m in INLINE.finditer(path.read_text(encoding="utf-8"))]


def test_every_quoted_name_is_registered_and_every_fact_is_quoted() -> None:
    pages_with_facts = [p for p in pages.block_files() if _quoted(p)]
    quoted = {name for p in pages_with_facts for name in _quoted(p)}
    assert quoted, "no page quotes a rendered number"
    assert sorted(quoted - set(pages.FACTS)) == [], "quoted but not registered"
    assert sorted(set(pages.FACTS) - quoted) == [], "registered but quoted by no page"
    for name, (path, _) in pages.FACTS.items():
        assert path.exists(), f"{name}: {path} is missing"


def test_no_quoted_number_starts_a_line_in_the_docs() -> None:
    for path in pages.block_files():
        starts = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if re.match(r"\s*<!-- n:", line)
        ]
        assert not starts, f"{path.name}: {starts}"


def test_the_credit_page_quotes_the_figures_of_its_own_table() -> None:
    """Two quoted figures of docs/credit.md, read back from the block's table beside them."""
    text = (ROOT / "docs" / "credit.md").read_text(encoding="utf-8")
    quoted = {m.group(2): m.group(3) for m in INLINE.finditer(text)}
    block = text.split("<!-- credit.json:begin -->")[1].split("<!-- credit.json:end -->")[0]
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in block.splitlines()
        if line.startswith("| ppo |") or line.startswith("| grpo |")
    ]
    ppo_scores = [r[2] for r in rows if r[0] == "ppo" and r[1] != "0" and r[3] == "gae"]
    assert quoted["credit-scores-ppo"] == " / ".join(ppo_scores)
    grpo_own = [float(r[6]) for r in rows if r[0] == "grpo" and r[1] != "0" and r[3] == "grpo"]
    assert quoted["credit-own-dcorr-grpo"] == " / ".join(f"{x:.2f}" for x in grpo_own)
    assert all(math.isfinite(x) for x in grpo_own)


# ------------------------------------------------------------------ no typed numbers in prose
#: A measured-looking number: a duration, a percentage, a ratio or a size.
TYPED = re.compile(
    r"\b\d[\d,]*(\.\d+)?\s?(s|ms|min|minutes?|seconds?|h|hours?|MB|GB|MiB|GiB|tokens/s)\b"
    r"|\b\d[\d,]*(\.\d+)?\s?(%|x\b)"
)
#: Generated text that a page holds: marked blocks (``<!-- credit.json:begin -->``, ...).
MARKED = re.compile(r"<!-- ([\w.]+):begin -->.*?<!-- \1:end -->", re.DOTALL)
FENCE = re.compile(r"^```.*?^```\s*$", re.DOTALL | re.MULTILINE)
#: Pages whose whole text a renderer writes (their numbers come from results files).
WHOLE = {"benchmarks.md", "estimators.md", "credit_learned.md", "presets.md"}
#: Numbers in prose that are not results, by page: settings, goals, arithmetic, definitions.
NOT_RESULTS = {
    ("credit.md", "95%"): "a confidence level",
    ("credit_multiturn.md", "95%"): "a confidence level",
    ("demo.md", "95%"): "a confidence level",
    ("parity_full.md", "95%"): "a confidence level",
    ("howto/scale.md", "25 MB"): "the all-reduce bucket size, a setting",
    ("learned_terminations.md", "25%"): "issue 27's goal",
    ("performance.md", "201 MB"): "the size of a [32, 32, 49152] float32 tensor, arithmetic",
    ("performance.md", "1.5x"): "issue 28's goal",
    ("performance.md", "4 GB"): "issue 28's goal",
    ("performance.md", "4096 MB"): "issue 28's goal",
    ("performance.md", "0.6x"): "issue 28's goal",
    ("performance.md", "1.6 GB"): "the model's and reference's weights, counted",
    ("performance.md", "0.54 GB"): "the gradients' size, counted",
    ("performance.md", "70 MB"): "activations per block, counted",
    ("performance.md", "2.1 GB"): "activations of 30 blocks, counted",
    ("reasoning.md", "300 s"): "a test's time limit, a setting",
    ("sandbox.md", "2.5 s"): "the sandbox's start-up slack, a setting",
    ("sandbox.md", "64 MiB"): "the memory group's allowance, a setting",
    ("sandbox.md", "1 MiB"): "result_mb's default, a setting",
    ("performance.md", "64 MiB"): "the log-prob slice size, a setting",
    ("performance.md", "32 MiB"): "the largest mmap threshold glibc accepts, a limit",
    ("performance.md", "2 MiB"): "the allocator benchmark's other threshold, a setting",
}


def typed_numbers(text: str) -> list[str]:
    """Measured-looking numbers in a page's own prose: rendered blocks, marked blocks, quoted
    figures, code blocks, code spans and links removed."""
    text = pages.BLOCK.sub("", text)
    text = MARKED.sub("", text)
    text = INLINE.sub("", text)
    text = FENCE.sub("", text)
    text = re.sub(r"`[^`]*`|\]\([^)]*\)|https?://\S+", "", text)
    return [m.group(0) for m in TYPED.finditer(text)]


def test_the_typed_number_check_sees_durations_ratios_and_sizes() -> None:
    page = (
        "The audit took 4.3 s, 12% less, 2.07x faster, 3368 MB; `took 9 s` is code,\n"
        "<!-- n:x -->0.25 s<!-- /n --> is quoted, and\n<!-- render:demo-wall -->\n90 s\n"
        "<!-- render:end -->\n<!-- credit.json:begin -->\n15 min\n<!-- credit.json:end -->\n"
    )
    assert typed_numbers(page) == ["4.3 s", "12%", "2.07x", "3368 MB"]


def test_no_page_types_a_measured_number_in_its_prose() -> None:
    """Quote a result with ``<!-- n:NAME -->`` (benchmarks/facts.py) or a render block; list
    a number that is not a result (a setting, a goal, arithmetic) in NOT_RESULTS with why."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        page = path.relative_to(ROOT / "docs").as_posix() if path.name != "README.md" else "README"
        if page in WHOLE:
            continue
        for number in typed_numbers(path.read_text(encoding="utf-8")):
            if (page, number) not in NOT_RESULTS:
                found.append(f"{page}: {number}")
    assert not found, f"typed numbers outside rendered text: {found}"
