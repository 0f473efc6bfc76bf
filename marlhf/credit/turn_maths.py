"""The pure maths of turn-level credit (docs/credit_multiturn.md), over plain tensors.

Nothing here reads a config or a buffer: :mod:`marlhf.credit.turn_credit` wires these functions
into the estimator registry. Shapes: ``B`` episodes, ``T`` token positions after the first prompt
(agent and forced environment tokens interleaved, right-padded), ``K`` turns at most.

Turn-level tensors are ``[B, K]`` with a ``valid`` mask ``bool[B, K]`` that is a prefix of each
row (``k < num_turns``); entries off ``valid`` are ignored and come back as 0. Per-turn rewards
``r[b, k]`` are what turn ``k`` earned (the env's reward for the turn plus any per-token shaping
inside it). Arithmetic runs in float64.

Conventions shared by every function:

- the return of turn ``k`` is ``G_k = sum_{j >= k} gamma**(j - k) r_j`` (turns, not tokens, are
  the steps);
- the episode ends after its last turn: nothing is bootstrapped there (the task's score is given
  on the last turn whether the episode terminated or hit the turn limit, as for single-turn
  responses cut at ``max_new_tokens``);
- a group is the set of rows sharing a ``group_ids`` value (the same prompt).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

EPS = 1e-6  # added to a standard deviation before dividing by it (as grpo does)


# ------------------------------------------------------------------------------ token <-> turn
@dataclass
class TurnLayout:
    """Where each turn sits in the token axis.

    :param start: ``int64[B, K]`` position of each turn's first action token (0 where invalid).
    :param last: ``int64[B, K]`` position of each turn's last action token (0 where invalid).
    :param valid: ``bool[B, K]`` the turns each row has.
    """

    start: Tensor
    last: Tensor
    valid: Tensor

    @property
    def num_turns(self) -> Tensor:
        """``int64[B]``."""
        return self.valid.sum(dim=1)


def turn_layout(turn_ids: Tensor, action_mask: Tensor, num_turns: Tensor, k_max: int) -> TurnLayout:
    """The first and last action token of every turn.

    :param turn_ids: ``int64[B, T]`` turn index of each position (-1 on padding).
    :param action_mask: ``bool[B, T]`` tokens the policy sampled.
    :param num_turns: ``int64[B]`` turns per row.
    :param k_max: ``K``, the width of the turn axis.
    :raises ValueError: a turn ``k < num_turns`` without any action token, or an action token
        whose turn id is outside ``[0, num_turns)``.
    """
    b, t = turn_ids.shape
    ks = torch.arange(k_max, device=turn_ids.device)
    valid = ks[None, :] < num_turns[:, None]
    ids = torch.where(action_mask, turn_ids, torch.full_like(turn_ids, -1))
    if bool(((ids >= num_turns[:, None]) & action_mask).any()):
        row = int(((ids >= num_turns[:, None]) & action_mask).any(dim=1).nonzero()[0])
        raise ValueError(
            f"turn layout: row {row} has an action token with turn id >= num_turns "
            f"({int(num_turns[row])})"
        )
    hit = ids[:, :, None] == ks[None, None, :]  # [B, T, K]
    pos = torch.arange(t, device=turn_ids.device)[None, :, None].expand(b, t, k_max)
    big = torch.full_like(pos, t)
    start = torch.where(hit, pos, big).amin(dim=1)
    last = torch.where(hit, pos, torch.full_like(pos, -1)).amax(dim=1)
    missing = valid & (start == t)
    if bool(missing.any()):
        row, k = (int(i) for i in missing.nonzero()[0])
        raise ValueError(
            f"turn layout: row {row} has num_turns={int(num_turns[row])} but turn {k} has no "
            "action token"
        )
    zero = torch.zeros_like(start)
    return TurnLayout(torch.where(valid, start, zero), torch.where(valid, last, zero), valid)


def turn_sums(x: Tensor, turn_ids: Tensor, select: Tensor, k_max: int) -> Tensor:
    """``float64[B, K]``: the sum of ``x`` over the positions of each turn (where ``select``)."""
    index = turn_ids.clamp(min=0, max=max(k_max - 1, 0))
    src = torch.where(select & (turn_ids >= 0), x.double(), 0.0)
    out = torch.zeros(x.shape[0], k_max, dtype=torch.float64, device=x.device)
    return out.scatter_add_(1, index, src)


def turn_at(x: Tensor, positions: Tensor, valid: Tensor) -> Tensor:
    """``float64[B, K]``: ``x[b, positions[b, k]]`` on valid turns, 0 elsewhere."""
    return torch.where(valid, torch.gather(x.double(), 1, positions), 0.0)


def to_tokens(per_turn: Tensor, turn_ids: Tensor, action_mask: Tensor) -> Tensor:
    """``[B, K] -> float32[B, T]``: every action token gets its turn's value; 0 elsewhere
    (environment tokens are not actions and padding has no turn)."""
    if per_turn.shape[1] == 0:
        return torch.zeros(turn_ids.shape, dtype=torch.float32, device=turn_ids.device)
    index = turn_ids.clamp(min=0, max=per_turn.shape[1] - 1)
    out = torch.gather(per_turn, 1, index).float()
    return torch.where(action_mask & (turn_ids >= 0), out, 0.0)


# ------------------------------------------------------------------------------ returns, GAE
def discounted_returns(rewards: Tensor, valid: Tensor, gamma: float) -> Tensor:
    """``G_k = r_k + gamma * G_{k+1}`` over each row's valid turns (``float64[B, K]``)."""
    r = torch.where(valid, rewards.double(), 0.0)
    out = torch.zeros_like(r)
    running = torch.zeros(r.shape[0], dtype=torch.float64, device=r.device)
    for k in range(r.shape[1] - 1, -1, -1):
        running = r[:, k] + gamma * running
        out[:, k] = running
    return torch.where(valid, out, 0.0)


