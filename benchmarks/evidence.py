"""Which estimator's advantages are closest to the truth; does that predict which learns fastest?

For every task of ``TASKS`` this script

1. trains every estimator preset of ``PRESETS`` (token PPO first: the baseline) over the mode's
   seeds with ``marlhf compare`` (:func:`marlhf.commands.compare.run_compare`: resumable run
   folders under ``runs/evidence/<mode>/<task>``, worker processes with one torch thread each,
   ``metrics.csv``), every run at the same budget of generated tokens (Monte-Carlo
   continuations and greedy baseline rollouts counted: ``num_timesteps`` includes them);
2. audits every preset's estimator on the same samples (:mod:`benchmarks.evidence_audit`): for
   each audit seed, the token-PPO run's policy at 0 tokens and at half the budget (replayed
   with the compare run's seed and settings) samples one batch of episodes, saved with
   :mod:`marlhf.checkpoint.rollout_io`; each preset's advantages are re-estimated on it and scored
   against the true advantages (exact where the task's continuations can be enumerated,
   Monte Carlo with its standard error elsewhere);
3. writes ``benchmarks/results/evidence.json`` (``evidence_quick.json`` in quick mode) and, in
   full mode, renders its block of ``docs/credit.md`` (:mod:`benchmarks.evidence_doc`).

Run: ``python benchmarks/evidence.py --mode full`` (hours on two cores; ``make bench-full``;
re-running resumes: finished runs and audits are kept), ``--mode quick`` (one task, one seed, a
few presets, small budget, from scratch: a few minutes; part of ``make bench``),
``--doc-only`` (re-render the doc from the JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, ROOT, machine_stamp, read_json, write_json
from marlhf.algorithms.turn_presets import TURN_PRESETS

RUNS_DIR = ROOT / "runs" / "evidence"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task of the comparison.

    :param key: short name (folder, JSON key).
    :param env_id: the registered env id.
    :param kwargs: the task's keyword arguments.
    :param budget: tokens per run in full mode (quick mode scales it by ``QUICK_BUDGET``).
    :param truth: ``"exact"`` (enumerated continuations) or ``"mc"`` (Monte Carlo).
    :param mc_samples: continuations per prefix of the Monte-Carlo truth.
    :param model: ``ModelConfig`` keyword arguments, or a function of the work folder that
        returns them (e.g. an SFT start that it trains once).
    :param note: one line on the task for the report.
    :param agent: agent keys set on top of ``AGENT`` for this task (e.g. a pretrained start's
        smaller learning rate).
    :param num_envs: episodes per iteration (default ``NUM_ENVS``).
    """

    key: str
    env_id: str
    kwargs: dict[str, Any]
    budget: int
    truth: str = "exact"
    mc_samples: int = 64
    model: dict[str, Any] | Callable[[Path], dict[str, Any]] = dataclasses.field(
        default_factory=dict
    )
    note: str = ""
    agent: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_envs: int | None = None


#: The tasks, in the order they are run (the full run renders whatever has finished).
TASKS: list[TaskSpec] = [
    TaskSpec(
        "creditsum",
        "marlhf/CreditSum-v0",
        {},
        49_152,
        note="3 digits, 3 decisions, horizon 32: the exact-advantage task",
    ),
    TaskSpec(
        "delayed32",
        "marlhf/DelayedChoice-v0",
        {"horizon": 32, "num_choices": 4},
        32_768,
        note="one decision, score after 32 tokens",
    ),
    TaskSpec(
        "reverse",
        "marlhf/Reverse-v0",
        {},
        24_576,
        truth="mc",
        note="reverse 2..6 symbols then EOS; per-token partial credit",
    ),
    TaskSpec(
        "delayed128",
        "marlhf/DelayedChoice-v0",
        {"horizon": 128, "num_choices": 4},
        49_152,
        note="one decision, score after 128 tokens",
    ),
]


