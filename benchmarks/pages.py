"""Every generated page and block, re-rendered from its committed results file.

``python benchmarks/pages.py`` rewrites them; ``--check`` changes nothing and exits 1 naming each
page that differs from what its results file renders (the suite runs the check:
``tests/test_docs.py``). Two kinds of generated text:

- pages a benchmark renders whole or in a marked block (``docs/benchmarks.md``,
  ``docs/estimators.md``, the ``credit.json`` and ``evidence.json`` blocks of ``docs/credit.md``,
  the table of ``docs/reasoning.md``), through that benchmark's own renderer;
- ``<!-- render:NAME -->`` ... ``<!-- render:end -->`` blocks anywhere in ``README.md`` or
  ``docs/``, rendered by :data:`BLOCKS` ``[NAME]`` (the demo's numbers, from
  ``benchmarks/results/demo.json``);
- numbers quoted in prose, ``<!-- n:NAME -->0.25 s<!-- /n -->``, rendered by :data:`FACTS`
  ``[NAME]`` (``benchmarks/facts.py`` says how; the ``benchmarks/facts_*.py`` modules hold them).

Renderers that write to a file are pointed at a temporary copy, so ``--check`` writes nothing.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
for _path in (str(_HERE.parent), str(_HERE)):  # the scripts import both ways
    if _path not in sys.path:
        sys.path.insert(0, _path)

from benchmarks import facts_credit, facts_learning, facts_perf, turn_mc_fork_doc  # noqa: E402
from benchmarks.common import DOCS_DIR, RESULTS_DIR, ROOT, markdown_table, read_json  # noqa: E402
from benchmarks.facts import INLINE, Facts, render_inline  # noqa: E402
from benchmarks.provenance import describe  # noqa: E402

DEMO = RESULTS_DIR / "demo.json"
BLOCK = re.compile(r"(<!-- render:([\w-]+) -->\n)(.*?)(<!-- render:end -->)", re.DOTALL)


def _results(path: Path) -> Any:
    data = read_json(path)
    if data is None:
        raise FileNotFoundError(f"{path.relative_to(ROOT)} is missing or not valid JSON")
    return data


def _via_file(text: str, render: Callable[[Path], None]) -> str:
    """Run a renderer that rewrites a file in place on a temporary copy of ``text``."""
    with tempfile.TemporaryDirectory(prefix="marlhf-pages-") as tmp:
        path = Path(tmp) / "page.md"
        path.write_text(text, encoding="utf-8")
        render(path)
        return path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the demo's blocks
def _demo_machine(d: dict[str, Any]) -> str:
    m, load = d["machine"], d["load_average"]
    return (
        f"{m['cpu']}, {m['cores']} cores shared with other jobs (load average "
        f"{load['during_1min_mean']:.1f} during the run, 1-minute mean; {load['before'][0]:.1f} "
        f"before it), commit {describe(m, DEMO)}"
    )


def _score(s: dict[str, Any]) -> str:
    return f"{s['final_score']:.3f} ± {s['final_score_ci95']:.3f}"


def demo_scores(d: dict[str, Any]) -> str:
    """One paragraph: each scheme's final score and the run's wall time, machine and load."""
    scores = ", ".join(f"{s['agent']} {_score(s)}" for s in d["summary"])
    return (
        f"Final score, mean ± 95% interval over {d['summary'][0]['seeds']} seeds: {scores} "
        f"(random policy {d['random_return']:.2f}, optimal {d['optimal_return']:.1f}). The "
        f"comparison took {d['wall_s']:.0f} s on "
        f"{_demo_machine(d)}; `benchmarks/results/demo.json` holds the run, "
        "`python benchmarks/demo.py` repeats it."
    )


def demo_table(d: dict[str, Any]) -> str:
    """The report's table, with the machine, load and wall time under it."""
    from marlhf.runs.report import HEADER, table_rows

    return "\n".join(
        [
            markdown_table(HEADER, table_rows(d["summary"])),
            "",
            f"`{d['command']}`: {d['wall_s']:.0f} s of wall time on {_demo_machine(d)}, "
            f"{d['machine']['date_utc']}. Wall time per run is each run's own; the runs share "
            "the machine's cores.",
        ]
    )


