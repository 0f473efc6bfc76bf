"""Learned terminations against the heuristics at the same number of cuts.

For each task and seed, a tiny GPT-2 (2 layers, width 64) is trained by MA-PPO whose
termination is ``learned:budget=K`` (the learned termination trains between policy updates,
:mod:`marlhf.algorithms.termination_training`). Then, on a fresh held-out rollout of that policy
(the learned termination does not train on it), every termination cuts the same episodes at
the same budget ``K`` and the agent's estimator (segment GAE on its critic) is scored against
the truth (exact enumeration where the task has a decisive depth, Monte Carlo otherwise):
token RMSE and correlation, per rule; the oracle cut set (greedy on the truth) is the floor.

Second part (``tokens to threshold``): agents trained with each rule at the same budget on a
subset of tasks; the tokens each needs until its rollout score (mean of 3 iterations) reaches
the task's threshold, counting the learned termination's truth tokens (compute-matched).

Tasks: CreditSum (h32), DelayedChoice (h32, h128), Reverse (Monte-Carlo truth) and
KeyPosition (defined here: the decisive response position is given by the prompt, so it varies
from prompt to prompt), and the reasoning task (``ReasoningGym``: short sums from reasoning-gym
scored by its verifier, on a tiny BPE GPT-2 fine-tuned on the task's solutions first; Monte-Carlo
truth, whose standard error is reported and subtracted: see
:mod:`benchmarks.learned_terms_reasoning`).

    python benchmarks/learned_terms.py --quick   # 2 seeds, short runs
    python benchmarks/learned_terms.py           # 5 seeds, longer runs
    python benchmarks/learned_terms.py --render  # docs/credit_learned.md + the PNG from the JSON
    # one part, some tasks, some seeds, into its own part file (parts merge on --render):
    python benchmarks/learned_terms.py --quick --part t2t --t2t-tasks "DelayedChoice h32" \
        --seeds 0,1,2 --tag _dc
    # the learned termination with a batch budget (rows labelled "<task>, per batch"):
    python benchmarks/learned_terms.py --quick --part audit --tasks "KeyPosition h32" \
        --seeds 5,6 --per batch --tag _batch
    # a pilot (seed 9, every rule trained to the end; kept apart, it sets a threshold):
    python benchmarks/learned_terms.py --quick --part t2t --t2t-tasks Reverse --pilot --tag _rev

Every audit row also records the batch-budget comparison (:mod:`benchmarks.learned_terms_alloc`).
KeyPosition lives in :mod:`benchmarks.learned_terms_keypos`, the reasoning task's fine-tuning in
:mod:`benchmarks.learned_terms_reasoning`.

Writes ``benchmarks/results/learned_terms.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gymnasium as gym
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import learned_terms_reasoning as reasoning
from benchmarks.common import RESULTS_DIR, machine_stamp, read_json, write_json
from benchmarks.learned_terms_alloc import alloc_rows
from benchmarks.learned_terms_keypos import KeyPositionTask
from marlhf.algorithms import MAPPO
from marlhf.algorithms.termination_training import (
    base_starts,
    estimator_errors,
    estimator_function,
    oracle_cuts,
    target_advantages,
)
from marlhf.checkpoint.rollout_io import collect
from marlhf.credit.truth import Sampling
from marlhf.models import tiny_gpt2
from marlhf.options import (
    CutBudget,
    SegmentationBatch,
    build_termination,
    compute_starts,
    make_termination,
    termination_config,
)

RESULTS = RESULTS_DIR / "learned_terms.json"
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "credit_learned.md"
PNG = ROOT / "docs" / "img" / "learned_cuts.png"
BUDGET = 4
#: budgets audited besides BUDGET, with the same trained scores
OTHER_BUDGETS = (2, 8)
NUM_ENVS = 32
REASONING = "Reasoning h16"
HEURISTICS = ["even", "random_cuts", "surprisal", "entropy", "value_change"]


#: this benchmark's own task (importing its module registers marlhf/KeyPosition-v0)
OWN_TASKS = (KeyPositionTask,)
# task name -> (env id, kwargs, iterations quick, iterations full, threshold score)
#
# The threshold of tokens to threshold is a score every rule's runs reach within the quick
# run, set without looking at which rule reaches it first:
# - CreditSum, DelayedChoice and KeyPosition: about halfway from the uniform policy's return
#   (``task.random_return``: 0.67, 0.25, 0.5) to the optimum (1.0), where their runs start and
#   end; CreditSum's 0.83 rounded down to 0.80 (its quick runs end near 0.86).
# - Reverse: its quick runs end far below the optimum (about 0.2 of 1.0), so halfway from
#   where the runs start to where they end, pooled over the four rules of a pilot seed outside
#   the measured ones (:func:`pilot_threshold` on ``learned_terms_pilot_rev.json``, written by
#   ``--pilot``; ``tests/options/test_learned_bench.py`` checks the value against that file).
# - The reasoning task: the same rule as Reverse on its pilot (``learned_terms_pilot_rsn.json``
#   for ``learned``, ``learned_terms_pilot_rsn_h.json`` for the heuristics: two processes), in
#   its tokens-to-threshold setting (:data:`T2T_SETUP`); the same test checks it.
TASKS: dict[str, tuple[str, dict[str, Any], int, int, float]] = {
    "CreditSum h32": ("marlhf/CreditSum-v0", {}, 12, 40, 0.80),
    "DelayedChoice h32": ("marlhf/DelayedChoice-v0", {"horizon": 32}, 12, 40, 0.625),
    "DelayedChoice h128": ("marlhf/DelayedChoice-v0", {"horizon": 128}, 6, 20, 0.625),
    "Reverse": ("marlhf/Reverse-v0", {}, 12, 40, 0.18),
    "KeyPosition h32": ("marlhf/KeyPosition-v0", {}, 12, 40, 0.75),
    REASONING: (reasoning.ENV_ID, reasoning.ENV_KWARGS, 4, 12, 0.55),
}
#: Tokens to threshold where a task's audit setting does not learn within the run: the
#: reasoning task's score falls at the audit's learning rate (1e-3) and hardly moves from its
#: 300-step fine-tuning; from 1000 steps at 3e-4 it rises steadily (the sweep,
#: ``learned_terms_rsn_sweep.py``). Task -> :func:`make_agent`'s keywords and the iterations
#: (quick, full) of its runs.
T2T_SETUP: dict[str, dict[str, Any]] = {
    REASONING: {"sft_steps": 1000, "learning_rate": 3e-4, "iterations": (20, 60)},
}
T2T_TASKS = ["CreditSum h32", "KeyPosition h32"]
T2T_RULES = ["learned", "even", "entropy", "value_change"]


#: the reasoning task's fine-tuned weights and their seconds by fine-tuning steps, made once per
#: process (every seed starts from them)
_SFT: dict[int, tuple[dict[str, Any], float]] = {}


def make_agent(
    task: str,
    seed: int,
    termination: str,
    learning_rate: float = 1e-3,
    sft_steps: int = reasoning.SFT_STEPS,
) -> Any:
    """MA-PPO on ``task``: a fresh tiny GPT-2 seeded by ``seed``; for the reasoning task the
    one fine-tuned for ``sft_steps`` (made once per step count, with seed 0: the seeds differ
    in the RL that follows)."""
    env_id, kwargs, *_ = TASKS[task]
    env = gym.make_vec(env_id, num_envs=NUM_ENVS, vectorization_mode="vector_entry_point", **kwargs)
    if task == REASONING:
        if sft_steps not in _SFT:
            start = time.perf_counter()
            state = reasoning.sft_policy(cast(Any, env).task, 0, sft_steps).state_dict()
            _SFT[sft_steps] = (state, time.perf_counter() - start)
        model = tiny_gpt2(cast(Any, env).codec, n_layer=2, n_embd=64, n_head=4, seed=0)
        model.load_state_dict(_SFT[sft_steps][0])
    else:
        model = tiny_gpt2(cast(Any, env).codec, n_layer=2, n_embd=64, n_head=4, seed=seed)
    return MAPPO(
        model,
        env,
        learning_rate=learning_rate,
        batch_size=16,
        kl_coef=0.0,
        mask_actions=task != REASONING,  # (the reasoning task writes free text)
        seed=seed,
        termination=termination,
    )


class Curve:
    """Per iteration: tokens so far counting a learned termination's truth (compute-matched),
    env tokens only, and the rollout score."""

    def __init__(self) -> None:
        self.points: list[tuple[int, int, float]] = []

    def __call__(self, algo: Any) -> None:
        env = int(algo.num_timesteps)
        extra = int(getattr(algo.termination, "truth_tokens", 0))
        self.points.append((env + extra, env, algo.rollout_stats["rollout/score_mean"]))


def learn(algo: Any, tokens: int, curve: Curve | None = None) -> None:
    from stable_baselines3.common.callbacks import BaseCallback

    class _Rec(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            if curve is not None:
                curve(self.model)

    algo.learn(tokens, callback=_Rec(), reset_num_timesteps=False)


def tokens_to_threshold(
    points: list[tuple[int, int, float]], threshold: float, column: int = 0
) -> float:
    """Tokens (``column`` 0: compute-matched, 1: env only) at the first iteration where the
    mean score of the last 3 iterations reaches ``threshold``; inf when none does."""
    for i in range(len(points)):
        window = [p[2] for p in points[max(0, i - 2) : i + 1]]
        if len(window) == 3 and statistics.fmean(window) >= threshold:
            return float(points[i][column])
    return math.inf


#: the seed of the runs that set a threshold from data (never one of the measured seeds 0-4)
PILOT_SEED = 9


def _corr(x: torch.Tensor, y: torch.Tensor) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    den = float((xc.square().sum() * yc.square().sum()).sqrt())
    return float((xc * yc).sum()) / den if den > 0 else math.nan


def audit_rules(algo: Any, rules: list[str], rows: int) -> dict[str, Any]:
    """Every rule's estimator error on a held-out rollout of ``algo`` (module docstring)."""
    term = algo.termination
    steps, term.steps = term.steps, 0  # no training on the held-out rollout
    try:
        collect(algo)
    finally:
        term.steps = steps
    buf = algo.rollout_buffer
    sl = slice(0, rows)
    mask = buf.response_mask[sl]
    truth = target_advantages(
        "auto",
        algo.policy,
        algo.env.task,
        algo._rollout_prompts[sl],
        buf.response_ids[sl].cpu(),
        mask.cpu(),
        Sampling.of(algo),
        mc_samples=8,
        seed=123,
    )
    true = truth.advantages.to(mask.device)
    fn = estimator_function(algo, sl)
    batch = SegmentationBatch.build(
        buf.response_ids[sl],
        mask,
        frozenset({"logprobs", "entropy", "values", "generator"}),
        logprobs=buf.logprobs[sl],
        entropy=algo._rollout_entropy[sl],
        values=buf.values[sl],
        generator=torch.Generator().manual_seed(0),
    )
    out: dict[str, Any] = {"truth": truth.method, "abs_true_per_position": []}
    # Monte-Carlo truth adds its own noise to every rule's squared error alike (the
    # continuations are independent of the estimate): its mean square is reported and
    # subtracted (``rmse_net``) so the rules' RMSEs are of the estimator, not of the truth.
    noise = 0.0
    if truth.stderr is not None:
        se = truth.stderr.to(mask.device).double()
        noise = float(se.square()[mask].mean())
        out["truth_rms_se"] = noise**0.5
    out["abs_true_per_position"] = [
        float(true[:, j][mask[:, j]].abs().mean()) if bool(mask[:, j].any()) else 0.0
        for j in range(mask.shape[1])
    ]
    tokens = int(mask.sum())
    cut_sets = _cut_sets(term, rules, batch, fn, true, BUDGET)
    for rule, starts in cut_sets.items():
        adv = fn(starts).double()
        sq = estimator_errors(fn, starts, true, mask)
        out[rule] = {
            "rmse": float(sq.sum() / tokens) ** 0.5,
            "rmse_net": max(float(sq.sum() / tokens) - noise, 0.0) ** 0.5,
            "corr": _corr(adv[mask], true.double()[mask]),
            "cuts_per_episode": float((starts & mask).sum() / mask.shape[0]),
            "cut_freq_per_position": (starts & mask).double().mean(dim=0).tolist(),
        }
    # the same number of cuts as a batch budget (budget * B, placed anywhere in the batch)
    out["alloc"] = alloc_rows(
        fn,
        true,
        mask,
        {
            rule: cast(Any, term if rule == "learned" else make_termination(rule)).scores(batch)
            for rule in ("learned", "entropy", "value_change", "surprisal")
        },
        {rule: cut_sets[rule] for rule in ("learned", *HEURISTICS, "oracle")},
        BUDGET,
    )
    # the same trained scores (and the heuristics) at other budgets
    out["by_budget"] = {}
    for budget in OTHER_BUDGETS:
        sets = _cut_sets(term, rules, batch, fn, true, budget)
        out["by_budget"][str(budget)] = {
            rule: float(estimator_errors(fn, starts, true, mask).sum() / tokens) ** 0.5
            for rule, starts in sets.items()
        }
    return out