def _reasoning_task() -> TaskSpec | None:
    """The reasoning task of ``benchmarks/reasoning.py`` (its ``rl_task_config()`` and ``RL``
    settings), every seed's runs starting from its ``sft_start`` model of seed 0 (trained once
    into the work folder); None when that file or those names are absent."""
    import importlib

    try:
        reasoning = importlib.import_module("benchmarks.reasoning")
    except ImportError:
        return None
    start = getattr(reasoning, "sft_start", None)
    task_config = getattr(reasoning, "rl_task_config", None)
    if not callable(start) or not callable(task_config):
        return None
    task = task_config()
    rl = getattr(reasoning, "RL", {})

    def model(work: Path) -> dict[str, Any]:
        return {"path": str(start(0, work / "sft"))}

    return TaskSpec(
        "reasoning",
        task["id"],
        dict(task.get("kwargs", {})),
        int(rl.get("total_timesteps", 23_040)),
        truth="mc",
        mc_samples=32,
        model=model,
        note="the reasoning task of benchmarks/reasoning.py from its SFT model (seed 0's)",
        agent={k: v for k, v in rl.get("agent", {}).items() if k != "preset"},
        num_envs=task.get("num_envs"),
    )


#: The estimator presets (``marlhf.algorithms.PRESETS``), after token PPO (``include_ppo``).
#: Skipped: ``toy`` (the tiny-model scale every run starts from, not a method) and
#: ``ma-rlhf-official`` (MA-PPO ``ngram:5`` with the released code's schedule: learning rate
#: 1.5e-5, KL 0.05 to a reference, temperature 0.8 / top-k 50, made for a pretrained 7B model; a
#: tiny model trained from scratch does not move at that rate, and its credit scheme is
#: ``ma-ppo@ngram:5``'s with mean-aggregated segment rewards).
PRESETS = [
    "ma-ppo@ngram:5",
    "ma-ppo@lowprob:p=0.9",
    "grpo",
    "dr-grpo",
    "rloo",
    "reinforce++",
    "reinforce++-baseline",
    "remax",
    "vineppo",
    "spo-chain",
    "dapo",
    "gspo",
]
SKIPPED = {
    "toy": "the tiny-model scale every run starts from (learning rate 1e-3, minibatch 16, no "
    "KL), not a credit-assignment method",
    "ma-rlhf-official": "MA-PPO ngram:5 with the released code's schedule for a pretrained 7B "
    "model (lr 1.5e-5, KL 0.05, temperature 0.8, top-k 50); from scratch at that rate a tiny "
    "model does not move, and its credit scheme is ma-ppo@ngram:5's",
}
# The turn-level methods need a multi-turn task: benchmarks/turn_credit.py compares them.
SKIPPED.update(
    {
        name: "a turn-level method (needs a multi-turn task); benchmarks/turn_credit.py runs it"
        for name in TURN_PRESETS
    }
)
#: The agent section every run shares: the toy scale, groups of 4 episodes per prompt for
#: every method (so the group baselines can be audited on any run's samples), actions masked
#: to the task's symbols (the exact truth enumerates them).
AGENT = {"preset": ["toy"], "group_size": 4, "mask_actions": True}
NUM_ENVS = 32

MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "tasks": ["delayed32"],
        "presets": ["ma-ppo@ngram:5", "grpo", "remax", "vineppo"],
        "seeds": [0],
        "audit_seeds": [0],
        "budget_scale": 0.25,
    },
    "full": {
        "tasks": None,  # every task
        "presets": PRESETS,
        "seeds": [0, 1, 2, 3, 4],
        "audit_seeds": [0, 1, 2, 3, 4],
        "budget_scale": 1.0,
    },
}


def tasks_of(mode: str) -> list[TaskSpec]:
    """The mode's tasks (the reasoning task appended when it is available)."""
    tasks = list(TASKS)
    extra = _reasoning_task()
    if extra is not None:
        tasks.append(extra)
    wanted = MODES[mode]["tasks"]
    return [t for t in tasks if wanted is None or t.key in wanted]


def results_path(mode: str) -> Path:
    return RESULTS_DIR / ("evidence.json" if mode == "full" else f"evidence_{mode}.json")


def compare_config(task: TaskSpec, mode: str, work: Path, scale: float | None = None) -> Any:
    """The ``marlhf compare`` config of ``task`` in ``mode`` (``scale``: of the full budget)."""
    from marlhf.config.commands import AgentConfig, CompareConfig, ModelConfig, TaskConfig

    m = MODES[mode]
    scale = m["budget_scale"] if scale is None else scale
    model = task.model(work) if callable(task.model) else dict(task.model)
    return CompareConfig(
        model=ModelConfig(**model),
        task=TaskConfig(
            id=task.env_id, kwargs=dict(task.kwargs), num_envs=task.num_envs or NUM_ENVS
        ),
        agent=AgentConfig.from_mapping({**AGENT, **task.agent}),
        terminations=[],
        include_ppo=True,
        agents=list(m["presets"]),
        seeds=list(m["seeds"]),
        total_timesteps=max(int(task.budget * scale), 1),
        output_dir=str(work / "compare"),
        workers=2,
        threads_per_worker=1,
        checkpoint_every=5,
    )


