"""The figures quoted in the prose of ``docs/reasoning.md`` (``reasoning.json``),
``docs/credit_multiturn.md`` (``turn_credit.json``) and ``docs/learned_terminations.md``
(``learned_terms.json``); see ``benchmarks/facts.py`` for how a page quotes them.

The ``learned_terms.json`` figures are read from the tables ``docs/credit_learned.md`` renders
(:mod:`benchmarks.learned_terms_tables`), so the summary on one page is the tables of the other.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.common import RESULTS_DIR
from benchmarks.facts import Facts, registrar, span

FACTS: Facts = {}
fact = registrar(FACTS)

REASONING = RESULTS_DIR / "reasoning.json"
TURN_CREDIT = RESULTS_DIR / "turn_credit.json"
LEARNED = RESULTS_DIR / "learned_terms.json"


def in_every(hits: int, total: int, unit: str) -> str:
    """``"in every seed"`` when all ``total`` hit, else ``"in 2 of 3 seeds"``."""
    return f"in every {unit}" if hits == total else f"in {hits} of {total} {unit}s"


# --------------------------------------------------------------------------- reasoning.json
@fact("reasoning-seeds", REASONING)
def reasoning_seeds(data: dict[str, Any]) -> str:
    """How many seeds the benchmark ran."""
    return str(len(data["summary"][0]["seeds"]))


@fact("reasoning-eval-questions", REASONING)
def reasoning_questions(data: dict[str, Any]) -> str:
    """Eval-split questions every model is scored on."""
    return str(data["eval"]["questions"])


@fact("reasoning-eval-samples", REASONING)
def reasoning_samples(data: dict[str, Any]) -> str:
    """Samples per question for the sampled accuracy."""
    return str(data["eval"]["samples"])


def _gains(data: dict[str, Any], kind: str, preset: str | None = None) -> list[float]:
    """RL minus its SFT start per run (``kind``: ``sampled`` or ``greedy``)."""
    return [
        r["accuracy"][kind] - r["start_accuracy"][kind]
        for r in data["runs"]
        if preset is None or r["preset"] == preset
    ]


@fact("reasoning-sampled-gain-runs", REASONING)
def reasoning_sampled_gain_runs(data: dict[str, Any]) -> str:
    """In how many (preset, seed) runs RL raised the sampled accuracy."""
    gains = _gains(data, "sampled")
    return in_every(sum(g > 0 for g in gains), len(gains), "run")


@fact("reasoning-grpo-greedy-drop", REASONING)
def reasoning_grpo_greedy_drop(data: dict[str, Any]) -> str:
    """In how many seeds GRPO lowered the greedy accuracy."""
    gains = _gains(data, "greedy", "grpo")
    return in_every(sum(g < 0 for g in gains), len(gains), "seed")


# --------------------------------------------------------------------------- turn_credit.json
def _exact(data: dict[str, Any], scheme: str, figure: str) -> list[float]:
    """One scheme's figure on every exact MDP."""
    return [mdp["table"][scheme][figure] for mdp in data["exact"].values()]


@fact("turn-baselines-cosine", TURN_CREDIT)
def turn_baselines_cosine(data: dict[str, Any]) -> str:
    """The trajectory-level baselines' cosine with the true gradient, every exact MDP."""
    return span(_exact(data, "grpo", "cosine") + _exact(data, "rloo", "cosine"))


@fact("turn-mt-grpo-costly-cosine", TURN_CREDIT)
def turn_mt_grpo_costly(data: dict[str, Any]) -> str:
    """Published MT-GRPO's cosine with the true gradient on the costly-tool MDP."""
    return f"{data['exact']['two-turn, costly tool']['table']['mt_grpo']['cosine']:.2f}"


@fact("turn-fixed-centred-error", TURN_CREDIT)
def turn_fixed_centred(data: dict[str, Any]) -> str:
    """``mt_grpo_fixed:std=false``'s relative error, every exact MDP."""
    return span(_exact(data, "mt_grpo_fixed:std=false", "relative_error"))


