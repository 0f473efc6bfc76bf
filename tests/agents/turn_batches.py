"""Random ragged multi-turn batches in the multi-turn EstimatorBatch layout, with the
per-row Python lists a float64 reference reads."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from marlhf.credit.estimators import EstimatorBatch


@dataclass
class Row:
    """One episode as lists: per position its turn, whether it is an action, reward, value."""

    turn: list[int]
    action: list[bool]
    reward: list[float]
    value: list[float]
    keys: list[int]  # state key at each turn start
    potential: list[float]  # Phi at each turn start
    mc: list[float]  # Monte-Carlo value at each turn start
    group: int

    @property
    def num_turns(self) -> int:
        return max(self.turn) + 1

    def turn_reward(self, k: int) -> float:
        return sum(r for r, t in zip(self.reward, self.turn, strict=True) if t == k)

    def turn_rewards(self) -> list[float]:
        return [self.turn_reward(k) for k in range(self.num_turns)]

    def start(self, k: int) -> int:
        return next(
            i for i, (t, a) in enumerate(zip(self.turn, self.action, strict=False)) if t == k and a
        )


def random_rows(
    seed: int, groups: int = 3, group_size: int = 4, max_turns: int = 4, n_keys: int = 3
) -> list[Row]:
    """Rows with 1..max_turns turns of 1..4 action tokens, each followed by 0..3 env tokens;
    small integer state keys so anchor groups collide."""
    rng = random.Random(seed)
    rows = []
    for g in range(groups):
        for _ in range(group_size):
            n = rng.randint(1, max_turns)
            turn: list[int] = []
            action: list[bool] = []
            reward: list[float] = []
            for k in range(n):
                m = rng.randint(1, 4)
                for j in range(m):
                    turn.append(k)
                    action.append(True)
                    # A per-token shaping term, and the turn's reward on its last action token.
                    r = rng.uniform(-0.1, 0.1)
                    if j == m - 1:
                        r += rng.choice([0.0, 1.0, -0.5, 2.0])
                    reward.append(r)
                for _ in range(rng.randint(0, 3) if k < n - 1 else rng.randint(0, 1)):
                    turn.append(k)
                    action.append(False)
                    reward.append(rng.choice([0.0, 0.05]))  # 0 in practice; folded if not
            value = [rng.uniform(-1, 1) for _ in turn]
            keys = [0] + [rng.randint(0, n_keys - 1) for _ in range(n - 1)]
            potential = [rng.uniform(-3, 0) for _ in range(n)]
            mc = [rng.uniform(-1, 2) for _ in range(n)]
            rows.append(Row(turn, action, reward, value, keys, potential, mc, g))
    return rows


def to_batch(rows: list[Row], pad: int = 2) -> EstimatorBatch:
    """The rows as an :class:`EstimatorBatch` (right-padded by ``pad`` extra columns)."""
    b = len(rows)
    t = max(len(r.turn) for r in rows) + pad
    k = max(r.num_turns for r in rows)
    mask = torch.zeros(b, t, dtype=torch.bool)
    action = torch.zeros(b, t, dtype=torch.bool)
    turn_ids = torch.full((b, t), -1, dtype=torch.long)
    rewards = torch.zeros(b, t)
    values = torch.full((b, t), float("nan"))
    starts = torch.zeros(b, t, dtype=torch.bool)
    turn_rewards = torch.zeros(b, k)
    mc = torch.full((b, t), float("nan"))
    phi = torch.full((b, k), float("nan"))
    for i, r in enumerate(rows):
        n = len(r.turn)
        mask[i, :n] = True
        action[i, :n] = torch.tensor(r.action)
        turn_ids[i, :n] = torch.tensor(r.turn)
        rewards[i, :n] = torch.tensor(r.reward)
        values[i, :n] = torch.tensor(r.value)
        for kk in range(r.num_turns):
            starts[i, r.start(kk)] = True
            turn_rewards[i, kk] = r.turn_reward(kk)
            mc[i, r.start(kk)] = r.mc[kk]
            phi[i, kk] = r.potential[kk]
    values = torch.where(mask, values, 0.0)
    return EstimatorBatch(
        rewards=rewards,
        task_rewards=rewards.clone(),
        mask=mask,
        starts=starts,
        values=values,
        group_ids=torch.tensor([r.group for r in rows]),
        action_mask=action,
        turn_ids=turn_ids,
        turn_starts=starts.clone(),
        turn_rewards=turn_rewards,
        num_turns=torch.tensor([r.num_turns for r in rows]),
        terminated=torch.ones(b, dtype=torch.bool),
        truncated=torch.zeros(b, dtype=torch.bool),
        turn_state_keys=[list(r.keys) for r in rows],
        mc_values=mc,
        turn_potentials=phi,
    )


def per_token(rows: list[Row], per_turn: list[list[float]], width: int) -> torch.Tensor:
    """Reference ``[B, T]``: each action token gets its turn's value, everything else 0."""
    out = torch.zeros(len(rows), width, dtype=torch.float64)
    for i, r in enumerate(rows):
        for p, (k, a) in enumerate(zip(r.turn, r.action, strict=True)):
            if a:
                out[i, p] = per_turn[i][k]
    return out
