"""The figures quoted in the prose of ``docs/credit.md``, from ``credit.json`` and
``evidence.json`` (see ``benchmarks/facts.py`` for how a page quotes them).

The ``credit.json`` figures read the block's table (:func:`benchmarks.credit.summarise`, means
over seeds at three decimals), so a range quoted in the prose is the range of the table's cells.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.common import RESULTS_DIR
from benchmarks.facts import Fact, Facts, registrar, span

FACTS: Facts = {}
fact = registrar(FACTS)

CREDIT = RESULTS_DIR / "credit.json"
EVIDENCE = RESULTS_DIR / "evidence.json"

#: The agents whose own critic the ``gae`` schemes read, and every agent.
CRITIC_AGENTS = ("ppo", "mappo ngram:5")
AGENTS = ("ppo", "mappo ngram:5", "grpo")
#: The schemes that read a critic, and the group baselines.
CRITIC_SCHEMES = ("gae", "gae gae_lambda=1.0", "gae gae_lambda=0.0", "gae@ngram:5", "gae@ngram:inf")
GROUP_SCHEMES = ("grpo", "grpo group_std=false", "rloo")
#: The figures of one table row, by column.
COLUMNS = ("score", "rmse", "corr", "dcorr", "sign", "null", "segment")

Table = dict[tuple[str, int, str], dict[str, float]]


def table(data: dict[str, Any]) -> Table:
    """The block's table as numbers: (agent, budget, scheme) -> column -> value."""
    from benchmarks.credit import summarise  # imports torch: only when a page is rendered

    out: Table = {}
    for row in summarise(data):
        agent, budget, score, scheme, *rest = row
        out[(agent, budget, scheme)] = dict(zip(COLUMNS, map(float, [score, *rest]), strict=True))
    return out


def trained(data: dict[str, Any]) -> list[int]:
    """The budgets after some training (every one but 0), in order."""
    return sorted({r["budget"] for r in data["runs"]} - {0})


def cells(data: dict[str, Any], column: str, agents: Any, schemes: Any) -> list[float]:
    """One column's values over the given agents and schemes at the trained budgets."""
    t = table(data)
    return [
        t[(a, b, s)][column]
        for a in agents
        for b in trained(data)
        for s in schemes
        if (a, b, s) in t and not math.isnan(t[(a, b, s)][column])
    ]


def _full_vocab(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in data["runs"] if "truth_full_vocab" in r]


@fact("credit-audit-max-s", CREDIT)
def audit_max(data: dict[str, Any]) -> str:
    """The slowest whole audit, seconds."""
    return f"{data['audit_seconds_max']:.2f} s"


@fact("credit-full-vocab-sequences", CREDIT)
def full_vocab_sequences(data: dict[str, Any]) -> str:
    """How many sequences the exact truth enumerates over the whole vocabulary."""
    return f"{_full_vocab(data)[0]['truth_full_vocab']['sequences']:,.0f}"


@fact("credit-full-vocab-targets", CREDIT)
def full_vocab_targets(data: dict[str, Any]) -> str:
    """How many distinct targets those sequences cover (12^3 continuations each)."""
    return f"{_full_vocab(data)[0]['truth_full_vocab']['sequences'] / 12**3:.0f}"


@fact("credit-full-vocab-s", CREDIT)
def full_vocab_seconds(data: dict[str, Any]) -> str:
    """The exact truth's time over the whole vocabulary, lowest to highest."""
    return span((r["truth_full_vocab"]["seconds"] for r in _full_vocab(data)), 1) + " s"


@fact("credit-mc-s", CREDIT)
def mc_seconds(data: dict[str, Any]) -> str:
    """The Monte-Carlo check's time, lowest to highest."""
    return span((r["mc_check"]["seconds"] for r in _full_vocab(data)), 0) + " s"


@fact("credit-mc-abs-z", CREDIT)
def mc_abs_z(data: dict[str, Any]) -> str:
    """The Monte-Carlo check's mean |z| against the exact truth, lowest to highest."""
    return span(r["mc_check"]["mean_abs_z"] for r in _full_vocab(data))


@fact("credit-td0-dcorr", CREDIT)
def td0_decision_corr(data: dict[str, Any]) -> str:
    """TD(0)'s correlation at the decisions once trained, on the critic agents."""
    return span(cells(data, "dcorr", CRITIC_AGENTS, ["gae gae_lambda=0.0"]), sep=" and ")


