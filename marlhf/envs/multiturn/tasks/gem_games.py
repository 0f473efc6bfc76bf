"""GEM's offline games as marlhf multi-turn tasks (through :mod:`.gem_adapter`).

- ``GemHanoi``: Tower of Hanoi (``game:TowerofHanoi-v0-<level>``), move the disks from A to C
  with ``\\boxed{A C}``-style moves (easy: 3 disks in 10 turns; hard: 5 in 35).
- ``GemMastermind``: Mastermind (``game:Mastermind-v0-<level>``), find the code from black and
  white pegs (easy: 2 distinct digits of 1-6 in 10 turns; hard: 4 of 1-8 in 30).
- ``GemSokoban``: Sokoban (``game:Sokoban-v0-easy``), push 2 boxes onto targets in a 6x6 room
  within 20 turns (the hard level, 8x8 with 4 boxes, is too large for the optimum's search).

Rewards are GEM's own (``gem.utils.constants.LanguageGameReward``): ``0`` for an ordinary or
invalid move and ``-0.1`` for a turn without a ``\\boxed{...}`` move (which ends the episode).
Hanoi and Sokoban pay ``+1`` for the solving move (at the turn limit instead: the share of disks
on C, of boxes on targets); Mastermind pays ``k / code_length`` whenever the best count of black
pegs so far rises by ``k``, so a solved code totals 1.

The optimum is 1.0 for Hanoi and Mastermind at both levels (the tests reach it with scripted
solvers: Hanoi's ``2**n - 1`` moves fit in its turn limit, consistent guessing finds every
Mastermind code in time). For Sokoban it is :data:`SOKOBAN_EASY_OPTIMUM` = 0.9975, the mean of
the exact per-board optimum (:func:`sokoban_optimum`) over the boards of seeds 0..199: GEM's
generator does not promise a board solvable in time. ``random_return`` (the uniform token
policy) is GEM's format-error reward, -0.1: random tokens essentially never spell a
``\\boxed{...}`` move, so the first turn ends the episode (the driver test checks it).
:func:`random_move_return` is the text-level baseline: a uniformly random well-formed move each
turn, estimated by seeded simulation.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from marlhf.envs.core.tasks import resolve_codec
from marlhf.envs.multiturn.task import MultiTurnTask
from marlhf.envs.multiturn.tasks.common import check_int, end_of_turn_token
from marlhf.envs.multiturn.tasks.gem_adapter import GemTextEnv, import_gem, make_gem_env
from marlhf.tokenization import TokenCodec

__all__ = [
    "GAMES",
    "GemGameTask",
    "GemHanoiTask",
    "GemMastermindTask",
    "GemSokobanTask",
    "SokobanRules",
    "random_move_return",
    "sokoban_optimum",
    "sokoban_plan",
]

RandomMove = Callable[[Any, np.random.Generator], str]


def _hanoi_move(env: Any, rng: np.random.Generator) -> str:
    src, dst = rng.choice(3, size=2, replace=False)
    return f"\\boxed{{{'ABC'[src]} {'ABC'[dst]}}}"


def _mastermind_move(env: Any, rng: np.random.Generator) -> str:
    digits = rng.choice(np.arange(1, env.num_numbers + 1), size=env.code_length, replace=False)
    return "\\boxed{" + " ".join(str(int(d)) for d in digits) + "}"


_DIRECTIONS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
#: The mean of :func:`sokoban_optimum` over GEM's easy boards of seeds 0..199 (199 solvable in
#: 20 turns, one at best half solved); the tests recompute it.
SOKOBAN_EASY_OPTIMUM = 0.9975


def _sokoban_move(env: Any, rng: np.random.Generator) -> str:
    return f"\\boxed{{{list(_DIRECTIONS)[int(rng.integers(4))]}}}"


Cell = tuple[int, int]
Board = tuple[Cell, frozenset[Cell]]  # (player, boxes)


class SokobanRules:
    """GEM's Sokoban rules on a fixed room, for search: a move into a wall, off the room, or
    pushing a box into a wall or another box leaves the board unchanged (the turn is spent);
    the tests check these rules against GEM step by step.

    :param room_fixed: GEM's ``room_fixed`` (0 wall, 1 floor, 2 target).
    """

    def __init__(self, room_fixed: np.ndarray) -> None:
        self.rows, self.cols = room_fixed.shape
        self.walls = {(int(r), int(c)) for r, c in np.argwhere(room_fixed == 0)}
        self.targets = frozenset((int(r), int(c)) for r, c in np.argwhere(room_fixed == 2))

    @staticmethod
    def board(room_state: np.ndarray) -> Board:
        """``(player, boxes)`` of GEM's ``room_state`` (3 box on target, 4 box, 5 player)."""
        boxes = frozenset((int(r), int(c)) for r, c in np.argwhere(np.isin(room_state, (3, 4))))
        player = np.argwhere(room_state == 5)[0]
        return (int(player[0]), int(player[1])), boxes

    def free(self, cell: Cell) -> bool:
        return 0 <= cell[0] < self.rows and 0 <= cell[1] < self.cols and cell not in self.walls

    def move(self, board: Board, direction: str) -> Board:
        """The board after one move (``"up"``, ``"down"``, ``"left"``, ``"right"``)."""
        (r, c), boxes = board
        dr, dc = _DIRECTIONS[direction]
        step = (r + dr, c + dc)
        if not self.free(step):
            return board
        if step not in boxes:
            return step, boxes
        push = (step[0] + dr, step[1] + dc)
        if not self.free(push) or push in boxes:
            return board
        return step, (boxes - {step}) | {push}

    def solved(self, board: Board) -> bool:
        return board[1] <= self.targets


