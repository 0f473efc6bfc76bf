"""`marlhf audit`: how far is each estimator's advantage from the true one, on the same samples.

One run: build (or load) an agent, optionally train it for ``train_timesteps`` tokens so that
its critic has learned something, collect one rollout of ``task.num_envs`` episodes with the
current policy (or read saved rollouts), compute the policy's true advantages
(:mod:`marlhf.credit.truth`, exact or Monte Carlo), and score every scheme of ``schemes``
against them (:mod:`marlhf.audit.credit`). ``output_dir`` receives ``rollouts.safetensors``,
``audit.json`` (every figure, per token position and per segment), ``audit.md`` (the summary
table) and ``audit.png`` (RMSE and correlation per position). Multi-turn tasks are audited in
the action layout (env tokens removed) with the truth of :mod:`marlhf.credit.truth_multiturn`
(exact on small trees such as ToolLookup, else ``truth=mc``), and ``audit.json`` adds the
figures per turn (``turns``, ``per_turn``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from marlhf.config.commands import AgentConfig, ModelConfig, TaskConfig
from marlhf.config.parse import check_folder, doc, to_dict
from marlhf.envs.multiturn.task import MultiTurnTask
from marlhf.models import resolve_device
from marlhf.runs.errors import during_run
from marlhf.threads import apply_thread_policy

#: Continuations per prompt the exact truth enumerates at most (``marlhf.credit.truth``).
EXACT_LIMIT = 65_536
#: Decision points per episode start the exact multi-turn truth enumerates at most
#: (``marlhf.credit.truth_multiturn``).
EXACT_TURN_LIMIT = 20_000

DEFAULT_SCHEMES = [
    "gae",
    "gae gae_lambda=1.0",
    "gae gae_lambda=0.0",
    "gae@ngram:5",
    "gae@ngram:inf",
]


@dataclass
class AuditTaskConfig(TaskConfig):
    """The task of `marlhf audit`: CreditSum by default (its true advantages are exact)."""

    id: str = field(
        default="marlhf/CreditSum-v0",
        metadata=doc("registered env id under marlhf/ (see `marlhf train --help`)"),
    )
    kwargs: dict[str, Any] = field(
        default_factory=lambda: {},
        metadata=doc(
            "keyword arguments of the task, e.g. horizon; setting another task.id without "
            "task.kwargs starts from {} (the task's defaults)"
        ),
    )
    num_envs: int = field(default=64, metadata=doc("episodes audited (rows of one rollout)"))


@dataclass
class AuditConfig:
    """`marlhf audit`: every scheme's advantages against the policy's true advantages."""

    model: ModelConfig = field(
        default_factory=ModelConfig,
        metadata=doc(
            "the policy: model.path is an agent save (run/final, from `marlhf train`) with its "
            "critic, or a transformers folder (fresh critic); null: a tiny GPT-2"
        ),
    )
    task: AuditTaskConfig = field(
        default_factory=lambda: AuditTaskConfig(),
        metadata=doc("the environment; num_envs = episodes audited"),
    )
    agent: AgentConfig = field(
        default_factory=AgentConfig.cli_default,
        metadata=doc(
            "hyper-parameters of the agent that samples (and trains, see below); "
            "agent.mask_actions=true keeps the exact truth's enumeration to the task's tokens"
        ),
    )
    algo: Literal["ppo", "mappo"] = field(
        default="ppo", metadata=doc("the agent trained before the audit: ppo or mappo")
    )
    termination: str = field(default="ngram:5", metadata=doc("MAPPO's termination when training"))
    train_timesteps: int = field(
        default=0,
        metadata=doc("tokens of training before the audit (0: audit the policy as it is)"),
    )
    schemes: list[str] = field(
        default_factory=lambda: list(DEFAULT_SCHEMES),
        metadata=doc(
            "schemes to audit: 'estimator[@termination] [key=value ...]' with keys gamma, "
            "gae_lambda, reward_agg, value_agg, discount (e.g. 'gae@ngram:5 gae_lambda=1.0')"
        ),
    )
    truth: Literal["exact", "mc"] = field(
        default="exact",
        metadata=doc("exact (enumerate continuations; small tasks) or mc (Monte Carlo)"),
    )
    mc_samples: int = field(
        default=64, metadata=doc("mc: continuations per prefix (the SE shrinks as 1/sqrt)")
    )
    rollouts: str | None = field(
        default=None,
        metadata=doc("audit these saved rollouts (.safetensors) instead of collecting new ones"),
    )
    seed: int = field(default=0, metadata=doc("seed of the model init, env, agent and MC"))
    output_dir: str = field(default="runs/audit", metadata=doc("folder for the audit's files"))
    device: str = field(default="cpu", metadata=doc("torch device: cpu, cuda or auto"))
    num_threads: int | None = field(
        default=None,
        metadata=doc("torch CPU threads (null: MARLHF_NUM_THREADS, else 1; see docs/threads.md)"),
    )


def _agent_save(path: str | None) -> Path | None:
    """The ``.zip`` of an agent save named by ``path``, if it is one."""
    if path is None:
        return None
    p = Path(path)
    zipped = p if p.suffix == ".zip" else p.with_name(p.name + ".zip")
    return zipped if zipped.is_file() else None


def build_audited_agent(config: AuditConfig) -> Any:
    """The agent whose policy is audited: loaded from a save, or built (and trained)."""
    from marlhf.runs.runner import (
        RunSpec,
        agent_class,
        build_agent,
        build_env,
        build_env_and_model,
    )

    device = str(resolve_device(config.device))
    saved = _agent_save(config.model.path)
    if saved is not None:
        env = build_env(config.task, config.seed, device)
        algo = agent_class(config.algo).load(saved, env=env, device=device)
    else:
        env, lm, _ = build_env_and_model(config.task, config.model, config.seed, device)
        spec = RunSpec(config.algo, config.termination, config.seed)
        algo = build_agent(spec, lm, env, config.agent, device, None)
    if config.train_timesteps > 0:
        with during_run():  # an error while training is not the config's (exit 1)
            algo.learn(config.train_timesteps)
    return algo


def run_audit(config: AuditConfig) -> dict[str, Any]:
    """Run one audit (module docstring); returns the summary the CLI prints."""

    from marlhf.audit.credit import Scheme, audit, plot_audit
    from marlhf.checkpoint.rollout_io import Rollouts, collect
    from marlhf.credit.truth import Sampling, true_advantages
    from marlhf.runs.builders import check_env_id
    from marlhf.runs.io import atomic_write_json, atomic_write_text

    check_env_id(config.task.id)
    schemes = [Scheme.parse(s) for s in config.schemes]  # fail before any model is built
    if config.train_timesteps < 0:
        raise ValueError(f"train_timesteps={config.train_timesteps} must be >= 0")
    if config.mc_samples < 2:
        raise ValueError(f"mc_samples={config.mc_samples} must be >= 2")
    check_folder("output_dir", config.output_dir)
    if config.truth == "exact" and config.rollouts is None:
        mask_actions = config.agent.sampling.mask_actions
        if not exact_truth_fits(config.task, mask_actions):
            raise ValueError(
                f"truth=exact cannot audit {config.task.id} {dict(config.task.kwargs)}: it has "
                f"more than {EXACT_LIMIT:,} continuations per prompt (multi-turn: "
                f"{EXACT_TURN_LIMIT:,} decision points per episode) to enumerate. Use truth=mc, "
                "agent.mask_actions=true, or a smaller task (task.kwargs)"
            )
    apply_thread_policy(config.num_threads)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    algo = build_audited_agent(config)
    seconds["agent"] = time.perf_counter() - start

    start = time.perf_counter()
    out = Path(config.output_dir)
    if config.rollouts is not None:
        rollouts = Rollouts.load(config.rollouts)
        rollouts.check_env(
            algo.env,
            f"rollouts={config.rollouts}",
            hint="audit them with the task they were collected on (task.id and task.kwargs)",
        )
    else:
        with during_run():
            rollouts = collect(algo)
        rollouts.save(out / "rollouts.safetensors")
    seconds["rollouts"] = time.perf_counter() - start

    start = time.perf_counter()
    task = algo.env.task
    if rollouts.turn_starts is not None:  # multi-turn: the action layout, truth per action
        from marlhf.credit.truth_multiturn import turn_true_advantages

        truth_of: Any = turn_true_advantages
    else:
        truth_of = true_advantages
    truth = truth_of(
        algo.policy,
        task,
        rollouts.prompts,
        rollouts.response_ids,
        rollouts.response_mask,
        method=config.truth,
        sampling=Sampling.of(algo),
        samples=config.mc_samples,
        seed=config.seed,
    )
    seconds["truth"] = time.perf_counter() - start
    start = time.perf_counter()
    result = audit(rollouts, truth, schemes, codec=task.codec)
    seconds["estimate_and_score"] = time.perf_counter() - start

    score = float(rollouts.task_rewards.sum(dim=1).mean())
    report = {
        "config": to_dict(config),
        "episodes": rollouts.num_rows,
        "score_mean": score,
        "num_timesteps": int(algo.num_timesteps),
        "seconds": seconds,
        **result.to_dict(),
    }
    atomic_write_json(out / "audit.json", report)
    title = f"{task.name}: {rollouts.num_rows} episodes, truth {truth.method}"
    table = result.table()
    atomic_write_text(out / "audit.md", f"# Credit audit: {title}\n\n{table}\n")
    plot_audit(result, out / "audit.png", title=title)
    best = min(result.schemes, key=lambda n: result.schemes[n]["tokens"]["rmse"])
    return {
        "output_dir": str(out),
        "episodes": rollouts.num_rows,
        "score_mean": score,
        "truth": truth.method,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "lowest_rmse": best,
        "rmse": {n: s["tokens"]["rmse"] for n, s in result.schemes.items()},
        "corr": {n: s["tokens"]["corr"] for n, s in result.schemes.items()},
    }


# ----------------------------------------------------------------------------- during training
def credit_settings(config: Any) -> dict[str, Any] | None:
    """The ``CreditAuditCallback`` arguments of a train/compare config (None: ``credit_every``
    is 0)."""
    if config.credit_every == 0:
        return None
    return {
        "every": config.credit_every,
        "method": config.credit_truth,
        "mc_samples": config.credit_mc_samples,
        "schemes": list(config.credit_schemes),
    }


def exact_truth_fits(task: TaskConfig, mask_actions: bool) -> bool:
    """Whether the exact truth can enumerate ``task``'s continuations (under the task's action
    mask when ``mask_actions``); True when the task cannot be built here (it needs the model's
    tokenizer: the audit itself will say)."""
    import torch

    from marlhf.credit.truth import Sampling, check_exact
    from marlhf.credit.truth_multiturn import check_exact_turns
    from marlhf.runs.builders import make_any_task

    try:
        built = make_any_task(task.id, **task.kwargs)
    except Exception:
        return True
    mask = torch.as_tensor(built.action_mask(), dtype=torch.bool) if mask_actions else None
    try:
        if isinstance(built, MultiTurnTask):  # its episode tree, from one start
            check_exact_turns(built, Sampling(action_mask=mask), EXACT_TURN_LIMIT)
        else:
            check_exact(built, Sampling(action_mask=mask))
    except ValueError:
        return False
    return True


def check_credit_task(config: Any, task: TaskConfig, agent: AgentConfig) -> None:
    """Before training: with ``credit_truth=exact``, the task's continuations can be enumerated
    under the agent's action mask (else the first audit would fail mid-run)."""
    if config.credit_every == 0 or config.credit_truth != "exact":
        return
    if not exact_truth_fits(task, agent.sampling.mask_actions):
        raise ValueError(
            f"credit_truth=exact cannot audit {task.id} {dict(task.kwargs)}: it has more than "
            f"{EXACT_LIMIT:,} continuations per prompt (multi-turn: {EXACT_TURN_LIMIT:,} "
            "decision points per episode) to enumerate. Use credit_truth=mc, "
            "agent.mask_actions=true, or a smaller task (task.kwargs)"
        )