def demo_wall(d: dict[str, Any]) -> str:
    """The demo's wall time and load, for a command's comment."""
    load = d["load_average"]["during_1min_mean"]
    return f"{d['wall_s']:.0f} s at load average {load:.1f} on {d['machine']['cores']} cores"


# --------------------------------------------------------------------------- parity_full_*.json
def _parity_files() -> dict[str, Path]:
    """Task key -> the kept full-settings parity file that holds it."""
    out = {}
    for path in sorted(RESULTS_DIR.glob("parity_full_*.json")):
        for key in _results(path)["tasks"]:
            out[key] = path
    return out


def _ratio_cell(x: float | None) -> str:
    return "not reached" if x is None else f"{x:.2f}"


def parity_task(key: str) -> str:
    """One task of the kept full-settings parity runs: every agent's final score and reach."""
    path = _parity_files()[key]
    t = _results(path)["tasks"][key]
    rows = []
    for a in t["agents"]:
        p = a["tokens_to_parity"]
        lo, hi = p["ci95"]
        rows.append(
            [
                a["agent"],
                f"{a['final_score']:.3f} ± {a['final_score_ci95']:.3f}",
                " ".join(f"{x:.2f}" for x in a["final_per_seed"]),
                _ratio_cell(p["median"]),
                f"[{_ratio_cell(lo)}, {_ratio_cell(hi)}]",
                f"{p['reached']}/{p['seeds']}",
            ]
        )
    header = [
        "agent",
        "final score ± 95% CI",
        "per seed",
        "tokens to PPO final / PPO tokens (median)",
        "bootstrap 95% CI",
        "seeds reaching",
    ]
    m = _results(path)["machine"]
    return "\n".join(
        [
            f"`{t['env_id']}` {t['kwargs']}, {len(t['seeds'])} seeds, {t['total_timesteps']:,} "
            f"tokens per run, {t['num_envs']} episodes per iteration, {t['model']}; agent "
            f"settings `{t['agent']}`. `{path.name}`, commit {describe(m, path)}, "
            f"{m['date_utc']}, {m['cpu']}.",
            "",
            markdown_table(header, rows),
        ]
    )


def parity_summary(_: Any) -> str:
    """Every kept full-settings task: PPO's final score against the best MAPPO termination's."""
    rows = []
    for key, path in _parity_files().items():
        t = _results(path)["tasks"][key]
        ppo, rest = t["agents"][0], t["agents"][1:]
        best = max(rest, key=lambda a: a["final_score"])
        above = sum(
            a["final_score"] - a["final_score_ci95"] > ppo["final_score"] + ppo["final_score_ci95"]
            for a in rest
        )
        rows.append(
            [
                key,
                f"{ppo['final_score']:.3f}",
                f"{best['final_score']:.3f} ({best['agent']})",
                f"{above}/{len(rest)}",
                "yes" if (t.get("ngram1_equals_ppo") or {}).get("identical") else "no",
            ]
        )
    header = [
        "task",
        "PPO final",
        "best MAPPO final",
        "MAPPO rows whose interval is above PPO's",
        "`ngram:1` equals PPO",
    ]
    return markdown_table(header, rows)


