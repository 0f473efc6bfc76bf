"""A stop-or-continue tool-use MDP solved exactly, and estimators' *expected* updates on it.

At turn ``k`` (state ``(k, hits)``) the agent either *answers* (the episode ends with reward 1
with probability ``success[hits]``, else 0) or, before the last allowed turn, calls the *tool*
(reward ``tool_reward[k]`` for the turn; the tool's answer is useful, ``hits + 1``, with
probability ``hit``). The policy is ``P(tool | k, hits) = sigmoid(theta[k, hits])``; the number
of turns is the policy's choice, the setting where per-turn-index normalisation is biased
(verl#7244).

:func:`enumerate_trajectories` lists every trajectory with its exact probability (fractions when
the probabilities are fractions); :func:`quadrature_batch` replicates each one in proportion to
its probability in one group, so that means over the rows *are* expectations: an estimator run
on it gives its expected advantage in the limit of large groups, with no sampling error, and
:func:`expected_gradient` the expected policy-gradient it drives, to compare with
:func:`true_gradient` (central differences of the exact objective). docs/credit_multiturn.md
reports the table :func:`exact_update_table` computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

from marlhf.algorithms.config import PPOConfig
from marlhf.credit.estimators import EstimatorBatch, get_estimator

State = tuple[int, int]  # (turn, hits)
TOOL, ANSWER = "tool", "answer"


@dataclass
class ToolMDP:
    """``policy[(k, hits)]`` is P(tool); probabilities may be fractions."""

    max_turns: int
    tool_reward: list[Any]
    hit: Any
    success: list[Any]
    policy: dict[State, Any]

    def p_tool(self, s: State) -> Any:
        return 0 if s[0] == self.max_turns - 1 else self.policy[s]

    def states(self) -> list[State]:
        return [(k, h) for k in range(self.max_turns) for h in range(k + 1)]

    def decision_states(self) -> list[State]:
        return [s for s in self.states() if s[0] < self.max_turns - 1]


@dataclass
class Trajectory:
    """One trajectory: its probability, the state and action of each turn, each turn's reward."""

    prob: Any
    states: list[State]
    actions: list[str]
    rewards: list[Any]


def enumerate_trajectories(m: ToolMDP) -> list[Trajectory]:
    """Every trajectory of the policy with a non-zero probability."""
    out: list[Trajectory] = []

    def walk(
        s: State, prob: Any, states: list[State], actions: list[str], rewards: list[Any]
    ) -> None:
        k, h = s
        p = m.p_tool(s)
        q = m.success[h]
        for ok, pr in ((1, q), (0, 1 - q)):
            if (1 - p) * pr:
                out.append(
                    Trajectory(
                        prob * (1 - p) * pr, [*states, s], [*actions, ANSWER], [*rewards, ok]
                    )
                )
        if p:
            for dh, pr in ((1, m.hit), (0, 1 - m.hit)):
                if pr:
                    walk(
                        (k + 1, h + dh),
                        prob * p * pr,
                        [*states, s],
                        [*actions, TOOL],
                        [*rewards, m.tool_reward[k]],
                    )

    walk((0, 0), Fraction(1) if isinstance(m.hit, Fraction) else 1.0, [], [], [])
    return out


def objective(
    m: ToolMDP, phi: Callable[[State], float] | None = None, terminal: str = "zero"
) -> float:
    """``J`` = expected total reward; with ``phi``, of the shaped rewards ``r + Phi(s') - Phi(s)``
    (``Phi`` after the last turn 0, or the final turn unshaped with ``terminal="last"``)."""
    total = 0.0
    for tr in enumerate_trajectories(m):
        rewards = [float(r) for r in tr.rewards]
        if phi is not None:
            pots = [phi(s) for s in tr.states] + [0.0]
            for k in range(len(rewards)):
                last = k == len(rewards) - 1
                if not (last and terminal == "last"):
                    rewards[k] += pots[k + 1] - pots[k]
        total += float(tr.prob) * sum(rewards)
    return total


def with_logits(m: ToolMDP, theta: dict[State, float]) -> ToolMDP:
    """The MDP with the policy ``sigmoid(theta[s])`` (floats)."""
    return ToolMDP(
        m.max_turns,
        [float(x) for x in m.tool_reward],
        float(m.hit),
        [float(x) for x in m.success],
        {s: 1 / (1 + math.exp(-t)) for s, t in theta.items()},
    )


def logits(m: ToolMDP) -> dict[State, float]:
    """``theta[s]`` of the policy."""
    return {s: math.log(float(p) / (1 - float(p))) for s, p in m.policy.items()}