def turn_gae(rewards: Tensor, values: Tensor, valid: Tensor, gamma: float, lam: float) -> Tensor:
    """GAE over turns: ``delta_k = r_k + gamma V_{k+1} - V_k``, ``A_k = delta_k + gamma lam
    A_{k+1}``; ``V`` past the last turn is 0 (``float64[B, K]``).

    :param values: ``[B, K]`` the value of the state at each turn's start.
    """
    r = torch.where(valid, rewards.double(), 0.0)
    v = torch.where(valid, values.double(), 0.0)
    next_v = torch.zeros_like(v)
    next_v[:, :-1] = v[:, 1:]
    deltas = r + gamma * next_v - v
    out = torch.zeros_like(r)
    running = torch.zeros(r.shape[0], dtype=torch.float64, device=r.device)
    for k in range(r.shape[1] - 1, -1, -1):
        running = deltas[:, k] + gamma * lam * running
        out[:, k] = running
    return torch.where(valid, out, 0.0)


def hierarchical_gae(
    rewards: Tensor,
    values: Tensor,
    action_mask: Tensor,
    turn_ids: Tensor,
    *,
    gamma_token: float,
    lambda_token: float,
    gamma_turn: float,
    lambda_turn: float,
) -> Tensor:
    """Token-level GAE inside turns, turn-level discounting across them (``float64[B, T]``).

    Over each row's action tokens in order (environment tokens are skipped; their rewards, 0 in
    practice, join the turn's last action token): for an action token ``t`` followed by ``t'``,

    - inside a turn: ``delta_t = r_t + gamma_token V_t' - V_t``,
      ``A_t = delta_t + gamma_token lambda_token A_t'``;
    - the last action token of turn ``k`` bootstraps from the first of turn ``k + 1`` (the
      turn's value): ``delta_t = r_t + gamma_turn V_t' - V_t``,
      ``A_t = delta_t + gamma_turn lambda_turn A_t'``;
    - the last action token of the episode: ``A_t = delta_t = r_t - V_t``.

    ``gamma_token = lambda_token = 1`` with ``lambda_turn = 1`` gives the Monte-Carlo return
    minus ``V_t``; Verlog's dual discounting is ``gamma_token = 1`` with ``gamma_turn < 1``.

    :param rewards: ``float[B, T]`` token rewards (the turn's reward on its last action token).
    :param values: ``float[B, T]`` ``V(s_t)`` of each position (read on action tokens only).
    :return: advantages on action tokens, 0 elsewhere.
    """
    b, t = rewards.shape
    act = action_mask & (turn_ids >= 0)
    r = torch.where(turn_ids >= 0, rewards.double(), 0.0)
    v = torch.where(act, values.double(), 0.0)
    out = torch.zeros(b, t, dtype=torch.float64, device=r.device)
    zero = torch.zeros(b, dtype=torch.float64, device=r.device)
    next_v, next_a, pending = zero, zero, zero
    next_turn = torch.full((b,), -1, dtype=turn_ids.dtype, device=r.device)
    for col in range(t - 1, -1, -1):
        here = act[:, col]
        # Scanning backwards, a turn's env tokens come before (in the scan) its last action.
        pending = pending + torch.where(here, 0.0, r[:, col])
        last = here & (turn_ids[:, col] != next_turn)
        reward = r[:, col] + torch.where(last, pending, 0.0)
        g = torch.where(last, gamma_turn, gamma_token).double()
        gl = torch.where(last, gamma_turn * lambda_turn, gamma_token * lambda_token).double()
        adv = reward + g * next_v - v[:, col] + gl * next_a
        out[:, col] = torch.where(here, adv, 0.0)
        pending = torch.where(last, 0.0, pending)
        next_v = torch.where(here, v[:, col], next_v)
        next_a = torch.where(here, adv, next_a)
        next_turn = torch.where(here, turn_ids[:, col], next_turn)
    return out