# --------------------------------------------------------------------------- the thread policy
def threads_table(d: dict[str, Any], path: Path) -> str:
    """``benchmarks/threads.py``'s table: median seconds per setting and workload, against one
    thread, with the load average beside each measurement."""
    rows = []
    for r in d["rows"]:
        secs = r["seconds_median"]
        tps = r.get("tokens_per_s_median")
        rows.append(
            [
                r["workload"] + (f" x{r['procs']}" if r["workload"] == "api" else ""),
                r["setting"],
                "> cap" if secs == float("inf") else f"{secs:.1f}",
                "" if tps is None else f"{tps:.0f}",
                f"{r['one_thread_speedup']:.2f}x",
                " ".join(f"{x:.1f}" for x in r["load_1min"]),
            ]
        )
    m = d["machine"]
    header = ["workload", "MARLHF_NUM_THREADS", "seconds", "tokens/s", "vs 1 thread", "load"]
    return "\n".join(
        [
            markdown_table(header, rows),
            "",
            f"Median of {d['repeats']} repeats (compare and the quickstart: 1) on {m['cpu']}, "
            f"{d['cpu_count']} cores, commit {describe(m, path)}, {m['date_utc']}; "
            "`vs 1 thread`: seconds over one thread's (above 1: slower); `load`: the 1-minute "
            f"load average before each repeat (`{path.relative_to(ROOT)}`).",
        ]
    )


THREADS_IDLE = RESULTS_DIR / "threads_idle.json"
THREADS_LOADED = RESULTS_DIR / "threads.json"

#: ``<!-- render:NAME -->`` block name -> (results file, renderer of its JSON).
BLOCKS: dict[str, tuple[Path, Callable[[Any], str]]] = {
    "demo-scores": (DEMO, demo_scores),
    "demo-table": (DEMO, demo_table),
    "demo-wall": (DEMO, demo_wall),
    "parity-full-summary": (RESULTS_DIR / "parity_full_delayed.json", parity_summary),
    "threads-idle": (THREADS_IDLE, lambda d: threads_table(d, THREADS_IDLE)),
    "threads-loaded": (THREADS_LOADED, lambda d: threads_table(d, THREADS_LOADED)),
    "turn-mc-fork": (turn_mc_fork_doc.RESULTS, turn_mc_fork_doc.render_table),
    **facts_perf.BLOCKS,
}
#: ``<!-- render:parity-full-TASK -->`` renders one task of the kept full-settings runs.
PARITY_TASK = "parity-full-task-"


def render_blocks(text: str) -> str:
    """``text`` with every ``<!-- render:NAME -->`` block re-rendered.

    :raises KeyError: for a block name that :data:`BLOCKS` does not know, naming the known ones.
    """

    def one(match: re.Match[str]) -> str:
        name = match.group(2)
        if name.startswith(PARITY_TASK):
            text = parity_task(name.removeprefix(PARITY_TASK))
            return match.group(1) + text + "\n" + match.group(4)
        if name not in BLOCKS:
            raise KeyError(f"<!-- render:{name} -->: unknown block; known: {sorted(BLOCKS)}")
        path, render = BLOCKS[name]
        return match.group(1) + render(_results(path)).rstrip("\n") + "\n" + match.group(4)

    return BLOCK.sub(one, text)


# --------------------------------------------------------------------------- whole pages
def _benchmarks_md(_: str) -> str:
    from bench_doc import render_doc

    return render_doc(_results(RESULTS_DIR / "summary.json"))


def _estimators_md(_: str) -> str:
    from benchmarks.estimators import render_doc

    return render_doc(_results(RESULTS_DIR / "estimators.json"))


def _credit_md(text: str) -> str:
    from benchmarks import credit, evidence_doc

    evidence = _results(evidence_doc.RESULTS)
    for section in evidence.get("tasks", {}).values():  # the analysis of this checkout
        section["analysis"] = evidence_doc.summarize_task(section)
    text = _via_file(text, lambda p: credit.render_doc(_results(credit.RESULTS), p))
    text = _via_file(text, lambda p: evidence_doc.render_doc(evidence, p))
    return _turn_credit_block(text)


