"""``docs/benchmarks.md``: the page :mod:`bench` writes from ``summary.json`` and the step JSON.

Every number on the page is read from ``benchmarks/results/``; the fixed text (the method of the
parity benchmark, what differs between marlhf and TRL, how to read the results) lives here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from common import IMG_DIR, RESULTS_DIR, ROOT, fmt, markdown_table, read_json
from provenance import describe
from speed_doc import decode_section, grpo_section, load_text, ratio_range, rollout_lines


def kept_full_parity_files() -> list[Path]:
    """Full-settings parity results kept beside the quick ones (``parity_full_*.json``)."""
    return sorted(RESULTS_DIR.glob("parity_full_*.json"))


def rollout_file(mode: str) -> str:
    """The quick grid writes its own file; the full mode reads rollout.py's own output."""
    return "rollout_quick.json" if mode == "quick" else "rollout.json"


#: Issue 28's goals: agent rollout / bare loop, and marlhf / TRL seconds per iteration.
ROLLOUT_GOAL, TRL_PPO_GOAL, TRL_GRPO_GOAL = 0.95, 0.5, 0.7
GOALS = [
    ("rollout_vs_bare_min", f">= {ROLLOUT_GOAL}", lambda v: v >= ROLLOUT_GOAL),
    ("marlhf_vs_trl", f"<= {TRL_PPO_GOAL}", lambda v: v <= TRL_PPO_GOAL),
    ("marlhf_vs_trl_grpo", f"<= {TRL_GRPO_GOAL} (aim 0.5)", lambda v: v <= TRL_GRPO_GOAL),
]

PARITY_METHOD = """\
`benchmarks/parity.py` trains each task with `marlhf compare` (the CLI's own runner): token-level
PPO and MAPPO with each termination, the same hyper-parameters, one run per seed (the seed sets the
model init, the prompts and the sampling). Metric: `rollout/score_mean`, the mean task score of
each iteration's episodes (on-policy, sampled). Definitions:
- *final score*: mean of a run's last 5 logged values; mean over seeds ± 95% Student-t interval;
- *tokens to parity*: per seed, the first logged token count at which the run's trailing mean over
  5 points reaches PPO's final score (mean over PPO's seeds), divided by PPO's total tokens; the
  table gives the median over seeds and a percentile bootstrap 95% interval over seeds (2000
  resamples, seed 0). "not reached" (JSON null) means the run never reached it in the budget, so
  the ratio is above 1. PPO's own row shows how early its own seeds first touch that level: with
  noisy curves this is well below 1, and it is the baseline a MAPPO row should be read against.
  The paper reports MAPPO at 1/2 to 1/1.7 of PPO's tokens."""

PARITY_DISCUSSION = """\
### Reading these results

- The quick mode (`make bench`) trains tiny random GPT-2s for a few dozen iterations on 3 to 5
  seeds:
  its curves are short and noisy, and its intervals are wide. It checks that the pipeline runs and
  shows the direction of the effect; `make bench-full` (5 seeds, every termination, longer
  budgets, DelayedChoice at horizon 128) is the run that can support or refute the claim.
- Where MAPPO does not beat PPO, the candidate reasons, by [the method](method.md)'s own knobs:
  (1) *critic quality*: segment GAE bootstraps from the mean token value of the next segment; a
  critic that is still near its zero init gives little to bootstrap from, for both agents alike;
  (2) *lambda*: with gamma = 1 and lambda = 0.95 the terminal score reaches the first token of a
  32-token episode with weight 0.95^31 = 0.20 under PPO and 0.95^7 = 0.70 under 5-grams, so the gap
  that MAPPO closes grows with the horizon, and a short horizon (ExprTarget, 12 tokens) leaves
  little to close; (3) *advantage whitening* per minibatch rescales both agents' advantages, so a
  larger but uniform advantage does not by itself speed learning; (4) *aggregation*: these runs
  use the marlhf defaults (segment reward = sum, segment value = mean, token-level ratio, last
  token isolated) with the KL penalty off (kl_coef 0), so the reward and value aggregation only
  matter through the terminal score and the critic; (5) *what the reward grades*: DelayedChoice
  pays for one early decision, the case macro actions are for; Reverse pays partial credit per
  correct position, and a 5-gram gives one advantage to five tokens some of which were right and
  some wrong, blurring the per-token credit that token-level GAE keeps. On such a task MAPPO's
  gain is expected to be small: at full settings (`make bench-full`, prompts of 10-20 symbols,
  5 seeds; see [parity_full.md](parity_full.md)) MAPPO `ngram:5` ends modestly above PPO (0.215
  against 0.180), a difference the quick mode's short runs cannot resolve. A loss there is
  information about where macro actions help, not noise to tune away.
- Nothing here was tuned towards an answer: every agent uses the same settings, the ones of
  `examples/configs/` (learning rate 1e-3, 4 epochs, minibatch 16, 32 episodes per iteration)."""