@fact("turn-learning-setting", TURN_CREDIT)
def turn_learning_setting(data: dict[str, Any]) -> str:
    """The reduced learning run's seeds and budget."""
    task = data["tasks"]["toollookup"]
    return f"{len(task['seeds'])} seeds, {task['budget']:,} tokens per run"


# --------------------------------------------------------------------------- learned_terms.json
#: The tasks whose truth is exact and whose audit is per episode (the page's "7-9%" tasks).
EXACT_TASKS = ("CreditSum h32", "DelayedChoice h32", "DelayedChoice h128", "KeyPosition h32")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


def _summary(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Task -> the learned termination's paired reduction over the best heuristic."""
    from benchmarks.learned_terms_tables import audit_table

    return {s["task"]: s for s in audit_table(data)[1]}


def _headroom(data: dict[str, Any], task: str) -> tuple[float, float]:
    """The oracle's and the learned rule's mean paired reduction over the best heuristic."""
    from benchmarks.learned_terms_tables import headroom

    h = headroom(data, task)
    return h["oracle"][0], h["learned"][0]


@fact("learned-main-reduction", LEARNED)
def learned_main(data: dict[str, Any]) -> str:
    """The learned rule's reduction at the main budget on the exact per-episode tasks, %."""
    s = _summary(data)
    return span((100 * s[t]["reduction"] for t in EXACT_TASKS), 0) + "%"


@fact("learned-main-excluding-zero", LEARNED)
def learned_excluding_zero(data: dict[str, Any]) -> str:
    """On how many of the per-episode tasks (the reasoning one aside) the interval excludes 0."""
    s = [v for t, v in _summary(data).items() if "per batch" not in t and "Reasoning" not in t]
    hits = sum(v["reduction"] - v["half"] > 0 for v in s)
    return f"on all {len(s)} tasks" if hits == len(s) else f"on {hits} of the {len(s)} tasks"


@fact("learned-reverse-reduction", LEARNED)
def learned_reverse(data: dict[str, Any]) -> str:
    """The learned rule's reduction on Reverse, %."""
    return f"{_pct(_summary(data)['Reverse']['reduction'])}%"


def _budget_reductions(data: dict[str, Any], budget: str, tasks: Any) -> list[float]:
    """The learned rule's mean paired reduction over the best heuristic at another budget."""
    from benchmarks.learned_terms_tables import budget_summary

    rows = budget_summary(data)
    return [r["reduction"][0] for r in rows if r["budget"] == budget and r["task"] in tasks]


@fact("learned-budget2", LEARNED)
def learned_budget2(data: dict[str, Any]) -> str:
    """The learned rule's reduction at 2 cuts on the exact per-episode tasks, %."""
    return span((100 * r for r in _budget_reductions(data, "2", EXACT_TASKS)), 0) + "%"


@fact("learned-budget8", LEARNED)
def learned_budget8(data: dict[str, Any]) -> str:
    """The learned rule's reduction at 8 cuts on the exact per-episode tasks, %."""
    return span((100 * r for r in _budget_reductions(data, "8", EXACT_TASKS)), 0) + "%"


@fact("learned-reverse-budgets", LEARNED)
def learned_reverse_budgets(data: dict[str, Any]) -> str:
    """The learned rule's reduction on Reverse at 2 and at 8 cuts, %."""
    two, eight = (_budget_reductions(data, b, ["Reverse"])[0] for b in ("2", "8"))
    return f"{_pct(two)}% and {_pct(eight)}%"


@fact("learned-share-of-oracle", LEARNED)
def learned_share(data: dict[str, Any]) -> str:
    """The share of the oracle's gain the learned rule gets, exact per-episode tasks, %."""
    shares = [got / oracle for oracle, got in (_headroom(data, t) for t in EXACT_TASKS)]
    return span((100 * s for s in shares), 0) + "%"


@fact("learned-oracle-headroom", LEARNED)
def learned_oracle(data: dict[str, Any]) -> str:
    """The oracle's reduction over the best heuristic, exact per-episode tasks, %."""
    return span((100 * _headroom(data, t)[0] for t in EXACT_TASKS), 0) + "%"


@fact("learned-oracle-reverse", LEARNED)
def learned_oracle_reverse(data: dict[str, Any]) -> str:
    """The oracle's reduction over the best heuristic on Reverse, %."""
    return f"{100 * _headroom(data, 'Reverse')[0]:.1f}%"


@fact("learned-reasoning", LEARNED)
def learned_reasoning(data: dict[str, Any]) -> str:
    """The reasoning task: the learned rule's paired reduction against the truth as computed,
    then net of the truth's noise, each with its 95% half-width."""
    from benchmarks.learned_terms_tables import audit_table

    raw = {s["task"]: s for s in audit_table(data)[1]}["Reasoning h16"]
    net = {s["task"]: s for s in audit_table(data, "rmse_net")[1]}["Reasoning h16"]
    return (
        f"{100 * raw['reduction']:.1f}% ± {100 * raw['half']:.1f} better than the best heuristic "
        f"against the truth as computed, {100 * net['reduction']:.1f}% ± {100 * net['half']:.1f}"
    )


@fact("learned-reasoning-headroom", LEARNED)
def learned_reasoning_headroom(data: dict[str, Any]) -> str:
    """The oracle's headroom on the reasoning task, %."""
    return f"{100 * _headroom(data, 'Reasoning h16')[0]:.1f}%"


@fact("learned-reasoning-se", LEARNED)
def learned_reasoning_se(data: dict[str, Any]) -> str:
    """The reasoning task's Monte-Carlo truth: rms standard error per token."""
    rows = [r for r in data["audit"] if r["task"] == "Reasoning h16" and "truth_rms_se" in r]
    return f"{statistics.fmean(r['truth_rms_se'] for r in rows):.2f}"


@fact("learned-batch-oracle", LEARNED)
def learned_batch_oracle(data: dict[str, Any]) -> str:
    """The greedy batch oracle's reduction over the best per-episode heuristic, %."""
    from benchmarks.learned_terms_tables import alloc_summary

    return span((100 * a["head_batch"][0] for a in alloc_summary(data).values()), 0) + "%"


@fact("learned-batch-episode-oracle", LEARNED)
def learned_batch_episode_oracle(data: dict[str, Any]) -> str:
    """The per-episode oracle's reduction on the same rows, %, and their seeds."""
    from benchmarks.learned_terms_tables import alloc_summary

    a = alloc_summary(data)
    seeds = span((float(v["seeds"]) for v in a.values()), 0)
    return span((100 * v["head_row"][0] for v in a.values()), 0) + f"%; {seeds} seeds"


@fact("learned-per-batch", LEARNED)
def learned_per_batch(data: dict[str, Any]) -> str:
    """``learned:per=batch``'s reduction over the best heuristic, %, with its seeds and tasks."""
    rows = [v for t, v in _summary(data).items() if t.endswith("per batch")]
    seeds = {r["seed"] for r in data["audit"] if r["task"].endswith("per batch")}
    return (
        span((100 * v["reduction"] for v in rows), 0)
        + f"% ({len(seeds)} seeds on {len(rows)} tasks"
    )


@fact("learned-cut-position", LEARNED)
def learned_cut_position(data: dict[str, Any]) -> str:
    """Where the learned and the oracle cuts sit on the exact per-episode tasks (fraction of
    the response)."""
    from benchmarks.learned_terms_tables import cut_position

    runs = {t: [r for r in data["audit"] if r["task"] == t] for t in EXACT_TASKS}
    return span(cut_position(rs, rule) for rs in runs.values() for rule in ("learned", "oracle"))


def _t2t(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from benchmarks.learned_terms_tables import t2t_table

    return {s["task"]: s for s in t2t_table(data)[1]}


def _over_best(medians: dict[str, float]) -> float:
    """The learned rule's median tokens over the best other rule's."""
    return medians["learned"] / min(v for k, v in medians.items() if k != "learned")


@fact("learned-t2t-seeds", LEARNED)
def learned_t2t_seeds(data: dict[str, Any]) -> str:
    """Seeds of the tokens-to-threshold runs on DelayedChoice h32 and h128."""
    t = _t2t(data)
    return f"{t['DelayedChoice h32']['seeds']} and {t['DelayedChoice h128']['seeds']} seeds"


@fact("learned-t2t-dc", LEARNED)
def learned_t2t_dc(data: dict[str, Any]) -> str:
    """Learned over the best heuristic, median tokens (compute-matched), DelayedChoice h32 then
    h128."""
    t = _t2t(data)
    h32, h128 = (_over_best(t[f"DelayedChoice {h}"]["median"]) for h in ("h32", "h128"))
    return f"{h32:.2f}x (h32) and {h128:.2f}x (h128)"


def _t2t_vs_best(data: dict[str, Any], task: str, env_digits: int) -> str:
    """Learned over the best heuristic on ``task``, median tokens, compute-matched then env
    only, and its seeds (the text's closing parenthesis is the page's)."""
    r = _t2t(data)[task]
    return (
        f"{_over_best(r['median']):.1f}x the tokens of the best heuristic compute-matched and "
        f"{_over_best(r['env_median']):.{env_digits}f}x counting env tokens only ({r['seeds']} "
        "seeds"
    )


@fact("learned-t2t-reverse", LEARNED)
def learned_t2t_reverse(data: dict[str, Any]) -> str:
    """Reverse: learned over the best heuristic (:func:`_t2t_vs_best`)."""
    return _t2t_vs_best(data, "Reverse", 1)


@fact("learned-t2t-reasoning", LEARNED)
def learned_t2t_reasoning(data: dict[str, Any]) -> str:
    """The reasoning task: learned over the best heuristic (:func:`_t2t_vs_best`)."""
    return _t2t_vs_best(data, "Reasoning h16", 2)


@fact("learned-t2t-compute", LEARNED)
def learned_t2t_compute(data: dict[str, Any]) -> str:
    """Learned over the best heuristic, median tokens (compute-matched), CreditSum then
    KeyPosition."""
    t = _t2t(data)
    return (
        f"{_over_best(t['CreditSum h32']['median']):.1f}x (CreditSum) and "
        f"{_over_best(t['KeyPosition h32']['median']):.1f}x (KeyPosition)"
    )


@fact("learned-t2t-compute-seeds", LEARNED)
def learned_t2t_compute_seeds(data: dict[str, Any]) -> str:
    """Seeds behind those medians."""
    t = _t2t(data)
    return span((float(t[k]["seeds"]) for k in ("CreditSum h32", "KeyPosition h32")), 0)


@fact("learned-t2t-env", LEARNED)
def learned_t2t_env(data: dict[str, Any]) -> str:
    """How many more env tokens the learned agents need, CreditSum then KeyPosition, %."""
    t = _t2t(data)
    more = [
        100 * (_over_best(t[k]["env_median"]) - 1) for k in ("CreditSum h32", "KeyPosition h32")
    ]
    return f"{more[0]:.0f}% and {more[1]:.0f}%"


@fact("learned-audit-seeds", LEARNED)
def learned_audit_seeds(data: dict[str, Any]) -> str:
    """Seeds of the per-episode audit: the usual count, and the tasks that ran more or fewer."""
    counts: dict[str, int] = {}
    for r in data["audit"]:
        if not r["task"].endswith("per batch"):
            counts[r["task"]] = counts.get(r["task"], 0) + 1
    usual = statistics.mode(counts.values())
    other: dict[int, list[str]] = {}
    for task, n in counts.items():
        if n != usual:
            other.setdefault(n, []).append(task)
    notes = [f"{n} on {' and '.join(tasks)}" for n, tasks in sorted(other.items())]
    return f"{usual} seeds" + (f" ({'; '.join(notes)})" if notes else "")


@fact("learned-t2t-scope", LEARNED)
def learned_t2t_scope(data: dict[str, Any]) -> str:
    """The tokens-to-threshold part: how many tasks, and the seeds per task."""
    t = _t2t(data)
    seeds = span((float(s["seeds"]) for s in t.values()), 0)
    return f"on {len(t)} tasks, {seeds} seeds"