def _cut_sets(
    term: Any,
    rules: list[str],
    batch: SegmentationBatch,
    fn: Any,
    true: torch.Tensor,
    budget: int,
) -> dict[str, torch.Tensor]:
    """Each rule's starts at ``budget`` cuts (the learned one with its trained scores), and
    the oracle's."""
    mask = batch.mask
    out: dict[str, torch.Tensor] = {}
    for rule in rules:
        if rule == "learned":
            rule_term = build_termination(
                {
                    "name": "learned",
                    "kwargs": {**termination_config(term)["kwargs"], "budget": budget},
                }
            )
        else:
            rule_term = make_termination(f"{rule}:budget={budget}")
        out[rule] = compute_starts(rule_term, batch, isolate_last=True)
    oracle = oracle_cuts(fn, true, mask, CutBudget("oracle", budget=budget))
    out["oracle"] = oracle | base_starts(mask, True)
    return out


#: ``learned:per=...`` of the audited agents (``--per``); rows of ``per=batch`` are labelled
#: ``"<task>, per batch"``
PER = "episode"


def run_audit(quick: bool, seeds: list[int], tasks: list[str]) -> list[dict[str, Any]]:
    rows = []
    for task in tasks:
        _, _, it_quick, it_full, _ = TASKS[task]
        for seed in seeds:
            start = time.perf_counter()
            spec = f"learned:budget={BUDGET};rows=16;steps=20" + (
                ";per=batch" if PER == "batch" else ""
            )
            algo = make_agent(task, seed, spec)
            horizon = algo.env.task.max_new_tokens
            curve = Curve()
            learn(algo, (it_quick if quick else it_full) * NUM_ENVS * horizon, curve)
            row = audit_rules(algo, ["learned", *HEURISTICS], rows=16)
            row.update(
                task=task if PER == "episode" else f"{task}, per batch",
                base_task=task,
                learned_spec=spec,
                seed=seed,
                seconds=time.perf_counter() - start,
                truth_tokens=int(algo.termination.truth_tokens),
                env_tokens=int(algo.num_timesteps),
                curve=curve.points,
                sft_seconds=_SFT[reasoning.SFT_STEPS][1] if task == REASONING else None,
            )
            rows.append(row)
            _write_part("audit", quick, seeds, rows, 0.0)
            best = min(HEURISTICS, key=lambda r: row[r]["rmse"])
            print(
                f"{row['task']} seed {seed}: learned {row['learned']['rmse']:.4f} best heuristic "
                f"{best} {row[best]['rmse']:.4f} oracle {row['oracle']['rmse']:.4f} "
                f"({row['seconds']:.0f}s)",
                flush=True,
            )
    return rows