def sokoban_optimum(room_fixed: np.ndarray, room_state: np.ndarray, turns: int) -> float:
    """The optimal return of a GEM Sokoban board with ``turns`` turns left: 1.0 when some plan
    puts every box on a target in time, else the best share of boxes on targets at the turn
    limit (what GEM pays there). A layered breadth-first search with :class:`SokobanRules`."""
    rules = SokobanRules(room_fixed)
    layer = {rules.board(room_state)}
    for _ in range(turns):
        layer = {rules.move(board, d) for board in layer for d in _DIRECTIONS}
        if any(rules.solved(board) for board in layer):
            return 1.0
    return max(len(boxes & rules.targets) / len(boxes) for _, boxes in layer)


def sokoban_plan(room_fixed: np.ndarray, room_state: np.ndarray, turns: int) -> list[str] | None:
    """A shortest list of moves that solves the board within ``turns``, or None."""
    rules = SokobanRules(room_fixed)
    start = rules.board(room_state)
    parents: dict[Board, tuple[Board, str] | None] = {start: None}
    layer = [start]
    for _ in range(turns):
        following = []
        for board in layer:
            for direction in _DIRECTIONS:
                after = rules.move(board, direction)
                if after in parents:
                    continue
                parents[after] = (board, direction)
                if rules.solved(after):
                    plan = []
                    link = parents[after]
                    while link is not None:
                        plan.append(link[1])
                        link = parents[link[0]]
                    return plan[::-1]
                following.append(after)
        layer = following
    return None


@dataclass(frozen=True)
class Game:
    """One GEM game in marlhf.

    :param gem_name: the game's name in GEM's ids.
    :param random_move: a uniformly random well-formed move, given the GEM env and a generator.
    :param optimum: the optimal return of each level marlhf offers (checked by the tests).
    """

    gem_name: str
    random_move: RandomMove
    optimum: dict[str, float]


#: The games registered as tasks, by marlhf task name. Sokoban's optimum is the mean of
#: :func:`sokoban_optimum` over the boards of seeds 0..199 (GEM's generator does not promise
#: a board solvable within the turn limit); its hard level is too large to search.
GAMES = {
    "GemHanoi": Game("TowerofHanoi", _hanoi_move, {"easy": 1.0, "hard": 1.0}),
    "GemMastermind": Game("Mastermind", _mastermind_move, {"easy": 1.0, "hard": 1.0}),
    "GemSokoban": Game("Sokoban", _sokoban_move, {"easy": SOKOBAN_EASY_OPTIMUM}),
}


def _format_error_reward() -> float:
    import_gem()
    from gem.utils.constants import LanguageGameReward

    return float(LanguageGameReward.format_error_reward)


