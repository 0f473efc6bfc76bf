"""Advantage estimators: a registry, each entry declaring the inputs it needs.

Every credit-assignment scheme marlhf offers is an entry here (docs/method.md, "Credit
assignment as one code path"): the agent reads ``requires`` and computes only what is declared
(no value forward for an estimator that needs no critic, groups of rollouts only for group
baselines, greedy rollouts only for ReMax, Monte-Carlo continuations only for VinePPO-style
values).

Add one with a decorated function::

    @register_estimator("my_est", requires=("group_ids",))
    def my_est(batch: EstimatorBatch, config) -> Estimate:
        ...

Inputs an estimator may declare (``ESTIMATOR_INPUTS``):

- ``values``: the critic's value of each state, ``float[B, T]``;
- ``group_ids``: ``int64[B]``, rows with the same id answer the same prompt (``group_size`` rows);
- ``greedy_rewards``: ``float[B]``, the task score of a greedy rollout of each row's prompt;
- ``mc_values``: ``float[B, T]``, at each segment start the mean task score of ``mc_rollouts``
  continuations sampled from prompt + response prefix (NaN elsewhere);
- ``token_probs``: ``float[B, T]``, the policy's probability of each sampled token;
- ``turns``: the multi-turn layout: ``action_mask``, ``turn_ids``,
  ``turn_starts``, ``turn_rewards``, ``num_turns``, ``terminated``, ``truncated``;
- ``turn_state_keys``: the env's ``state_key()`` at the start of each turn;
- ``turn_potentials``: ``float[B, K]``, ``Phi(s) = log p(gold | s)`` under the policy at each
  turn start (:mod:`marlhf.credit.turn_potentials`); ``ref_turn_potentials``: the same under the
  frozen reference; ``turn_mean_probs`` / ``ref_turn_mean_probs``: IGPO's length-normalised
  probability of the gold answer ``exp(mean_j log p(g_j | s, g_<j))`` instead.

Turn-level estimators live in :mod:`marlhf.credit.turn_credit`; estimator *specs* with options
(``gigpo:omega=0.5``) and weighted sums (``grpo + 0.5 * gigpo_step``) are resolved by
:mod:`marlhf.credit.combine` through :func:`register_resolver`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from marlhf.credit.advantages import compute_gae, global_whiten
from marlhf.credit.estimator_options import GRPOOptions, MCOptions, ReinforcePPBaselineOptions

ESTIMATOR_INPUTS: tuple[str, ...] = (
    "values",
    "group_ids",
    "greedy_rewards",
    "mc_values",
    "token_probs",
    "turns",
    "turn_state_keys",
    "turn_potentials",
    "ref_turn_potentials",
    "turn_mean_probs",
    "ref_turn_mean_probs",
)


@dataclass
class EstimatorBatch:
    """What an estimator reads (fields it did not declare are ``None``).

    :param rewards: ``float[B, T]`` shaped token rewards (task reward, minus the KL penalty when
        the KL is in the reward); 0 on padding.
    :param task_rewards: ``float[B, T]`` the env's rewards alone.
    :param mask: ``bool[B, T]`` real response tokens.
    :param starts: ``bool[B, T]`` segment starts (every real token for token-level credit).

    Multi-turn fields (``turns``): ``action_mask bool[B, T]`` (tokens the
    policy sampled), ``turn_ids int64[B, T]`` (-1 on padding), ``turn_starts bool[B, T]``,
    ``turn_rewards float[B, K]``, ``num_turns int64[B]``, ``terminated``/``truncated bool[B]``.
    """

    rewards: Tensor
    task_rewards: Tensor
    mask: Tensor
    starts: Tensor
    values: Tensor | None = None
    group_ids: Tensor | None = None
    greedy_rewards: Tensor | None = None
    mc_values: Tensor | None = None
    token_probs: Tensor | None = None
    action_mask: Tensor | None = None
    turn_ids: Tensor | None = None
    turn_starts: Tensor | None = None
    turn_rewards: Tensor | None = None
    num_turns: Tensor | None = None
    terminated: Tensor | None = None
    truncated: Tensor | None = None
    turn_state_keys: list[list[Hashable]] | None = None
    turn_potentials: Tensor | None = None
    ref_turn_potentials: Tensor | None = None
    turn_mean_probs: Tensor | None = None
    ref_turn_mean_probs: Tensor | None = None


@dataclass
class Estimate:
    """An estimator's output.

    :param advantages: ``float[B, T]``; 0 on padding.
    :param returns: ``float[B, T]`` value targets, or ``None`` when there is no critic to train.
    :param segments: optional segment-level tensors for the logs (``seg_values``,
        ``seg_returns``, ``seg_mask``).
    """

    advantages: Tensor
    returns: Tensor | None = None
    segments: dict[str, Tensor] = field(default_factory=dict)


class EstimatorFn(Protocol):
    def __call__(self, batch: EstimatorBatch, config: Any) -> Estimate: ...


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered estimator: its function, declared inputs, a one-line description and the
    dataclass of the agent-config knobs it owns (``None``: it owns none)."""

    name: str
    fn: EstimatorFn
    requires: frozenset[str]
    description: str
    options: type | None = None

    @property
    def needs_critic(self) -> bool:
        return "values" in self.requires

    @property
    def needs_groups(self) -> bool:
        return "group_ids" in self.requires


