"""GEM through the adapter: which games run offline, private generators, flags, state keys and
clones, and the documented optimum of the registered games (scripted solvers)."""

from __future__ import annotations

import importlib.util
import itertools
import random
import re

import numpy as np
import pytest

from marlhf.envs.multiturn.protocol import as_text_env
from marlhf.envs.multiturn.tasks import gem_adapter
from marlhf.envs.multiturn.tasks.gem_adapter import (
    NEEDS_DATA,
    OFFLINE_GAMES,
    GemTextEnv,
    GemUnavailableError,
    make_gem_env,
)
from tests.extras import NEEDS_GEM

pytestmark = NEEDS_GEM


def moves_for(game: str, rng: np.random.Generator) -> list[str]:
    """A fixed list of plausible moves for any offline game (some invalid, none malformed)."""
    cells = [f"\\boxed{{reveal {r} {c}}}" for r in range(5) for c in range(5)]
    pool = {
        "GuessTheNumber": [f"\\boxed{{{i}}}" for i in range(1, 11)],
        "Mastermind": [f"\\boxed{{{a} {b}}}" for a, b in itertools.permutations(range(1, 7), 2)],
        "Minesweeper": [*cells, "\\boxed{flag 0 0}"],
        "TowerofHanoi": [f"\\boxed{{{a} {b}}}" for a, b in itertools.permutations("ABC", 2)],
        "Sokoban": [f"\\boxed{{{d}}}" for d in ("up", "down", "left", "right")],
        "Sudoku": [
            f"\\boxed{{{r} {c} {v}}}" for r in range(1, 5) for c in range(1, 5) for v in range(1, 5)
        ],
        "FifteenPuzzle": [f"\\boxed{{{d}}}" for d in ("up", "down", "left", "right")],
        "Game2048": [f"\\boxed{{{d}}}" for d in ("up", "down", "left", "right")],
    }[game]
    return [pool[i] for i in rng.integers(len(pool), size=40)]


def run(env: GemTextEnv, moves: list[str]) -> list[tuple]:
    out = []
    for move in moves:
        result = env.step(move)
        out.append((*result[:4], env.state_key()))
        if result[2] or result[3]:
            break
    return out


@pytest.mark.parametrize("game", OFFLINE_GAMES)
def test_offline_game_runs_is_seeded_and_keeps_the_global_generators(game: str) -> None:
    random.seed(123)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(7)
    env = make_gem_env(f"game:{game}-v0-easy")
    checked = as_text_env(env)  # the protocol's checks on every call
    first, _ = checked.reset(seed=5)
    moves = moves_for(game, np.random.default_rng(1))
    trace = run(env, moves)
    assert isinstance(first, str) and first and trace
    again, _ = checked.reset(seed=5)
    assert again == first and run(env, moves) == trace  # an episode depends only on its seed
    if game != "TowerofHanoi":  # (the one game with nothing random: every seed is the same)
        other, _ = checked.reset(seed=6)  # ... and on the seed: another one changes it
        assert other != first or run(env, moves) != trace
    assert (random.random(), np.random.rand()) == expected  # GEM left the caller's alone


@pytest.mark.parametrize("game", OFFLINE_GAMES)
def test_clone_reproduces_the_rest_of_the_episode(game: str) -> None:
    env = make_gem_env(f"game:{game}-v0-easy")
    moves = moves_for(game, np.random.default_rng(2))
    for cut in (0, 2):
        env.reset(seed=9)
        run(env, moves[:cut])
        twin = env.clone()
        assert twin.state_key() == env.state_key()
        assert run(twin, moves[cut:]) == run(env, moves[cut:])


def test_clone_carries_the_generators_minesweeper_places_mines_on_the_first_reveal() -> None:
    env = make_gem_env("game:Minesweeper-v0-easy")
    env.reset(seed=4)
    twin = env.clone()
    first = env.step("\\boxed{reveal 2 2}")
    random.seed(99)  # the caller's generators do not leak in
    assert twin.step("\\boxed{reveal 2 2}") == first
    assert twin.env.grid == env.env.grid


