"""Issue 25's comparison: every turn-level preset beside GRPO, RLOO, PPO and MA-PPO.

On each multi-turn task (ToolLookup: one-token turns; GuessTheNumber 1..4 in 3 turns: a turn
is a number then the end-of-turn token, so turn-level and token-level credit differ), one
results file (``benchmarks/results/turn_compare.json``) holds three parts:

1. **Learning**: ``marlhf compare`` (same seeds, same token budget, Monte-Carlo continuations
   counted in it): final score and mean score over the run (the area under the learning curve
   on a common token grid, divided by its width), each with a 95% Student-t interval over
   seeds, and tokens to reach PPO's final score.
2. **Audit beside learning**: the ``turn-gae`` agent trained on the same task; at several
   budgets each agent's estimator re-estimates the advantages of the same rollouts (four
   iterations pooled) and is compared turn by turn with the exact advantage
   (:func:`marlhf.credit.truth_multiturn.exact_turn_advantages`). PPO's and MA-PPO@turn's GAE
   read the audited agent's critic; IGPO's and TRACE's potentials are scored under its policy
   and reference.
3. **Cost**: each agent built once, then rounds of one iteration each in a rotated order in one
   process (the machine's load hits every agent alike), seconds per iteration and per token
   over PPO's (medians over rounds).

Run: ``python benchmarks/turn_compare.py --mode full`` (``--mode quick``: one seed, half the
budget; ``--parts learning audit cost``; ``--tasks guess``; ``--doc-only``). Renders the block
of ``docs/credit_multiturn.md`` (:mod:`benchmarks.turn_compare_doc`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, machine_stamp, read_json, write_json
from benchmarks.turn_compare_doc import render_block, render_docs
from benchmarks.turn_credit import AGENTS as TURN_CREDIT_AGENTS
from benchmarks.turn_credit import NUM_ENVS, Scheme, audit_rollout, compare_config

RESULTS = RESULTS_DIR / "turn_compare.json"
RUNS_DIR = Path(__file__).resolve().parent.parent / "runs" / "turn_compare"

#: The agents compared (PPO is added by compare): the baselines and the turn-level presets of
#: ``turn_credit.py``'s learning part, then TRACE and ``vineppo-turns``. The agent section every
#: run shares (groups of 4 feed the group baselines; actions masked to the task's symbols, as the
#: exact truth enumerates them) and the episodes per iteration are that part's too.
AGENTS = [*TURN_CREDIT_AGENTS, "trace", "vineppo-turns"]


def _tool_lookup() -> Any:
    from marlhf.envs.multiturn.tool import ToolLookupTask

    return ToolLookupTask()


def _guess() -> Any:
    from marlhf.envs.multiturn.tasks.guess_number import GuessTheNumberTask

    return GuessTheNumberTask(**GUESS_KWARGS)


GUESS_KWARGS: dict[str, Any] = {"high": 4, "max_turns": 3}
#: key -> (env id, task kwargs, tokens per run at full scale, task factory for the audit).
#: Sized for a 2-core machine shared by other jobs (load 12-15): the whole full mode in about
#: 35 minutes there. ToolLookup's iterations hold about 20 agent tokens, GuessTheNumber's 60-80.
TASKS: dict[str, tuple[str, dict[str, Any], int, Callable[[], Any]]] = {
    "toollookup": ("marlhf/ToolLookup-v0", {}, 512, _tool_lookup),
    "guess": ("marlhf/GuessTheNumber-v0", GUESS_KWARGS, 1280, _guess),
}
#: seeds; the fraction of each task's budget a run gets; audit snapshots at these fractions of
#: that budget; cost rounds.
MODES: dict[str, dict[str, Any]] = {
    "quick": {"seeds": [0], "scale": 0.5, "audit_at": [0.0, 1.0], "cost_rounds": 2},
    "full": {"seeds": [0, 1, 2, 3, 4], "scale": 1.0, "audit_at": [0.0, 0.5, 1.0], "cost_rounds": 5},
}
AUDIT_EPISODES = 16  # per rollout (4 groups of 4)
AUDIT_ROLLOUTS = 4  # pooled per snapshot


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------------ learning
def mean_scores(output_dir: Path, metric: str) -> dict[str, tuple[float, float]]:
    """Per agent: the mean over a common token grid of its smoothed learning curve (the area
    under the curve over the grid's width), mean and 95% half width over seeds."""
    from marlhf.runs.report import curves, label, mean_ci95, read_metrics_csv

    _, per_agent = curves(read_metrics_csv(output_dir / "metrics.csv"), metric)
    return {label(*key): mean_ci95(c.mean(axis=1)) for key, c in per_agent.items()}


def run_learning(key: str, mode: str) -> dict[str, Any]:
    from marlhf.commands.compare import run_compare

    env_id, kwargs, budget, _ = TASKS[key]
    m = MODES[mode]
    config = compare_config(
        env_id,
        kwargs,
        AGENTS,
        m["seeds"],
        int(budget * m["scale"]),
        RUNS_DIR / mode / key,
        checkpoint_every=1000,
    )
    before, started = loadavg(), time.perf_counter()
    result = run_compare(config)
    areas = mean_scores(Path(config.output_dir), config.metric)
    for row in result["summary"]:
        row["mean_score"], row["mean_score_ci95"] = areas[row["agent"]]
    return {
        "env_id": env_id,
        "kwargs": kwargs,
        "budget": config.total_timesteps,
        "seeds": config.seeds,
        "summary": result["summary"],
        "wall_s": time.perf_counter() - started,
        "loadavg_before": before,
        "loadavg_after": loadavg(),
    }


# ------------------------------------------------------------------------------ audit
def audit_schemes(group_size: int) -> dict[str, Scheme]:
    """Each compared agent's estimator with its own resolved config (``vineppo-turns`` is left
    out: its values are its own Monte-Carlo continuations, which the audited rollout lacks)."""
    from marlhf.algorithms.config import PPOConfig, resolve_config

    out: dict[str, Scheme] = {}
    for agent in ["ppo", *AGENTS]:
        name, _, termination = agent.partition("@")
        if name == "vineppo-turns":
            continue
        config = resolve_config(PPOConfig, ["toy", name], {"group_size": group_size})
        out[agent] = (config.credit.estimator, config, termination == "turn")
    return out


def run_audit(key: str, mode: str, seed: int = 0) -> dict[str, Any]:
    """Train ``turn-gae`` on the task; at each budget audit the next rollouts, pooled."""
    from marlhf.algorithms import PPO
    from marlhf.audit.turn_audit import audit_turn_values, stack_turn_values
    from marlhf.envs.multiturn.env import MultiTurnTokenEnv
    from marlhf.models import tiny_gpt2

    task = TASKS[key][3]()
    env = MultiTurnTokenEnv(task, num_envs=AUDIT_EPISODES, seed=seed)
    algo = PPO(
        tiny_gpt2(task.codec, n_layer=2, n_embd=64, n_head=2, seed=seed),
        env,
        preset=["toy", "turn-gae"],
        group_size=4,
        mask_actions=True,
        seed=seed,
        device="cpu",
    )
    schemes = audit_schemes(4)
    snapshots = []
    started, before = time.perf_counter(), loadavg()
    m = MODES[mode]
    for budget in [int(f * TASKS[key][2] * m["scale"]) for f in m["audit_at"]]:
        if budget > algo.num_timesteps:
            algo.learn(budget - algo.num_timesteps, reset_num_timesteps=False)
        tokens = algo.num_timesteps
        parts = []
        for _ in range(AUDIT_ROLLOUTS):  # one iteration each: its rollout, then its update
            algo.learn(1, reset_num_timesteps=False)
            parts.append(audit_rollout(algo, task, schemes))
        snapshots.append(
            {
                "tokens": tokens,
                "episodes": AUDIT_EPISODES * AUDIT_ROLLOUTS,
                "score_mean": sum(p["score"] for p in parts) / len(parts),
                "turns_mean": sum(p["turns"] for p in parts) / len(parts),
                "schemes": {
                    name: audit_turn_values(*stack_turn_values([p["values"][name] for p in parts]))
                    for name in schemes
                },
            }
        )
    return {
        "agent": "turn-gae",
        "seed": seed,
        "snapshots": snapshots,
        "wall_s": time.perf_counter() - started,
        "loadavg_before": before,
        "loadavg_after": loadavg(),
    }


# ------------------------------------------------------------------------------ cost
def run_costs(key: str, mode: str, seed: int = 0) -> dict[str, Any]:
    """Seconds per iteration and per token of each agent over PPO's, in one process."""
    import statistics

    from marlhf.envs.multiturn.env import MultiTurnTokenEnv
    from marlhf.models import tiny_gpt2
    from marlhf.runs.runner import agent_class, parse_agent

    task = TASKS[key][3]()
    agents = ["ppo", *AGENTS]
    algos = {}
    for agent in agents:
        name, termination = parse_agent(agent)
        env = MultiTurnTokenEnv(task, num_envs=NUM_ENVS, seed=seed)
        model = tiny_gpt2(task.codec, n_layer=2, n_embd=64, n_head=2, seed=seed)
        extra: dict[str, Any] = {} if termination == "token" else {"termination": termination}
        algo = agent_class(name, termination)(
            model,
            env,
            preset=["toy", name],
            group_size=4,
            mask_actions=True,
            seed=seed,
            device="cpu",
            **extra,
        )
        algo.learn(1)  # warm-up: the first iteration builds what later ones reuse
        algos[agent] = algo
    per_iter: dict[str, list[float]] = {a: [] for a in agents}
    per_token: dict[str, list[float]] = {a: [] for a in agents}
    before = loadavg()
    for r in range(MODES[mode]["cost_rounds"]):
        for agent in agents[r % len(agents) :] + agents[: r % len(agents)]:
            algo = algos[agent]
            tokens, started = algo.num_timesteps, time.perf_counter()
            algo.learn(1, reset_num_timesteps=False)
            wall = time.perf_counter() - started
            per_iter[agent].append(wall)
            per_token[agent].append(wall / max(algo.num_timesteps - tokens, 1))
    ppo_iter = statistics.median(per_iter["ppo"])
    ppo_token = statistics.median(per_token["ppo"])
    return {
        "rounds": MODES[mode]["cost_rounds"],
        "agents": {
            a: {
                "s_per_iteration": statistics.median(per_iter[a]),
                "iteration_vs_ppo": statistics.median(per_iter[a]) / ppo_iter,
                "token_vs_ppo": statistics.median(per_token[a]) / ppo_token,
            }
            for a in agents
        },
        "loadavg_before": before,
        "loadavg_after": loadavg(),
    }


#: The parts in the order they run (the short ones first).
PARTS = {"audit": run_audit, "cost": run_costs, "learning": run_learning}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--parts", nargs="*", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--doc-only", action="store_true", help="re-render the docs from the JSON")
    args = parser.parse_args(argv)
    if args.doc_only:
        render_docs(read_json(RESULTS))
        return 0
    import torch

    torch.set_num_threads(1)
    data = read_json(RESULTS) if RESULTS.exists() else {}
    if data.get("mode") != args.mode:
        data = {}  # never mix the parts of two modes
    stamp = machine_stamp()
    # The file's stamp is the run's that measured everything; a part re-run alone keeps its own.
    whole = set(args.parts) == set(PARTS) and set(args.tasks) == set(TASKS)
    if whole or "machine" not in data:
        data = {"mode": args.mode, "machine": stamp, "tasks": data.get("tasks", {})}
    for key in args.tasks:
        env_id, kwargs, _, _ = TASKS[key]
        task = data.setdefault("tasks", {}).setdefault(key, {})
        task.update({"env_id": env_id, "kwargs": kwargs})
        for part in [p for p in PARTS if p in args.parts]:
            print(f"[turn_compare] {key} {part} (load {loadavg()})", file=sys.stderr, flush=True)
            task[part] = PARTS[part](key, args.mode)
            if not whole:
                task[part]["machine"] = stamp
            write_json(RESULTS, data)  # keep what is done
    data = read_json(RESULTS)  # the docs show what the file holds (NaN is stored as null)
    render_docs(data)
    print(render_block(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
