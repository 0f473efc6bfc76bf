"""How close is each estimator's advantage to the true one, and what does the audit cost?

Task: ``marlhf/CreditSum-v0`` at its defaults (3 digits, 3 decisions, horizon 32: the score
depends on the first 3 tokens and arrives on the 32nd). A tiny GPT-2 (2 layers, width 64) is
trained from scratch by token-level PPO, by MA-PPO ``ngram:5`` and by GRPO (the toy preset's
learning rate and batch size, no KL, actions masked to the digits, every agent sampling groups
of 4 episodes per prompt), and at several training budgets each agent's current policy samples
64 episodes (16 prompts x 4) that are audited:

- the true advantages by exact enumeration (:mod:`marlhf.credit.truth`; the agents sample
  only the 3 digits, so 3^3 continuations per distinct prompt; once per agent the cost over
  the whole 12-token vocabulary, 12^3 per prompt, is timed too);
- every scheme of ``SCHEMES`` re-estimated on the same episodes (:mod:`marlhf.audit.credit`),
  the ``gae`` ones from the agent's own critic (so not on GRPO's samples: it has none): RMSE,
  correlation, sign agreement, credit on filler tokens, per-segment correlation, and the
  correlation at each decision position.

Timings (1 torch thread; wall seconds, and CPU seconds since the machine is shared): the
exact truth, and the whole audit (truth + every scheme's estimate and metrics), against the
issue's goal of one minute for 64 rollouts of 32 tokens. One Monte-Carlo check per agent
compares :func:`mc_advantages` (``MC_EPISODES`` episodes, ``MC_SAMPLES`` continuations per
prefix) with the exact truth (mean ``|z|`` should be about 0.8 if the SE is right).

Run: ``python benchmarks/credit.py`` (about 15 minutes on two cores; ``--quick``: one seed,
two budgets, about 3 minutes, written to ``credit_quick.json``; part of ``make bench``, the full
mode of ``make bench-full``). Writes ``benchmarks/results/credit.json``, prints the table and
(full mode) renders its block of ``docs/credit.md``; ``--doc-only`` re-renders from the JSON.
"""

from __future__ import annotations

import argparse
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

from benchmarks.common import (
    RESULTS_DIR,
    machine_stamp,
    markdown_table,
    print_table,
    read_json,
    replace_marked,
    write_json,
)
from benchmarks.provenance import describe
from marlhf.algorithms import MAPPO, PPO
from marlhf.audit.credit import Scheme, audit
from marlhf.checkpoint.rollout_io import collect
from marlhf.credit.truth import Sampling, exact_advantages, mc_advantages
from marlhf.models import tiny_gpt2

RESULTS = RESULTS_DIR / "credit.json"
#: --quick writes here, so the full run's file that docs/credit.md cites is kept.
RESULTS_QUICK = RESULTS_DIR / "credit_quick.json"
EPISODES = 64
SCHEMES = [
    "gae",
    "gae gae_lambda=1.0",
    "gae gae_lambda=0.0",
    "gae@ngram:5",
    "gae@ngram:inf",
    "grpo",
    "grpo group_std=false",
    "rloo",
    "reinforce_pp_baseline",
]
GROUP_SIZE = 4
AGENTS: dict[str, dict[str, Any]] = {
    "ppo": {},
    "mappo ngram:5": {"termination": "ngram:5"},
    "grpo": {"estimator": "grpo"},
}
BUDGETS_FULL = [0, 20_480, 61_440, 122_880]
BUDGETS_QUICK = [0, 20_480]
MC_EPISODES, MC_SAMPLES = 8, 16
DECISIONS = 3


def make_agent(name: str, seed: int) -> Any:
    env = gym.make_vec(
        "marlhf/CreditSum-v0", num_envs=EPISODES, vectorization_mode="vector_entry_point"
    )
    model = tiny_gpt2(cast(Any, env).codec, n_layer=2, n_embd=64, n_head=4, seed=seed)
    cls = MAPPO if "termination" in AGENTS[name] else PPO
    return cls(
        model,
        env,
        learning_rate=1e-3,
        batch_size=16,
        kl_coef=0.0,
        mask_actions=True,
        group_size=GROUP_SIZE,
        seed=seed,
        **AGENTS[name],
    )


