"""The speed comparisons' parts of docs/benchmarks.md: the decode paths
(``benchmarks/decode.py``), ratios with their ranges and loads, and the GRPO comparison with TRL
(``benchmarks/trl_grpo.py``). Rendered by :mod:`bench_doc`."""

from __future__ import annotations

from typing import Any

from common import RESULTS_DIR, fmt, markdown_table, read_json


def ratio_range(entry: dict[str, Any], side: str) -> str:
    """``median (min-max)`` of a TRL benchmark's per-round ratio of ``side``, or its single
    ratio when the entry has no per-round ratios (an older result file)."""
    r = (entry.get("ratios") or {}).get(side)
    if r is None:
        key = "ratio" if side == "marlhf" else "ratio_" + side.removeprefix("marlhf_")
        return fmt(entry.get(key))
    return _median_range(r)


def load_text(load: Any) -> str:
    """A load average triple as ``a / b / c``, or n/a."""
    if not load:
        return "n/a"
    return " / ".join(f"{x:.1f}" for x in load)


def decode_section(mode: str = "full") -> list[str]:
    """The rollout's decode paths (``benchmarks/decode.py``: eager, static, compiled): the run of
    ``mode`` (``decode_quick.json`` for ``make bench``, ``decode.json`` for the full set), and
    in quick mode the kept full run below it when there is one."""
    lines = ["### Static and compiled decoding (`benchmarks/decode.py`)", ""]
    names = ["decode_quick.json", "decode.json"] if mode == "quick" else ["decode.json"]
    found = [(n, read_json(RESULTS_DIR / n) or {}) for n in names]
    found = [(n, d) for n, d in found if d.get("results")]
    if not found:
        return [*lines, f"Not measured: {' and '.join(names)} missing", ""]
    lines += [
        "One PPO agent per `decode` path rolls out the same env (the scoring after the rollout "
        "not run) beside the bare KV-cache loop, in interleaved rounds after a warm-up round "
        "(which compiles: `compile s`); speed-ups over the eager agent and against the bare "
        "loop are per round, median (range); load before and after. One torch thread, CPU.",
        "",
    ]
    for name, dec in found:
        commit = str((dec.get("machine") or {}).get("commit"))[:7]
        lines += [
            f"`{name}`, measured at commit `{commit}`:",
            "",
            _decode_table(dec["results"]),
            "",
        ]
    return lines


def _decode_table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        [
            "model",
            "B",
            "N",
            "eager tok/s",
            "static / eager",
            "compiled / eager",
            "eager agent / bare",
            "compiled agent / bare",
            "compile s",
            "load",
        ],
        [
            [
                r["model"],
                r["batch"],
                r["new_tokens"],
                round(r["tok_s"]["eager"]),
                _median_range(r["speedup_over_eager"]["static"]),
                _median_range(r["speedup_over_eager"]["compiled"]),
                _median_range(r["agent_over_bare"]["eager"]),
                _median_range(r["agent_over_bare"]["compiled"]),
                round(r["compile_s"]),
                f"{r['load_before'][0]:.1f}-{r['load_after'][0]:.1f}",
            ]
            for r in rows
        ],
    )


def _median_range(r: dict[str, float]) -> str:
    return f"{fmt(r['median'])} ({r['min']:.2f}-{r['max']:.2f})"