def _turn_credit_block(text: str) -> str:
    """The ``turn_credit.json`` block (``docs/credit_multiturn.md`` and ``docs/credit.md``)."""
    from benchmarks import turn_credit

    if turn_credit.BEGIN not in text:
        return text
    block = turn_credit.render_block(_results(RESULTS_DIR / "turn_credit.json"))
    return _via_file(text, lambda p: turn_credit.replace_block(p, block))


def _credit_multiturn_md(text: str) -> str:
    """``docs/credit_multiturn.md``: the ``turn_credit.json`` block, then the comparison's
    ``turn_compare.json`` block."""
    from benchmarks import turn_compare_doc as doc

    text = _turn_credit_block(text)
    if doc.BEGIN not in text:
        return text
    block = doc.render_block(_results(RESULTS_DIR / "turn_compare.json"))
    return _via_file(text, lambda p: doc.replace_block(p, block))


def _reasoning_md(text: str) -> str:
    from benchmarks import reasoning

    return _via_file(text, lambda p: reasoning.render(_results(reasoning.RESULT), p))


def _credit_learned_md(text: str) -> str:
    from benchmarks import learned_terms_doc

    data = _results(RESULTS_DIR / "learned_terms.json")
    with tempfile.TemporaryDirectory(prefix="marlhf-pages-") as tmp:
        png = Path(tmp) / "learned_cuts.png"  # the plot is not compared, only the page
        return _via_file(
            text,
            lambda p: learned_terms_doc.render(data, p, png, RESULTS_DIR / "learned_terms.json"),
        )


#: page -> renderer (its committed text -> the text its results file gives).
PAGES: dict[Path, Callable[[str], str]] = {
    DOCS_DIR / "benchmarks.md": _benchmarks_md,
    DOCS_DIR / "estimators.md": _estimators_md,
    DOCS_DIR / "credit.md": _credit_md,
    DOCS_DIR / "reasoning.md": _reasoning_md,
    DOCS_DIR / "credit_multiturn.md": _credit_multiturn_md,
    DOCS_DIR / "credit_learned.md": _credit_learned_md,
}


#: Every number quoted in prose: fact name -> (results file, renderer of its JSON).
FACTS: Facts = {**facts_credit.FACTS, **facts_learning.FACTS, **facts_perf.FACTS}


def block_files(root: Path = ROOT) -> list[Path]:
    """``README.md`` and every page under ``docs/`` that holds a ``render:`` block or a quoted
    number (``<!-- n:NAME -->``)."""
    candidates = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return [
        p
        for p in candidates
        if p.exists()
        and (BLOCK.search(text := p.read_text(encoding="utf-8")) or INLINE.search(text))
    ]


@dataclass(frozen=True)
class Rendered:
    """A generated file: what is committed and what its results file renders."""

    path: Path
    committed: str
    rendered: str

    def diff(self) -> str:
        return "\n".join(
            difflib.unified_diff(
                self.committed.splitlines(),
                self.rendered.splitlines(),
                f"{self.path.relative_to(ROOT)} (committed)",
                "(rendered from its results file)",
                lineterm="",
                n=0,
            )
        )


def render_all(root: Path = ROOT) -> list[Rendered]:
    """Every generated file, committed and re-rendered (nothing is written)."""
    out = []
    for path in sorted({*PAGES, *block_files(root)}):
        committed = path.read_text(encoding="utf-8")
        text = PAGES[path](committed) if path in PAGES else committed
        rendered = render_inline(render_blocks(text), FACTS, str(path.relative_to(root)))
        out.append(Rendered(path, committed, rendered))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 on a diff")
    args = parser.parse_args(argv)
    stale = [r for r in render_all() if r.rendered != r.committed]
    for r in stale:
        if args.check:
            print(r.diff())
        else:
            r.path.write_text(r.rendered, encoding="utf-8")
            print(f"rewrote {r.path.relative_to(ROOT)}")
    if args.check and stale:
        print(f"\n{len(stale)} page(s) differ from their results: python benchmarks/pages.py")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
