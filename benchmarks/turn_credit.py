"""Turn-level credit: which scheme is closest to the truth, and which learns fastest?

Three parts, one results file (``benchmarks/results/turn_credit.json``):

1. **Exact expected updates** (no sampling, seconds): on stop-or-continue tool MDPs where the
   policy decides how many turns to take (:mod:`marlhf.audit.turn_exact`), every estimator's
   *expected* policy gradient (groups large enough that group means are expectations) against
   the exact gradient of the return: cosine, sign agreement per decision state, the relative
   error ``|g - g*| / |g*|`` (meaningful for estimators that do not rescale) and the relative
   variance of one episode's update.
2. **Per-turn audit** (minutes): the ``turn-gae`` agent trained on ToolLookup; at several
   budgets every scheme re-estimates the advantages of the same rollout and is compared turn by
   turn with the exact truth (:mod:`marlhf.credit.truth_multiturn`,
   :mod:`marlhf.audit.turn_audit`).
3. **Learning on the multi-turn tasks** (minutes to hours): every turn-level preset beside GRPO,
   RLOO, token PPO and MA-PPO (``@turn``: macro actions = turns) through ``marlhf compare``
   (same seeds, same token budget, continuations counted), final score with a 95% interval over
   seeds, tokens to reach PPO's final score, wall time per run.

Run: ``python benchmarks/turn_credit.py`` (``--mode quick``: one task, one seed, a tenth of the
budget; ``--mode reduced``: ToolLookup, 3 seeds, half the budget; ``--mode full``: every task, 5
seeds; ``--exact-only``, ``--no-audit``, ``--no-tasks``; ``--doc-only`` re-renders the docs from
the JSON). Renders the block of ``docs/credit_multiturn.md`` and the
multi-turn section of ``docs/credit.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from fractions import Fraction as F
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    DOCS_DIR,
    RESULTS_DIR,
    fmt,
    machine_stamp,
    markdown_table,
    read_json,
    replace_marked,
    write_json,
)

RUNS_DIR = Path(__file__).resolve().parent.parent / "runs" / "turn_credit"
BEGIN, END = "<!-- turn_credit.json:begin -->", "<!-- turn_credit.json:end -->"

#: Estimator specs of the exact part: the trajectory-level baselines, then every turn-level one.
EXACT_SPECS = [
    "grpo",
    "rloo",
    "mt_grpo",
    "mt_grpo:std=false",
    "mt_grpo:accumulate=true",
    "mt_grpo_fixed",
    "mt_grpo_fixed:std=false",
    "gigpo",
    "gigpo:std=false",
    "turn_gae",
    "turn_gae:inner=gae;gamma_turn=0.95;lambda_turn=0.95",
    "rebn",
    "rebn:gamma=1.0",
    "turn_mc",
    "turn_potential:normalize=group_rewards;terminal=last",
]


def exact_models() -> dict[str, Any]:
    """The MDPs of the exact part (policies with fraction probabilities)."""
    from marlhf.audit.turn_exact import ToolMDP

    return {
        "two-turn, costly tool": (
            "answer now (right 1/2) or call a tool costing 1/4 that helps the next answer "
            "(3/4 or 1/2 right); P(call) = 1/2",
            ToolMDP(2, [F(-1, 4)], F(1, 2), [F(1, 2), F(3, 4), F(1)], {(0, 0): F(1, 2)}),
        ),
        "ToolLookup, turn level": (
            "ToolLookup's turn-level structure: 3 answers, a call costs 0.1 and reveals the "
            "answer; 3 turns; P(call) = 1/2 at turn 0, 1/4 after a reveal, 1/2 otherwise",
            ToolMDP(
                3,
                [F(-1, 10), F(-1, 10)],
                F(1),
                [F(1, 3), F(1), F(1)],
                {(0, 0): F(1, 2), (1, 0): F(1, 2), (1, 1): F(1, 4)},
            ),
        ),
        "three-turn, noisy tool": (
            "3 turns; a call pays 1/2 then -1/4 and helps with probability 1/2; answers right "
            "1/4, 3/4, 1 with 0, 1, 2 helpful calls",
            ToolMDP(
                3,
                [F(1, 2), F(-1, 4)],
                F(1, 2),
                [F(1, 4), F(3, 4), F(1)],
                {(0, 0): F(1, 2), (1, 0): F(3, 4), (1, 1): F(1, 4)},
            ),
        ),
    }


def run_exact() -> dict[str, Any]:
    """Part 1: every spec's expected update on every model."""
    from marlhf.audit.turn_exact import exact_update_table

    out: dict[str, Any] = {}
    for name, (note, model) in exact_models().items():
        started = time.perf_counter()
        table = exact_update_table(model, EXACT_SPECS)
        for row in table.values():
            got = list(row["expected_gradient"].values())
            truth = list(row["true_gradient"].values())
            norm = math.sqrt(sum(t * t for t in truth))
            diff = math.sqrt(sum((g - t) ** 2 for g, t in zip(got, truth, strict=True)))
            row["relative_error"] = diff / norm if norm else float("nan")
        out[name] = {"note": note, "table": table, "wall_s": time.perf_counter() - started}
    return out


