"""Provenance stamps resolve to commits of the history (benchmarks/provenance.py), and the
render blocks of benchmarks/pages.py: each rule on a small git repository made here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import pages  # noqa: E402
from benchmarks.provenance import Provenance, resolve, source_tree  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q")
    return tmp_path


def test_source_tree_is_the_measured_code_uncommitted_changes_included(repo: Path) -> None:
    commit(repo, {"marlhf/a.py": "x = 1\n", "README.md": "r\n"}, "one")
    assert source_tree(repo) == git(repo, "rev-parse", "HEAD:marlhf")
    (repo / "README.md").write_text("changed\n", encoding="utf-8")  # not the package
    assert source_tree(repo) == git(repo, "rev-parse", "HEAD:marlhf")
    (repo / "marlhf" / "a.py").write_text("x = 2\n", encoding="utf-8")
    dirty = source_tree(repo)
    assert dirty != git(repo, "rev-parse", "HEAD:marlhf")
    assert git(repo, "status", "--porcelain", "marlhf") == "M marlhf/a.py"  # index untouched
    two = commit(repo, {}, "two")
    assert dirty == git(repo, "rev-parse", f"{two}:marlhf")


def test_a_clean_stamp_in_the_history_is_its_own_commit(repo: Path) -> None:
    one = commit(repo, {"marlhf/a.py": "x = 1\n"}, "one")
    commit(repo, {"marlhf/a.py": "x = 2\n"}, "two")
    got = resolve({"commit": one, "uncommitted_files": []}, root=repo)
    assert got == Provenance(one, "measured")
    assert got.describe() == f"`{one[:7]}`"


def test_a_dirty_stamp_resolves_to_the_commit_that_holds_the_measured_code(repo: Path) -> None:
    one = commit(repo, {"marlhf/a.py": "x = 1\n"}, "one")
    (repo / "marlhf" / "a.py").write_text("x = 2\n", encoding="utf-8")
    stamp = {"commit": one + "+dirty", "source_tree": source_tree(repo)}
    two = commit(repo, {"README.md": "docs\n"}, "two: the measured change, committed")
    commit(repo, {"marlhf/a.py": "x = 3\n"}, "three")
    assert resolve(stamp, root=repo) == Provenance(two, "same-code")
    # without the tree (older stamps) the dirty commit itself is named, with the caveat
    old = resolve({"commit": one + "+dirty"}, root=repo)
    assert old == Provenance(one, "dirty")
    assert "uncommitted changes" in old.describe()


def test_a_rewritten_commit_resolves_to_the_commit_that_recorded_the_results(
    repo: Path,
) -> None:
    commit(repo, {"marlhf/a.py": "x = 1\n"}, "one")
    gone = "1c2fd081cd2800f7c3c483badcb8a2f19206fc13"  # never in this history
    recorded = commit(
        repo, {"results/r.json": f'{{"machine": {{"commit": "{gone}"}}}}\n'}, "results"
    )
    commit(repo, {"results/r.json": f'{{"machine": {{"commit": "{gone}"}}, "x": 1}}\n'}, "edit")
    got = resolve({"commit": gone}, repo / "results" / "r.json", root=repo)
    assert got == Provenance(recorded, "recorded")
    assert gone[:7] not in got.describe()


def test_a_stamp_nothing_resolves_says_so(repo: Path) -> None:
    commit(repo, {"marlhf/a.py": "x = 1\n"}, "one")
    got = resolve({"commit": "0" * 40}, root=repo)
    assert got == Provenance(None, "unresolved")
    assert "not in this history" in got.describe()


def test_render_blocks_rewrites_only_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(pages.BLOCKS, "t-block", (ROOT / "README.md", lambda _: "NEW\n"))
    monkeypatch.setattr(pages, "_results", lambda path: {})
    text = "a\n<!-- render:t-block -->\nOLD\n<!-- render:end -->\nb\n"
    assert pages.render_blocks(text) == "a\n<!-- render:t-block -->\nNEW\n<!-- render:end -->\nb\n"
    with pytest.raises(KeyError, match="render:nope"):
        pages.render_blocks("<!-- render:nope -->\n<!-- render:end -->\n")


DEMO = {
    "command": "make demo",
    "machine": {"commit": "0" * 40, "cpu": "a CPU", "cores": 2, "date_utc": "today"},
    "wall_s": 123.4,
    "load_average": {"before": [1.5, 1.0, 0.5], "during_1min_mean": 7.25},
    "random_return": 0.25,
    "optimal_return": 1.0,
    "summary": [
        {"agent": "ppo", "seeds": 3, "final_score": 0.5, "final_score_ci95": 0.1},
        {"agent": "grpo", "seeds": 3, "final_score": 0.75, "final_score_ci95": 0.02},
    ],
}


def test_the_demo_blocks_say_every_number_from_the_results() -> None:
    text = pages.demo_scores(DEMO)
    for piece in ["ppo 0.500 ± 0.100", "grpo 0.750 ± 0.020", "123 s", "load average 7.2", "0.25"]:
        assert piece in text, piece
    assert pages.demo_wall(DEMO) == "123 s at load average 7.2 on 2 cores"