def run_t2t(quick: bool, seeds: list[int], tasks: list[str]) -> list[dict[str, Any]]:
    """Agents trained with each rule; written to the part file after every run (seed-major,
    so an interrupted run still has every task's first seeds). A run stops once it reaches the
    threshold (what comes after does not change its tokens to threshold)."""
    rows: list[dict[str, Any]] = []
    start_all = time.perf_counter()
    for seed in seeds:
        for task in tasks:
            _, _, it_quick, it_full, threshold = TASKS[task]
            setup = dict(T2T_SETUP.get(task, {}))
            it_quick, it_full = setup.pop("iterations", (it_quick, it_full))
            for rule in RULES or T2T_RULES:
                spec = (
                    f"learned:budget={BUDGET};rows=16;steps=20"
                    if rule == "learned"
                    else (f"{rule}:budget={BUDGET}")
                )
                start = time.perf_counter()
                algo = make_agent(task, seed, spec, **setup)
                horizon = algo.env.task.max_new_tokens
                curve = Curve()
                for _ in range((it_quick if quick else it_full) * 2):
                    learn(algo, NUM_ENVS * horizon, curve)
                    if not PILOT and math.isfinite(tokens_to_threshold(curve.points, threshold)):
                        break
                t2t = tokens_to_threshold(curve.points, threshold)
                rows.append(
                    {"task": task, "seed": seed, "rule": rule, "tokens_to_threshold": t2t,
                     "env_tokens_to_threshold": tokens_to_threshold(curve.points, threshold, 1),
                     "threshold": threshold, "curve": curve.points,
                     "seconds": time.perf_counter() - start}
                )  # fmt: skip
                print(
                    f"t2t {task} seed {seed} {rule}: {t2t} ({rows[-1]['seconds']:.0f}s)", flush=True
                )
                _write_part("t2t", quick, seeds, rows, time.perf_counter() - start_all)
    return rows