# ------------------------------------------------------------------------------ learning
#: Multi-turn tasks of the learning part: (key, env id, kwargs, full budget in tokens).
TASKS: list[tuple[str, str, dict[str, Any], int]] = [
    ("toollookup", "marlhf/ToolLookup-v0", {}, 6_144),
    ("guess", "marlhf/GuessTheNumber-v0", {}, 12_288),
]
#: Every turn-level preset with a provider that runs with groups of 4, beside the baselines.
#: vineppo-turns is left out: the multi-turn env's reset gives one prompt per group, which the
#: Monte-Carlo continuations index per row (it trains with group_size=1).
AGENTS = [
    "grpo",
    "rloo",
    "ma-ppo@turn",
    "gigpo",
    "mt-grpo",
    "mt-grpo-fixed",
    "turn-gae",
    "verlog",
    "rebn",
    "igpo",
]
AGENT_SECTION = {"preset": ["toy"], "group_size": 4, "mask_actions": True}
NUM_ENVS = 16
MODES: dict[str, dict[str, Any]] = {
    "quick": {"tasks": ["toollookup"], "seeds": [0], "budget_scale": 0.1},
    "reduced": {"tasks": ["toollookup"], "seeds": [0, 1, 2], "budget_scale": 0.5},
    "full": {"tasks": None, "seeds": [0, 1, 2, 3, 4], "budget_scale": 1.0},
}


def task_available(env_id: str) -> str | None:
    """``None`` when ``env_id`` is registered, else why it is not."""
    import gymnasium as gym

    import marlhf.envs  # noqa: F401  (registers the tasks)

    if env_id in gym.registry:
        return None
    return f"{env_id} is not registered on this checkout"


def compare_config(
    env_id: str,
    kwargs: dict[str, Any],
    agents: list[str],
    seeds: list[int],
    total_timesteps: int,
    output_dir: Path,
    checkpoint_every: int,
) -> Any:
    """The ``marlhf compare`` run of both turn-level benchmarks (this one's learning part and
    ``turn_compare.py``'s): token PPO and ``agents`` on a multi-turn task, every run with
    :data:`AGENT_SECTION` and :data:`NUM_ENVS` episodes per iteration, 2 workers of 1 thread."""
    from marlhf.config.commands import AgentConfig, CompareConfig, ModelConfig, TaskConfig

    return CompareConfig(
        model=ModelConfig(),
        task=TaskConfig(id=env_id, kwargs=dict(kwargs), num_envs=NUM_ENVS),
        agent=AgentConfig.from_mapping(dict(AGENT_SECTION)),
        terminations=[],
        include_ppo=True,
        agents=list(agents),
        seeds=list(seeds),
        total_timesteps=max(total_timesteps, 1),
        output_dir=str(output_dir),
        workers=2,
        threads_per_worker=1,
        checkpoint_every=checkpoint_every,
    )


def run_tasks(mode: str, only: list[str] | None) -> dict[str, Any]:
    """Part 2: ``marlhf compare`` on each available multi-turn task."""
    from marlhf.commands.compare import run_compare

    wanted = MODES[mode]["tasks"] if only is None else only
    out: dict[str, Any] = {}
    for key, env_id, kwargs, budget in TASKS:
        if wanted is not None and key not in wanted:
            continue
        missing = task_available(env_id)
        if missing is not None:
            out[key] = {"env_id": env_id, "missing": missing}
            continue
        m = MODES[mode]
        config = compare_config(
            env_id,
            kwargs,
            AGENTS,
            m["seeds"],
            int(budget * m["budget_scale"]),
            RUNS_DIR / mode / key / "compare",
            checkpoint_every=5,
        )
        started = time.perf_counter()
        result = run_compare(config)
        out[key] = {
            "env_id": env_id,
            "kwargs": kwargs,
            "budget": config.total_timesteps,
            "seeds": config.seeds,
            "agents": ["ppo", *config.agents],
            "summary": result["summary"],
            "wall_s": time.perf_counter() - started,
            "loadavg": os.getloadavg(),
            "command": f"python benchmarks/turn_credit.py --mode {mode} --tasks {key}",
        }
    return out