def true_gradient(m: ToolMDP, **shaping: Any) -> dict[State, float]:
    """``dJ / dtheta[s]`` by central differences of the exact objective (independent of any
    score-function algebra)."""
    base, h = logits(m), 1e-5
    grad = {}
    for s in m.decision_states():
        up, down = dict(base), dict(base)
        up[s] += h
        down[s] -= h
        grad[s] = (
            objective(with_logits(m, up), **shaping) - objective(with_logits(m, down), **shaping)
        ) / (2 * h)
    return grad


def values(
    m: ToolMDP, phi: Callable[[State], float] | None = None
) -> tuple[dict[State, float], dict[tuple[State, str], float]]:
    """Exact ``V(s)`` and ``Q(s, a)`` (``Q`` includes the turn's reward), by backward recursion;
    with ``phi``, of the shaped rewards ``r + Phi(s') - Phi(s)`` (``Phi`` after the end 0)."""
    pot = phi or (lambda s: 0.0)
    v: dict[State, float] = {}
    q: dict[tuple[State, str], float] = {}
    for k in range(m.max_turns - 1, -1, -1):
        for h in range(k + 1):
            s = (k, h)
            q[(s, ANSWER)] = float(m.success[h]) - pot(s)
            if k < m.max_turns - 1:
                hit = float(m.hit)
                nxt = [(hit, (k + 1, h + 1)), (1 - hit, (k + 1, h))]
                q[(s, TOOL)] = (
                    float(m.tool_reward[k]) - pot(s) + sum(w * (pot(n) + v[n]) for w, n in nxt)
                )
            p = float(m.p_tool(s))
            v[s] = (1 - p) * q[(s, ANSWER)] + (p * q[(s, TOOL)] if p else 0.0)
    return v, q


@dataclass
class Quadrature:
    """The trajectories replicated by probability, as an estimator batch.

    :param batch: one row per copy (one group); each turn is one action token, a tool call is
        followed by one environment token (the tool's answer); ``values`` and
        ``mc_values`` hold the true ``V`` at turn starts (NaN elsewhere), ``turn_potentials``
        ``phi``.
    :param owners: the trajectory of each row.
    :param starts: ``starts[i][k]`` the column of row ``i``'s turn ``k``.
    """

    batch: EstimatorBatch
    owners: list[Trajectory]
    starts: list[list[int]]


def quadrature_batch(m: ToolMDP, phi: Callable[[State], float] | None = None) -> Quadrature:
    """Every trajectory replicated ``N * prob`` times (``N`` the common denominator; the
    policy's probabilities must be fractions)."""
    trajs = enumerate_trajectories(m)
    n = math.lcm(*(Fraction(t.prob).denominator for t in trajs))
    v, _ = values(m)
    keys = {s: i for i, s in enumerate(m.states())}
    owners: list[Trajectory] = []
    for tr in trajs:
        count = Fraction(tr.prob) * n
        if count.denominator != 1:
            raise ValueError(f"quadrature_batch: probability {tr.prob} is not a fraction of {n}")
        owners += [tr] * int(count)
    width = 2 * m.max_turns
    b = len(owners)
    mask = torch.zeros(b, width, dtype=torch.bool)
    action = torch.zeros(b, width, dtype=torch.bool)
    turn_ids = torch.full((b, width), -1, dtype=torch.long)
    rewards = torch.zeros(b, width)
    value = torch.zeros(b, width)
    turn_v = torch.zeros(b, m.max_turns)
    pots = torch.zeros(b, m.max_turns)
    turn_rewards = torch.zeros(b, m.max_turns)
    starts: list[list[int]] = []
    for i, tr in enumerate(owners):
        col, row_starts = 0, []
        for k, (s, a, r) in enumerate(zip(tr.states, tr.actions, tr.rewards, strict=True)):
            row_starts.append(col)
            mask[i, col] = action[i, col] = True
            turn_ids[i, col] = k
            rewards[i, col] = turn_rewards[i, k] = float(r)
            value[i, col] = turn_v[i, k] = v[s]
            pots[i, k] = phi(s) if phi else 0.0
            col += 1
            if a == TOOL:  # the tool's answer: a forced token of the same turn
                mask[i, col] = True
                turn_ids[i, col] = k
                col += 1
        starts.append(row_starts)
    turn_starts = torch.zeros_like(mask)
    for i, row_starts in enumerate(starts):
        turn_starts[i, row_starts] = True
    batch = EstimatorBatch(
        rewards=rewards,
        task_rewards=rewards.clone(),
        mask=mask,
        starts=turn_starts.clone(),
        values=value,
        group_ids=torch.zeros(b, dtype=torch.long),
        action_mask=action,
        turn_ids=turn_ids,
        turn_starts=turn_starts,
        turn_rewards=turn_rewards,
        num_turns=torch.tensor([len(tr.states) for tr in owners]),
        terminated=torch.ones(b, dtype=torch.bool),
        truncated=torch.zeros(b, dtype=torch.bool),
        turn_state_keys=[[keys[s] for s in tr.states] for tr in owners],
        mc_values=torch.where(turn_starts, value, float("nan")),
        turn_potentials=pots,
    )
    return Quadrature(batch, owners, starts)