# ------------------------------------------------------------------------------ normalisers
def _pool_stats(x: Tensor, keys: Sequence[Hashable]) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, unbiased std and size of each entry's pool (entries sharing a key), float64."""
    index: dict[Hashable, int] = {}
    ids = torch.tensor([index.setdefault(k, len(index)) for k in keys], dtype=torch.long)
    ids = ids.to(x.device)
    n = len(index)
    v = x.double()
    size = torch.zeros(n, dtype=torch.float64, device=x.device).index_add_(
        0, ids, torch.ones_like(v)
    )
    mean = torch.zeros(n, dtype=torch.float64, device=x.device).index_add_(0, ids, v) / size
    sq = torch.zeros(n, dtype=torch.float64, device=x.device).index_add_(
        0, ids, (v - mean[ids]) ** 2
    )
    var = torch.where(size > 1, sq / (size - 1).clamp(min=1), torch.zeros_like(sq))
    return mean[ids], var.sqrt()[ids], size[ids]


def pooled_normalise(x: Tensor, valid: Tensor, keys: Sequence[Hashable], std: bool) -> Tensor:
    """Each valid entry minus the mean of its pool (entries of ``valid`` with the same key,
    in row-major order), divided by the pool's unbiased std + ``EPS`` when ``std``; a pool of
    one entry gives 0. Returns ``float64`` of ``x``'s shape, 0 off ``valid``.

    :param keys: one hashable key per valid entry, in ``valid.nonzero()`` order.
    """
    flat = x.double()[valid]
    if len(keys) != flat.numel():
        raise ValueError(f"pooled_normalise: {len(keys)} keys for {flat.numel()} entries")
    out = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    if flat.numel() == 0:
        return out
    mean, sd, _ = _pool_stats(flat, keys)
    centred = flat - mean
    if std:
        centred = centred / (sd + EPS)
    out[valid] = centred
    return out


def group_index_keys(group_ids: Tensor, valid: Tensor) -> list[tuple[int, int]]:
    """``(group, turn index)`` of each valid entry, in ``valid.nonzero()`` order."""
    return [(int(group_ids[b]), int(k)) for b, k in valid.nonzero().tolist()]


def group_keys(group_ids: Tensor, valid: Tensor) -> list[int]:
    """The group of each valid entry, in ``valid.nonzero()`` order."""
    return [int(group_ids[b]) for b, _ in valid.nonzero().tolist()]


def per_row(values: Tensor, group_ids: Tensor, std: bool) -> Tensor:
    """``float64[B]``: each row's value minus its group's mean (/ group std + EPS when ``std``)."""
    valid = torch.ones(values.shape[0], 1, dtype=torch.bool, device=values.device)
    return pooled_normalise(values[:, None], valid, group_keys(group_ids, valid), std)[:, 0]


def batch_normalise(x: Tensor, valid: Tensor) -> Tensor:
    """``(x - mean) / (std + EPS)`` over every valid entry of the batch (unbiased std); with
    fewer than two entries, ``x`` as it is (0 off ``valid``)."""
    xs = x.double()[valid]
    out = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    if xs.numel() < 2:
        out[valid] = xs
        return out
    out[valid] = (xs - xs.mean()) / (xs.std() + EPS)
    return out