# ------------------------------------------------------------------------------ audit
#: Estimator specs the audit re-estimates on every snapshot's rollout (those whose inputs the
#: rollout holds: task rewards, the audited agent's critic, groups, state keys).
AUDIT_SPECS = [
    "grpo",
    "rloo",
    "mt_grpo",
    "mt_grpo:std=false;accumulate=true",
    "mt_grpo_fixed:std=false",
    "gigpo",
    "turn_gae",
    "turn_gae:inner=gae;gamma_turn=0.95;lambda_turn=0.95",
    "rebn",
]
AUDIT_BUDGETS = [0, 1536, 6144]  # tokens trained before each snapshot
AUDIT_EPISODES = 32  # per rollout
AUDIT_ROLLOUTS = 4  # pooled per snapshot


#: A scheme the audit re-estimates: ``(estimator spec, config it reads, segments = turns)``;
#: segments = turns makes the rollout's segment starts its turn starts (MA-PPO@turn's macros).
Scheme = tuple[str, Any, bool]


def audit_rollout(algo: Any, task: Any, schemes: dict[str, Scheme] | None = None) -> dict[str, Any]:
    """Every scheme (default: ``AUDIT_SPECS`` with the agent's config) on the agent's last
    rollout, and the exact truth: per scheme the per-turn values
    (:func:`marlhf.audit.turn_audit.turn_values`); task rewards, no KL. Potentials (IGPO,
    TRACE) are scored under the agent's policy and reference when a scheme declares them."""
    from marlhf.audit.turn_audit import turn_values
    from marlhf.credit.estimators import EstimatorBatch, get_estimator
    from marlhf.credit.truth_base import Sampling
    from marlhf.credit.truth_multiturn import exact_turn_advantages
    from marlhf.credit.turn_potentials import fill_potentials

    if schemes is None:
        schemes = {spec: (spec, algo.config, False) for spec in AUDIT_SPECS}
    buf = algo.rollout_buffer
    started = time.perf_counter()
    prompts = list(algo._rollout_prompts)  # one per row (older envs: one per group)
    if len(prompts) != buf.action_ids.shape[0]:
        prompts = [p for p in prompts for _ in range(int(algo.config.credit.group_size))]
    truth = exact_turn_advantages(
        algo.policy, task, prompts, buf.action_ids, buf.credit_mask, sampling=Sampling.of(algo)
    )
    truth_s = time.perf_counter() - started
    turns = buf.turn_data(algo.env.codec.eos_token_id)
    mask = buf.credit_mask
    batch = EstimatorBatch(
        rewards=buf.task_rewards,
        task_rewards=buf.task_rewards,
        mask=mask,
        starts=buf.starts,
        values=buf.values if buf.has_values else None,
        group_ids=buf.group_ids,
        action_mask=mask,
        turn_ids=turns.turn_ids,
        turn_starts=turns.turn_starts,
        turn_rewards=turns.turn_rewards,
        num_turns=turns.num_turns,
        terminated=turns.terminated,
        truncated=turns.truncated,
        turn_state_keys=turns.turn_state_keys,
    )
    specs = {name: get_estimator(spec) for name, (spec, _, _) in schemes.items()}
    requires = frozenset().union(*(e.requires for e in specs.values()))
    fill_potentials(batch, requires, algo.policy, buf, algo.env)
    values = {}
    ids, m, n = turns.turn_ids.cpu(), mask.cpu(), turns.num_turns.cpu()
    for name, (_, config, by_turn) in schemes.items():
        batch.starts = (turns.turn_starts & mask) if by_turn else buf.starts
        adv = specs[name].fn(batch, config).advantages.cpu()
        values[name] = turn_values(adv, truth.advantages, ids, m, n)
    return {
        "truth_s": truth_s,
        "score": float(buf.task_rewards.sum(dim=1).mean()),
        "turns": float(turns.num_turns.float().mean()),
        "values": values,
    }


