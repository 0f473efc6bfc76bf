"""The documentation runs: every code block of README.md and docs/, the generated pages, the site.

- Every ```` ```python ```` and ```` ```bash ```` block runs, in a fresh temporary folder (with
  ``examples/`` linked in) and a fresh process: a page's python blocks run in order in one
  interpreter, as a reader pastes them (one test); each bash block is a test of its own, run in
  its own folder with the venv's ``marlhf`` on ``PATH``, so a bash block must not read files
  that another block writes (each page's commands so far are self-contained). Split so, a long
  page's commands spread over the test workers and each test stays well inside the per-test
  timeout on a loaded machine. A block preceded by ``<!-- docs-test: skip: REASON -->`` is not
  run; the reason is required and the markers are few (:data:`MAX_SKIPS`).
- Every generated page equals what its committed results file renders
  (``benchmarks/pages.py --check``), and every commit a page names is in the history.
- README numbers live in rendered blocks: outside them it holds no measured value (a decimal
  or a duration).
- ``mkdocs build --strict`` passes (``make docs``; ``make test`` runs it too).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import pages  # noqa: E402
from tests.extras import NEEDS_DOCS  # noqa: E402

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE)
SKIP = re.compile(r"<!-- docs-test: skip: (.+?) -->\s*$")
RUN = {"python", "bash"}
#: How many blocks may carry a skip marker, over README.md and docs/ together.
MAX_SKIPS = 12
BLOCK_TIMEOUT = 600


@dataclass(frozen=True)
class Block:
    """A fenced code block of a markdown file."""

    path: Path
    line: int
    lang: str
    code: str
    skip: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def markdown_files() -> list[Path]:
    """README.md and every page of docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of ``path`` with their language and skip reason."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        line = text.count("\n", 0, m.start()) + 1
        out.append(Block(path, line, m.group(1), m.group(2), skip.group(1) if skip else None))
    return out


def all_blocks() -> list[Block]:
    return [b for p in markdown_files() for b in blocks(p)]


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }


