"""A stop-or-continue tool-use MDP small enough to solve exactly, for the bias tests.

At turn ``k`` (state ``(k, hits)``) the agent either *answers* (the episode ends with reward 1
with probability ``success[hits]``, else 0) or, before the last allowed turn, calls the *tool*
(reward ``tool_reward[k]`` for the turn; the tool's answer is useful, ``hits + 1``, with
probability ``hit``). The policy is ``P(tool | k, hits) = sigmoid(theta[k, hits])``; the number
of turns is the policy's choice.

:func:`enumerate_trajectories` lists every trajectory with its exact probability (fractions when
the probabilities are fractions), :func:`quadrature_rows` replicates each one in proportion to
its probability, so that means over the rows *are* expectations: an estimator run on them gives
its expected advantage (the limit of infinitely large groups) with no sampling error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from tests.agents.turn_batches import Row

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
    prob: Any
    states: list[State]
    actions: list[str]
    rewards: list[Any]


def enumerate_trajectories(m: ToolMDP) -> list[Trajectory]:
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
    return ToolMDP(
        m.max_turns,
        [float(x) for x in m.tool_reward],
        float(m.hit),
        [float(x) for x in m.success],
        {s: 1 / (1 + math.exp(-t)) for s, t in theta.items()},
    )


def logits(m: ToolMDP) -> dict[State, float]:
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


def quadrature_rows(
    m: ToolMDP, phi: Callable[[State], float] | None = None
) -> tuple[list[Row], list[Trajectory]]:
    """``(rows, owners)``: every trajectory replicated ``N * prob`` times (``N`` the common
    denominator), all in one group.

    Each turn is one action token; a tool call is followed by one env token (the tool's
    answer). State keys are the states; ``value`` holds the true ``V`` at each turn start,
    ``mc`` too, ``potential`` holds ``phi``.
    """
    trajs = enumerate_trajectories(m)
    n = math.lcm(*(Fraction(t.prob).denominator for t in trajs))
    v, _ = values(m)
    keys = {s: i for i, s in enumerate(m.states())}
    rows: list[Row] = []
    owners: list[Trajectory] = []
    for tr in trajs:
        count = Fraction(tr.prob) * n
        assert count.denominator == 1
        for _ in range(int(count)):
            turn, action, reward, value = [], [], [], []
            for k, (s, a, r) in enumerate(zip(tr.states, tr.actions, tr.rewards, strict=True)):
                turn.append(k)
                action.append(True)
                reward.append(float(r))
                value.append(v[s])
                if a == TOOL:
                    turn.append(k)
                    action.append(False)
                    reward.append(0.0)
                    value.append(0.0)
            pots = [phi(s) if phi else 0.0 for s in tr.states]
            rows.append(
                Row(
                    turn,
                    action,
                    reward,
                    value,
                    [keys[s] for s in tr.states],
                    pots,
                    [v[s] for s in tr.states],
                    0,
                )
            )
            owners.append(tr)
    return rows, owners


def expected_gradient(
    m: ToolMDP, rows: list[Row], owners: list[Trajectory], turn_advantages: list[list[float]]
) -> dict[State, float]:
    """``E[sum_k grad_theta log pi(a_k | s_k) A_k]`` over the quadrature rows, per ``theta[s]``
    (``grad log sigmoid`` is ``1 - p`` for a tool call, ``-p`` for an answer)."""
    grad = {s: 0.0 for s in m.decision_states()}
    for tr, adv in zip(owners, turn_advantages, strict=True):
        for s, a, x in zip(tr.states, tr.actions, adv, strict=True):
            if s in grad:
                p = float(m.p_tool(s))
                grad[s] += ((1 - p) if a == TOOL else -p) * x
    return {s: g / len(rows) for s, g in grad.items()}