def run_audit(seed: int = 0) -> dict[str, Any]:
    """Train the ``turn-gae`` preset (its critic feeds the ``turn_gae`` schemes; groups of 4 feed
    the group ones) on ToolLookup; at each of ``AUDIT_BUDGETS`` audit the next
    ``AUDIT_ROLLOUTS`` rollouts pooled (training goes on between them)."""
    from marlhf.algorithms import PPO
    from marlhf.audit.turn_audit import audit_turn_values, stack_turn_values
    from marlhf.envs.multiturn.env import MultiTurnTokenEnv
    from marlhf.envs.multiturn.tool import ToolLookupTask
    from marlhf.models import tiny_gpt2

    task = ToolLookupTask()
    env = MultiTurnTokenEnv(task, num_envs=AUDIT_EPISODES, seed=seed)
    algo = PPO(
        tiny_gpt2(task.codec, n_layer=2, n_embd=64, n_head=2, seed=seed),
        env,
        preset=["toy", "turn-gae"],
        group_size=4,
        batch_size=16,
        mask_actions=True,
        seed=seed,
        device="cpu",
    )
    snapshots = []
    for budget in AUDIT_BUDGETS:
        if budget > algo.num_timesteps:
            algo.learn(budget - algo.num_timesteps, reset_num_timesteps=False)
        tokens = algo.num_timesteps
        parts = []
        for _ in range(AUDIT_ROLLOUTS):  # one iteration each: its rollout, then its update
            algo.learn(1, reset_num_timesteps=False)
            parts.append(audit_rollout(algo, task))
        schemes = {
            spec: audit_turn_values(*stack_turn_values([p["values"][spec] for p in parts]))
            for spec in AUDIT_SPECS
        }
        snapshots.append(
            {
                "tokens": tokens,
                "episodes": AUDIT_EPISODES * AUDIT_ROLLOUTS,
                "truth_s": sum(p["truth_s"] for p in parts),
                "score_mean": sum(p["score"] for p in parts) / len(parts),
                "turns_mean": sum(p["turns"] for p in parts) / len(parts),
                "schemes": schemes,
            }
        )
    return {
        "task": "marlhf/ToolLookup-v0",
        "agent": "turn-gae",
        "seed": seed,
        "snapshots": snapshots,
    }


# ------------------------------------------------------------------------------ rendering
def render_exact(exact: dict[str, Any]) -> list[str]:
    lines = [
        "### Exact expected updates",
        "",
        "Each estimator's expected policy gradient (group means = expectations) against the "
        "exact gradient of the return, on MDPs where the policy decides how many turns to take "
        "(`marlhf.audit.turn_exact`). cos: cosine with the true gradient (1: same direction); "
        "signs: decision states where the estimator pushes the stop-or-continue choice the "
        "same way as the truth; rel. error: `|g - g*| / |g*|` (estimators that rescale, GRPO's "
        "std, ReBN, GiGPO's std, have a large one by design: read cos for them).",
        "",
    ]
    for name, part in exact.items():
        lines += [f"**{name}**: {part['note']}.", ""]
        rows = [
            [
                f"`{spec}`",
                fmt(row["cosine"]),
                fmt(row["sign_agreement"]),
                fmt(row["relative_error"]),
                fmt(row["relative_variance"]),
            ]
            for spec, row in part["table"].items()
        ]
        header = ["estimator", "cos", "signs", "rel. error", "rel. var"]
        lines += [markdown_table(header, rows), ""]
    return lines


def render_tasks(tasks: dict[str, Any]) -> list[str]:
    lines = ["### Learning on the multi-turn tasks", ""]
    if not tasks:
        return [*lines, "Not run yet (`python benchmarks/turn_credit.py --mode full`).", ""]
    for key, part in tasks.items():
        if "missing" in part:
            lines += [f"**{key}**: not run: {part['missing']}.", ""]
            continue
        load = ", ".join(f"{x:.1f}" for x in part.get("loadavg", []))
        lines += [
            f"**{key}** (`{part['env_id']}`, {len(part['seeds'])} seed(s), "
            f"{part['budget']:,} tokens per run; load average {load}; `{part['command']}`)",
            "",
        ]
        ppo_wall = next((s["wall_time"] for s in part["summary"] if s["agent"] == "ppo"), None)
        rows = [
            [
                s["agent"],
                f"{fmt(s['final_score'])} ± {fmt(s['final_score_ci95'])}",
                fmt(s["tokens_to_ppo_final"], 0) if s["tokens_to_ppo_final"] else "-",
                f"{s['wall_time']:.0f}",
                f"{s['wall_time'] / ppo_wall:.2f}x" if ppo_wall else "-",
            ]
            for s in part["summary"]
        ]
        header = ["agent", "final score (95% CI)", "tokens to PPO's final", "wall s", "cost / PPO"]
        lines += [
            markdown_table(header, rows),
            "",
            "cost / PPO: a run's wall time over PPO's at the same token budget (continuations "
            "counted in the budget), on a shared, loaded machine: a rough iteration cost.",
            "",
        ]
    return lines


