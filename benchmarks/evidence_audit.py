"""The audit half of ``benchmarks/evidence.py``: every preset's advantages against the truth, on
the same saved rollouts of the token-PPO run's policy.

For one task, one audit seed and one snapshot (0 tokens, or half the budget: a fresh PPO agent
built exactly as ``marlhf compare`` builds the run ``ppo-token-seed<seed>`` and trained with the
same chunks, so it replays that run; the replayed score is checked against the run's
``metrics.csv``):

- the policy samples one batch (``num_envs`` episodes in groups of 4 prompts), saved as
  ``seed<s>-<tokens>.safetensors`` (:mod:`marlhf.checkpoint.rollout_io`); it holds PPO's critic
  values and the group ids;
- the truth: :func:`~marlhf.credit.truth.exact_advantages` where the task's continuations can
  be enumerated, else :func:`~marlhf.credit.truth.mc_advantages` with ``mc_samples``
  continuations per prefix (its standard error is recorded);
- each preset's scheme (estimator, termination, credit knobs of its resolved config) is
  re-estimated on the same rollouts (:func:`marlhf.audit.credit.estimate`). What a scheme reads
  beyond the rollouts is computed for it on the same episodes: VinePPO / SPO-chain Monte-Carlo
  values (``mc_rollouts`` continuations at the branch points its termination and
  ``mc_max_starts`` choose, as the agent does), ReMax's greedy rollout of each prompt. The
  ``gae`` schemes read the token-PPO critic (the snapshot's only critic; MA-PPO's own critic is
  trained for segments, which this audit does not measure);
- figures (:func:`marlhf.audit.credit.error_metrics`) over every real token, per segment, and
  at the *decision tokens*: the positions before the task's ``decisive_tokens`` where it
  declares them (CreditSum: the 3 digits, DelayedChoice: the choice), else every real token.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

from benchmarks.common import read_json, write_json

#: PPOConfig fields an estimator reads (the rest of a preset is about the update).
CREDIT_KNOBS = (
    "gamma",
    "gae_lambda",
    "reward_agg",
    "value_agg",
    "discount",
    "group_std",
    "prob_mask_threshold",
)


def preset_scheme(agent_section: Any, preset: str) -> tuple[str, Any, Any]:
    """``(label, Scheme, resolved config)`` of a compare agent (``"ppo"`` or a preset text).

    The label is the report's (``ma-ppo ngram:5``); the config is what the compare run trains
    with (the agent section, then the preset, then the keys the section set explicitly).
    """
    from marlhf.algorithms.config import MAPPOConfig, PPOConfig, flat_values, resolve_config
    from marlhf.audit.credit import Scheme
    from marlhf.runs.report import label
    from marlhf.runs.runner import parse_agent

    values = agent_section.agent_kwargs()
    if preset == "ppo":
        name, termination = "ppo", "token"
        config = PPOConfig(**values)
    else:
        name, termination = parse_agent(preset)
        explicit = {k: values[k] for k in agent_section.explicit}
        cls = PPOConfig
        if termination != "token":
            explicit["termination"] = termination
            cls = MAPPOConfig
        config = resolve_config(cls, [*agent_section.preset, name], explicit)
    defaults = PPOConfig()
    have, default = flat_values(config), flat_values(defaults)
    params = {k: have[k] for k in CREDIT_KNOBS if have[k] != default[k]}
    scheme = Scheme(
        config.credit.estimator, None if termination == "token" else termination, params
    )
    return label(name, termination), scheme, config


def _ppo_agent(config: Any, seed: int) -> Any:
    from marlhf.runs.runner import RunSpec, build_agent, build_env_and_model

    env, lm, _ = build_env_and_model(config.task, config.model, seed, "cpu")
    spec = RunSpec("ppo", "token", seed)
    return build_agent(spec, lm, env, config.agent, "cpu", None, config.model.policy_kwargs())


def _replay(algo: Any, config: Any, tokens: int) -> None:
    """Train as the compare run did: chunks of ``checkpoint_every`` iterations."""
    env = algo.env
    per_iter = env.num_envs * env.max_new_tokens
    while algo.num_timesteps < tokens:
        chunk = tokens - algo.num_timesteps
        if config.checkpoint_every > 0:
            chunk = min(chunk, config.checkpoint_every * per_iter)
        algo.learn(chunk, reset_num_timesteps=False)


def _decision_mask(task: Any, mask: Any) -> Any:
    import torch

    depth = getattr(task, "decisive_tokens", None)
    if not isinstance(depth, int):
        return mask
    cols = torch.arange(mask.shape[1]).unsqueeze(0)
    return mask & (cols < depth)


def _inputs_for(
    scheme: Any, config: Any, rollouts: Any, algo: Any, cache: dict[str, Any], seed: int
) -> tuple[Any, int]:
    """The rollouts with what ``scheme`` reads beyond them, and the tokens that cost."""
    from marlhf.checkpoint.rollout_io import resegment
    from marlhf.credit.truth import Sampling, mc_values
    from marlhf.credit.vine import choose_branch_points

    task, sampling = algo.env.task, Sampling.of(algo)
    args = (algo.policy, task, rollouts.prompts, rollouts.response_ids, rollouts.response_mask)
    if scheme.estimator == "remax":
        if "greedy" not in cache:
            at = rollouts.response_mask.clone()
            at[:, 1:] = False
            greedy = Sampling(1.0, 1, 1.0, sampling.action_mask)
            values, _, n = mc_values(*args, at=at, sampling=greedy, samples=1)
            cache["greedy"] = (values[:, 0].float(), n)
        greedy_rewards, n = cache["greedy"]
        return dataclasses.replace(rollouts, greedy_rewards=greedy_rewards), n
    if scheme.estimator == "mc":
        starts = resegment(rollouts, scheme.termination, codec=task.codec)
        branch = choose_branch_points(
            starts, rollouts.response_mask, config.credit.mc.mc_max_starts
        )
        values, _, n = mc_values(
            *args, at=branch, sampling=sampling, samples=config.credit.mc.mc_rollouts, seed=seed
        )
        return dataclasses.replace(rollouts, mc_values=values.float()), n
    return rollouts, 0


def _score_at(rows: list[dict[str, Any]], seed: int, tokens: int) -> float | None:
    """The compare run ``ppo`` seed ``seed``'s logged score at ``tokens``."""
    for r in rows:
        if (
            r["agent"] == "ppo"
            and r["seed"] == seed
            and r["tokens"] == tokens
            and r["metric"] == "rollout/score_mean"
        ):
            return float(r["value"])
    return None