# ------------------------------------------------------------------------------ estimators
def gigpo_step(
    returns: Tensor,
    valid: Tensor,
    group_ids: Tensor,
    state_keys: Sequence[Sequence[Hashable]],
    std: bool,
) -> Tensor:
    """GiGPO's step advantage (arXiv 2505.10978): each turn's return normalised within its
    anchor group, the turns of a prompt's group whose start states share a ``state_key``;
    an anchor group of one gets 0 (``float64[B, K]``).

    :param returns: ``[B, K]`` discounted per-turn returns.
    :param state_keys: ``state_keys[b][k]`` the env state's key at the start of turn ``k``.
    """
    keys = [(int(group_ids[b]), state_keys[b][k]) for b, k in valid.nonzero().tolist()]
    return pooled_normalise(returns, valid, keys, std)


def _outcome_and_intermediate(
    turn_rewards: Tensor, valid: Tensor, group_ids: Tensor, std: bool
) -> tuple[Tensor, Tensor]:
    """``(A^O[B], intermediate[B, K])``: the group-normalised outcome (the last turn's reward)
    and the mask of each row's intermediate turns (``k < n - 1``)."""
    n = valid.sum(dim=1)
    last = (n - 1).clamp(min=0)
    outcome = torch.gather(turn_rewards.double(), 1, last[:, None])[:, 0]
    ks = torch.arange(valid.shape[1], device=valid.device)
    return per_row(outcome, group_ids, std), valid & (ks[None, :] < (n - 1)[:, None])


def per_index_published(
    turn_rewards: Tensor,
    valid: Tensor,
    group_ids: Tensor,
    std: bool,
    lam: float,
    accumulate: bool = False,
) -> Tensor:
    """MT-GRPO's per-turn-index normalisation, as published (arXiv 2505.11821): biased when the
    policy decides how many turns to take (verl#7244).

    Row ``i`` with ``n_i`` turns: outcome ``O_i = r_{i, n_i - 1}`` (the last turn's reward),
    intermediate rewards ``r_{i,k}``, ``k < n_i - 1``. With ``N(.)`` the group normalisation
    (minus the mean, / std + EPS when ``std``):

    - ``A^O_i = N(O_i)`` over the group;
    - ``A^T_{i,k} = N(r_{i,k})`` over the group's rows that have an intermediate turn ``k``;
    - an intermediate turn gets ``A^T_{i,k} + lam * A^O_i``, the final turn ``A^O_i`` (the
      paper's form); with ``accumulate``, an intermediate turn gets the sum of its own and its
      later intermediate turns' ``A^T`` instead (verifiers PR#1554's step-level dense rewards,
      the aggregated construction verl#7244 analyses).

    The bias: the baseline subtracted from a turn depends on whether the row took another turn
    (only rows that continued are in turn ``k``'s pool, and only they get the term).
    """
    a_out, inter = _outcome_and_intermediate(turn_rewards, valid, group_ids, std)
    a_turn = pooled_normalise(turn_rewards, inter, group_index_keys(group_ids, inter), std)
    if accumulate:
        a_turn = discounted_returns(a_turn, inter, 1.0)
    per_turn = torch.where(inter, a_turn + lam * a_out[:, None], a_out[:, None])
    return torch.where(valid, per_turn, 0.0)


def per_index_corrected(
    turn_rewards: Tensor, valid: Tensor, group_ids: Tensor, std: bool, lam: float
) -> Tensor:
    """The corrected per-turn-index form: normalise the intermediate return-to-go
    ``R_{i,k} = sum_{j=k}^{n_i - 2} r_{i,j}`` (0 on the final turn) over every row of the group
    that *reached* turn ``k`` (whether or not it then stopped), and give it to every turn:
    turn ``k`` gets ``N_k(R_{i,k}) + lam * A^O_i`` (``A^O`` as in :func:`per_index_published`).

    The baseline depends on the history (having reached turn ``k``), not on the action taken
    there, so with ``std=False`` and ``lam=1`` the expected advantage gap between two actions at
    turn ``k`` is the true one.
    """
    a_out, inter = _outcome_and_intermediate(turn_rewards, valid, group_ids, std)
    to_go = discounted_returns(torch.where(inter, turn_rewards.double(), 0.0), valid, 1.0)
    a_turn = pooled_normalise(to_go, valid, group_index_keys(group_ids, valid), std)
    return torch.where(valid, a_turn + lam * a_out[:, None], 0.0)


NORMALISATIONS: tuple[str, ...] = (
    "none",
    "batch_returns",
    "group_returns",
    "group_rewards",
    "index_rewards",
)