TAG = ""
#: ``--rules``: the tokens-to-threshold rules this process runs (default :data:`T2T_RULES`;
#: processes with other rules and tags run beside it, their part files merged)
RULES: list[str] = []
#: ``--pilot``: tokens-to-threshold runs trained to the end (no stop at the threshold), into
#: ``learned_terms_pilot<tag>.json``, which :func:`merge` keeps apart (``pilots``: the page
#: shows them, :func:`pilot_threshold` reads them)
PILOT = False


def _write_part(
    part: str, quick: bool, seeds: list[int], rows: list[dict[str, Any]], seconds: float
) -> None:
    stamp = {"machine": machine_stamp(), "quick": quick, "budget": BUDGET}
    write_json(
        part_file(part, TAG),
        {
            f"{part}_setup": {**stamp, "seeds": seeds, "heuristics": HEURISTICS,
                              "seconds": seconds,
                              "loadavg": Path("/proc/loadavg").read_text().split()[:3]},
            part: rows,
        },
    )  # fmt: skip


def part_file(part: str, tag: str = "") -> Path:
    """Where one part's rows go (parts and seed sets may run as separate processes; a pilot's
    go to a file :func:`merge` does not read)."""
    if PILOT:
        return RESULTS_DIR / f"learned_terms_pilot{tag}.json"
    return RESULTS_DIR / f"learned_terms_{part}{tag}.json"