def audit_snapshot(
    spec: Any,
    config: Any,
    seed: int,
    tokens: int,
    schemes: dict[str, tuple[Any, Any]],
    folder: Path,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """Audit every scheme on one snapshot (see the module docstring); cached in ``folder``."""
    from marlhf.audit.credit import audit, error_metrics, estimate
    from marlhf.checkpoint.rollout_io import collect
    from marlhf.credit.truth import Sampling, exact_advantages, mc_advantages

    path = folder / f"seed{seed}-{tokens}.json"
    done = read_json(path)
    if done is not None and set(done.get("schemes", {})) >= set(schemes):
        return dict(done)
    started = time.perf_counter()
    algo = _ppo_agent(config, seed)
    out: dict[str, Any] = {"seed": seed, "tokens_target": tokens}
    if tokens > 0:
        _replay(algo, config, tokens)
        replayed = float(algo.rollout_stats["rollout/score_mean"])
        logged = _score_at(rows, seed, int(algo.num_timesteps))
        out["replay_check"] = {
            "tokens": int(algo.num_timesteps),
            "score_replayed": replayed,
            "score_in_metrics_csv": logged,
            "equal": logged is not None and abs(logged - replayed) < 1e-6,
        }
    out["tokens"] = int(algo.num_timesteps)
    rollouts = collect(algo)
    folder.mkdir(parents=True, exist_ok=True)
    rollouts.save(folder / f"seed{seed}-{tokens}.safetensors")
    task, sampling = algo.env.task, Sampling.of(algo)
    args = (algo.policy, task, rollouts.prompts, rollouts.response_ids, rollouts.response_mask)
    t0 = time.perf_counter()
    if spec.truth == "exact":
        truth = exact_advantages(*args, sampling=sampling)
    else:
        truth = mc_advantages(*args, sampling=sampling, samples=spec.mc_samples, seed=10_000 + seed)
    mask = rollouts.response_mask
    decisions = _decision_mask(task, mask)
    true = truth.advantages.double()
    out["score"] = float(rollouts.task_rewards.sum(dim=1).mean())
    out["episodes"] = rollouts.num_rows
    out["truth"] = {
        "method": truth.method,
        "seconds": time.perf_counter() - t0,
        "decision_tokens": int(decisions.sum()),
        "abs_mean_at_decisions": float(true[decisions].abs().mean()),
        "nonzero_fraction": float(((true.abs() > 1e-9) & mask).sum()) / max(int(mask.sum()), 1),
    }
    if truth.stderr is not None:
        se = truth.stderr[decisions]
        out["truth"].update(
            {
                "samples": spec.mc_samples,
                "stderr_mean_at_decisions": float(se.mean()),
                # the RMSE a perfect estimator would show against this noisy truth
                "rmse_floor_at_decisions": float(se.square().mean().sqrt()),
                "mc_tokens": truth.stats.get("mc_tokens"),
            }
        )
    cache: dict[str, Any] = {}
    out["schemes"] = {}
    for name, (scheme, cfg) in schemes.items():
        data, cost = _inputs_for(scheme, cfg, rollouts, algo, cache, seed)
        est, _ = estimate(scheme, data, codec=task.codec)
        figures = audit(data, truth, [scheme], codec=task.codec).schemes[scheme.name]
        dec = error_metrics(est.double()[decisions], true[decisions])
        out["schemes"][name] = {
            "scheme": scheme.name,
            "decisions": dec,
            "tokens": figures["tokens"],
            "segments": figures["segments"],
            "baseline_tokens": cost,
        }
    out["seconds"] = time.perf_counter() - started
    write_json(path, out)
    print(
        f"audit seed {seed} at {out['tokens']} tokens: score {out['score']:.3f}, "
        f"truth {truth.method} {out['truth']['seconds']:.1f} s, {out['seconds']:.0f} s in all",
        flush=True,
    )
    return dict(read_json(path))  # as a re-run reads it (NaN as None)


def audit_task(
    spec: Any, config: Any, seeds: list[int], folder: Path, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Every audit seed at 0 tokens and at half the budget; ``{"snapshots", "schemes"}``."""
    agents = ["ppo", *config.agents]
    schemes = {}
    names = {}
    for text in agents:
        name, scheme, cfg = preset_scheme(config.agent, text)
        schemes[name] = (scheme, cfg)
        names[name] = scheme.name
    snapshots: dict[str, list[dict[str, Any]]] = {"init": [], "half": []}
    for seed in seeds:
        for key, tokens in (("init", 0), ("half", config.total_timesteps // 2)):
            snapshots[key].append(audit_snapshot(spec, config, seed, tokens, schemes, folder, rows))
    return {"schemes": names, "snapshots": snapshots}


def nan_mean(values: list[Any]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(xs) / len(xs) if xs else math.nan