def advantages_from_turn_rewards(
    turn_rewards: Tensor,
    valid: Tensor,
    group_ids: Tensor | None,
    gamma: float,
    normalize: str,
) -> Tensor:
    """Turn advantages from per-turn rewards by one of the popular normalisations
    (``float64[B, K]``):

    - ``none``: the return ``G_k`` (REINFORCE);
    - ``batch_returns``: ``G_k`` normalised over every turn of the batch (GEM's ReBN);
    - ``group_returns``: ``G_k`` minus the mean (/ std) of the group's returns at turn 0
      (GRPO's baseline, extended to every turn);
    - ``group_rewards``: every turn reward normalised over all turns of the group, then the
      discounted sum (IGPO);
    - ``index_rewards``: every turn reward normalised over the group's turns of the same index,
      then the discounted sum (MT-GRPO-style, on all turns).
    """
    if normalize not in NORMALISATIONS:
        raise ValueError(f"normalize={normalize!r} is not valid; choose one of {NORMALISATIONS}")
    if normalize == "none":
        return discounted_returns(turn_rewards, valid, gamma)
    if normalize == "batch_returns":
        return batch_normalise(discounted_returns(turn_rewards, valid, gamma), valid)
    if group_ids is None:
        raise ValueError(f"normalize={normalize!r} needs group_ids (group_size >= 2)")
    if normalize == "group_returns":
        returns = discounted_returns(turn_rewards, valid, gamma)
        first = returns[:, 0]
        ones = torch.ones(first.shape[0], 1, dtype=torch.bool, device=first.device)
        mean, sd, _ = _pool_stats(first, group_keys(group_ids, ones))
        return torch.where(valid, (returns - mean[:, None]) / (sd[:, None] + EPS), 0.0)
    keys: list[Hashable]
    if normalize == "group_rewards":
        keys = list(group_keys(group_ids, valid))
    else:
        keys = list(group_index_keys(group_ids, valid))
    normed = pooled_normalise(turn_rewards, valid, keys, std=True)
    return discounted_returns(normed, valid, gamma)


def potential_rewards(
    turn_rewards: Tensor, potentials: Tensor, valid: Tensor, gamma: float, terminal: str
) -> Tensor:
    """Per-turn rewards shaped by a potential: ``r_k + gamma Phi(s_{k+1}) - Phi(s_k)``
    (``float64[B, K]``).

    :param potentials: ``[B, K]`` ``Phi`` of the state at each turn's start.
    :param terminal: ``"zero"``: ``Phi`` of the state after the last turn is 0 (Ng et al. 1999:
        with ``gamma = 1`` the shaped return is the return minus ``Phi(s_0)``, so advantages and
        the ranking of policies are unchanged); ``"last"``: the final turn is not shaped
        (IGPO: information gain on the intermediate turns only; the shaped return then adds
        ``Phi(s_{n-1}) - Phi(s_0)``, which is *not* policy-invariant).
    """
    if terminal not in ("zero", "last"):
        raise ValueError(f"terminal={terminal!r} is not valid; choose one of ('zero', 'last')")
    phi = torch.where(valid, potentials.double(), 0.0)
    next_phi = torch.zeros_like(phi)
    next_phi[:, :-1] = phi[:, 1:]
    shaped = turn_rewards.double() + gamma * next_phi - phi
    if terminal == "last":
        n = valid.sum(dim=1)
        ks = torch.arange(valid.shape[1], device=valid.device)
        final = ks[None, :] == (n - 1)[:, None]
        shaped = torch.where(final, turn_rewards.double(), shaped)
    return torch.where(valid, shaped, 0.0)


def anchor_group_sizes(
    valid: Tensor, group_ids: Tensor, state_keys: Sequence[Sequence[Hashable]]
) -> Tensor:
    """``int64[B, K]``: how many turns of the group share each turn's start state (0 off
    ``valid``); a diagnostic for GiGPO (size 1 means no step signal)."""
    counts: dict[tuple[int, Hashable], int] = defaultdict(int)
    pairs = valid.nonzero().tolist()
    for b, k in pairs:
        counts[(int(group_ids[b]), state_keys[b][k])] += 1
    out = torch.zeros(valid.shape, dtype=torch.int64, device=valid.device)
    for b, k in pairs:
        out[b, k] = counts[(int(group_ids[b]), state_keys[b][k])]
    return out