def turn_advantages(spec: str, quad: Quadrature, config: Any = None) -> list[list[float]]:
    """Each row's advantage per turn under estimator ``spec`` (read at the turn's token)."""
    if config is None:  # the turn estimators read their options, not the config
        config = PPOConfig(estimator="grpo", group_size=2)
    out = get_estimator(spec).fn(quad.batch, config).advantages
    return [[float(out[i, c]) for c in row] for i, row in enumerate(quad.starts)]


def row_gradients(
    m: ToolMDP, quad: Quadrature, turn_adv: list[list[float]]
) -> list[dict[State, float]]:
    """Each row's ``sum_k grad_theta log pi(a_k | s_k) A_k`` per ``theta[s]`` (``grad log
    sigmoid`` is ``1 - p`` for a tool call, ``-p`` for an answer): one episode's update."""
    out = []
    for tr, adv in zip(quad.owners, turn_adv, strict=True):
        grad = {s: 0.0 for s in m.decision_states()}
        for s, a, x in zip(tr.states, tr.actions, adv, strict=True):
            if s in grad:
                p = float(m.p_tool(s))
                grad[s] += ((1 - p) if a == TOOL else -p) * x
        out.append(grad)
    return out


def expected_gradient(
    m: ToolMDP, quad: Quadrature, turn_adv: list[list[float]]
) -> dict[State, float]:
    """``E[sum_k grad_theta log pi(a_k | s_k) A_k]``: the mean of :func:`row_gradients`."""
    rows = row_gradients(m, quad, turn_adv)
    return {s: sum(g[s] for g in rows) / len(rows) for s in m.decision_states()}


def relative_variance(rows: list[dict[State, float]]) -> float:
    """``E||g_i - E g||^2 / ||E g||^2`` over the rows: the noise of one episode's update
    relative to the signal (scale-free, so normalising estimators compare fairly; the number
    of episodes for a given signal-to-noise ratio grows with it)."""
    keys = list(rows[0])
    mean = {s: sum(g[s] for g in rows) / len(rows) for s in keys}
    signal = sum(v * v for v in mean.values())
    noise = sum(sum((g[s] - mean[s]) ** 2 for s in keys) for g in rows) / len(rows)
    return noise / signal if signal else float("inf")


def cosine(a: dict[State, float], b: dict[State, float]) -> float:
    """Cosine of two gradients (NaN when one is 0)."""
    dot = sum(a[s] * b[s] for s in a)
    na, nb = math.sqrt(sum(x * x for x in a.values())), math.sqrt(sum(x * x for x in b.values()))
    return dot / (na * nb) if na and nb else float("nan")


def exact_update_table(
    m: ToolMDP, specs: list[str], phi: Callable[[State], float] | None = None
) -> dict[str, dict[str, Any]]:
    """Per estimator spec: its expected gradient, the truth's, their cosine, for how many
    decision states the signs agree (the direction each one pushes the choice to stop), and
    the relative variance of one episode's update (:func:`relative_variance`)."""
    quad = quadrature_batch(m, phi)
    truth = true_gradient(m)
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        rows = row_gradients(m, quad, turn_advantages(spec, quad))
        got = {s: sum(g[s] for g in rows) / len(rows) for s in m.decision_states()}
        out[spec] = {
            "relative_variance": relative_variance(rows),
            "expected_gradient": {str(s): g for s, g in got.items()},
            "true_gradient": {str(s): g for s, g in truth.items()},
            "cosine": cosine(got, truth),
            "sign_agreement": sum(
                (got[s] > 0) == (truth[s] > 0) for s in truth if abs(truth[s]) > 1e-9
            )
            / max(1, sum(abs(t) > 1e-9 for t in truth.values())),
        }
    return out
