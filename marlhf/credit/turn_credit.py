"""Turn-level estimators (docs/credit_multiturn.md), registered in the estimator registry.

Each entry reads the multi-turn layout (``turns``) from the
:class:`~marlhf.credit.estimators.EstimatorBatch`, works on per-turn tensors with the pure
functions of :mod:`marlhf.credit.turn_maths`, and gives every action token its turn's credit
(environment tokens and padding get 0). A turn's reward is the sum of the shaped token rewards
inside it (the env's turn reward on its last action token, minus any in-reward KL).

==================  =============================================================  ==========
estimator           what                                                           options
==================  =============================================================  ==========
``turn_gae``        critic at turn starts, GAE over turns; uniform inside a turn   TurnGAE
                    or an inner token GAE bootstrapped from the next turn's value
``gigpo``           GiGPO: group-normalised episode return + omega x step          GiGPO
                    advantage over anchor groups of identical ``state_key()``
``gigpo_step``      GiGPO's step advantage alone (for weighted sums)               GiGPO
``mt_grpo``         MT-GRPO per-turn-index normalisation, as published (biased)    MTGRPO
``mt_grpo_fixed``   per-turn-index normalisation of returns-to-go over the rows    MTGRPO
                    that reached the turn (unbiased with std off)
``rebn``            GEM's ReBN: per-turn returns (gamma < 1), batch-normalised     ReBN
``turn_mc``         Monte-Carlo values at turn starts (VinePPO for agents; the     TurnMC
                    ``mc`` continuations with ``termination="turn"``)
``turn_potential``  per-turn rewards shaped by a potential Phi(s') - Phi(s)        Potential
                    (IGPO / TRACE: Phi = log p(gold | s))
==================  =============================================================  ==========

Options are given in the spec (``gigpo:omega=0.5;gamma=0.9``); see :mod:`marlhf.credit.combine`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from marlhf.credit import turn_maths as tm
from marlhf.credit.combine import register_options
from marlhf.credit.estimators import Estimate, EstimatorBatch, register_estimator
from marlhf.credit.turn_potentials import KINDS, SOURCES, potential_field
from marlhf.parallel.distributed import global_moments, initialized


class TurnInputError(ValueError):
    """An estimator lacks a multi-turn input it declared (names the estimator and the input)."""


def _unit(where: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}: {name}={value!r} must be a number in [0, 1]")


def _choice(where: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{where}: {name}={value!r} is not valid; choose one of {choices}")


# ------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class TurnGAEOptions:
    """``turn_gae``: GAE over turns from a critic's value at each turn start.

    :param gamma_turn: discount per turn.
    :param lambda_turn: GAE lambda across turns.
    :param inner: ``"uniform"`` (every token of a turn gets the turn's advantage) or ``"gae"``
        (token GAE inside the turn, bootstrapped from the next turn's start value).
    :param gamma_token: discount per token inside a turn (``inner="gae"``).
    :param lambda_token: GAE lambda per token inside a turn (``inner="gae"``).
    """

    gamma_turn: float = 1.0
    lambda_turn: float = 0.95
    inner: str = "uniform"
    gamma_token: float = 1.0
    lambda_token: float = 1.0

    def __post_init__(self) -> None:
        for name in ("gamma_turn", "lambda_turn", "gamma_token", "lambda_token"):
            _unit("turn_gae", name, getattr(self, name))
        _choice("turn_gae", "inner", self.inner, ("uniform", "gae"))


@dataclass(frozen=True)
class GiGPOOptions:
    """``gigpo`` / ``gigpo_step`` (arXiv 2505.10978).

    :param omega: weight of the step advantage (the paper's 1).
    :param gamma: discount of the per-turn returns the anchor groups compare (paper: 0.95).
    :param std: divide by the group's / anchor group's std (the paper's F_norm = std); False:
        mean-centring only.
    """

    omega: float = 1.0
    gamma: float = 0.95
    std: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.omega, bool) or not torch.isfinite(torch.tensor(float(self.omega))):
            raise ValueError(f"gigpo: omega={self.omega!r} must be a finite number")
        _unit("gigpo", "gamma", self.gamma)


@dataclass(frozen=True)
class MTGRPOOptions:
    """``mt_grpo`` / ``mt_grpo_fixed`` (arXiv 2505.11821).

    :param lam: weight of the outcome advantage on intermediate turns (the paper's lambda, 1).
    :param std: divide by the group (per-index) std, as published; False: centring only
        (``mt_grpo_fixed`` is then unbiased for the total return when ``lam = 1``).
    :param accumulate: ``mt_grpo`` only: an intermediate turn sums its own and its later
        intermediate turns' normalised rewards (verifiers PR#1554's form, the construction
        verl#7244 analyses); False: its own only (the paper).
    """

    lam: float = 1.0
    std: bool = True
    accumulate: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.lam, bool) or not torch.isfinite(torch.tensor(float(self.lam))):
            raise ValueError(f"mt_grpo: lam={self.lam!r} must be a finite number")


@dataclass(frozen=True)
class ReBNOptions:
    """``rebn`` (GEM, arXiv 2510.01051).

    :param gamma: discount per turn (< 1 makes shorter solutions worth more).
    """

    gamma: float = 0.9

    def __post_init__(self) -> None:
        _unit("rebn", "gamma", self.gamma)


@dataclass(frozen=True)
class TurnMCOptions:
    """``turn_mc``: TD over turns with Monte-Carlo values at turn starts.

    :param gamma: discount per turn.
    :param lam: lambda over turns (0: VinePPO's one-step TD).
    """

    gamma: float = 1.0
    lam: float = 0.0

    def __post_init__(self) -> None:
        _unit("turn_mc", "gamma", self.gamma)
        _unit("turn_mc", "lam", self.lam)


@dataclass(frozen=True)
class PotentialOptions:
    """``turn_potential``: per-turn rewards ``r_k + gamma Phi(s_{k+1}) - Phi(s_k)``.

    :param source: the model that scores the gold answer: ``"policy"`` (IGPO) or
        ``"reference"`` (a frozen model, TRACE / TIPS).
    :param kind: ``"logprob"`` (``Phi = log p(gold | s)``, the sum over the gold tokens) or
        ``"mean_prob"`` (IGPO's ``exp(mean_j log p(g_j | s, g_<j))``, the length-normalised
        probability), :data:`marlhf.credit.turn_potentials.KINDS`.
    :param gamma: discount per turn (1: Ng et al.'s policy-invariant shaping).
    :param terminal: ``"zero"`` (Phi after the last turn is 0: invariant) or ``"last"`` (the
        final turn is not shaped, as IGPO).
    :param normalize: how shaped rewards become advantages, one of
        :data:`marlhf.credit.turn_maths.NORMALISATIONS` (IGPO: ``group_rewards``).
    """

    source: str = "policy"
    kind: str = "logprob"
    gamma: float = 1.0
    terminal: str = "zero"
    normalize: str = "none"

    def __post_init__(self) -> None:
        _choice("turn_potential", "source", self.source, SOURCES)
        _choice("turn_potential", "kind", self.kind, KINDS)
        _unit("turn_potential", "gamma", self.gamma)
        _choice("turn_potential", "terminal", self.terminal, ("zero", "last"))
        _choice("turn_potential", "normalize", self.normalize, tm.NORMALISATIONS)

    @property
    def needs_groups(self) -> bool:
        return self.normalize.startswith(("group", "index"))

    @property
    def field(self) -> str:
        """The batch field holding this source's and kind's potentials."""
        return potential_field(self.source, self.kind)

    def requires(self, base: frozenset[str]) -> frozenset[str]:
        """This source's and kind's potentials instead of the policy's log-probabilities;
        groups for group normalisations."""
        out = set(base)
        out = (out - {"turn_potentials"}) | {self.field}
        if self.needs_groups:
            out.add("group_ids")
        return frozenset(out)


# ------------------------------------------------------------------------------ batch -> turns
@dataclass
class TurnView:
    """The per-turn tensors of a batch: layout, rewards (float64 ``[B, K]``), action mask."""

    layout: tm.TurnLayout
    rewards: Tensor
    action_mask: Tensor
    turn_ids: Tensor
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> Tensor:
        return self.layout.valid

    def tokens(self, per_turn: Tensor, mask: Tensor) -> Tensor:
        """Per-turn values on the action tokens (0 elsewhere), float32 ``[B, T]``."""
        return torch.where(mask, tm.to_tokens(per_turn, self.turn_ids, self.action_mask), 0.0)


def _missing(name: str, what: str, why: str) -> TurnInputError:
    return TurnInputError(f"estimator {name!r} needs {what}, which the batch lacks: {why}")


def turn_view(name: str, batch: EstimatorBatch) -> TurnView:
    """The turns of ``batch`` for estimator ``name``.

    :raises TurnInputError: the batch has no multi-turn layout (a one-turn task, where a
        turn-level estimator is undefined), naming the estimator and the field.
    """
    for attr in ("turn_ids", "num_turns"):
        if getattr(batch, attr) is None:
            raise _missing(
                name,
                f"turns ({attr})",
                "it is a turn-level estimator and the task gave no turns (a one-turn task?); "
                "use a multi-turn task, or a sequence-level estimator such as grpo",
            )
    turn_ids, num_turns = batch.turn_ids, batch.num_turns
    assert turn_ids is not None and num_turns is not None
    action_mask = batch.action_mask if batch.action_mask is not None else batch.mask
    action_mask = action_mask & batch.mask
    k_max = int(num_turns.max()) if num_turns.numel() else 0
    if batch.turn_rewards is not None:
        k_max = max(k_max, batch.turn_rewards.shape[1])
    layout = tm.turn_layout(turn_ids, action_mask, num_turns.to(turn_ids.device), k_max)
    rewards = tm.turn_sums(batch.rewards, turn_ids, batch.mask, k_max)
    return TurnView(layout, torch.where(layout.valid, rewards, 0.0), action_mask, turn_ids)


def _groups(name: str, batch: EstimatorBatch) -> Tensor:
    if batch.group_ids is None:
        raise _missing(name, "group_ids", "set group_size >= 2 (rows per prompt)")
    return batch.group_ids


def _state_keys(name: str, batch: EstimatorBatch, view: TurnView) -> list[list[Any]]:
    keys = batch.turn_state_keys
    if keys is None:
        raise _missing(
            name,
            "turn_state_keys",
            "the env has no state_key() (GiGPO's anchor groups are turns whose start states "
            "share a key); implement state_key() on the env or use mt_grpo_fixed / turn_gae",
        )
    n = view.layout.num_turns.tolist()
    short = [b for b, row in enumerate(keys) if len(row) < n[b]]
    if len(keys) != len(n) or short:
        row = short[0] if short else len(keys)
        raise ValueError(
            f"estimator {name!r}: turn_state_keys has {len(keys)} rows (row {row} too short) for "
            f"{len(n)} rows with num_turns {n}"
        )
    return keys


def _fit(per_turn: Tensor, width: int) -> Tensor:
    """A ``[B, K']`` per-turn tensor cut or zero-padded to ``K`` columns (its producer may size
    the turn axis by the longest episode, the buffer by ``max_turns``)."""
    if per_turn.shape[1] >= width:
        return per_turn[:, :width]
    pad = torch.zeros(per_turn.shape[0], width - per_turn.shape[1], dtype=per_turn.dtype)
    return torch.cat([per_turn, pad.to(per_turn.device)], dim=1)


def _options(cls: type, options: Any) -> Any:
    return cls() if options is None else options


# ------------------------------------------------------------------------------ entries
@register_estimator("turn_gae", requires=("values", "turns"))
def turn_gae(batch: EstimatorBatch, config: Any, options: Any = None) -> Estimate:
    """Two-level GAE: a critic at turn starts, GAE over turns, uniform or inner GAE in a turn."""
    opts: TurnGAEOptions = _options(TurnGAEOptions, options)
    if batch.values is None:
        raise _missing("turn_gae", "values", "the critic's values were not computed")
    view = turn_view("turn_gae", batch)
    values_k = tm.turn_at(batch.values, view.layout.start, view.valid)
    adv_k = tm.turn_gae(view.rewards, values_k, view.valid, opts.gamma_turn, opts.lambda_turn)
    segments = {
        "seg_values": values_k.float(),
        "seg_returns": (adv_k + values_k).float(),
        "seg_mask": view.valid,
    }
    if opts.inner == "uniform":
        advantages = view.tokens(adv_k, batch.mask)
        returns = view.tokens(adv_k + values_k, batch.mask)
        return Estimate(advantages, returns, segments)
    adv_t = tm.hierarchical_gae(
        torch.where(batch.mask, batch.rewards, 0.0),
        batch.values,
        view.action_mask,
        view.turn_ids,
        gamma_token=opts.gamma_token,
        lambda_token=opts.lambda_token,
        gamma_turn=opts.gamma_turn,
        lambda_turn=opts.lambda_turn,
    )
    act = view.action_mask & (view.turn_ids >= 0)
    advantages = torch.where(act, adv_t, 0.0).float()
    returns = torch.where(act, adv_t + batch.values.double(), 0.0).float()
    return Estimate(advantages, returns, segments)


def _gigpo_parts(
    name: str, batch: EstimatorBatch, opts: GiGPOOptions
) -> tuple[TurnView, Tensor, Tensor]:
    view = turn_view(name, batch)
    groups = _groups(name, batch)
    keys = _state_keys(name, batch, view)
    episode = tm.per_row(view.rewards.sum(dim=1), groups, opts.std)
    returns = tm.discounted_returns(view.rewards, view.valid, opts.gamma)
    step = tm.gigpo_step(returns, view.valid, groups, keys, opts.std)
    return view, episode, step


@register_estimator("gigpo", requires=("group_ids", "turns", "turn_state_keys"))
def gigpo(batch: EstimatorBatch, config: Any, options: Any = None) -> Estimate:
    """GiGPO (arXiv 2505.10978): episode advantage + omega x anchor-state step advantage."""
    opts: GiGPOOptions = _options(GiGPOOptions, options)
    view, episode, step = _gigpo_parts("gigpo", batch, opts)
    per_turn = torch.where(view.valid, episode[:, None] + opts.omega * step, 0.0)
    return Estimate(view.tokens(per_turn, batch.mask))


@register_estimator("gigpo_step", requires=("group_ids", "turns", "turn_state_keys"))
def gigpo_step(batch: EstimatorBatch, config: Any, options: Any = None) -> Estimate:
    """GiGPO's step advantage alone (anchor groups of identical start states; singletons 0)."""
    opts: GiGPOOptions = _options(GiGPOOptions, options)
    view, _, step = _gigpo_parts("gigpo_step", batch, opts)
    return Estimate(view.tokens(step, batch.mask))


@register_estimator("mt_grpo", requires=("group_ids", "turns"))
def mt_grpo(batch: EstimatorBatch, config: Any, options: Any = None) -> Estimate:
    """MT-GRPO per-turn-index normalisation as published (biased when the policy stops)."""
    opts: MTGRPOOptions = _options(MTGRPOOptions, options)
    view = turn_view("mt_grpo", batch)
    groups = _groups("mt_grpo", batch)
    per_turn = tm.per_index_published(
        view.rewards, view.valid, groups, opts.std, opts.lam, opts.accumulate
    )
    return Estimate(view.tokens(per_turn, batch.mask))


@register_estimator("mt_grpo_fixed", requires=("group_ids", "turns"))
def mt_grpo_fixed(batch: EstimatorBatch, config: Any, options: Any = None) -> Estimate:
    """Per-turn-index normalisation of returns-to-go over rows that reached the turn."""
    opts: MTGRPOOptions = _options(MTGRPOOptions, options)
    if opts.accumulate:
        raise ValueError(
            "estimator 'mt_grpo_fixed': accumulate applies to mt_grpo only (the corrected form "
            "always normalises the intermediate return-to-go)"
        )
    view = turn_view("mt_grpo_fixed", batch)
    groups = _groups("mt_grpo_fixed", batch)
    per_turn = tm.per_index_corrected(view.rewards, view.valid, groups, opts.std, opts.lam)
    return Estimate(view.tokens(per_turn, batch.mask))


def _normalise_turns_globally(x: Tensor, valid: Tensor) -> Tensor:
    """ReBN's batch normalisation over every rank's turns (one process: the local batch)."""
    if not initialized():
        return tm.batch_normalise(x, valid)
    mean, var, _ = global_moments(x, valid)
    return torch.where(valid, (x - mean) / (var.sqrt() + tm.EPS), 0.0)


@register_estimator("rebn", requires=("turns",))
def rebn(batch: EstimatorBatch, config: Any, options: Any = None) -> Estimate:
    """ReBN (GEM, arXiv 2510.01051): per-turn discounted returns, batch-normalised."""
    opts: ReBNOptions = _options(ReBNOptions, options)
    view = turn_view("rebn", batch)
    returns = tm.discounted_returns(view.rewards, view.valid, opts.gamma)
    return Estimate(view.tokens(_normalise_turns_globally(returns, view.valid), batch.mask))


@register_estimator("turn_mc", requires=("turns", "mc_values"))
def turn_mc(batch: EstimatorBatch, config: Any, options: Any = None) -> Estimate:
    """Monte-Carlo values at turn starts (VinePPO for agents), TD(lambda) over turns."""
    opts: TurnMCOptions = _options(TurnMCOptions, options)
    view = turn_view("turn_mc", batch)
    if batch.mc_values is None:
        raise _missing("turn_mc", "mc_values", "no Monte-Carlo continuations were run")
    values_k = tm.turn_at(batch.mc_values, view.layout.start, view.valid)
    bad = view.valid & ~torch.isfinite(values_k)
    if bool(bad.any()):
        row, k = (int(i) for i in bad.nonzero()[0])
        raise TurnInputError(
            f"estimator 'turn_mc' needs a Monte-Carlo value at every turn start, but row {row} "
            f"has none at turn {k}: use termination='turn' (continuations branch at segment "
            "starts) and mc_max_starts >= the task's max_turns"
        )
    adv_k = tm.turn_gae(view.rewards, values_k, view.valid, opts.gamma, opts.lam)
    return Estimate(view.tokens(adv_k, batch.mask))


@register_estimator("turn_potential", requires=("turns", "turn_potentials"))
def turn_potential(batch: EstimatorBatch, config: Any, options: Any = None) -> Estimate:
    """Potential-shaped per-turn rewards Phi(s') - Phi(s) (IGPO / TRACE; Ng et al. 1999)."""
    opts: PotentialOptions = _options(PotentialOptions, options)
    view = turn_view("turn_potential", batch)
    field_name = opts.field
    potentials = getattr(batch, field_name)
    if potentials is None:
        raise _missing(
            "turn_potential",
            field_name,
            f"the potentials ({opts.kind} of the gold answer under the {opts.source}) were not "
            "scored (does the env give gold()?)",
        )
    shaped = tm.potential_rewards(
        view.rewards, _fit(potentials, view.valid.shape[1]), view.valid, opts.gamma, opts.terminal
    )
    groups = _groups("turn_potential", batch) if opts.needs_groups else None
    per_turn = tm.advantages_from_turn_rewards(
        shaped, view.valid, groups, opts.gamma, opts.normalize
    )
    return Estimate(view.tokens(per_turn, batch.mask))


for _name, _cls in (
    ("turn_gae", TurnGAEOptions),
    ("gigpo", GiGPOOptions),
    ("gigpo_step", GiGPOOptions),
    ("mt_grpo", MTGRPOOptions),
    ("mt_grpo_fixed", MTGRPOOptions),
    ("rebn", ReBNOptions),
    ("turn_mc", TurnMCOptions),
    ("turn_potential", PotentialOptions),
):
    register_options(_name, _cls)