_REGISTRY: dict[str, EstimatorSpec] = {}
#: Functions that turn a name the registry lacks (a spec with options, a weighted sum) into a
#: spec, or return None; consulted in order by :func:`get_estimator`.
_RESOLVERS: list[Callable[[str], EstimatorSpec | None]] = []


def register_resolver(resolve: Callable[[str], EstimatorSpec | None]) -> None:
    """Let :func:`get_estimator` build specs for names that are not registered entries."""
    if resolve not in _RESOLVERS:
        _RESOLVERS.append(resolve)


def register_estimator(
    name: str, requires: tuple[str, ...] = (), description: str = "", options: type | None = None
) -> Callable[[EstimatorFn], EstimatorFn]:
    """Register ``fn(batch, config) -> Estimate`` under ``name``, declaring its inputs.

    :param options: the frozen dataclass of the agent-config knobs only this estimator reads
        (recorded on the spec); the config's ``credit`` group holds the built-in ones under the
        estimator's name (:class:`GRPOOptions` at ``config.credit.grpo``,
        :class:`ReinforcePPBaselineOptions`, :class:`MCOptions`). A user's estimator takes its
        options in its spec instead (:func:`marlhf.credit.combine.register_options`).
    """
    if options is not None and not dataclasses.is_dataclass(options):
        raise TypeError(f"register_estimator({name!r}): options={options!r} is not a dataclass")
    unknown = sorted(set(requires) - set(ESTIMATOR_INPUTS))
    if unknown:
        raise ValueError(
            f"register_estimator({name!r}): unknown input {unknown[0]!r}; valid: "
            f"{list(ESTIMATOR_INPUTS)}"
        )

    def decorate(fn: EstimatorFn) -> EstimatorFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"register_estimator: {name!r} is already registered")
        text = description or (fn.__doc__ or "").strip().splitlines()[0]
        _REGISTRY[name] = EstimatorSpec(name, fn, frozenset(requires), text, options)
        return fn

    return decorate


def available_estimators() -> list[str]:
    """Registered estimator names, sorted."""
    return sorted(_REGISTRY)


def get_estimator(name: str) -> EstimatorSpec:
    """The registered estimator ``name``, or a ``ValueError`` listing the valid names."""
    if name not in _REGISTRY:
        for resolve in _RESOLVERS:
            spec = resolve(name) if isinstance(name, str) else None
            if spec is not None:
                return spec
        raise ValueError(f"estimator={name!r} is unknown; choose one of {available_estimators()}")
    return _REGISTRY[name]


def check_estimate(name: str, estimate: Estimate, batch: EstimatorBatch) -> None:
    """An estimator's output has the batch's shape, is finite on real tokens and 0 on padding."""
    for what, x in (("advantages", estimate.advantages), ("returns", estimate.returns)):
        if x is None:
            continue
        if x.shape != batch.mask.shape:
            raise ValueError(
                f"estimator {name!r}: {what} has shape {tuple(x.shape)}, expected "
                f"{tuple(batch.mask.shape)}"
            )
        if not bool(torch.isfinite(x[batch.mask]).all()):
            raise FloatingPointError(f"estimator {name!r}: non-finite {what} on a real token")
        if bool((x[~batch.mask] != 0).any()):
            raise ValueError(f"estimator {name!r}: {what} must be 0 on padding")


# ------------------------------------------------------------------------------------ helpers
def sequence_returns(batch: EstimatorBatch) -> Tensor:
    """``float[B]``: each row's total shaped reward (the outcome ``R_i``)."""
    return torch.where(batch.mask, batch.rewards, 0.0).sum(dim=1)


def broadcast(per_row: Tensor, mask: Tensor) -> Tensor:
    """``float[B] -> float[B, T]``: the row's value on its real tokens, 0 on padding."""
    return torch.where(mask, per_row[:, None].to(torch.float32), 0.0)


