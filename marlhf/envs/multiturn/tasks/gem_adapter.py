"""GEM's environments (``gem-llm`` on PyPI) as marlhf text envs, taken as they are.

GEM's envs already speak the protocol (``reset(seed) -> (str, info)``, ``step(str) -> 5-tuple``);
:class:`GemTextEnv` adds what marlhf needs around an env object:

- **Observations**: GEM puts the game's current state (the board) in ``info["suffix"]``, which
  its own observation wrappers append; the adapter appends it too (``include_suffix=True``), so
  each observation is the env's message followed by the state it leaves.
- **Private randomness**: GEM draws from Python's and NumPy's *global* generators (and reseeds
  them in ``reset``, from the OS entropy when ``seed`` is None, which ``gem.make`` does). The
  adapter gives each env its own pair of generator states, swapped in around every call into
  GEM and out again after it: GEM leaves the caller's generators untouched, an episode depends
  only on its seed, and a copy of the adapter carries its generators with it.
- **Terminated vs truncated**: at its turn limit (and in its one-turn envs) GEM reports both
  flags. The game is over there and GEM has paid its final reward (Hanoi's and Sokoban's partial
  credit), so nothing follows: the adapter reports termination alone (``info["gem_truncated"]``
  keeps GEM's flag), and a learner does not bootstrap past the end of the game. Truncation alone
  passes through as truncation.
- **state_key()**: a hashable snapshot of the env's attributes (boards, codes, counters), equal
  exactly when the game states are equal.
- **clone()**: ``copy.deepcopy`` of the adapter (the GEM env and its generators); the tests
  check that a clone reproduces every later observation and reward of each offline game.

Which games run offline here: :data:`OFFLINE_GAMES`; :data:`NEEDS_DATA` names what the others
lack (Wordle, Hangman and WordSearch need NLTK's ``words`` corpus, which GEM tries to download;
:func:`make_gem_env` refuses them with that reason before GEM reaches for the network).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import random
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from marlhf.envs.multiturn.protocol import (
    TextEnvError,
    check_reset_result,
    check_step_result,
    env_name,
)

__all__ = [
    "NEEDS_DATA",
    "OFFLINE_GAMES",
    "GemTextEnv",
    "GemUnavailableError",
    "Generators",
    "freeze",
    "gem_installed",
    "import_gem",
    "make_gem_env",
]

#: GEM games that run offline with marlhf's ``multiturn`` extra (checked by the tests).
OFFLINE_GAMES = (
    "GuessTheNumber",
    "Mastermind",
    "Minesweeper",
    "TowerofHanoi",
    "Sokoban",
    "Sudoku",
    "FifteenPuzzle",
    "Game2048",
)
#: GEM games that cannot run here, and why.
NEEDS_DATA = {
    "Wordle": "NLTK's 'words' corpus (GEM downloads it at import; no network here)",
    "Hangman": "NLTK's 'words' corpus (GEM downloads it at import; no network here)",
    "WordSearch": "NLTK's 'words' corpus (GEM downloads it at import; no network here)",
    "Crosswords": "pandas, which marlhf does not install",
}
GEM_INSTALL = (
    "pip install --no-deps gem-llm && pip install 'marlhf[multiturn]' "
    "(or `make install`, which does both)"
)
T = TypeVar("T")


class GemUnavailableError(ImportError):
    """GEM, or the data a GEM game needs, is not installed (the message says what to install)."""


def gem_installed() -> bool:
    """Whether the ``gem`` package (``gem-llm``) can be imported."""
    return importlib.util.find_spec("gem") is not None


def _nltk_words_available() -> bool:
    try:
        import nltk

        nltk.data.find("corpora/words")
    except (ImportError, LookupError):
        return False
    return True


def _check_game_available(env_id: str) -> None:
    game = env_id.split(":", 1)[-1].split("-v", 1)[0]
    if game not in NEEDS_DATA:
        return
    if game == "Crosswords" and importlib.util.find_spec("pandas") is not None:
        return
    if game != "Crosswords" and _nltk_words_available():
        return
    raise GemUnavailableError(f"GEM game {env_id!r} cannot run here: it needs {NEEDS_DATA[game]}")


def freeze(value: Any, depth: int = 0) -> Hashable:
    """A hashable, order-stable snapshot of plain data (lists, dicts, sets, arrays, scalars)."""
    if depth > 16:
        raise TextEnvError("freeze: the env's state nests deeper than 16 levels")
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v, depth + 1) for v in value)
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted((freeze(v, depth + 1) for v in value), key=repr)))
    if isinstance(value, dict):
        items = ((repr(k), freeze(v, depth + 1)) for k, v in value.items())
        return ("dict", tuple(sorted(items)))
    raise TextEnvError(
        f"freeze: a {type(value).__name__} is not plain data; state_key() covers lists, dicts, "
        "sets, arrays and scalars"
    )


class Generators:
    """A private pair of states of Python's and NumPy's global generators.

    :param seed: the seed both states start from.
    """

    def __init__(self, seed: int = 0) -> None:
        self.py_state: Any = random.Random(seed).getstate()
        self.np_state: Any = np.random.RandomState(seed).get_state()

    @contextmanager
    def active(self) -> Iterator[None]:
        """Swap these states into the global generators for the block, and back out after."""
        outer_py, outer_np = random.getstate(), np.random.get_state()
        random.setstate(self.py_state)
        np.random.set_state(self.np_state)
        try:
            yield
        finally:
            self.py_state, self.np_state = random.getstate(), np.random.get_state()
            random.setstate(outer_py)
            np.random.set_state(outer_np)


class GemTextEnv:
    """A GEM env (or any env of GEM's shape) as a marlhf text env (see the module docstring).

    :param env: the env object, e.g. ``gem.make("game:Mastermind-v0-easy")``; build it with
        :func:`make_gem_env` to keep its construction off the global generators too.
    :param include_suffix: append ``info["suffix"]`` (the game's state) to each observation
        (default True).
    :param name: the name in errors (default: GEM's ``env_id``, else the class name).
    :param generators: the env's private generators (default: fresh ones seeded with 0).
    """

    def __init__(
        self,
        env: Any,
        include_suffix: bool = True,
        name: str | None = None,
        generators: Generators | None = None,
    ) -> None:
        for method in ("reset", "step"):
            if not callable(getattr(env, method, None)):
                raise TextEnvError(
                    f"{env_name(env)} has no {method}(); GemTextEnv wraps envs with "
                    "reset(seed) and step(action: str)"
                )
        self.env = env
        self.include_suffix = include_suffix
        self.name = name or str(getattr(env, "env_id", "") or env_name(env))
        self.generators = generators or Generators(0)

    def _call(self, fn: Callable[[], T]) -> T:
        with self.generators.active():
            return fn()

    def _text(self, observation: str, info: dict[str, Any]) -> str:
        suffix = info.get("suffix") if self.include_suffix else None
        if not isinstance(suffix, str) or not suffix:
            return observation
        return observation + ("" if observation.endswith("\n") else "\n") + suffix

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """GEM's ``reset(seed)``; the observation is its text plus the state suffix."""
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"{self.name}.reset: seed={seed!r}; valid: None or an int >= 0")
        if seed is not None:  # GEM seeds the generators itself; start from a seeded pair too
            self.generators = Generators(seed)
        observation, info = check_reset_result(self, self._call(lambda: self.env.reset(seed=seed)))
        return self._text(observation, info), info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """GEM's ``step``; both flags (the game ended at its turn limit) become termination."""
        if not isinstance(action, str):
            raise TypeError(
                f"{self.name}.step: action must be a str (the agent's turn), got "
                f"{type(action).__name__}"
            )
        result = check_step_result(self, self._call(lambda: self.env.step(action)))
        observation, reward, terminated, truncated, info = result
        info["gem_truncated"] = truncated
        return self._text(observation, info), reward, terminated, truncated and not terminated, info

    def state_key(self) -> Hashable:
        """A snapshot of the env's attributes (see :func:`freeze`), its identity and limits
        included; equal for equal game states."""
        inner = getattr(self.env, "unwrapped", self.env)
        fields = {k: v for k, v in vars(inner).items() if not callable(v)}
        return (type(inner).__name__, freeze(fields))

    def clone(self) -> GemTextEnv:
        """An independent copy at the current state, generators included."""
        return copy.deepcopy(self)


def make_gem_env(env_id: str, include_suffix: bool = True, **kwargs: Any) -> GemTextEnv:
    """``gem.make(env_id, **kwargs)`` wrapped in :class:`GemTextEnv`, built on the adapter's
    private generators (``gem.make`` resets the env, which reseeds the global ones).

    :param env_id: a GEM id with its level, e.g. ``"game:Mastermind-v0-easy"``.
    :raises GemUnavailableError: GEM is not installed, or the game needs data it lacks here.
    :raises ValueError: ``env_id`` is not registered in GEM (the message lists the game ids).
    """
    if not gem_installed():
        raise GemUnavailableError(f"GEM (gem-llm) is not installed: {GEM_INSTALL}")
    _check_game_available(env_id)
    generators = Generators(0)

    def build() -> Any:
        gem = import_gem()
        from gem.envs.registration import ENV_REGISTRY

        if env_id not in ENV_REGISTRY:
            games = sorted(i for i in ENV_REGISTRY if i.startswith("game:"))
            raise ValueError(f"make_gem_env: env_id={env_id!r} is not a GEM id; games: {games}")
        return gem.make(env_id, **kwargs)

    with generators.active():
        env = build()
    return GemTextEnv(env, include_suffix=include_suffix, name=env_id, generators=generators)


def import_gem() -> Any:
    """``import gem``, leaving the root logger as it was (GEM's import configures it)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import gem
    except ImportError as err:
        raise GemUnavailableError(
            f"GEM (gem-llm) cannot be imported ({err}): {GEM_INSTALL}"
        ) from err
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return gem