def run_task(
    task: TaskSpec, mode: str, scale: float | None = None, audit_seeds: list[int] | None = None
) -> dict[str, Any]:
    """Train (or resume) the comparison of one task, audit it, return its JSON section."""
    from benchmarks.evidence_audit import audit_task
    from marlhf.commands.compare import run_compare
    from marlhf.runs.report import read_metrics_csv

    work = RUNS_DIR / mode / task.key
    config = compare_config(task, mode, work, scale)
    started = time.perf_counter()
    out = run_compare(config)
    compare_s = time.perf_counter() - started
    rows = read_metrics_csv(Path(config.output_dir) / "metrics.csv")
    seeds = MODES[mode]["audit_seeds"] if audit_seeds is None else audit_seeds
    audits = audit_task(task, config, seeds, work / "audit", rows)
    return {
        "task": {
            "key": task.key,
            "env_id": task.env_id,
            "kwargs": task.kwargs,
            "note": task.note,
            "truth": task.truth,
            "mc_samples": task.mc_samples if task.truth == "mc" else None,
        },
        "machine": machine_stamp(),
        "agent_overrides": task.agent,
        "budget": config.total_timesteps,
        "num_envs": config.task.num_envs,
        "seeds": config.seeds,
        "agents": ["ppo", *config.agents],
        "summary": out["summary"],
        "compare_wall_s": compare_s,
        "audit": audits,
        "command": f"python benchmarks/evidence.py --mode {mode} --tasks {task.key}"
        + ("" if scale is None else f" --budget-scale {scale}")
        + ("" if audit_seeds is None else " --audit-seeds " + " ".join(map(str, audit_seeds))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--tasks", nargs="*", default=None, help="only these task keys")
    parser.add_argument(
        "--budget-scale",
        type=float,
        default=None,
        help="tokens per run as a fraction of each task's full budget (default: the mode's)",
    )
    parser.add_argument(
        "--audit-seeds",
        type=int,
        nargs="+",
        default=None,
        help="audit only these seeds' snapshots (default: the mode's)",
    )
    parser.add_argument(
        "--doc-only",
        action="store_true",
        help="recompute the analysis from the JSON's runs and audits, re-render docs/credit.md",
    )
    args = parser.parse_args(argv)
    from benchmarks.evidence_doc import render_doc, summarize_task

    path = results_path(args.mode)
    if args.doc_only:
        data = read_json(path)
        if data is None:
            raise SystemExit(f"--doc-only: {path} is missing; run the benchmark first")
        for section in data.get("tasks", {}).values():  # the analysis of this checkout
            section["analysis"] = summarize_task(section)
        write_json(path, data)
        render_doc(data)
        return 0
    import torch

    torch.set_num_threads(1)
    tasks = tasks_of(args.mode)
    known = {t.key for t in tasks}
    for key in args.tasks or []:
        if key not in known:
            raise SystemExit(f"--tasks: {key!r} is not a task of mode {args.mode}: {sorted(known)}")
    data = read_json(path) or {}
    data.update(
        {
            "mode": args.mode,
            "machine": machine_stamp(),
            "presets": ["ppo", *MODES[args.mode]["presets"]],
            "skipped_presets": SKIPPED,
            "agent_section": AGENT,
            "planned_tasks": [t.key for t in tasks],
        }
    )
    data.setdefault("tasks", {})
    if _reasoning_task() is None:
        data["reasoning_missing"] = (
            "benchmarks/reasoning.py (sft_start, rl_task_config) is not on this checkout"
        )
    else:
        data.pop("reasoning_missing", None)
    if args.mode == "quick":  # a measurement of this checkout: nothing reused from earlier runs
        shutil.rmtree(RUNS_DIR / "quick", ignore_errors=True)
        data["tasks"] = {}
    for task in tasks:
        if args.tasks and task.key not in args.tasks:
            continue
        print(f"\n=== evidence: {task.key} ({task.env_id} {task.kwargs})", flush=True)
        section = run_task(task, args.mode, args.budget_scale, args.audit_seeds)
        section["analysis"] = summarize_task(section)
        data["tasks"][task.key] = section
        write_json(path, data)  # after every task: an interrupted run keeps what finished
    print(f"wrote {path}")
    if args.mode == "full":
        render_doc(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