def group_stats(values: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row mean, unbiased std and size of the row's group (rows sharing a group id).

    :param values: ``float[B]``.
    :param group_ids: ``int64[B]``.
    :return: ``(mean[B], std[B], size[B])``; std is 0 for a group of one.
    """
    ids, inverse = torch.unique(group_ids, return_inverse=True)
    n = len(ids)
    v = values.to(torch.float64)
    size = torch.zeros(n, dtype=torch.float64, device=v.device).index_add_(
        0, inverse, torch.ones_like(v)
    )
    total = torch.zeros(n, dtype=torch.float64, device=v.device).index_add_(0, inverse, v)
    mean = total / size
    sq = torch.zeros(n, dtype=torch.float64, device=v.device).index_add_(
        0, inverse, (v - mean[inverse]) ** 2
    )
    var = torch.where(size > 1, sq / (size - 1).clamp(min=1), torch.zeros_like(sq))
    return mean[inverse], var.sqrt()[inverse], size[inverse]


def returns_to_go(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """``G_t = sum_{k >= t} gamma**(k - t) r_k`` per row, 0 on padding."""
    out = torch.zeros_like(rewards, dtype=torch.float32)
    running = torch.zeros(rewards.shape[0], dtype=torch.float32, device=rewards.device)
    r = torch.where(mask, rewards, 0.0).float()
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running
        out[:, t] = running
    return torch.where(mask, out, 0.0)


# ------------------------------------------------------------------------------------ entries
@register_estimator("gae", requires=("values",))
def gae(batch: EstimatorBatch, config: Any) -> Estimate:
    """GAE with a learned critic over segments (token-level PPO when every token starts one)."""
    assert batch.values is not None
    result = compute_gae(
        batch.rewards,
        batch.values,
        batch.mask,
        batch.starts,
        gamma=config.credit.gamma,
        gae_lambda=config.credit.gae_lambda,
        reward_agg=config.credit.reward_agg,
        value_agg=config.credit.value_agg,
        discount=config.credit.discount,
    )
    segments = {
        "seg_values": result.seg_values,
        "seg_returns": result.seg_returns,
        "seg_mask": result.seg_mask,
    }
    return Estimate(result.advantages, result.returns, segments)


def _group_baseline(batch: EstimatorBatch, leave_one_out: bool) -> tuple[Tensor, Tensor, Tensor]:
    if batch.group_ids is None:
        raise ValueError("a group estimator needs group_ids (set group_size >= 2)")
    outcome = sequence_returns(batch)
    mean, std, size = group_stats(outcome, batch.group_ids)
    if leave_one_out:
        if bool((size < 2).any()):
            raise ValueError("rloo needs groups of at least 2 rows (group_size >= 2)")
        # (sum - R_i) / (G - 1): the mean of the other rows of the group.
        mean = (mean * size - outcome.to(torch.float64)) / (size - 1)
    return outcome.to(torch.float64), mean, std


@register_estimator("grpo", requires=("group_ids",), options=GRPOOptions)
def grpo(batch: EstimatorBatch, config: Any) -> Estimate:
    """GRPO (arXiv 2402.03300): (R - group mean) / group std; std off = Dr. GRPO (2503.20783)."""
    outcome, mean, std = _group_baseline(batch, leave_one_out=False)
    adv = outcome - mean
    if config.credit.grpo.group_std:
        adv = adv / (std + 1e-6)
    return Estimate(broadcast(adv, batch.mask))


@register_estimator("rloo", requires=("group_ids",))
def rloo(batch: EstimatorBatch, config: Any) -> Estimate:
    """RLOO (arXiv 2402.14740): R minus the mean of the other rows of the group."""
    outcome, mean, _ = _group_baseline(batch, leave_one_out=True)
    return Estimate(broadcast(outcome - mean, batch.mask))


def _whiten_batch(x: Tensor, mask: Tensor) -> Tensor:
    # REINFORCE++ normalises over the whole (global) batch, once, before the update: with
    # several ranks, over every rank's tokens (one process: plain whiten).
    return global_whiten(x, mask)


@register_estimator("reinforce_pp")
def reinforce_pp(batch: EstimatorBatch, config: Any) -> Estimate:
    """REINFORCE++ (arXiv 2501.03262): return-to-go of the shaped rewards, batch-whitened."""
    returns = returns_to_go(batch.rewards, batch.mask, float(config.credit.gamma))
    return Estimate(_whiten_batch(returns, batch.mask))


def task_scores(batch: EstimatorBatch, config: Any = None) -> Tensor:
    """``float64[B]``: each row's task score (the env's rewards summed, no KL), each token's
    task reward clipped to ``config.credit.reward_clip`` first when one is given (as the shaped
    reward clips it)."""
    task = batch.task_rewards.double()
    clip = None if config is None else config.credit.reward_clip
    if clip is not None:
        task = task.clamp(-clip, clip)
    return torch.where(batch.mask, task, 0.0).sum(dim=1)


def _last_token(mask: Tensor) -> Tensor:
    """``bool[B, T]``: each non-empty row's last real token (a prefix mask)."""
    last = (mask.sum(dim=1) - 1).clamp(min=0)
    cols = torch.arange(mask.shape[1], device=mask.device)[None, :]
    return (cols == last[:, None]) & mask