def audit_once(algo: Any, schemes: list[Scheme], with_mc: bool) -> dict[str, Any]:
    rollouts = collect(algo)
    task, sampling = algo.env.task, Sampling.of(algo)
    start, cpu_start = time.perf_counter(), time.process_time()
    truth = exact_advantages(
        algo.policy,
        task,
        rollouts.prompts,
        rollouts.response_ids,
        rollouts.response_mask,
        sampling=sampling,
    )
    truth_s = time.perf_counter() - start
    # a scheme reading the critic's values is audited only on agents that have a critic
    usable = [s for s in schemes if rollouts.values is not None or s.estimator != "gae"]
    result = audit(rollouts, truth, usable, codec=task.codec)
    audit_s = time.perf_counter() - start
    row: dict[str, Any] = {
        "score_mean": float(rollouts.task_rewards.sum(dim=1).mean()),
        "truth_seconds": truth_s,
        "audit_seconds": audit_s,
        "audit_cpu_seconds": time.process_time() - cpu_start,
        "truth": result.truth,
        "schemes": {},
    }
    for name, s in result.schemes.items():
        row["schemes"][name] = {
            "tokens": s["tokens"],
            "segments": s["segments"],
            "decision_corr": s["per_position"]["corr"][:DECISIONS],
            "decision_rmse": s["per_position"]["rmse"][:DECISIONS],
        }
    if with_mc:
        # the exact truth's cost over the whole vocabulary (12 tokens: 12^3 continuations per
        # prompt instead of 3^3), as for an agent that does not mask its actions
        start = time.perf_counter()
        full = exact_advantages(
            algo.policy,
            task,
            rollouts.prompts,
            rollouts.response_ids,
            rollouts.response_mask,
            sampling=Sampling(sampling.temperature, sampling.top_k, sampling.top_p, None),
        )
        row["truth_full_vocab"] = {
            "seconds": time.perf_counter() - start,
            "sequences": full.stats["sequences"],
        }
        n = MC_EPISODES
        start = time.perf_counter()
        mc = mc_advantages(
            algo.policy,
            task,
            rollouts.prompts[:n],
            rollouts.response_ids[:n],
            rollouts.response_mask[:n],
            sampling=sampling,
            samples=MC_SAMPLES,
            seed=0,
        )
        assert mc.stderr is not None
        on = mc.stderr > 0
        z = (mc.advantages - truth.advantages[:n])[on] / mc.stderr[on]
        row["mc_check"] = {
            "episodes": n,
            "samples": MC_SAMPLES,
            "seconds": time.perf_counter() - start,
            "mc_tokens": mc.stats["mc_tokens"],
            "mean_abs_z": float(z.abs().mean()),
            "max_abs_z": float(z.abs().max()),
            "stderr_mean": float(mc.stderr[on].mean()),
        }
    return row


def run(budgets: list[int], seeds: list[int]) -> dict[str, Any]:
    torch.set_num_threads(1)
    schemes = [Scheme.parse(s) for s in SCHEMES]
    runs = []
    for agent in AGENTS:
        for seed in seeds:
            algo = make_agent(agent, seed)
            trained = 0
            for budget in budgets:
                start = time.perf_counter()
                if budget > trained:
                    algo.learn(budget - trained, reset_num_timesteps=False)
                    trained = budget
                train_s = time.perf_counter() - start
                row = audit_once(algo, schemes, with_mc=budget == budgets[-1] and seed == seeds[0])
                row.update({"agent": agent, "seed": seed, "budget": budget, "train_s": train_s})
                runs.append(row)
                print(
                    f"{agent} seed {seed} tokens {budget}: score {row['score_mean']:.3f}, "
                    f"audit {row['audit_seconds']:.2f} s",
                    flush=True,
                )
    return {"machine": machine_stamp(), "schemes": SCHEMES, "runs": runs}


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def summarise(data: dict[str, Any]) -> list[list[Any]]:
    """Mean over seeds per (agent, budget, scheme): score, RMSE, corr, decision corr, filler.

    "corr at decisions" is the mean over the decision positions t = 0, 1, 2 of the correlation
    across episodes (NaN when an estimator gives every episode the same advantage there).
    """
    rows = []
    keys = sorted({(r["agent"], r["budget"]) for r in data["runs"]})
    for agent, budget in keys:
        runs = [r for r in data["runs"] if r["agent"] == agent and r["budget"] == budget]
        score = statistics.mean(r["score_mean"] for r in runs)
        for scheme in data["schemes"]:
            if scheme not in runs[0]["schemes"]:
                continue
            figures = [r["schemes"][scheme] for r in runs]

            def mean(get: Any, figures: list[dict[str, Any]] = figures) -> float:
                # NaN (null in the JSON) where an estimator is constant across episodes
                return statistics.mean(_num(get(f)) for f in figures)

            rows.append(
                [
                    agent,
                    budget,
                    f"{score:.3f}",
                    scheme,
                    f"{mean(lambda f: f['tokens']['rmse']):.3f}",
                    f"{mean(lambda f: f['tokens']['corr']):.3f}",
                    f"{mean(lambda f: statistics.mean(map(_num, f['decision_corr']))):.3f}",
                    f"{mean(lambda f: f['tokens']['sign']):.3f}",
                    f"{mean(lambda f: f['tokens']['null_abs']):.3f}",
                    f"{mean(lambda f: f['segments']['corr']):.3f}",
                ]
            )
    return rows