def grpo_section(s: dict[str, Any]) -> list[str]:
    """The GRPO comparison (``marlhf_vs_trl_grpo``): marlhf against TRL's ``GRPOTrainer``."""
    lines = ["### GRPO against TRL's `GRPOTrainer` (`marlhf_vs_trl_grpo`)", ""]
    grpo = read_json(RESULTS_DIR / "trl_grpo.json") or {}
    rows = [e for e in grpo.get("settings") or [] if "ratio" in e]
    if not rows:
        why = s.get("marlhf_vs_trl_grpo_error") or grpo.get("error") or "trl_grpo.json is missing"
        return [*lines, f"No ratio: {why}", ""]
    lines += [
        f"`benchmarks/trl_grpo.py` with TRL {grpo.get('trl_version')} (`trl.GRPOTrainer`), "
        f"transformers {grpo.get('transformers')}: the same tiny GPT-2, tokenizer, prompts, "
        "reward, group size, response length, k3 KL in the loss (beta) and one epoch on both "
        f"sides; {grpo.get('rounds')} interleaved rounds after {grpo.get('warmup')} warm-up. "
        "`marlhf (scored)` keeps the on-policy scoring forward that marlhf skips with one epoch "
        f"of one minibatch (performance.md). Measured at commit "
        f"`{str((grpo.get('machine') or {}).get('commit'))[:7]}`.",
        "",
        markdown_table(
            [
                "completions",
                "group",
                "response len",
                "beta",
                "TRL s/iter",
                "marlhf s/iter",
                "ratio",
                "ratio (scored)",
                "load",
            ],
            [
                [
                    e["batch"],
                    e["group"],
                    e["response_length"],
                    e["beta"],
                    e["trl_s_per_iter"],
                    e["marlhf_s_per_iter"],
                    ratio_range(e, "marlhf"),
                    ratio_range(e, "marlhf_scored"),
                    load_text(e.get("loadavg")),
                ]
                for e in rows
            ],
        ),
        "",
    ]
    return lines


def rollout_lines(rows: list[dict[str, Any]], where: str) -> list[str]:
    """Under the rollout grid's table: where it was measured (``where``: its commit and date)
    and the range of the 1-minute load average before and after its cells (when recorded),
    then the operation counts of :func:`rollout_ops_lines`."""
    loads = [x for r in rows for x in (r.get("load_before"), r.get("load_after")) if x]
    load = f"; load {min(x[0] for x in loads):.1f}-{max(x[0] for x in loads):.1f}" if loads else ""
    return [f"Measured at commit {where}{load}.", "", *rollout_ops_lines()]


def rollout_ops_lines() -> list[str]:
    """Torch operations per generated token of the agent's rollout and of the bare loop
    (``benchmarks/rollout_ops.py``: exact counts, whatever the load), one row per recorded
    label, with that run's timed ratios (best of alternating runs; the median and quartiles of
    back-to-back pairs, when measured) and its 1-minute load before and after; the file's note
    says what each label measured."""
    data = read_json(RESULTS_DIR / "rollout_ops.json") or {}
    entries = [(k, e) for k, e in data.items() if isinstance(e, dict) and "ops_per_step" in e]
    if not entries:
        return []
    first = entries[0][1]
    lines = [
        "### Operations per generated token (`benchmarks/rollout_ops.py`)",
        "",
        f"{first['model']}, batch {first['batch']}, {first['new_tokens']} new tokens: aten "
        "operations per generated token, counted exactly (the count does not depend on the "
        "load), and the agent/bare ratios of that run: of the best times of alternating runs, "
        "and the median (quartiles) of back-to-back pairs where measured (a shared machine's "
        "load moves both).",
        "",
        markdown_table(
            ["label", "agent ops/token", "bare ops/token", "agent/bare", "pairs", "load"],
            [
                [
                    label,
                    f"{e['ops_per_step']['agent']:.1f}",
                    f"{e['ops_per_step']['bare']:.1f}",
                    e["agent_over_bare"],
                    _pairs_text(e.get("pair_ratios")),
                    f"{e['load_before'][0]:.1f}-{e['load_after'][0]:.1f}",
                ]
                for label, e in entries
            ],
        ),
        "",
    ]
    if data.get("note"):
        lines += [str(data["note"]), ""]
    return lines


def _pairs_text(r: dict[str, Any] | None) -> str:
    """``median (q1-q3), n pairs`` of :func:`rollout_ops.pair_ratios`, or n/a."""
    if not r:
        return "n/a"
    return f"{fmt(r['median'])} ({r['q1']:.2f}-{r['q3']:.2f}), {r['pairs']} pairs"