TRL_DIFFERENCES = """\
What is the same on both sides: the policy (`tiny_gpt2`, 2 layers, width 128, the same seeded
weights), a seeded `GPT2ForSequenceClassification` reward model of the same size, the prompts (256
windows of 16 BPE tokens of the standard library's source, 4096-token byte-level BPE trained in
process), episodes per iteration, response length, 4 epochs, minibatches of 16 episodes, clip 0.2,
value clip 0.2, vf_coef 0.5, KL coefficient 0.05 (k1), gamma 1, lambda 0.95, temperature 1, no
top-k/top-p, learning rate 1e-5, no stop token (every response is exactly `response_length`
tokens), one torch thread each, run alternately in one process of `.venv-bench`.

What differs, and why:
- **Value model.** TRL always trains a separate value model (`GPT2ForSequenceClassification`
  backbone + score head). The headline ratio uses marlhf with a separate critic of the same size
  (`policy_kwargs={"critic": tiny_gpt2(...)}`); marlhf's default shared-trunk value head is the
  second marlhf column (cheaper: one trunk instead of two).
- **Sampling.** TRL generates with `transformers.generate` and takes the rollout log-probs from the
  generation logits; marlhf samples token by token through `BatchedTokenEnv` with its own KV-cache
  loop and recomputes log-probs and values in one no-grad forward after the rollout.
- **Reward model input.** TRL feeds the reward model the token ids directly; marlhf's
  `RewardModelReward` decodes the response and re-tokenises `prompt + response` (its contract is
  text, so any reward model with its own tokenizer works).
- **Optimizer kernel.** TRL runs Hugging Face's default, `AdamW` as PyTorch's fused kernel;
  marlhf's default is PyTorch's default `Adam` (one parameter tensor at a time on CPU), and the
  "fused Adam" columns run marlhf with `fused_optimizer=True`, TRL's kernel (equal to the default
  to float rounding, not bit for bit, so it is a switch and not the default).
- **Learning-rate schedule.** TRL decays the learning rate linearly to 0 over the run; marlhf
  keeps it constant. This does not change the cost of an iteration.
- **Logging.** TRL computes and logs its statistics every iteration; marlhf's SB3 logger runs at
  its default (verbose 0).
"""


