"""The tables and figures of ``docs/performance.md`` and ``docs/howto/scale.md``, from
``decode.json`` (the decode paths), ``memory_smollm2.json`` (a SmolLM2-135M iteration's memory),
``trl_ppo_work.json`` and ``trl_ppo.json`` (PPO against TRL) and ``scale.json`` (LoRA,
checkpointing, FSDP and data-parallel scaling): ``<!-- render:NAME -->`` blocks (:data:`BLOCKS`,
joined into ``benchmarks/pages.py``'s) and quoted figures (:data:`FACTS`; see
``benchmarks/facts.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, markdown_table
from benchmarks.facts import Facts, registrar, results, span
from benchmarks.provenance import describe
from benchmarks.trl_ppo_work import profile_table, work_table
from benchmarks.update_levers import levers_table

FACTS: Facts = {}
fact = registrar(FACTS)

DECODE = RESULTS_DIR / "decode.json"
MEMORY = RESULTS_DIR / "memory_smollm2.json"
TRL_WORK = RESULTS_DIR / "trl_ppo_work.json"
TRL_PPO = RESULTS_DIR / "trl_ppo.json"
LEVERS = RESULTS_DIR / "update_levers.json"

#: Issue 28's goal for the compiled decode path: this speed-up of the rollout over eager.
COMPILED_GOAL = 1.5
#: Issue 28's goal for the peak of a SmolLM2-135M iteration at the default settings, MB.
MEMORY_GOAL_MB = 4096


# --------------------------------------------------------------------------- decode.json
def _vs_generate(row: dict[str, Any], path: str) -> str:
    """A decode path's speed over Hugging Face's ``generate``: median (range) per round; n/a in
    a results file from before ``decode.py`` timed ``generate``."""
    r = row.get("agent_over_generate", {}).get(path)
    return "n/a" if r is None else f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"


def decode_table(data: dict[str, Any]) -> str:
    """Speed-ups of the rollout over the eager one per model (median per round, the compiled
    path's range beside it) and the compilation's wall time."""
    rows = []
    for r in data["results"]:
        static = r["speedup_over_eager"]["static"]
        compiled = r["speedup_over_eager"]["compiled"]
        rows.append(
            [
                r["model"],
                f"{r['batch']}, {r['new_tokens']}",
                f"{static['median']:.2f}x",
                f"{compiled['median']:.2f}x ({compiled['min']:.2f}-{compiled['max']:.2f})",
                f"{r['agent_over_bare']['compiled']['median']:.2f}",
                *(_vs_generate(r, path) for path in ("eager", "compiled")),
                "n/a" if "compile_ceiling" not in r else f"{r['compile_ceiling']:.2f}x",
                f"{r['compile_s']:.0f} s",
            ]
        )
    header = [
        "model",
        "batch, tokens",
        "static",
        "compiled (range over rounds)",
        "compiled agent / bare loop",
        "eager agent / `generate`",
        "compiled agent / `generate`",
        "ceiling (eager step / its matrix products)",
        "compilation",
    ]
    return markdown_table(header, rows)


@fact("decode-rounds", DECODE)
def decode_rounds(data: dict[str, Any]) -> str:
    """Interleaved rounds per model."""
    return span((float(r["rounds"]) for r in data["results"]), 0)


@fact("decode-load", DECODE)
def decode_load(data: dict[str, Any]) -> str:
    """The 1-minute load average before and after each model's rounds, lowest to highest."""
    loads = [x for r in data["results"] for x in (r["load_before"][0], r["load_after"][0])]
    return "load " + span(loads, 1)


@fact("decode-goal", DECODE)
def decode_goal(data: dict[str, Any]) -> str:
    """Whether the SmolLM2 architecture's compiled rollout meets the speed-up goal."""
    met = _smollm2_row(data)["speedup_over_eager"]["compiled"]["median"] >= COMPILED_GOAL
    return "meets" if met else "does not meet"


#: Issue 28's goal for the SmolLM2 rollout's speed over Hugging Face's ``generate``.
GENERATE_GOAL = 1.0


def _smollm2_row(data: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in data["results"] if r["model"].startswith("SmolLM2"))


@fact("decode-ceiling", DECODE)
def decode_ceiling(data: dict[str, Any]) -> str:
    """The SmolLM2 architecture's eager step over its matrix products alone: the most a
    compiled step could gain (compilation does not change the products)."""
    return f"{_smollm2_row(data)['compile_ceiling']:.2f}x"


@fact("decode-ceiling-goal", DECODE)
def decode_ceiling_goal(data: dict[str, Any]) -> str:
    """Whether the SmolLM2 architecture's compile ceiling lies below the speed-up goal."""
    return "below" if _smollm2_row(data)["compile_ceiling"] < COMPILED_GOAL else "above"


@fact("decode-matmul-share", DECODE)
def decode_matmul_share(data: dict[str, Any]) -> str:
    """The matrix products' share of the SmolLM2 architecture's eager decode step."""
    r = _smollm2_row(data)
    return f"{r['matmul_floor_s'] / r['eager_step_s']:.0%}"


@fact("decode-generate", DECODE)
def decode_generate(data: dict[str, Any]) -> str:
    """The SmolLM2 architecture's eager rollout over ``generate`` (median and range per
    round), then the compiled one's."""
    return " and ".join(_vs_generate(_smollm2_row(data), p) for p in ("eager", "compiled"))


@fact("decode-generate-goal", DECODE)
def decode_generate_goal(data: dict[str, Any]) -> str:
    """Whether the SmolLM2 architecture's default (eager) rollout is at least as fast as
    ``generate``, by the median per round."""
    met = _smollm2_row(data)["agent_over_generate"]["eager"]["median"] >= GENERATE_GOAL
    return "meets" if met else "does not meet"


# --------------------------------------------------------------------------- memory_smollm2.json
#: Row label in the results file -> what the code measured was.
MEMORY_ROWS = {
    "before": "before issue 28 (`before`)",
    "after": "sliced log-probs (`after`)",
    "fused": "scores from the hidden state (`fused`)",
    "after-micro8": "`micro_batch_size=8` (`after-micro8`)",
    "after-lora": "LoRA r=8, sliced log-probs (`after-lora`)",
    "fused-lora-lora": "LoRA r=8, scores from the hidden state (`fused-lora`)",
    "plain": "eager MLP and RMSNorm, `lean=False` (`plain`)",
    "lean": "lean MLP and RMSNorm, glibc's allocator (`lean`)",
    "lean-lora": "LoRA r=8, lean (`lean-lora`)",
    "plain-mmap128k": "`plain`, 128 KiB mmap threshold (`plain-mmap128k`)",
    "lean-mmap128k": "`lean`, 128 KiB mmap threshold (`lean-mmap128k`)",
    "lean-mmap128k-lora": "`lean-lora`, 128 KiB mmap threshold (`lean-mmap128k-lora`)",
    "remade": "norm outputs remade, allocator policy: the default (`remade`)",
    "remade-lora": "LoRA r=8, the default (`remade-lora`)",
    "remade-glibc": "`remade`, glibc's dynamic threshold (`remade-glibc`)",
    "remade-mmap2m": "`remade`, 2 MiB mmap threshold (`remade-mmap2m`)",
    "remade-mmap2m-lora": "`remade-lora`, 2 MiB mmap threshold (`remade-mmap2m-lora`)",
}
#: The goal of LoRA's peak over the full fine-tune's.
MEMORY_LORA_GOAL = 0.6
#: Entries the goals are judged on (the default code), with the allocator each ran under.
MEMORY_JUDGED = {
    "lean": "glibc's defaults",
    "lean-mmap128k": "MALLOC_MMAP_THRESHOLD_=131072",
    "remade": "marlhf's allocator policy, no setting: the default",
}


def _runs(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The measured rows (every entry with stages), in the table's order, then any other."""
    runs = {k: v for k, v in data.items() if isinstance(v, dict) and "stages" in v}
    order = [k for k in MEMORY_ROWS if k in runs] + [k for k in runs if k not in MEMORY_ROWS]
    return {k: runs[k] for k in order}


def _stage_mb(run: dict[str, Any], key: str, stage: str) -> str:
    stages = run.get(key) or {}
    return f"{stages[stage]['peak_rss_mb']:.0f}" if stage in stages else "not measured"


def memory_table(data: dict[str, Any]) -> str:
    """Every entry of ``memory_smollm2.json``: the score and update stages' peak RSS, the first
    iteration's and (where measured) the second's, the load and commit; then the goals judged
    on the entries of :data:`MEMORY_JUDGED` (each with its ``-lora`` twin), and the file's
    note."""
    rows = []
    for label, run in _runs(data).items():
        load = run.get("loadavg_start")
        rows.append(
            [
                MEMORY_ROWS.get(label, f"`{label}`"),
                run.get("micro_batch_size") or "none",
                _stage_mb(run, "stages", "score"),
                _stage_mb(run, "stages", "update"),
                _stage_mb(run, "stages_2", "update"),
                f"{run['peak_rss_mb']:.0f}",
                "n/a" if not load else f"{load[0]:.1f}",
                str((run.get("machine") or {}).get("commit", "n/a"))[:7],
            ]
        )
    header = [
        "code",
        "micro-batch",
        "score (MB)",
        "update, iteration 1 (MB)",
        "update, iteration 2 (MB)",
        "peak (MB)",
        "load at start",
        "commit",
    ]
    lines = [markdown_table(header, rows), ""]
    for label, allocator in MEMORY_JUDGED.items():
        full, lora = data.get(label), data.get(f"{label}-lora")
        if not isinstance(full, dict):
            continue
        peak = full["peak_rss_mb"]
        met = "met" if peak < MEMORY_GOAL_MB else "not met"
        line = (
            f"- `{label}` ({allocator}): peak {peak:.0f} MB over both iterations, goal under "
            f"{MEMORY_GOAL_MB} MB **{met}**"
        )
        if isinstance(lora, dict):
            ratio = lora["peak_rss_mb"] / peak
            met = "met" if ratio <= MEMORY_LORA_GOAL else "not met"
            line += (
                f"; LoRA (`{label}-lora`) over it {ratio:.2f}x, goal {MEMORY_LORA_GOAL}x **{met}**"
            )
        lines.append(line + ".")
    if isinstance(data.get("note"), str):
        lines += ["", data["note"]]
    return "\n".join(lines).rstrip()


# --------------------------------------------------------------------------- allocator.json
ALLOCATOR = RESULTS_DIR / "allocator.json"
ALLOCATOR_TINY = RESULTS_DIR / "allocator_tiny.json"


def allocator_table(d: dict[str, Any]) -> str:
    """``benchmarks/allocator.py``'s side-by-side cost of the allocator policy: each side's
    update time, minor page faults and peak RSS (medians with ranges) and its per-round ratio
    to glibc's own threshold, with the load."""
    header = ["side", "threshold", "s per update", "over glibc", "page faults", "peak RSS (MB)"]
    rows = []
    for side, threshold in d["applied_threshold"].items():
        ratio = d["over_glibc"].get(side)
        rows.append(
            [
                f"`{side}`",
                "glibc's dynamic" if threshold is None else f"{threshold // 1024} KiB",
                _median_range(d["seconds"][side], 2),
                "1" if ratio is None else _median_range(ratio, 2),
                _median_range(d["minor_faults"][side], 0),
                _median_range(d["peak_rss_mb"][side], 0),
            ]
        )
    if d.get("model") == "tiny":
        header[2] = "s per iteration"
        what = (
            f"{d['updates_per_process']} timed PPO iterations each after a warm-up (median; "
            "page faults: the kernel's count of minor faults per iteration), a 2-layer, "
            "128-wide toy GPT-2 on DelayedChoice (horizon 64, 32 envs, minibatches of 16, 4 "
            "epochs)"
        )
    else:
        what = (
            f"{d['updates_per_process']} timed updates each after a warm-up (median; page "
            "faults: the kernel's count of minor faults per update), "
            f"{d['layers']} of SmolLM2-135M's 30 blocks (random weights), batch {d['batch']} x "
            f"{d['tokens_per_row']} tokens"
        )
    return "\n".join(
        [
            markdown_table(header, rows),
            "",
            f"{d['rounds']} interleaved rounds (the order rotating), one process per side and "
            f"round, {what}, one thread; load {d['load_before'][0]:.1f} before, "
            f"{d['load_after'][0]:.1f} after; commit "
            f"{str(d['machine'].get('commit', 'n/a'))[:7]}.",
        ]
    )


# --------------------------------------------------------------------------- lean.json
LEAN = RESULTS_DIR / "lean.json"


def _median_range(r: dict[str, float], digits: int) -> str:
    return f"{r['median']:.{digits}f} ({r['min']:.{digits}f}-{r['max']:.{digits}f})"


def lean_table(d: dict[str, Any]) -> str:
    """``benchmarks/lean.py``'s check on the SmolLM2-135M architecture: what the update's graph
    saves, its time per side and per round, and whether the gradients are bitwise equal."""
    header = [
        "batch x tokens",
        "saved, eager (MB)",
        "saved, lean (MB)",
        "eager s",
        "lean s",
        "lean / eager per round",
        "gradients bitwise equal",
        "load",
        "commit",
    ]
    row = [
        f"{d['batch']} x {d['tokens_per_row']}",
        f"{d['saved_mb']['plain']:.0f}",
        f"{d['saved_mb']['lean']:.0f} ({d['saved_lean_over_plain']:.2f}x)",
        _median_range(d["seconds"]["plain"], 1),
        _median_range(d["seconds"]["lean"], 1),
        _median_range(d["lean_over_plain"], 2),
        "yes" if d["gradients_bitwise_equal"] else "**no**",
        f"{d['load_before'][0]:.1f}-{d['load_after'][0]:.1f}",
        str(d["machine"].get("commit", "n/a"))[:7],
    ]
    return "\n".join(
        [
            markdown_table(header, [row]),
            "",
            f"{d['rounds']} interleaved rounds after a warm-up, one thread, forward and backward "
            "of the policy's log-probs and values; medians with their ranges.",
        ]
    )


# --------------------------------------------------------------------------- scale.json
SCALE = RESULTS_DIR / "scale.json"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def scale_memory(d: dict[str, Any]) -> str:
    """The memory rows of ``scale.json``: peak RSS per setting, the ratios the goals judge."""
    m, s = d["memory"], d["memory"]["settings"]
    rows = []
    for name, r in m["rows"].items():
        load = r.get("load_average_before")
        rows.append(
            [
                name,
                f"{r['peak_mb']:.0f}",
                f"{r['iteration_s']:.0f}",
                f"{r['trainable_params']:,}",
                "n/a" if load is None else f"{load[0]:.1f}",
                r.get("measured_utc", "first run"),
            ]
        )
    header = ["setting", "peak RSS (MB)", "iteration (s)", "trainable", "load before", "measured"]
    fsdp = [
        [
            name,
            f"{v['replicated_mb']:.0f}",
            f"{v['fsdp_mb']:.0f}",
            _ratio(v["fsdp_over_replicated"]),
        ]
        for name, v in m["fsdp_two_ranks"].items()
    ]
    goal = m["goal_lora_over_full"]
    met = "met" if m["micro_batch_lora_over_full"] <= goal else "not met"
    return "\n".join(
        [
            f"One PPO iteration on {s['model']}, task `{s['task']}`, batch {s['batch']}, "
            f"{s['new_tokens']} new tokens, LoRA r {s['lora']['r']} on {s['lora']['targets']}, "
            f"{s['threads']} threads; allocator: {s['malloc']}. Rows without a date are from "
            f"the file's first run (commit {describe(d['machine'], SCALE)} is the last).",
            "",
            markdown_table(header, rows),
            "",
            f"- LoRA over the full fine-tune: {_ratio(m['lora_over_full'])} (goal "
            f"{goal:.1f}x: **{'met' if m['lora_over_full'] <= goal else 'not met'}**); with "
            f"`micro_batch_size=1` on both sides {_ratio(m['micro_batch_lora_over_full'])} "
            f"(**{met}**); live memory (128 KiB mmap threshold) "
            f"{_ratio(m['live_memory_lora_over_full'])}.",
            f"- Gradient checkpointing on the full fine-tune saves "
            f"{m['checkpointing_saving_mb']:.0f} MB ({_ratio(m['checkpointing_over_full'])}); "
            f"micro-batches of 1 save {m['micro_batch_saving_mb']['full']:.0f} MB (full) and "
            f"{m['micro_batch_saving_mb']['lora']:.0f} MB (LoRA).",
            "",
            "Two ranks, the largest rank's peak, replicated data parallelism against FSDP:",
            "",
            markdown_table(
                ["allocator, batches", "replicated (MB)", "FSDP (MB)", "FSDP / replicated"], fsdp
            ),
        ]
    )


def scale_scaling(d: dict[str, Any]) -> str:
    """The data-parallel rows of ``scale.json``: 2 ranks against 1 at the same global batch."""
    sc = d["scaling"]
    rows = [
        [
            r["envs"],
            f"{r['one_rank']['tokens_per_s']:,.0f}",
            f"{r['two_ranks']['tokens_per_s']:,.0f}",
            _ratio(r["ratio"]),
            _ratio(r["ceiling_ratio"]),
            _ratio(r["independent_ratio"]),
            f"{r['collectives_per_iteration']:.1f}",
            f"{r['collective_seconds_rank0']:.2f}",
        ]
        for r in sc["rows"]
    ]
    header = [
        "episodes",
        "1 rank (tokens/s)",
        "2 ranks (tokens/s)",
        "speed-up",
        "ceiling",
        "2 unconnected processes",
        "collectives / iteration",
        "s in collectives (rank 0)",
    ]
    judged = next(r for r in sc["rows"] if r["envs"] == sc["judged_on_envs"])
    settings = judged["settings"]
    return "\n".join(
        [
            markdown_table(header, rows),
            "",
            f"{settings['model']} {settings['layers']} x {settings['width']}, "
            f"{settings['tokens']} tokens per episode, {settings['threads_per_rank']} thread per "
            f"rank, gloo; load average {sc['load_average_before'][0]:.1f} at the start. The "
            f"goal, {sc['goal']:.1f}x at {sc['judged_on_envs']} episodes: "
            f"**{'met' if sc['ratio'] >= sc['goal'] else 'not met'}** ({_ratio(sc['ratio'])}).",
        ]
    )


# ------------------------------------------------------ trl_ppo_work.json, trl_ppo.json
def _flops_over_trl(d: dict[str, Any], side: str) -> str:
    work = d["sides"]
    return f"{work[side]['work']['total']['gflops'] / work['trl']['work']['total']['gflops']:.2f}"


@fact("trl-ppo-work-flops", TRL_WORK)
def trl_ppo_work_flops(d: dict[str, Any]) -> str:
    """marlhf's (separate critic) FLOPs per iteration over TRL's."""
    return _flops_over_trl(d, "marlhf")


@fact("trl-ppo-work-flops-shared", TRL_WORK)
def trl_ppo_work_flops_shared(d: dict[str, Any]) -> str:
    """marlhf's (shared trunk) FLOPs per iteration over TRL's."""
    return _flops_over_trl(d, "marlhf_shared")


#: Issue 28's goal for marlhf's seconds per PPO iteration over TRL's.
TRL_PPO_GOAL = 0.5


@fact("trl-ppo-work-speed", TRL_WORK)
def trl_ppo_work_speed(d: dict[str, Any]) -> str:
    """marlhf's (separate critic) GFLOPs per second over TRL's, and the shared trunk's."""
    work = d["sides"]
    trl = work["trl"]["gflops_per_s"]
    return " and ".join(
        f"{work[side]['gflops_per_s'] / trl:.2f}" for side in ("marlhf", "marlhf_shared")
    )


@fact("trl-ppo-work-needed", TRL_WORK)
def trl_ppo_work_needed(d: dict[str, Any]) -> str:
    """The GFLOPs per second over TRL's that the goal needs at each side's FLOPs."""
    work = d["sides"]
    trl = work["trl"]["work"]["total"]["gflops"]
    return " and ".join(
        f"{work[side]['work']['total']['gflops'] / trl / TRL_PPO_GOAL:.2f}"
        for side in ("marlhf", "marlhf_shared")
    )


def _trl_ppo_setting(d: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in d["settings"] if "ratio" in e)


@fact("trl-ppo-ratio", TRL_PPO)
def trl_ppo_ratio(d: dict[str, Any]) -> str:
    """The per-round median of marlhf's (separate critic) seconds over TRL's, with its range."""
    r = _trl_ppo_setting(d)["ratios"]["marlhf"]
    return f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"


@fact("trl-ppo-ratio-shared", TRL_PPO)
def trl_ppo_ratio_shared(d: dict[str, Any]) -> str:
    """The same for the shared trunk."""
    r = _trl_ppo_setting(d)["ratios"]["marlhf_shared"]
    return f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"


@fact("trl-ppo-ratio-fused", TRL_PPO)
def trl_ppo_ratio_fused(d: dict[str, Any]) -> str:
    """The per-round median and range of each marlhf side's ratio with ``fused_optimizer=True``
    (TRL's optimizer kernel): the separate critic's, then the shared trunk's."""
    ratios = _trl_ppo_setting(d)["ratios"]
    return " and ".join(
        f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"
        for r in (ratios["marlhf_fused"], ratios["marlhf_shared_fused"])
    )


@fact("trl-ppo-goal", TRL_PPO)
def trl_ppo_goal(d: dict[str, Any]) -> str:
    """Whether each marlhf side's median ratio meets :data:`TRL_PPO_GOAL`."""
    ratios = _trl_ppo_setting(d)["ratios"]
    return " and ".join(
        f"{'met' if ratios[side]['median'] <= TRL_PPO_GOAL else 'not met'} with the {name}"
        for side, name in (("marlhf", "separate critic"), ("marlhf_shared", "shared trunk"))
    )


@fact("trl-ppo-load", TRL_PPO)
def trl_ppo_load(d: dict[str, Any]) -> str:
    """The one-minute load average at the start and at the end of the run."""
    return "load " + span([d["loadavg_start"][0], d["loadavg_end"][0]], digits=1)


# ----------------------------------------------------------------- update_levers.json
_TRUNKS = (("marlhf", "separate"), ("marlhf_shared", "shared"))


@fact("trl-ppo-needed-cut", TRL_PPO)
def trl_ppo_needed_cut(d: dict[str, Any]) -> str:
    """The fraction of each marlhf side's iteration the goal leaves (goal over the median ratio
    per round): the separate critic's, then the shared trunk's."""
    ratios = _trl_ppo_setting(d)["ratios"]
    return " and ".join(f"{TRL_PPO_GOAL / ratios[side]['median']:.2f}" for side, _ in _TRUNKS)


@fact("levers-all", LEVERS)
def levers_all(d: dict[str, Any]) -> str:
    """The ``all`` side's iteration over the default's (median per round, with its range): the
    separate critic's, then the shared trunk's."""
    return " and ".join(
        f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"
        for r in (d[trunk]["iteration"]["ratios"][f"{trunk}/all"] for _, trunk in _TRUNKS)
    )


@fact("levers-verdict", LEVERS)
def levers_verdict(d: dict[str, Any]) -> str:
    """Whether the ``all`` side's median reaches what the goal leaves of each trunk's iteration
    (``trl_ppo.json``'s ratios), with the two numbers."""
    ratios = _trl_ppo_setting(results(TRL_PPO))["ratios"]
    parts = []
    for (side, trunk), name in zip(_TRUNKS, ("separate critic", "shared trunk"), strict=True):
        reached = d[trunk]["iteration"]["ratios"][f"{trunk}/all"]["median"]
        needed = TRL_PPO_GOAL / ratios[side]["median"]
        verdict = "within" if reached <= needed else "short of"
        parts.append(f"{verdict} it with the {name} ({reached:.2f} against {needed:.2f})")
    return " and ".join(parts)


@fact("levers-compiled-update", LEVERS)
def levers_compiled_update(d: dict[str, Any]) -> str:
    """The compiled blocks' update over the default's (median per round): the separate critic's,
    then the shared trunk's."""
    return " and ".join(
        f"{d[trunk]['update']['ratios'][f'{trunk}/compiled_blocks']['median']:.2f}"
        for _, trunk in _TRUNKS
    )


#: ``<!-- render:NAME -->`` block name -> (results file, renderer of its JSON).
BLOCKS: dict[str, tuple[Path, Callable[[Any], str]]] = {
    "trl-ppo-work": (TRL_WORK, work_table),
    "trl-ppo-profile": (TRL_WORK, profile_table),
    "update-levers": (LEVERS, levers_table),
    "decode-speedups": (DECODE, decode_table),
    "memory-stages": (MEMORY, memory_table),
    "lean-check": (LEAN, lean_table),
    "allocator-cost": (ALLOCATOR, allocator_table),
    "allocator-cost-tiny": (ALLOCATOR_TINY, allocator_table),
    "scale-memory": (SCALE, scale_memory),
    "scale-scaling": (SCALE, scale_scaling),
}