def _workdir(tmp_path: Path) -> Path:
    """A fresh folder that looks like the repository's root to the commands of the docs."""
    for name in ("examples", "benchmarks"):
        (tmp_path / name).symlink_to(ROOT / name)
    if (Path(sys.prefix) / "bin" / "activate").exists():  # the venv running the tests is .venv
        (tmp_path / ".venv").symlink_to(sys.prefix)
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    return tmp_path


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(
        cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=BLOCK_TIMEOUT
    )
    assert proc.returncode == 0, (
        f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


@dataclass(frozen=True)
class Part:
    """What one test runs: a page's python blocks (in order, one interpreter) or one bash block."""

    path: Path
    blocks: tuple[Block, ...]

    @property
    def id(self) -> str:
        """``PAGE:python`` or ``PAGE:LINE`` (a page outside the repository: its file name)."""
        page = (
            str(self.path.relative_to(ROOT)) if self.path.is_relative_to(ROOT) else self.path.name
        )
        first = self.blocks[0]
        return f"{page}:python" if first.lang == "python" else f"{page}:{first.line}"


def parts(path: Path) -> list[Part]:
    """The tests of ``path``: its python blocks together, then each bash block alone."""
    todo = [b for b in blocks(path) if b.lang in RUN and not b.skip]
    python = tuple(b for b in todo if b.lang == "python")
    return ([Part(path, python)] if python else []) + [
        Part(path, (b,)) for b in todo if b.lang == "bash"
    ]


def all_parts() -> list[Part]:
    return [part for path in markdown_files() for part in parts(path)]


def test_blocks_are_found_and_skips_are_few_and_reasoned() -> None:
    found = all_blocks()
    assert any(b.lang == "python" for b in found) and any(b.lang == "bash" for b in found)
    skipped = [b for b in found if b.skip]
    for b in skipped:
        assert len(b.skip or "") >= 20, f"{b.where}: a skip needs a reason a reader accepts"
        assert b.lang in RUN, f"{b.where}: a skip marker on a block that never runs"
    assert len(skipped) <= MAX_SKIPS, [b.where for b in skipped]


def test_a_skip_marker_applies_to_the_next_block_only(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "<!-- docs-test: skip: needs a GPU that CI does not have -->\n```bash\nfalse\n```\n\n"
        "```bash\ntrue\n```\n",
        encoding="utf-8",
    )
    got = blocks(page)
    assert [(b.lang, b.skip, b.code) for b in got] == [
        ("bash", "needs a GPU that CI does not have", "false\n"),
        ("bash", None, "true\n"),
    ]


def test_a_page_splits_into_its_python_blocks_and_each_bash_block(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "```bash\necho one\n```\n\n```python\nx = 1\n```\n\n```text\nnot run\n```\n\n"
        "<!-- docs-test: skip: needs a GPU that CI does not have -->\n```bash\nfalse\n```\n\n"
        "```python\nprint(x)\n```\n\n```bash\necho two\n```\n",
        encoding="utf-8",
    )
    got = [[(b.lang, b.code) for b in part.blocks] for part in parts(page)]
    assert got == [
        [("python", "x = 1\n"), ("python", "print(x)\n")],
        [("bash", "echo one\n")],
        [("bash", "echo two\n")],
    ]
    assert [part.id for part in parts(page)] == ["p.md:python", "p.md:1", "p.md:22"]


@pytest.mark.slow
@pytest.mark.parametrize("part", all_parts(), ids=lambda part: part.id)
def test_code_blocks_run(part: Part, tmp_path: Path) -> None:
    cwd = _workdir(tmp_path)
    first = part.blocks[0]
    if first.lang == "python":  # one interpreter for the page, blocks in order, each tagged
        script = "\n".join(
            f"# --- {b.where}\nexec(compile({b.code!r}, {b.where!r}, 'exec'))" for b in part.blocks
        )
        (cwd / "page_blocks.py").write_text(script, encoding="utf-8")
        _run([sys.executable, "page_blocks.py"], cwd, f"the python blocks of {part.path.name}")
    else:
        _run(["bash", "-euo", "pipefail", "-c", first.code], cwd, f"{first.where} (bash)")


@pytest.mark.slow  # imports every renderer (torch, the estimators' benchmark): ~10-20 s
def test_generated_pages_match_their_results() -> None:
    stale = [r for r in pages.render_all() if r.rendered != r.committed]
    assert not stale, "re-render with `python benchmarks/pages.py`:\n" + "\n".join(
        r.diff() for r in stale
    )


def _git_commits() -> set[str] | None:
    try:
        out = subprocess.run(
            ["git", "rev-list", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return set(out.split())


#: Commits a page names that are not in the history, with why (page, hash) -> reason.
NAMED_OUTSIDE_HISTORY = {
    ("docs/credit.md", "6700724"): "the form of 7b54a0a before it was rebased, as the page says",
}
#: A commit a page names: after "commit(s)" (case aside), or any backticked hash (a short or
#: full one, with ``+dirty`` or not), so that "measured at `abc1234`" is checked too.
COMMIT = re.compile(r"(?i:commits?) `?([0-9a-f]{7,40})\b|`([0-9a-f]{7,40})(?:\+dirty)?`")


def named_commits(text: str) -> set[str]:
    """The commits ``text`` names (:data:`COMMIT`'s matches)."""
    return {m.group(1) or m.group(2) for m in COMMIT.finditer(text)}


def test_every_commit_a_page_names_is_in_the_history() -> None:
    history = _git_commits()
    if not history:
        pytest.skip("not a git checkout: there is no history to resolve commits against")
    missing = []
    for path in markdown_files():
        text, page = path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))
        for sha in named_commits(text):
            known = any(c.startswith(sha) for c in history)
            if not known and (page, sha) not in NAMED_OUTSIDE_HISTORY:
                missing.append(f"{page}: {sha}")
    assert not missing, missing


def test_the_commit_check_sees_every_way_a_page_names_one() -> None:
    text = "measured at `deadbee`; Commit `abcdef1`; commits `1234567` and `7654321+dirty`."
    assert named_commits(text) == {"deadbee", "abcdef1", "1234567", "7654321"}


MEASURED = re.compile(r"\b\d+\.\d+\b|\b\d+(\.\d+)?\s?(s|min|minutes?|seconds?|h|hours?)\b")


def test_readme_numbers_come_from_results_files() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    text = pages.BLOCK.sub("", text)
    text = FENCE.sub("", text)
    text = re.sub(r"`[^`]*`|\]\([^)]*\)|https?://\S+|arXiv \d+\.\d+", "", text)
    found = [m.group(0) for m in MEASURED.finditer(text)]
    assert not found, f"README numbers outside rendered blocks: {found}"


def test_the_readme_check_sees_a_typed_number() -> None:
    typed = "The demo takes 90 s and PPO scores 0.275."
    assert [m.group(0) for m in MEASURED.finditer(typed)] == ["90 s", "0.275"]


def _strict_build(config: Path, site: Path) -> list[str]:
    """``mkdocs build --strict`` of ``config`` into ``site``. Not ``-q``: in mkdocs 1.6 it raises
    the log level above the warnings, which strict mode then never counts (mkdocs#4126), so a
    broken link would build."""
    return [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)]


@pytest.mark.slow
@NEEDS_DOCS
def test_site_builds_strict(tmp_path: Path) -> None:
    _run(_strict_build(ROOT / "mkdocs.yml", tmp_path / "site"), ROOT, "mkdocs build --strict")


@NEEDS_DOCS
def test_the_strict_build_refuses_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Page\n\nSee [the missing page](nope.md).\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: t\n")
    cmd = _strict_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert proc.returncode != 0 and "nope.md" in proc.stdout + proc.stderr
