"""The numbers docs/multiturn_tasks.md states are the ones the code computes (or, for seeded
simulations, agree with a fresh simulation)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from marlhf.envs.multiturn.tasks.guess_number import GuessTheNumberEnv, GuessTheNumberTask
from tests.extras import NEEDS_GEM

DOC = (Path(__file__).parents[3] / "docs" / "multiturn_tasks.md").read_text()


def test_guess_the_number_numbers_are_the_computed_ones() -> None:
    task = GuessTheNumberTask()
    env = GuessTheNumberEnv()
    row = re.search(
        r"\| `GuessTheNumber` \|.*\| ([-\d.]+) \(exact\) \| ([-\d.]+) \(exact\) \|", DOC
    )
    assert row, "the GuessTheNumber row of the table"
    assert float(row.group(1)) == pytest.approx(task.optimal_return, abs=5e-5)
    assert float(row.group(2)) == pytest.approx(task.random_return, abs=5e-5)
    assert f"gets {env.random_guess_return:.4f}" in DOC
    assert f"over 4 turns = {task.random_return:.4f}" in DOC


@pytest.mark.slow
@NEEDS_GEM
@pytest.mark.parametrize(
    ("task_name", "episodes"), [("GemHanoi", 400), ("GemMastermind", 400), ("GemSokoban", 150)]
)
def test_gem_random_move_returns_agree_with_a_fresh_simulation(
    task_name: str, episodes: int
) -> None:
    from marlhf.envs.multiturn.tasks.gem_adapter import make_gem_env
    from marlhf.envs.multiturn.tasks.gem_games import GAMES

    pattern = rf"^\| `{task_name}` \|.*\| (\d\.\d+) \(easy\)(, \d\.\d+ \(hard\))? \|$"
    row = re.search(pattern, DOC, re.MULTILINE)
    assert row, f"the {task_name} row of the GEM table"
    game = GAMES[task_name]
    env = make_gem_env(f"game:{game.gem_name}-v0-easy")
    rng = np.random.default_rng(12345)  # other seeds than the documented run
    returns = []
    for seed in range(10_000, 10_000 + episodes):
        env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(game.random_move(env.env, rng))
            total += reward
            done = terminated or truncated
        returns.append(total)
    se = float(np.std(returns)) / np.sqrt(len(returns))
    assert abs(np.mean(returns) - float(row.group(1))) < 4 * se + 0.01