@functools.lru_cache(maxsize=16)
def random_move_return(task_name: str, level: str, episodes: int = 2000, seed: int = 0) -> float:
    """Mean return of a uniformly random well-formed move each turn (seeded simulation).

    :param task_name: a key of :data:`GAMES`; :param level: one of its levels.
    """
    game = GAMES[task_name]
    env = make_gem_env(f"game:{game.gem_name}-v0-{level}")
    rng = np.random.default_rng(seed)
    total = 0.0
    for episode in range(episodes):
        env.reset(seed=seed * episodes + episode)
        done = False
        while not done:
            _, reward, terminated, truncated, _ = env.step(game.random_move(env.env, rng))
            total += reward
            done = terminated or truncated
    return total / episodes


class GemGameTask(MultiTurnTask):
    """A GEM game as a multi-turn task: text envs from :func:`make_gem_env`, a token codec.

    :param game: a key of :data:`GAMES` (``"GemHanoi"``, ``"GemMastermind"``, ``"GemSokoban"``).
    :param level: GEM's level, ``"easy"`` (default) or ``"hard"`` (not for Sokoban).
    :param codec: the token codec (its EOS ends turns); :param tokenizer: or a tokenizer / its
        folder (see :func:`~marlhf.envs.core.tasks.resolve_codec`; default: the 1024-token BPE).
    :param max_turn_tokens: agent tokens per turn, end of turn included (default 24).
    :param include_suffix: append the game's state to each observation (default True).
    """

    def __init__(
        self,
        game: str = "GemMastermind",
        level: str = "easy",
        codec: TokenCodec | None = None,
        tokenizer: Any = None,
        max_turn_tokens: int = 24,
        include_suffix: bool = True,
    ) -> None:
        if game not in GAMES:
            raise ValueError(f"GemGameTask: game={game!r}; valid: {sorted(GAMES)}")
        self.game = GAMES[game]
        if level not in self.game.optimum:
            raise ValueError(f"GemGameTask: level={level!r}; valid: {list(self.game.optimum)}")
        self.level = level
        self.env_id = f"game:{self.game.gem_name}-v0-{level}"
        self.include_suffix = include_suffix
        self.name = game if level == "easy" else f"{game}({level})"
        self.codec = resolve_codec(codec, tokenizer)
        self.end_of_turn_id = end_of_turn_token(self.name, self.codec)
        self.max_turn_tokens = check_int(self.name, "max_turn_tokens", max_turn_tokens, 2, 1024)
        probe = self.make_env()
        self.max_turns = int(probe.env.max_turns)
        self.max_prompt_len, self.max_obs_tokens = self._measure_lengths(probe)
        self.optimal_return = self.game.optimum[level]
        self.random_return = _format_error_reward()

    def make_env(self) -> GemTextEnv:
        return make_gem_env(self.env_id, include_suffix=self.include_suffix)

    def _measure_lengths(self, env: GemTextEnv, episodes: int = 8) -> tuple[int, int]:
        """The longest prompt and observation (in tokens) over seeded random-move episodes, with
        a margin: GEM's texts vary only in numbers and board cells."""
        rng = np.random.default_rng(0)
        prompt = obs = 0
        for seed in range(episodes):
            text, _ = env.reset(seed=seed)
            prompt = max(prompt, len(self.encode_observation(text)))
            for _ in itertools.count():
                text, _, terminated, truncated, _ = env.step(self.game.random_move(env.env, rng))
                obs = max(obs, len(self.encode_observation(text)))
                if terminated or truncated:
                    break
        return prompt + 16, obs + 16


class _OneGameTask(GemGameTask):
    """:class:`GemGameTask` for the game named by the subclass's ``GAME`` (a key of
    :data:`GAMES`).

    Takes :class:`GemGameTask`'s arguments but ``game``, spelled out: the CLI reads them to
    pass the model's tokenizer.
    """

    GAME: ClassVar[str]

    def __init__(
        self,
        level: str = "easy",
        codec: TokenCodec | None = None,
        tokenizer: Any = None,
        max_turn_tokens: int = 24,
        include_suffix: bool = True,
    ) -> None:
        super().__init__(self.GAME, level, codec, tokenizer, max_turn_tokens, include_suffix)


class GemHanoiTask(_OneGameTask):
    """GEM's Tower of Hanoi (the arguments: see :class:`_OneGameTask`)."""

    GAME = "GemHanoi"


class GemMastermindTask(_OneGameTask):
    """GEM's Mastermind (the arguments: see :class:`_OneGameTask`)."""

    GAME = "GemMastermind"


class GemSokobanTask(_OneGameTask):
    """GEM's Sokoban, easy level (the arguments: see :class:`_OneGameTask`)."""

    GAME = "GemSokoban"