def test_state_key_tracks_the_game_state() -> None:
    env = make_gem_env("game:TowerofHanoi-v0-easy")
    env.reset(seed=0)
    start = env.state_key()
    env.step("\\boxed{A C}")
    moved = env.state_key()
    assert moved != start
    other = make_gem_env("game:TowerofHanoi-v0-easy")
    other.reset(seed=1)
    other.step("\\boxed{A C}")
    assert other.state_key() == moved  # Hanoi has no hidden randomness: same moves, same key
    hash(moved)


def test_the_game_ending_at_its_turn_limit_is_termination() -> None:
    env = make_gem_env("game:TowerofHanoi-v0-easy")
    env.reset(seed=0)
    flags = [env.step("\\boxed{B C}")[2:] for _ in range(10)]  # B is empty: invalid, no end
    assert all(not terminated and not truncated for terminated, truncated, _ in flags[:-1])
    terminated, truncated, info = flags[-1]
    assert (terminated, truncated, info["gem_truncated"]) == (True, False, True)


def test_observation_carries_the_state_suffix_and_can_leave_it_out() -> None:
    with_board = make_gem_env("game:TowerofHanoi-v0-easy")
    bare = make_gem_env("game:TowerofHanoi-v0-easy", include_suffix=False)
    obs, info = with_board.reset(seed=0)
    assert obs.endswith(info["suffix"]) and "A: [3, 2, 1]" in obs
    assert "A: [3, 2, 1]" not in bare.reset(seed=0)[0]


@pytest.mark.slow  # importing nltk to look for its corpus takes seconds
@pytest.mark.parametrize("game", sorted(NEEDS_DATA))
def test_games_that_need_data_are_refused_with_the_reason(game: str) -> None:
    if game == "Crosswords":
        present = importlib.util.find_spec("pandas") is not None
    else:
        present = gem_adapter._nltk_words_available()
    if present:  # a machine with the data: the game builds
        assert make_gem_env(f"game:{game}-v0-easy").reset(seed=0)[0]
        return
    with pytest.raises(GemUnavailableError, match=re.escape(NEEDS_DATA[game])):
        make_gem_env(f"game:{game}-v0-easy")


def test_unknown_id_lists_the_games() -> None:
    with pytest.raises(
        ValueError, match=r"env_id='game:Nope-v0' is not a GEM id; games: .*Sokoban"
    ):
        make_gem_env("game:Nope-v0")


# ---- the registered games' optimum, reached by scripted solvers ----


def hanoi_moves(n: int, src: str = "A", dst: str = "C", via: str = "B") -> list[str]:
    if n == 0:
        return []
    return [
        *hanoi_moves(n - 1, src, via, dst),
        f"\\boxed{{{src} {dst}}}",
        *hanoi_moves(n - 1, via, dst, src),
    ]


@pytest.mark.parametrize(("level", "disks"), [("easy", 3), ("hard", 5)])
def test_hanoi_optimum_is_reached_by_the_recursive_solution(level: str, disks: int) -> None:
    env = make_gem_env(f"game:TowerofHanoi-v0-{level}")
    prompt, _ = env.reset(seed=0)
    assert f"with {disks} disks" in prompt
    steps = [env.step(m) for m in hanoi_moves(disks)]
    assert sum(s[1] for s in steps) == 1.0 and steps[-1][2] and not any(s[2] for s in steps[:-1])


def mastermind_solver(prompt: str):
    """Consistent guessing, reading only the texts: guess the first code that agrees with every
    peg count seen so far."""
    length = int(re.search(r"secret (\d+) digit code", prompt).group(1))  # type: ignore[union-attr]
    top = int(re.search(r"digits from 1 to (\d+)", prompt).group(1))  # type: ignore[union-attr]
    candidates = list(itertools.permutations(range(1, top + 1), length))

    def pegs(code: tuple, guess: tuple) -> tuple[int, int]:
        black = sum(a == b for a, b in zip(code, guess, strict=True))
        return black, len(set(code) & set(guess)) - black

    def policy(history: list[tuple[tuple, str]]) -> tuple:
        nonlocal candidates
        for guess, obs in history[-1:]:
            found = re.search(r"receives (\d+) black peg\(s\) and (\d+) white", obs)
            assert found, obs
            seen = (int(found.group(1)), int(found.group(2)))
            candidates = [c for c in candidates if pegs(c, guess) == seen]
        return candidates[0]

    return policy