def merge() -> dict[str, Any]:
    """Every part file's rows merged into :data:`RESULTS` (rows concatenated, setups listed;
    pilot rows under ``pilots``)."""
    data: dict[str, Any] = {"audit": [], "t2t": [], "setups": [], "pilots": []}
    for part in ("audit", "t2t"):
        for path in sorted(RESULTS_DIR.glob(f"learned_terms_{part}*.json")):
            got = read_json(path) or {}
            data[part] += got.get(part, [])
            data["setups"].append({"part": part, "file": path.name, **got.get(f"{part}_setup", {})})
    # pilot runs (``--pilot``): apart from the measured rows, each with its file
    for path in sorted(RESULTS_DIR.glob("learned_terms_pilot*.json")):
        got = read_json(path) or {}
        data["pilots"] += [{**r, "file": path.name} for r in got.get("t2t", [])]
        data["setups"].append({"part": "pilot", "file": path.name, **got.get("t2t_setup", {})})
    data["audit"].sort(
        key=lambda r: (list(TASKS).index(r.get("base_task", r["task"])), r["task"], r["seed"])
    )
    # the reasoning task's learning-rate sweep (benchmarks/learned_terms_rsn_sweep.py)
    sweep = read_json(RESULTS_DIR / "learned_terms_rsn_sweep.json")
    if sweep:
        data["rsn_sweep"] = sweep
    write_json(RESULTS, data)
    return data