@fact("credit-scaled-rmse", CREDIT)
def scaled_rmse(data: dict[str, Any]) -> str:
    """The RMSE of the two scaled schemes (``grpo``, ``reinforce_pp_baseline``), every row."""
    t = table(data)
    schemes = ("grpo", "reinforce_pp_baseline")
    return span(v["rmse"] for (_, _, s), v in t.items() if s in schemes)


@fact("credit-grpo-std-cost", CREDIT)
def grpo_std_cost(data: dict[str, Any]) -> str:
    """How far ``grpo``'s correlation at the decisions falls below Dr. GRPO's, every row."""
    t = table(data)
    gaps = [
        t[(a, b, "grpo group_std=false")]["dcorr"] - v["dcorr"]
        for (a, b, s), v in t.items()
        if s == "grpo"
    ]
    return span(gaps)


def _critic_cases(data: dict[str, Any]) -> list[dict[str, dict[str, float]]]:
    """Per critic agent and trained budget: scheme -> its row, for the critic schemes."""
    t = table(data)
    return [{s: t[(a, b, s)] for s in CRITIC_SCHEMES} for a in CRITIC_AGENTS for b in trained(data)]


@fact("credit-whole-macro-first", CREDIT)
def whole_macro_first(data: dict[str, Any]) -> str:
    """In how many (agent, trained budget) cases ``gae@ngram:inf`` has the best decision corr."""
    cases = _critic_cases(data)
    first = sum(max(c, key=lambda s: c[s]["dcorr"]) == "gae@ngram:inf" for c in cases)
    return f"{first} of {len(cases)}"


@fact("credit-whole-macro-margin", CREDIT)
def whole_macro_margin(data: dict[str, Any]) -> str:
    """The largest lead of another scheme over ``gae@ngram:inf`` where it is not first."""
    leads = [
        max(v["dcorr"] for v in c.values()) - c["gae@ngram:inf"]["dcorr"]
        for c in _critic_cases(data)
    ]
    return f"{max(leads):.2f}"


@fact("credit-ngram5-vs-mc-return", CREDIT)
def ngram5_vs_mc_return(data: dict[str, Any]) -> str:
    """The largest gap at the decisions between ``gae@ngram:5`` and ``gae_lambda=1.0``."""
    gaps = [
        abs(c["gae@ngram:5"]["dcorr"] - c["gae gae_lambda=1.0"]["dcorr"])
        for c in _critic_cases(data)
    ]
    return f"{max(gaps):.2f}"


@fact("credit-token-gae-dcorr", CREDIT)
def token_gae_decision_corr(data: dict[str, Any]) -> str:
    """Token GAE's correlation at the decisions once trained, on both critics."""
    return span(cells(data, "dcorr", CRITIC_AGENTS, ["gae"]))


@fact("credit-group-dcorr", CREDIT)
def group_decision_corr(data: dict[str, Any]) -> str:
    """Dr. GRPO's and RLOO's correlation at the decisions once trained, every agent."""
    return span(cells(data, "dcorr", AGENTS, ["grpo group_std=false", "rloo"]))


@fact("credit-best-critic-dcorr", CREDIT)
def best_critic_decision_corr(data: dict[str, Any]) -> str:
    """The best critic scheme's correlation at the decisions, per case, lowest to highest."""
    return span(max(v["dcorr"] for v in c.values()) for c in _critic_cases(data))


def _late(data: dict[str, Any]) -> list[tuple[str, int]]:
    """The nearly optimal policies: GRPO's at the last two budgets, MA-PPO's at the last."""
    budgets = trained(data)
    return [("grpo", b) for b in budgets[-2:]] + [("mappo ngram:5", budgets[-1])]


@fact("credit-group-sign-late", CREDIT)
def group_sign_late(data: dict[str, Any]) -> str:
    """The group schemes' sign agreement on the nearly optimal policies."""
    t = table(data)
    return span(t[(a, b, s)]["sign"] for a, b in _late(data) for s in GROUP_SCHEMES)


@fact("credit-whole-macro-sign-late", CREDIT)
def whole_macro_sign_late(data: dict[str, Any]) -> str:
    """``gae@ngram:inf``'s sign agreement on MA-PPO's samples at the last budget."""
    return f"{table(data)[('mappo ngram:5', trained(data)[-1], 'gae@ngram:inf')]['sign']:.2f}"