def _goal_rows(s: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for key, goal, check in GOALS:
        v = s.get(key)
        rows.append([f"`{key}`", v, goal, "n/a" if v is None else ("yes" if check(v) else "NO")])
    for spec, v in (s.get("mappo_vs_ppo_iteration") or {}).items():
        limit = 1.15 if spec.startswith("treesitter") else 1.05
        rows.append([f"`mappo_vs_ppo_iteration` {spec}", v, f"<= {limit}", _yes(v <= limit)])
    for spec, v in (s.get("mappo_vs_ppo_peak_rss") or {}).items():
        rows.append([f"peak RSS MAPPO/PPO {spec}", v, "<= 1.05", _yes(v <= 1.05)])
    return rows


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _reach(x: float | None) -> str:
    """A tokens-to-parity ratio; JSON null (inf) means the run never reached the target."""
    return "not reached" if x is None or math.isinf(x) else f"{x:.2f}"


def _ci(ci: list[Any]) -> str:
    return f"[{_reach(ci[0])}, {_reach(ci[1])}]"


def _verdict(a: dict[str, Any], ppo_median: float | None) -> str:
    """One sentence on an agent's tokens to parity, against PPO's own and the paper's."""
    p = a["tokens_to_parity"]
    head = f"- {a['agent']}: "
    if p["median"] is None:
        return head + (
            f"the median seed never reached PPO's final score ({p['reached']}/{p['seeds']} "
            "seeds did): no speed-up over PPO here."
        )
    lo, hi = p["ci95"]
    text = (
        f"reaches PPO's final score at {p['median']:.2f} of PPO's tokens (95% CI "
        f"[{_reach(lo)}, {_reach(hi)}]; paper: 0.50 to 0.59)"
    )
    if ppo_median is None:
        return (
            head
            + text
            + (
                "; PPO's own median seed never reaches that level within its budget (the target is "
                "the mean of PPO's finals), so PPO's whole budget is the comparison."
            )
        )
    rel = p["median"] / ppo_median
    verdict = "a speed-up" if rel < 0.9 else "no clear speed-up"
    return (
        head
        + text
        + (
            f"; PPO's own seeds first reach that level at {ppo_median:.2f}, so MAPPO needs "
            f"{rel:.2f}x PPO's own tokens to it: {verdict}."
        )
    )


def _parity_section(par: dict[str, Any]) -> list[str]:
    out = []
    for key, t in par["tasks"].items():
        out += [
            f"### {key}: `{t['env_id']}` {t['kwargs']}",
            "",
            f"{t['why']}. {len(t['seeds'])} seeds, {t['total_timesteps']:,} tokens per run, "
            f"{t['num_envs']} episodes per iteration, {t['model']}; agent settings "
            f"`{t['agent']}`.",
            "",
        ]
        rows = []
        ppo_final = t["agents"][0]["final_score"]
        ppo_median = t["agents"][0]["tokens_to_parity"]["median"]
        for a in t["agents"]:
            p = a["tokens_to_parity"]
            own = p["median"] / ppo_median if p["median"] is not None and ppo_median else None
            rows.append(
                [
                    a["agent"],
                    f"{a['final_score']:.3f} ± {a['final_score_ci95']:.3f}",
                    _reach(p["median"]),
                    _ci(p["ci95"]),
                    fmt(own, 2),
                    f"{p['reached']}/{p['seeds']}",
                    " ".join("never" if x is None else f"{x:.2f}" for x in p["per_seed"]),
                    fmt(a["wall_time_s"], 0),
                ]
            )
        header = [
            "agent",
            "final score ± 95% CI",
            "tokens to PPO final / PPO tokens (median)",
            "bootstrap 95% CI",
            "÷ PPO's own median",
            "seeds reaching",
            "per seed",
            "wall s / run",
        ]
        out += [markdown_table(header, rows), ""]
        best = max(t["agents"][1:], key=lambda a: a["final_score"], default=None)
        if best is not None:
            verdict = "above" if best["final_score"] > ppo_final else "not above"
            out.append(
                f"Best MAPPO final score: {best['agent']} at {best['final_score']:.3f}, {verdict} "
                f"PPO's {ppo_final:.3f}; the intervals "
                + (
                    "overlap."
                    if abs(best["final_score"] - ppo_final)
                    < best["final_score_ci95"] + t["agents"][0]["final_score_ci95"]
                    else "do not overlap."
                )
            )
        out += [_verdict(a, ppo_median) for a in t["agents"][1:] if a["termination"] != "ngram:1"]
        sanity = t.get("ngram1_equals_ppo")
        if sanity:
            out.append(
                f"Sanity row: MAPPO `ngram:1` vs PPO, largest difference of the logged score per "
                f"seed {sanity['max_abs_score_diff_per_seed']}: "
                + ("identical, as it must be." if sanity["identical"] else "NOT identical.")
            )
        out += ["", f"![{key}]({Path(t['plot']).relative_to('docs')})", ""]
    return out


def plot_ratios(s: dict[str, Any], path: Path) -> bool:
    """Bar chart of the speed ratios of the summary against their goals; False when none."""
    bars: list[tuple[str, float, float]] = []  # label, value, goal
    for key, v in (s.get("rollout_vs_bare") or {}).items():
        bars.append((f"agent/bare rollout {key}", v, ROLLOUT_GOAL))
    if s.get("marlhf_vs_trl") is not None:
        bars.append(("marlhf/TRL s per iteration", s["marlhf_vs_trl"], TRL_PPO_GOAL))
    if s.get("marlhf_vs_trl_grpo") is not None:
        bars.append(("marlhf/TRL GRPO s per iteration", s["marlhf_vs_trl_grpo"], TRL_GRPO_GOAL))
    for spec, v in (s.get("mappo_vs_ppo_iteration") or {}).items():
        bars.append((f"MAPPO/PPO s per iter {spec}", v, 1.15 if "treesitter" in spec else 1.05))
    if not bars:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(bars) + 1.2), dpi=120)
    y = list(range(len(bars)))
    ax.barh(y, [b[1] for b in bars], color="tab:blue")
    ax.scatter([b[2] for b in bars], y, marker="|", s=300, color="tab:red")
    ax.set_yticks(y, [b[0] for b in bars], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("ratio (agent/bare: higher is better; the others: lower is better)")
    ax.set_title("bars: measured; red ticks: goal", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def _step_cell(name: str, step: dict[str, Any]) -> str:
    """A step of the run in the page's header: its wall time and exit code, or that it was
    skipped (``bench.py --skip``) and its earlier results reused."""
    if step.get("skipped"):
        return f"{name} skipped (its earlier results reused)"
    return f"{name} {step['wall_s']:.0f} s (rc {step['rc']})"


def render_doc(s: dict[str, Any]) -> str:
    """The markdown of ``docs/benchmarks.md`` from the summary and the step JSON files."""
    m = s["machine"]
    cmd = "make bench" if s["mode"] == "quick" else "make bench-full"
    lines = [
        "# marlhf benchmarks",
        "",
        f"Generated by `{cmd}` (`python benchmarks/bench.py --mode {s['mode']}`); every number "
        "below comes from `benchmarks/results/*.json` written by that run.",
        "",
        f"- commit {describe(m, RESULTS_DIR / 'summary.json')}, {m['date_utc']}"
        + (
            f" (uncommitted changes in the shared checkout: {', '.join(m['uncommitted_files'])})"
            if m.get("uncommitted_files")
            else ""
        ),
        *(
            [
                "- commit at the end of the run: "
                + describe({"commit": s["commit_at_end"]}, RESULTS_DIR / "summary.json")
            ]
            if s.get("commit_at_end")
            else []
        ),
        f"- machine: {m['cpu']}, {m['cores']} usable cores, Python {m['python']}, "
        f"torch {m.get('torch')}, device: {m['device']}",
        "- GPU: "
        + (
            f"none on this machine; section 7 reports the kept GPU run of `benchmarks/gpu.py` "
            f"({s['gpu']['device']}, {s['gpu']['date_utc']})."
            if isinstance(s["gpu"], dict)
            else f"{s['gpu']}."
        ),
        f"- total wall time {s.get('total_wall_s', 0):.0f} s; steps: "
        + ", ".join(_step_cell(k, v) for k, v in s["steps"].items()),
        "",
        "The machine is shared (other processes ran during the measurements), so timings carry "
        "noise of several percent; ratios are taken between runs made back to back.",
        "",
        (
            "This is the reduced set of `make bench` (fewer seeds, terminations and tasks, small "
            "budgets); `make bench-full` runs the full set (hours) and rewrites this page."
            if s["mode"] == "quick"
            else "This is the full set of `make bench-full`."
        ),
        "",
        "## Goals",
        "",
        markdown_table(["key", "measured", "goal", "met"], _goal_rows(s)),
        "",
    ]
    if plot_ratios(s, ROOT / "docs" / "img" / "bench_ratios.png"):
        lines += ["![speed ratios against their goals](img/bench_ratios.png)", ""]
    roll = read_json(RESULTS_DIR / rollout_file(s["mode"]))
    lines += ["## 1. Rollout throughput against a bare KV-cache loop (`rollout_vs_bare`)", ""]
    if s.get("rollout_vs_bare") and roll:
        lines += [
            "`benchmarks/rollout.py`: tokens/s of `PPO.collect_rollouts` stepping "
            "`BatchedTokenEnv(DelayedChoice)` (no EOS) over tokens/s of a hand-written "
            "sampling loop with the model's KV cache, same model, batch and lengths; one torch "
            "thread; after a warm-up the two alternate until the bare loop has run 1.5 s in "
            "all (at least 3 pairs in full mode), and each number is the best of its runs.",
            "",
            markdown_table(
                ["layers", "batch", "new tokens", "bare tok/s", "agent tok/s", "agent/bare"],
                [
                    [
                        r["n_layer"],
                        r["batch"],
                        r["new_tokens"],
                        round(r["bare_tok_s"]),
                        round(r["agent_tok_s"]),
                        r["agent_over_bare"],
                    ]
                    for r in roll["results"]
                ],
            ),
            "",
            *rollout_lines(
                roll["results"],
                f"{describe(roll['machine'], RESULTS_DIR / rollout_file(s['mode']))}, "
                f"{roll['machine']['date_utc']}",
            ),
        ]
    else:
        lines += [f"Not measured: {s.get('rollout_vs_bare_error')}", ""]
    lines += decode_section(s["mode"])

    lines += ["## 2. marlhf against TRL (`marlhf_vs_trl`)", ""]
    trl = read_json(RESULTS_DIR / "trl_ppo.json") or {}
    if s.get("marlhf_vs_trl") is not None:
        lines += [
            f"`benchmarks/trl_ppo.py` with TRL {trl.get('trl_version')} "
            f"(`trl.experimental.ppo.PPOTrainer`; TRL 1.13 and later no longer ship it, so "
            "`.venv-bench` pins `trl==1.12.0`), transformers "
            f"{trl.get('transformers')}. Seconds per iteration (rollout + "
            f"4 epochs of updates), median of {trl.get('iters')} after {trl.get('warmup')} "
            "warm-up.",
            "",
            "Ratios are per round (both sides of a round ran back to back), median (range); "
            "load is the 1-, 5- and 15-minute load average at the end.",
            "",
            markdown_table(
                [
                    "batch",
                    "response len",
                    "TRL s/iter",
                    "marlhf s/iter (separate critic)",
                    "ratio",
                    "ratio, fused Adam",
                    "marlhf s/iter (shared trunk)",
                    "ratio",
                    "ratio, fused Adam",
                    "load",
                ],
                [
                    [
                        e["batch"],
                        e["response_length"],
                        e["trl_s_per_iter"],
                        e["marlhf_s_per_iter"],
                        ratio_range(e, "marlhf"),
                        ratio_range(e, "marlhf_fused"),
                        e["marlhf_shared_s_per_iter"],
                        ratio_range(e, "marlhf_shared"),
                        ratio_range(e, "marlhf_shared_fused"),
                        load_text(e.get("loadavg")),
                    ]
                    for e in trl["settings"]
                    if "ratio" in e
                ],
            ),
            "",
            TRL_DIFFERENCES,
        ]
    else:
        lines += [f"No ratio: {s.get('marlhf_vs_trl_error')}", ""]
    lines += grpo_section(s)

    it = read_json(RESULTS_DIR / "iteration.json")
    lines += ["## 3. MAPPO / PPO iteration time and memory (`mappo_vs_ppo_iteration`)", ""]
    if it and "mappo_over_ppo" in it:
        st = it["setup"]
        mem = {r["spec"]: r["peak_rss_mb"] for r in it["memory_runs"]}
        lines += [
            f"Timing: one process builds PPO and every MAPPO and runs them round-robin, one "
            f"iteration each per round ({it['rounds']} rounds after {it['warmup']} warm-up), "
            "so a slow phase of the shared machine hits all of them; MAPPO/PPO is the median "
            f"over rounds of the per-round ratio. Setup: {st['task']} (horizon {st['horizon']}, "
            f"no EOS, so every agent generates the same tokens), batch {st['batch']}, minibatch "
            f"{st['minibatch']}, {st['n_epochs']} epochs, {st['model']}, one torch thread. "
            "Memory: each agent alone in its own process for two iterations (PPO first and "
            "last), peak RSS from `wait4`; RSS / PPO uses the larger PPO value. Tree-sitter "
            "here parses the task's letter strings: its cost is the parse and the offset "
            "mapping per row, not what the text says (`segmentation_ms` times it on real code).",
            "",
            markdown_table(
                ["termination", "s / iteration (median)", "MAPPO/PPO", "peak RSS MB", "RSS / PPO"],
                [
                    [
                        spec,
                        t,
                        it["mappo_over_ppo"].get(spec),
                        mem.get(spec),
                        it["rss_over_ppo"].get(spec),
                    ]
                    for spec, t in it["s_per_iter"].items()
                ],
            ),
            "",
        ]
    else:
        lines += [f"Not measured: {(it or {}).get('error', 'iteration step not run')}", ""]
    seg = read_json(RESULTS_DIR / "segmentation.json")
    lines += ["## 4. Segmentation cost (`segmentation_ms`)", ""]
    if seg and "rows" in seg:
        lines += [
            f"`benchmarks/segmentation.py`: ms per batch of {seg.get('batch')} x "
            f"{seg.get('response_tokens')} tokens (text terminations include the offset "
            "alignment), and as a fraction of one PPO iteration of the tiny model "
            f"({fmt(seg.get('ppo_iteration_ms'), 0)} ms).",
            "",
            markdown_table(
                ["termination", "input", "ms / batch", "share of PPO iteration", "macro len"],
                [
                    [
                        r["spec"],
                        r["input"],
                        r["ms_per_batch"],
                        f"{100 * r['fraction_of_ppo_iteration']:.3f}%",
                        r["mean_macro_len"],
                    ]
                    for r in seg["rows"]
                ],
            ),
            "",
        ]
    else:
        lines += [f"Not measured: {s.get('segmentation_error')}", ""]
    lines += [
        "## 5. Peak memory (`peak_rss_mb`)",
        "",
        markdown_table(
            ["benchmark process", "peak RSS MB"], [[k, v] for k, v in s["peak_rss_mb"].items()]
        ),
        "",
    ]

    lines += ["## 6. The paper's claim: tokens to reach PPO's final score (`steps_to_parity`)", ""]
    par = read_json(RESULTS_DIR / "parity.json")
    if s.get("steps_to_parity") and par:
        lines += [PARITY_METHOD, "", *_parity_section(par), PARITY_DISCUSSION]
    else:
        lines += [f"Not measured: {s.get('steps_to_parity_error')}", ""]
    lines += _gpu_section()
    if s["mode"] == "quick":
        lines += _kept_full_parity_section()
    lines += _credit_section(s)
    return "\n".join(lines) + "\n"


def _credit_section(s: dict[str, Any]) -> list[str]:
    """Where the credit audit and the estimator comparison of this run are (docs/credit.md)."""
    c = s.get("credit") or {}
    lines = ["## 9. Credit assignment against the true advantages (`credit`, `evidence`)", ""]
    lines += [
        "The audit of each estimator's advantages against the exact or Monte-Carlo truth, and "
        "the comparison of every estimator preset with the audit beside the learning results, "
        "are written up in [credit.md](credit.md) from the full runs' JSON. This run wrote:",
        "",
    ]
    if c.get("credit_json"):
        lines.append(
            f"- `{c['credit_json']}`: the slowest whole audit (exact truth + every scheme) took "
            f"{c.get('audit_seconds_max') or 0:.2f} s"
        )
    else:
        lines.append(f"- credit audit not measured: {c.get('credit_error', 'step not run')}")
    if c.get("evidence_json"):
        lines.append(f"- `{c['evidence_json']}`:")
        for key, t in c.get("evidence_tasks", {}).items():
            lines.append(
                f"  - {key}: closest to the truth (correlation at the decision tokens) "
                f"{t['closest_by_corr']['init']} at 0 tokens, {t['closest_by_corr']['half']} at "
                f"half the budget; fastest to PPO's final score {t['fastest']}; best final "
                f"score {t['best_final']}"
            )
    else:
        lines.append(f"- comparison not run: {c.get('evidence_error', 'step not run')}")
    return [*lines, ""]


GPU_NOTES = """\
Reading it:
- **Rollout against the bare loop.** On the GPU a tiny model's step takes well under a millisecond
  of GPU work, so both loops are bound by Python and kernel launches, and the agent's extra
  per-token work (the env step, the buffer writes, the done bookkeeping) is a larger share than on
  the CPU: the tiny GPT-2 rows are below the goal there (0.68 to 0.89). For SmolLM2-135M a
  step of the bare loop takes 24 to 36 ms (30 layers of eager `transformers` code; at that size
  the step is most likely bound by the VM's CPU issuing kernels, not by the H100, which was not
  profiled), and the agent is within a few percent of the bare loop or faster in float32.
  Under bf16 autocast the agent is at 0.83-0.84 of the bare loop.
  Where the difference goes (`python benchmarks/profile_rollout.py --device cuda [--bf16]`, tiny
  2-layer model, B=16, N=256, cProfile of the host): of the agent's 0.9 s of host time per
  rollout, about three quarters is the model's own forward inside `policy.advance`, as in the bare
  loop; the rest is the env step (about 0.24 ms a token, including its one device sync for the
  action range check) and the rollout's bookkeeping, about 0.7 ms a token in all, which the bare
  loop does not do. A second device sync a token (the count of active rows) is now skipped while
  the env knows on the host that no row has finished; the effect was not measurable: single
  runs of the bare loop itself varied from 1.5 to 3.3 ms a token between runs on the same VM.
- **MAPPO / PPO per iteration.** The termination's own work runs on the CPU and is the same as in
  section 4 (at most 25 ms for tree-sitter per 64 x 256 batch) against iterations of 3.5 to 6 s,
  so the expected overhead is under 1%. The measured ratios scatter from 0.72 to 1.22 in both
  directions, including for `ngram:5`, whose work differs from PPO's by a 0.1 ms segmentation:
  that scatter is the timing noise of this shared VM with 2 repeats, not a cost of MAPPO.
- **Peak memory: not comparable in the kept run.** The kept run measured each agent's peak
  CUDA memory with the other agent resident, overwrote PPO's peak at each termination, and did
  not free the earlier MAPPOs (on SmolLM2 the MAPPO peaks rise 11.9, 14.8, 17.7 GB across the
  terminations), so its per-agent peaks cannot compare MAPPO with PPO and are not shown. Found in
  review after the device time was spent; `benchmarks/gpu.py` now measures each agent's iteration
  above the memory resident before it, after freeing the previous MAPPO
  (`rollout.iteration_peak_mb`), and has not been re-run on a GPU since. On the CPU the same
  question is answered by `peak_rss_mb` (section 3: each agent alone in its own process)."""


def _gpu_section() -> list[str]:
    gpu = read_json(RESULTS_DIR / "gpu.json")
    lines = ["## 7. On a GPU (`benchmarks/gpu.py`)", ""]
    if not gpu:
        return [*lines, "No GPU run is kept (`benchmarks/results/gpu.json` is missing).", ""]
    m = gpu["machine"]
    runs = ", ".join(f"`{r['file']}` ({r['wall_s']:.0f} s)" for r in gpu.get("merged_from", []))
    lines += [
        f"Kept from a run on {m.get('device')} ({m.get('gpu_memory_gb')} GiB), {m.get('cpu')} "
        f"with {m.get('cores')} cores, Python {m.get('python')}, torch {m.get('torch')}, commit "
        f"{describe(m, RESULTS_DIR / 'gpu.json')}, {m.get('date_utc')}. Not re-run by `make "
        "bench` (this machine has no GPU). Reproduce on a CUDA machine with marlhf installed: "
        "`python benchmarks/gpu.py` "
        "(the whole grid). Here it ran as three calls of at most 10 minutes each, merged with "
        f"`python benchmarks/gpu.py --merge ...`: {runs}; their commands were `--random-weights "
        "--assets DIR` (the tiny models, then SmolLM2 with random weights until the time ran "
        "out), `--models smollm2 --gguf FILE` (pretrained, float32) and `--models smollm2 "
        "--gguf FILE --dtypes bf16`.",
        "",
        "The tiny rows use the CPU benchmark's models and task (`DelayedChoice`, no EOS). The "
        "SmolLM2-135M rows continue standard-library Python functions (32-token prompts, the "
        "codec reports no EOS so every row samples exactly N tokens in both loops); bf16 means "
        "autocast for the agents and the bare loop alike. Best of 3 (rollouts) and 2 "
        "(iterations) runs after a warm-up; iterations are one epoch over one minibatch of the "
        "whole batch.",
        "",
    ]
    rows = []
    for r in gpu["results"]:
        # only per-iteration peaks above the resident memory compare agents (see GPU_NOTES)
        peaks = r.get("iteration_peak_mb", {})
        ratios = r.get("mappo_over_ppo_peak_mb", {}) if peaks else {}
        rows.append([
            r["model"], str(r.get("weights", "")).split(" (")[0], "bf16" if r["bf16"] else "fp32",
            r["batch"], r["new_tokens"], round(r["bare_tok_s"]), round(r["agent_tok_s"]),
            r["agent_over_bare"], fmt(r["ppo_iter_s"], 2),
            ", ".join(f"{k} {v:.2f}" for k, v in r["mappo_over_ppo_by_termination"].items()),
            ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) or "not comparable",
        ])  # fmt: skip
    header = ["model", "weights", "dtype", "B", "N", "bare tok/s", "agent tok/s", "agent/bare",
              "PPO it (s)", "MAPPO/PPO iteration", "MAPPO/PPO iteration peak"]  # fmt: skip
    return [*lines, markdown_table(header, rows), "", GPU_NOTES, ""]


def _kept_full_parity_section() -> list[str]:
    files = kept_full_parity_files()
    lines = ["## 8. The paper's claim at full settings (kept `make bench-full` parity runs)", ""]
    if not files:
        return [*lines, "No full-settings run is kept.", ""]
    lines += [
        "The quick rows of section 6 are a smoke test of the claim. These are the full-settings "
        "runs of `benchmarks/parity.py --mode full` (5 seeds, every termination), kept as "
        "`benchmarks/results/parity_full_*.json` with their curves as "
        "`docs/img/parity_full_<task>.png`, and discussed in "
        "[parity_full.md](parity_full.md). Each was run with `python benchmarks/parity.py --mode "
        "full --only <task>` at the commit named.",
        "",
    ]
    for f in files:
        par = read_json(f)
        if not par:
            continue
        m = par["machine"]
        tasks = {}
        for key, t in par["tasks"].items():
            plot = IMG_DIR / f"parity_full_{key}.png"
            tasks[key] = {**t, "plot": str(plot.relative_to(ROOT)) if plot.exists() else t["plot"]}
        lines += [f"`{f.name}`: commit {describe(m, f)}, {m['date_utc']}.", ""]
        lines += _parity_section({**par, "tasks": tasks})
    return lines