def _names(text: str | None, default: list[str]) -> list[str]:
    """Task names from a comma-separated list (default: ``default``); an unknown name is an
    error naming the valid ones."""
    if text is None:
        return default
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; valid: {list(TASKS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, short runs")
    parser.add_argument("--part", choices=["audit", "t2t", "all"], default="all")
    parser.add_argument("--iters", type=int, default=None, help="override iterations (smoke)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1 quick)")
    parser.add_argument("--tag", default="", help="suffix of the part files (parallel runs)")
    parser.add_argument("--tasks", default=None, help="audit tasks, comma-separated names")
    parser.add_argument("--t2t-tasks", default=None, help="tokens-to-threshold tasks")
    parser.add_argument(
        "--per", choices=["episode", "batch"], default="episode", help="the learned budget's unit"
    )
    parser.add_argument(
        "--rules", default=None, help=f"tokens-to-threshold rules, comma-separated {T2T_RULES}"
    )
    parser.add_argument("--render", action="store_true", help="merge the parts, render the doc")
    parser.add_argument(
        "--pilot",
        action="store_true",
        help=f"tokens to threshold on seed {PILOT_SEED}, trained to the end, into "
        "learned_terms_pilot<tag>.json (sets a threshold: pilot_threshold)",
    )
    args = parser.parse_args(argv)
    if args.pilot and (args.part != "t2t" or args.seeds):
        raise SystemExit(
            f"--pilot runs the t2t part on seed {PILOT_SEED}: it needs --part t2t and no "
            f"--seeds (got --part {args.part}, --seeds {args.seeds})"
        )
    rules = [r.strip() for r in (args.rules or "").split(",") if r.strip()]
    if sorted(set(rules) - set(T2T_RULES)):
        raise SystemExit(f"--rules {args.rules!r}: each must be one of {T2T_RULES}")
    if args.render:
        from benchmarks.learned_terms_doc import render

        render(merge(), DOC, PNG, RESULTS)
        return 0
    torch.set_num_threads(1)
    if args.iters is not None:
        for name, (env_id, kw, _, _, thr) in list(TASKS.items()):
            TASKS[name] = (env_id, kw, args.iters, args.iters, thr)
        for setup in T2T_SETUP.values():
            setup["iterations"] = (args.iters, args.iters)
    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    if args.seeds:
        seeds = [int(x) for x in args.seeds.split(",")]
    if args.pilot:
        seeds = [PILOT_SEED]
    global TAG, PER, PILOT, RULES
    TAG, PER, PILOT, RULES = args.tag, args.per, args.pilot, rules
    chosen = {
        "audit": _names(args.tasks, list(TASKS)),
        "t2t": _names(args.t2t_tasks, T2T_TASKS),
    }
    for part, fn in (("audit", run_audit), ("t2t", run_t2t)):
        if args.part not in (part, "all"):
            continue
        start = time.perf_counter()
        rows = fn(args.quick, seeds, chosen[part])
        _write_part(part, args.quick, seeds, rows, time.perf_counter() - start)
    if not args.pilot:
        merge()
    return 0


if __name__ == "__main__":
    sys.exit(main())