#: The unscaled schemes whose filler credit the page lists, in its order, with their names.
FILLER = (
    ("TD(0)", "gae gae_lambda=0.0"),
    ("token GAE", "gae"),
    ("`ngram:5`", "gae@ngram:5"),
    ("`ngram:inf`", "gae@ngram:inf"),
    ("λ = 1", "gae gae_lambda=1.0"),
    ("Dr. GRPO", "grpo group_std=false"),
    ("RLOO", "rloo"),
)


@fact("credit-filler", CREDIT)
def filler(data: dict[str, Any]) -> str:
    """``abs(A_hat) where A=0`` per unscaled scheme at the trained budgets, every agent."""
    parts = [f"{label} {span(cells(data, 'null', AGENTS, [s]))}" for label, s in FILLER]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _per_budget(agent: str, scheme: str, column: str, digits: int) -> Fact:
    """A fact: one agent's figure in one column at each trained budget, ``a / b / c``."""

    def render(data: dict[str, Any]) -> str:
        t = table(data)
        return " / ".join(f"{t[(agent, b, scheme)][column]:.{digits}f}" for b in trained(data))

    render.__doc__ = f"``{agent}``'s {column} (scheme ``{scheme}``) at each trained budget."
    return render


#: Each agent of the page (the label in its facts' names) and its own scheme.
OWN_SCHEMES = {
    "ppo": ("ppo", "gae"),
    "mappo": ("mappo ngram:5", "gae@ngram:5"),
    "grpo": ("grpo", "grpo"),
}
for _label, (_agent, _scheme) in OWN_SCHEMES.items():
    # The score is the agent's, the same on every scheme's row; the correlation its own scheme's.
    fact(f"credit-scores-{_label}", CREDIT)(_per_budget(_agent, _scheme, "score", 3))
    fact(f"credit-own-dcorr-{_label}", CREDIT)(_per_budget(_agent, _scheme, "dcorr", 2))


@fact("credit-mappo-over-grpo-first", CREDIT)
def mappo_over_grpo_first(data: dict[str, Any]) -> str:
    """MA-PPO's score lead over GRPO at the first trained budget."""
    t, b = table(data), trained(data)[0]
    return f"{t[('mappo ngram:5', b, 'gae')]['score'] - t[('grpo', b, 'grpo')]['score']:.2f}"


@fact("credit-token-gae-on-mappo", CREDIT)
def token_gae_on_mappo(data: dict[str, Any]) -> str:
    """Token GAE at the decisions computed on MA-PPO's critic, trained budgets."""
    return span(cells(data, "dcorr", ["mappo ngram:5"], ["gae"]))


# --------------------------------------------------------------------------- evidence.json
def _mc_methods(data: dict[str, Any], task: str) -> list[dict[str, Any]]:
    """The Monte-Carlo presets' rows of a task's table (means over the audit seeds)."""
    from benchmarks.evidence_doc import summarize_task

    methods = summarize_task(data["tasks"][task])["methods"]
    return [m for m in methods if m["scheme"].startswith("mc")]


@fact("evidence-reasoning-mc-corr", EVIDENCE)
def reasoning_mc_corr(data: dict[str, Any]) -> str:
    """The Monte-Carlo presets' correlation at the decisions on the reasoning task, both
    snapshots, lowest to highest."""
    return span(
        m[snap]["corr"] for m in _mc_methods(data, "reasoning") for snap in ("init", "half")
    )


@fact("evidence-reasoning-mc-tokens", EVIDENCE)
def reasoning_mc_tokens(data: dict[str, Any]) -> str:
    """What the Monte-Carlo presets' continuations cost per rollout on the reasoning task, to
    the nearest hundred tokens."""
    cost = [m["half"]["baseline_tokens"] for m in _mc_methods(data, "reasoning")]
    return f"{round(sum(cost) / len(cost), -2):,.0f}"


@fact("evidence-reasoning-episodes", EVIDENCE)
def reasoning_episodes(data: dict[str, Any]) -> str:
    """Episodes per iteration (one rollout) on the reasoning task."""
    return f"{data['tasks']['reasoning']['num_envs']}"


@fact("evidence-delayed128-budget", EVIDENCE)
def delayed128_budget(data: dict[str, Any]) -> str:
    """DelayedChoice h128's budget per run and the iterations it buys."""
    section = data["tasks"]["delayed128"]
    per_iteration = section["num_envs"] * section["task"]["kwargs"]["horizon"]
    return f"{section['budget']:,} tokens per run ({section['budget'] // per_iteration} iterations)"
