"""Provenance stamps that resolve to commits of this history.

A results file's machine stamp names the commit that was checked out when it was measured. That
commit can later vanish from the history (a branch rebased or amended before it landed: five of
the kept results files name such commits), and a ``+dirty`` stamp names a commit whose code was
not quite the measured code. So a stamp also records :func:`source_tree`, the git tree id of the
``marlhf/`` package as measured (uncommitted changes included), and the pages name the commit
:func:`resolve` finds, in this order:

1. the stamped commit, when it is in HEAD's history and the checkout was clean;
2. the oldest commit of HEAD's history whose ``marlhf/`` tree is the measured one (the measured
   code, whichever commit later carried it);
3. the stamped commit with its uncommitted changes, when it is in the history but dirty and no
   commit holds the measured tree (or the stamp predates ``source_tree``);
4. the oldest commit whose version of the results file holds the stamp (the commit that
   recorded the results), for stamps whose commit is not in the history.

Pure git calls, no torch: the benchmarks, the TRL venv and the tests import it.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: The package whose code a benchmark measures; its tree id identifies the measured code.
SOURCE = "marlhf"


def _git(*args: str, root: Path = ROOT, env: dict[str, str] | None = None) -> str | None:
    """``git args`` in ``root``: its stripped stdout, or None when git fails."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            env=None if env is None else {**os.environ, **env},
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def source_tree(root: Path = ROOT) -> str | None:
    """The git tree id of ``marlhf/`` as it is in the working tree, uncommitted changes included.

    Written through a temporary index, so the real index and the working tree are untouched.

    :returns: 40 hex digits, or None outside a git checkout.
    """
    with tempfile.TemporaryDirectory(prefix="marlhf-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if _git("read-tree", "HEAD", root=root, env=env) is None:
            return None
        if _git("add", "--update", "--", SOURCE, root=root, env=env) is None:
            return None
        return _git("write-tree", f"--prefix={SOURCE}/", root=root, env=env)


@dataclass(frozen=True)
class Provenance:
    """A stamp resolved against the history.

    :param commit: a commit of HEAD's history (full id), or None when none could be found.
    :param how: ``"measured"``, ``"same-code"``, ``"dirty"``, ``"recorded"`` or ``"unresolved"``
        (the rules of this module's docstring, in order; the last when nothing resolves).
    """

    commit: str | None
    how: str

    def describe(self, digits: int = 7) -> str:
        """Markdown naming the commit and how it relates to the measured code."""
        if self.commit is None:
            return "a commit that is not in this history (the results file cannot be traced)"
        short = f"`{self.commit[:digits]}`"
        return {
            "measured": short,
            "same-code": f"{short} (the measured code)",
            "dirty": f"{short} with uncommitted changes",
            "recorded": f"{short} (which recorded the results; the measured commit is not in "
            "this history)",
        }[self.how]


@functools.cache
def _history(root: Path) -> tuple[str, ...]:
    """HEAD's history, oldest first (empty outside a git checkout)."""
    out = _git("rev-list", "--reverse", "HEAD", root=root)
    return tuple(out.split()) if out else ()


@functools.cache
def _source_trees(root: Path) -> dict[str, str]:
    """``marlhf/`` tree id -> the oldest commit of HEAD's history that has it."""
    commits = _history(root)
    if not commits:
        return {}
    query = "".join(f"{c}:{SOURCE}\n" for c in commits)
    try:
        out = subprocess.run(
            ["git", "cat-file", "--batch-check=%(objectname)"],
            cwd=root,
            input=query,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return {}
    first: dict[str, str] = {}
    for commit, tree in zip(commits, out, strict=False):
        first.setdefault(tree, commit)
    return first


def _recorded_in(sha: str, results_file: Path, root: Path) -> str | None:
    """The oldest commit of HEAD's history whose change to ``results_file`` added ``sha``."""
    rel = results_file.resolve().relative_to(root.resolve())
    out = _git("log", "--reverse", "--format=%H", f"-S{sha}", "HEAD", "--", str(rel), root=root)
    return out.split()[0] if out else None


def resolve(
    stamp: dict[str, Any], results_file: Path | None = None, root: Path = ROOT
) -> Provenance:
    """The commit of this history that stands for ``stamp`` (see the module's rules).

    :param stamp: a machine stamp (``commit``, optionally ``source_tree`` and
        ``uncommitted_files``).
    :param results_file: the JSON file that holds the stamp, for rule 4.
    """
    raw = str(stamp.get("commit") or "")
    sha, _, _ = raw.partition("+")
    dirty = raw.endswith("+dirty") or bool(stamp.get("uncommitted_files"))
    history = set(_history(root))
    in_history = bool(sha) and sha in history
    if in_history and not dirty:
        return Provenance(sha, "measured")
    tree = stamp.get("source_tree")
    if tree and tree in _source_trees(root):
        return Provenance(_source_trees(root)[tree], "same-code")
    if in_history:
        return Provenance(sha, "dirty")
    if sha and results_file is not None:
        recorded = _recorded_in(sha, results_file, root)
        if recorded is not None:
            return Provenance(recorded, "recorded")
    return Provenance(None, "unresolved")


def describe(stamp: dict[str, Any], results_file: Path | None = None) -> str:
    """:meth:`Provenance.describe` of :func:`resolve`."""
    return resolve(stamp, results_file).describe()