@pytest.mark.parametrize("level", ["easy", "hard"])
def test_mastermind_optimum_is_reached_by_consistent_guessing(level: str) -> None:
    env = make_gem_env(f"game:Mastermind-v0-{level}")
    for seed in range(12):
        prompt, _ = env.reset(seed=seed)
        policy = mastermind_solver(prompt)
        history: list[tuple[tuple, str]] = []
        total, done = 0.0, False
        while not done:
            guess = policy(history)
            obs, reward, terminated, truncated, _ = env.step(
                "\\boxed{" + " ".join(map(str, guess)) + "}"
            )
            history.append((guess, obs))
            total += reward
            done = terminated or truncated
        assert terminated and not truncated and total == pytest.approx(1.0), (seed, history)


def test_sokoban_rules_match_gem_step_by_step() -> None:
    from marlhf.envs.multiturn.tasks.gem_games import SokobanRules

    env = make_gem_env("game:Sokoban-v0-easy")
    rng = np.random.default_rng(0)
    for seed in range(4):
        env.reset(seed=seed)
        rules = SokobanRules(env.env.room_fixed)
        board = rules.board(env.env.room_state)
        for direction in rng.choice(["up", "down", "left", "right"], size=20):
            _, _, terminated, truncated, _ = env.step(f"\\boxed{{{direction}}}")
            board = rules.move(board, str(direction))
            assert board == rules.board(env.env.room_state), (seed, direction)
            if terminated or truncated:
                break


def test_sokoban_plans_solve_the_boards_in_gem() -> None:
    from marlhf.envs.multiturn.tasks.gem_games import sokoban_optimum, sokoban_plan

    env = make_gem_env("game:Sokoban-v0-easy")
    solved = 0
    for seed in range(8):
        env.reset(seed=seed)
        fixed, state, turns = env.env.room_fixed, env.env.room_state, env.env.max_turns
        plan = sokoban_plan(fixed, state, turns)
        assert (plan is not None) == (sokoban_optimum(fixed, state, turns) == 1.0)
        if plan is None:
            continue
        steps = [env.step(f"\\boxed{{{move}}}") for move in plan]
        assert sum(s[1] for s in steps) == 1.0 and steps[-1][2] and len(plan) <= turns
        solved += 1
    assert solved >= 6


@pytest.mark.slow
def test_sokoban_documented_optimum_is_the_search_over_its_seeds() -> None:
    from marlhf.envs.multiturn.tasks.gem_games import GAMES, sokoban_optimum

    env = make_gem_env("game:Sokoban-v0-easy")
    values = []
    for seed in range(200):
        env.reset(seed=seed)
        values.append(sokoban_optimum(env.env.room_fixed, env.env.room_state, env.env.max_turns))
    assert float(np.mean(values)) == pytest.approx(GAMES["GemSokoban"].optimum["easy"])


def test_sokoban_offers_the_easy_level_only() -> None:
    from marlhf.envs.multiturn.tasks.gem_games import GemSokobanTask

    with pytest.raises(ValueError, match=r"level='hard'; valid: \['easy'\]"):
        GemSokobanTask(level="hard")


def test_gem_reasoning_gym_env_is_one_turn_and_terminates() -> None:
    env = make_gem_env("rg:chain_sum")
    question, _ = env.reset(seed=0)
    assert question.startswith("State the final answer")
    _, reward, terminated, truncated, info = env.step("\\boxed{-1}")
    assert (terminated, truncated, info["gem_truncated"]) == (True, False, True)
    assert reward in (0.0, 1.0)