HEADER = [
    "agent",
    "tokens trained",
    "score",
    "scheme",
    "RMSE",
    "corr",
    "corr at decisions",
    "sign agree",
    "abs(A_hat) where A=0",
    "segment corr",
]


DOC = Path(__file__).resolve().parent.parent / "docs" / "credit.md"
BEGIN, END = "<!-- credit.json:begin -->", "<!-- credit.json:end -->"


def render_doc(data: dict[str, Any], doc: Path = DOC) -> None:
    """Replace the block between the markers of ``docs/credit.md`` with the JSON's figures."""
    m = data["machine"]
    timing = [
        f"Measured at commit {describe(m, RESULTS)} on {m.get('cpu')} ({m.get('cores')} cores "
        f"shared), mode `{data['mode']}`, {len(data['runs'])} audits. Whole audit (exact "
        f"truth + up to {len(data['schemes'])} schemes) of {EPISODES} episodes x 32 tokens: "
        "at most "
        f"{data['audit_seconds_max']:.2f} s wall; exact truth at most "
        f"{data['truth_seconds_max']:.2f} s.",
    ]
    for r in data["runs"]:
        if "truth_full_vocab" in r:
            full, mc = r["truth_full_vocab"], r["mc_check"]
            timing.append(
                f"- `{r['agent']}` at {r['budget']} tokens: exact truth over the whole "
                f"12-token vocabulary ({full['sequences']:.0f} sequences) "
                f"{full['seconds']:.2f} s; Monte Carlo on {mc['episodes']} episodes x "
                f"{mc['samples']} continuations per prefix ({mc['mc_tokens']:.0f} tokens "
                f"sampled) {mc['seconds']:.1f} s, mean |z| against the exact truth "
                f"{mc['mean_abs_z']:.2f} (max {mc['max_abs_z']:.2f}, mean SE "
                f"{mc['stderr_mean']:.3f})."
            )
    table = markdown_table(HEADER, summarise(data))
    replace_marked(doc, BEGIN, END, "\n".join([BEGIN, "", *timing, "", table, "", END]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, two budgets")
    parser.add_argument(
        "--doc-only", action="store_true", help="re-render docs/credit.md from credit.json"
    )
    args = parser.parse_args(argv)
    if args.doc_only:
        render_doc(read_json(RESULTS))
        return 0
    budgets = BUDGETS_QUICK if args.quick else BUDGETS_FULL
    seeds = [0] if args.quick else [0, 1, 2]
    data = run(budgets, seeds)
    data["mode"] = "quick" if args.quick else "full"
    audits = [r["audit_seconds"] for r in data["runs"]]
    data["audit_seconds_max"] = max(audits)
    data["truth_seconds_max"] = max(r["truth_seconds"] for r in data["runs"])
    results = RESULTS_QUICK if args.quick else RESULTS
    write_json(results, data)
    print_table("credit audit on CreditSum (mean over seeds)", HEADER, summarise(data))
    print(f"audit of {EPISODES} x 32 tokens: at most {data['audit_seconds_max']:.2f} s")
    for r in data["runs"]:
        if "mc_check" in r:
            print(f"{r['agent']}: MC check {r['mc_check']}")
    print(f"wrote {results}")
    if DOC.exists() and not args.quick:
        render_doc(data)
        print(f"rendered {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