def turn_cells(res: dict[str, Any], k_max: int) -> list[str]:
    """A scheme's audit cells: per turn index ``0 .. k_max - 1`` ``corr / sign`` (``-`` past
    its last turn), then the correlation over all turns.

    :param res: the scheme's audit (``per_turn``: one dict per turn index; ``overall``).
    """
    cells = []
    for k in range(k_max):
        t = res["per_turn"][k] if k < len(res["per_turn"]) else None
        cells.append("-" if t is None else f"{fmt(t['corr'])} / {fmt(t['sign_agreement'])}")
    return [*cells, fmt(res["overall"]["corr"])]


def render_audit(audit: dict[str, Any]) -> list[str]:
    if not audit:
        return []
    lines = [
        "### Per-turn audit against the exact truth (ToolLookup)",
        "",
        f"The `{audit['agent']}` agent's rollouts (groups of 4) at several training budgets, "
        "each snapshot pooling the next four iterations' rollouts; every scheme re-estimated on "
        "the same episodes from the task rewards (the `turn_gae` ones with that agent's critic) "
        "and compared turn by turn with the exact advantage (`marlhf.credit.truth_multiturn`, "
        "conditioned on the hidden answer): correlation (scale-free) and sign agreement per "
        "turn index; n = turns audited. `nan`: the scheme's (or the truth's) turn advantages "
        "are constant there (e.g. a group whose episodes all scored the same gives no signal); "
        "an estimate of exactly 0 has no sign and counts as a disagreement.",
        "",
    ]
    for snap in audit["snapshots"]:
        schemes = snap["schemes"]
        k_max = max(len(v["per_turn"]) for v in schemes.values())
        header = ["scheme"] + [f"turn {k} corr / sign" for k in range(k_max)] + ["all corr"]
        rows = [[f"`{spec}`", *turn_cells(res, k_max)] for spec, res in schemes.items()]
        ns = [schemes[next(iter(schemes))]["per_turn"][k]["n"] for k in range(k_max)]
        lines += [
            f"**after {snap['tokens']:,} tokens** ({snap['episodes']} episodes, score "
            f"{fmt(snap['score_mean'])}, "
            f"{fmt(snap['turns_mean'])} turns per episode; n per turn {ns}; truth "
            f"{snap['truth_s']:.1f} s)",
            "",
            markdown_table(header, rows),
            "",
        ]
    return lines


def render_block(data: dict[str, Any]) -> str:
    stamp = data.get("machine", {})
    lines = [
        BEGIN,
        "",
        f"Rendered from `benchmarks/results/turn_credit.json` (mode `{data.get('mode')}`, "
        f"commit `{stamp.get('commit', '?')}`).",
        "",
        *render_exact(data.get("exact", {})),
        *render_audit(data.get("audit", {})),
        *render_tasks(data.get("tasks", {})),
        END,
    ]
    return "\n".join(lines)


def replace_block(doc: Path, block: str) -> None:
    """Put ``block`` (from :func:`render_block`) between the markers of ``doc``."""
    replace_marked(doc, BEGIN, END, block)


def render_docs(data: dict[str, Any]) -> None:
    block = render_block(data)
    for name in ("credit_multiturn.md", "credit.md"):
        replace_block(DOCS_DIR / name, block)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--tasks", nargs="*", default=None, help="only these task keys")
    parser.add_argument("--exact-only", action="store_true", help="only the exact part")
    parser.add_argument("--no-audit", action="store_true", help="skip the per-turn audit")
    parser.add_argument("--no-tasks", action="store_true", help="skip the learning part")
    parser.add_argument("--doc-only", action="store_true", help="re-render the docs from the JSON")
    args = parser.parse_args(argv)
    path = RESULTS_DIR / "turn_credit.json"
    if args.doc_only:
        render_docs(read_json(path))
        return 0
    import torch

    torch.set_num_threads(1)
    data = read_json(path) if path.exists() else {}
    data.update({"mode": args.mode, "machine": machine_stamp()})
    data["exact"] = run_exact()
    if not args.exact_only and not args.no_audit:
        data["audit"] = run_audit()
    if not args.exact_only and not args.no_tasks:
        data.setdefault("tasks", {}).update(run_tasks(args.mode, args.tasks))
    write_json(path, data)
    data = read_json(path)  # the docs show what the file holds (NaN is stored as null)
    render_docs(data)
    print(render_block(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
