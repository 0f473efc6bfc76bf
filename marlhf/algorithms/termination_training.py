"""Training a learned termination between policy updates: cut where the credit is wrong.

A learned termination (:class:`marlhf.options.learned.Learned`) cannot learn from the return
(the cuts do not change what is sampled); it learns from the error of the agent's own advantage
estimate against the true advantage. After each rollout (every ``every``-th), the agent calls
:func:`train_termination`, which:

1. computes the target advantages of ``rows`` of the rollout's episodes under the current
   policy: exact enumeration (:func:`~marlhf.credit.truth.exact_advantages`) on tasks with a
   decisive depth, Monte Carlo with standard errors (:func:`~marlhf.credit.truth.mc_advantages`)
   elsewhere;
2. finds, per episode, the *oracle* cut set within the budget: greedy forward selection that
   adds, one cut at a time, the candidate position whose cut most lowers the squared error of
   the agent's estimator (its registered estimator with its config, on the task rewards and the
   critic's values, exactly as the audit scores it) against the target, summed over the
   episode's tokens (:func:`oracle_cuts`);
3. takes ``steps`` steps of the termination's own Adam optimizer towards those cut sets
   (:meth:`~marlhf.options.learned.Learned.fit_step`), and logs ``train/termination_loss``,
   ``train/termination_rmse`` (the estimator's RMSE with the model's cuts before the steps),
   ``train/termination_oracle_rmse`` and the truth's cost (``train/termination_truth_tokens``).

The oracle is what a termination with full knowledge of the truth would cut: the model learns
to predict it from what it sees at segmentation time. With Monte-Carlo targets the error of
every cut set carries the same added noise (the continuations are independent of the rollout's
own estimate), so the noisy error ranks cut sets as the true one does in expectation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from marlhf.credit.estimators import EstimatorBatch, get_estimator
from marlhf.credit.truth import Sampling, TrueAdvantages, exact_advantages, mc_advantages
from marlhf.options import SegmentationBatch
from marlhf.options.budget import CutBudget
from marlhf.policy.lm_utils import hidden_size

#: estimator inputs the oracle cannot recompute for each cut set it tries
_UNSUPPORTED = ("mc_values", "greedy_rewards")


def policy_fingerprint(policy: Any) -> str:
    """``"<model class>-h<hidden size>"``: what a learned termination is tied to (with the
    vocabulary size)."""
    model = getattr(policy, "model", policy)
    unwrap = getattr(model, "get_base_model", None)
    base = unwrap() if callable(unwrap) else model
    return f"{type(base).__name__}-h{hidden_size(base)}"


def check_target(target: str, task: Any) -> None:
    """Raise naming ``target`` for ``"exact"`` on a task without a decisive depth."""
    if target == "exact" and getattr(task, "decisive_tokens", None) is None:
        name = getattr(task, "name", type(task).__name__)
        raise ValueError(
            f"learned: target='exact' needs a task with a decisive depth (decisive_tokens); "
            f"task {name!r} declares none; use target='mc' or target='auto' (valid: "
            "auto, exact, mc)"
        )


def supported_estimator(name: str) -> Any:
    """The registered estimator ``name``; raises naming ``estimator`` when the oracle cannot
    recompute its advantages for each cut set it tries."""
    spec = get_estimator(name)
    missing = sorted(set(spec.requires) & set(_UNSUPPORTED))
    if missing:
        raise ValueError(
            f"learned: estimator={spec.name!r} needs {missing}, which the oracle cannot "
            "recompute for each cut set; use a learned termination with an estimator that "
            "needs neither (gae, grpo, rloo, reinforce_pp, ...)"
        )
    return spec


def check_termination(algo: Any) -> None:
    """Before training (when the agent gets its env): refuse, naming the field, what its
    termination cannot serve or a learned termination cannot train on, rather than after a
    first rollout.

    - a cut ``budget`` above the env's horizon (``max_new_tokens``; valid: 1..horizon);
    - a learned termination trained for another policy (``arch``, ``vocab_size``), also when
      it is used frozen (``steps=0``);
    - ``target='exact'`` on a task without a decisive depth;
    - an estimator whose advantages the oracle cannot recompute, or a multi-turn env.
    """
    term, env = algo.termination, algo.env
    check_horizon = getattr(term, "check_horizon", None)
    if callable(check_horizon):
        check_horizon(int(env.max_new_tokens))
    if not getattr(term, "trainable", False):
        return
    term.check_policy(policy_fingerprint(algo.policy), int(algo.policy.vocab_size))
    if term.steps == 0:  # used frozen: nothing below is needed
        return
    if callable(getattr(env, "turn_record", None)):
        raise ValueError(
            f"learned: {type(env).__name__} is a multi-turn env, which a learned termination "
            "cannot train on (its truth is of single-turn tasks); use steps=0 to apply a "
            "trained one, or a heuristic termination"
        )
    supported_estimator(algo.config.credit.estimator)
    task = getattr(env, "task", None)
    if task is not None:
        check_target(term.target, task)


def target_advantages(
    target: str,
    policy: Any,
    task: Any,
    prompts: list[Any],
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    sampling: Sampling,
    *,
    mc_samples: int = 4,
    seed: int = 0,
) -> TrueAdvantages:
    """The advantages a learned termination trains against (see :class:`Learned`'s ``target``).

    :raises ValueError: naming ``target`` for ``"exact"`` on a task without a decisive depth.
    """
    check_target(target, task)
    decisive = getattr(task, "decisive_tokens", None)
    args = (policy, task, prompts, response_ids, response_mask)
    if target == "exact" or (target == "auto" and decisive is not None):
        return exact_advantages(*args, sampling=sampling)
    return mc_advantages(*args, sampling=sampling, samples=mc_samples, seed=seed)


def truth_tokens(truth: TrueAdvantages) -> int:
    """Tokens the truth cost: forward tokens of the enumeration, or generated continuations."""
    return int(truth.stats.get("mc_tokens", truth.stats.get("forward_tokens", 0.0)))


def base_starts(mask: torch.Tensor, isolate_last: bool) -> torch.Tensor:
    """Starts every rule has: the first real token, and the last with ``isolate_last``."""
    lengths = mask.sum(dim=1, keepdim=True)
    cols = torch.arange(mask.shape[1], device=mask.device)[None, :]
    out = mask & (cols == 0)
    if isolate_last:
        out |= mask & (cols == lengths - 1)
    return out


def estimator_errors(
    advantages_of: Callable[[torch.Tensor], torch.Tensor],
    starts: torch.Tensor,
    true: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """``float64[B]``: each row's summed squared error of the estimator's advantages."""
    err = (advantages_of(starts).double() - true.double()).square()
    return torch.where(mask, err, 0.0).sum(dim=1)


def oracle_cuts(
    advantages_of: Callable[[torch.Tensor], torch.Tensor],
    true: torch.Tensor,
    mask: torch.Tensor,
    budget: CutBudget,
    *,
    isolate_last: bool = True,
) -> torch.Tensor:
    """``bool[B, T]``: per row, the cut set chosen greedily to minimise the estimator's error.

    :param advantages_of: ``starts bool[N, T] -> advantages float[N, T]`` for ``N`` stacked
        copies of the batch's rows (``N = k * B``, copy ``j`` of row ``b`` at ``j * B + b``).
    :param true: ``float[B, T]`` the target advantages.
    :param budget: how many cuts each row gets (``threshold`` and ``q`` are ignored: the oracle
        chooses by error, not by score).
    """
    b, t = mask.shape
    chosen = torch.zeros_like(mask)
    if t == 0 or b == 0:
        return chosen
    cand = budget.candidates(mask)
    keep = budget.cuts_per_row(mask).clamp(max=t)
    fixed = base_starts(mask, isolate_last)
    eye = torch.eye(t, dtype=torch.bool, device=mask.device)
    for step in range(int(keep.max()) if keep.numel() else 0):
        active = (step < keep) & (cand & ~chosen).any(dim=1)
        if not bool(active.any()):
            break
        # copy c of the batch adds a cut at column c to every row
        trial = (fixed | chosen)[None, :, :] | eye[:, None, :]  # [T, B, T]
        trial &= mask[None]
        adv = advantages_of(trial.reshape(t * b, t)).reshape(t, b, t).double()
        err = torch.where(mask[None], (adv - true.double()[None]).square(), 0.0).sum(dim=2)
        err = err.masked_fill(~(cand & ~chosen).T, math.inf)  # [T, B]
        best = err.argmin(dim=0)
        rows = active.nonzero().flatten()
        chosen[rows, best[rows]] = True
    return chosen


def batch_oracle_cuts(
    advantages_of: Callable[[torch.Tensor], torch.Tensor],
    true: torch.Tensor,
    mask: torch.Tensor,
    total: int,
    *,
    isolate_last: bool = True,
) -> torch.Tensor:
    """``bool[B, T]``: ``total`` cuts over the whole batch, added greedily one at a time where
    the estimator's squared error against ``true`` drops most (rows are independent: the
    estimator's advantages of one row do not depend on another's cuts).

    :param advantages_of: as :func:`oracle_cuts`'s.
    """
    b, t = mask.shape
    chosen = torch.zeros_like(mask)
    if t == 0 or b == 0 or total <= 0:
        return chosen
    cand = CutBudget("oracle", budget=1).candidates(mask)
    fixed = base_starts(mask, isolate_last)
    eye = torch.eye(t, dtype=torch.bool, device=mask.device)
    target = true.double()
    for _ in range(total):
        free = cand & ~chosen
        if not bool(free.any()):
            break
        now = estimator_errors(advantages_of, fixed | chosen, true, mask)  # [B]
        trial = ((fixed | chosen)[None, :, :] | eye[:, None, :]) & mask[None]  # [T, B, T]
        adv = advantages_of(trial.reshape(t * b, t)).reshape(t, b, t).double()
        err = torch.where(mask[None], (adv - target[None]).square(), 0.0).sum(dim=2)  # [T, B]
        gain = (now[None, :] - err).masked_fill(~free.T, -math.inf)
        col, row = divmod(int(gain.argmax()), b)
        chosen[row, col] = True
    return chosen


def estimator_function(algo: Any, rows: slice) -> Callable[[torch.Tensor], torch.Tensor]:
    """``starts -> advantages`` of the agent's estimator on ``rows`` of its rollout, for any
    number of stacked copies of those rows (task rewards, as the audit: the truth is of the
    task's return)."""
    spec = supported_estimator(algo.config.credit.estimator)
    buf = algo.rollout_buffer
    rewards = buf.task_rewards[rows]
    values = buf.values[rows] if buf.has_values else None
    groups = buf.group_ids[rows] if buf.group_ids is not None else None
    probs = buf.logprobs[rows].exp()
    mask = buf.response_mask[rows]
    n = mask.shape[0]

    def advantages_of(starts: torch.Tensor) -> torch.Tensor:
        k = starts.shape[0] // n
        offset = torch.arange(k, device=mask.device).repeat_interleave(n)

        def tile(x: torch.Tensor) -> torch.Tensor:
            return x.repeat(k, *([1] * (x.dim() - 1)))

        batch = EstimatorBatch(
            rewards=tile(rewards),
            task_rewards=tile(rewards),
            mask=tile(mask),
            starts=starts,
            values=tile(values) if values is not None and "values" in spec.requires else None,
            group_ids=None if groups is None else tile(groups) + offset * (int(groups.max()) + 1),
            token_probs=tile(probs) if "token_probs" in spec.requires else None,
        )
        return spec.fn(batch, algo.config).advantages

    return advantages_of


def train_termination(algo: Any) -> dict[str, float]:
    """One training round of the agent's learned termination on its current rollout (module
    docstring); returns the figures to log (empty when this rollout is skipped)."""
    term = algo.termination
    iteration = int(getattr(algo, "_iteration", 0))
    if term.steps == 0 or iteration % term.every:
        return {}
    term.bind(policy_fingerprint(algo.policy), int(algo.policy.vocab_size))
    start = time.perf_counter()
    buf = algo.rollout_buffer
    if getattr(buf, "turns", None) is not None:
        raise ValueError(
            "learned: multi-turn episodes are not supported (its truth is of single-turn "
            "tasks); use a heuristic termination with a multi-turn env"
        )
    rows = slice(0, min(term.rows, buf.response_mask.shape[0]))
    mask = buf.response_mask[rows]
    prompts = (algo._rollout_prompts or [])[rows]
    if len(prompts) != mask.shape[0]:
        raise ValueError(
            f"learned: the env's reset returned no info['prompts'] for the rollout's rows; "
            f"{type(algo.env).__name__} cannot give the truth a learned termination trains on"
        )
    truth = target_advantages(
        term.target,
        algo.policy,
        algo.env.task,
        prompts,
        buf.response_ids[rows].cpu(),
        mask.cpu(),
        Sampling.of(algo),
        mc_samples=term.mc_samples,
        seed=iteration,
    )
    true = truth.advantages.to(mask.device)
    advantages_of = estimator_function(algo, rows)
    isolate = bool(algo.config.credit.isolate_last)
    if getattr(term, "per", "episode") == "batch":  # budget * B cuts anywhere in the batch
        total = int(term.cut_budget.budget) * mask.shape[0]
        oracle = batch_oracle_cuts(advantages_of, true, mask, total, isolate_last=isolate)
    else:
        oracle = oracle_cuts(advantages_of, true, mask, term.cut_budget, isolate_last=isolate)
    batch = SegmentationBatch.build(
        buf.response_ids[rows],
        mask,
        term.requires,
        logprobs=buf.logprobs[rows],
        entropy=None if algo._rollout_entropy is None else algo._rollout_entropy[rows],
        values=buf.values[rows] if buf.has_values else None,
    )
    own = term.starts(batch) | base_starts(mask, isolate)
    tokens = max(int(mask.sum()), 1)
    rmse = float(estimator_errors(advantages_of, own, true, mask).sum() / tokens) ** 0.5
    oracle_starts = oracle | base_starts(mask, isolate)
    oracle_rmse = float(estimator_errors(advantages_of, oracle_starts, true, mask).sum() / tokens)
    losses = [term.fit_step(batch, oracle) for _ in range(term.steps)]
    cost = truth_tokens(truth)
    term.truth_tokens += cost
    return {
        "train/termination_loss": losses[0] if losses else math.nan,
        "train/termination_loss_after": losses[-1] if losses else math.nan,
        "train/termination_rmse": rmse,
        "train/termination_oracle_rmse": oracle_rmse**0.5,
        "train/termination_truth_tokens": float(cost),
        "train/termination_seconds": time.perf_counter() - start,
    }