@register_estimator(
    "reinforce_pp_baseline", requires=("group_ids",), options=ReinforcePPBaselineOptions
)
def reinforce_pp_baseline(batch: EstimatorBatch, config: Any) -> Estimate:
    """REINFORCE++-baseline (arXiv 2501.03262), in the form
    ``config.credit.reinforce_pp_baseline.reinforce_pp_form`` names.

    - ``"openrlhf"`` (default; the paper's authors' code): the group mean of the task score is
      subtracted from the score on the last token, the per-token KL stays in the reward, the
      advantage is the return-to-go of that reward, whitened over the batch;
    - ``"verl"``: the group mean of the KL-inclusive total is subtracted from the total, the
      result broadcast to every token of the response and whitened over the batch.

    With no KL in the reward (``beta = 0``) the two agree.
    """
    if batch.group_ids is None:
        raise ValueError("a group estimator needs group_ids (set group_size >= 2)")
    form = config.credit.reinforce_pp_baseline.reinforce_pp_form
    if form == "verl":
        outcome, mean, _ = _group_baseline(batch, leave_one_out=False)
        centred = broadcast(outcome - mean, batch.mask)
    else:
        mean, _, _ = group_stats(task_scores(batch, config), batch.group_ids)
        rewards = batch.rewards - torch.where(_last_token(batch.mask), mean[:, None], 0.0)
        centred = returns_to_go(rewards.float(), batch.mask, float(config.credit.gamma))
    return Estimate(_whiten_batch(centred, batch.mask))


def uniform_groups(batch: EstimatorBatch) -> Tensor:
    """``bool[B]``: rows whose group's task scores are all equal (no signal to learn; DAPO
    drops them). The test reads the env's score alone (DAPO filters on the accuracy), so a KL
    in the reward does not make an all-correct group look informative. Without groups nothing
    is uniform."""
    if batch.group_ids is None:
        return torch.zeros(batch.mask.shape[0], dtype=torch.bool, device=batch.mask.device)
    _, std, _ = group_stats(task_scores(batch), batch.group_ids)
    return std == 0


@register_estimator("remax", requires=("greedy_rewards",))
def remax(batch: EstimatorBatch, config: Any) -> Estimate:
    """ReMax (arXiv 2310.10505): the return-to-go of the shaped rewards minus the greedy
    rollout's task score, clipped as the sample's score is (verl's form: the baseline is the
    reward model's score of the greedy response; its KL is not scored)."""
    assert batch.greedy_rewards is not None
    baseline = batch.greedy_rewards.double()
    clip = config.credit.reward_clip
    if clip is not None:
        baseline = baseline.clamp(-clip, clip)
    returns = returns_to_go(batch.rewards, batch.mask, float(config.credit.gamma)).double()
    adv = torch.where(batch.mask, returns - baseline[:, None], 0.0)
    return Estimate(adv.to(torch.float32))


def prob_mask(logprobs: Tensor, mask: Tensor, threshold: float | None) -> Tensor:
    """``bool[B, T]``: the tokens SPO's probability mask keeps in the update: real tokens the
    policy sampled with probability at most ``threshold``. The others (probability above it:
    the policy was already confident) leave the loss, the KL term and the whitening. The one
    rule; the agent and the audit both call it.

    :param logprobs: ``float[B, T]`` the sampled tokens' log-probs at rollout time.
    :param mask: ``bool[B, T]`` real response tokens.
    :param threshold: a probability in ``[0, 1]``, or ``None``: every real token stays.
    """
    if threshold is None:
        return mask
    return mask & ~(logprobs.exp() > threshold)


@register_estimator("mc", requires=("mc_values",), options=MCOptions)
def mc(batch: EstimatorBatch, config: Any) -> Estimate:
    """Monte-Carlo values at segment starts, lambda 0 TD over segments (VinePPO; MA-Vine with
    macro actions; SPO-chain at low-probability cut points)."""
    assert batch.mc_values is not None
    branch = torch.isfinite(batch.mc_values) & batch.mask
    values = torch.where(branch, batch.mc_values, 0.0)
    result = compute_gae(
        batch.rewards,
        values,
        batch.mask,
        branch,
        gamma=config.credit.gamma,
        gae_lambda=0.0,
        reward_agg="sum",
        value_agg="first",
        discount=config.credit.discount,
    )
    segments = {
        "seg_values": result.seg_values,
        "seg_returns": result.seg_returns,
        "seg_mask": result.seg_mask,
    }
    return Estimate(result.advantages, None, segments)
