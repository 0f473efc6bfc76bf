"""The GEM adapter without GEM: any object of GEM's shape, its checks, and the error that names
the install command when GEM is missing (so a test needing GEM fails clearly, not silently)."""

from __future__ import annotations

import random

import pytest

from marlhf.envs.multiturn.protocol import TextEnvError
from marlhf.envs.multiturn.tasks import gem_adapter
from marlhf.envs.multiturn.tasks.gem_adapter import (
    GemTextEnv,
    GemUnavailableError,
    freeze,
    make_gem_env,
)


class FakeGemEnv:
    """Any object of GEM's shape (no GEM needed): counts to three."""

    env_id = "fake:Count"

    def __init__(self) -> None:
        self.count = 0

    def reset(self, seed=None):
        self.count = random.randint(0, 0)  # draws from the global generator, as GEM does
        return "count", {"suffix": f"at {self.count}"}

    def step(self, action):
        self.count += int(action == "+")
        return "ok", float(self.count == 3), self.count == 3, False, {"suffix": f"at {self.count}"}


@pytest.mark.parametrize("bad", ["reset", "step"])
def test_adapter_takes_any_object_of_the_shape_and_names_what_is_missing(bad: str) -> None:
    env = GemTextEnv(FakeGemEnv())
    assert env.reset(seed=0) == ("count\nat 0", {"suffix": "at 0"})
    assert [env.step("+")[:3] for _ in range(3)][-1] == ("ok\nat 3", 1.0, True)
    broken = FakeGemEnv()
    setattr(broken, bad, None)
    with pytest.raises(TextEnvError, match=rf"FakeGemEnv has no {bad}\(\)"):
        GemTextEnv(broken)


def test_bad_input_errors() -> None:
    env = GemTextEnv(FakeGemEnv())
    with pytest.raises(ValueError, match=r"fake:Count\.reset: seed=-1; valid"):
        env.reset(seed=-1)
    env.reset(seed=0)
    with pytest.raises(TypeError, match=r"fake:Count\.step: action must be a str"):
        env.step(1)  # type: ignore[arg-type]
    with pytest.raises(TextEnvError, match="not plain data"):
        freeze(object())


def test_missing_gem_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gem_adapter, "gem_installed", lambda: False)
    with pytest.raises(GemUnavailableError, match=r"pip install --no-deps gem-llm"):
        make_gem_env("game:Mastermind-v0-easy")


def test_freeze_is_order_stable_and_hashable() -> None:
    import numpy as np

    a = freeze({"b": [1, {2, 3}], "a": np.arange(3)})
    b = freeze({"a": np.arange(3), "b": [1, {3, 2}]})
    assert a == b and hash(a) == hash(b)
    assert freeze({"a": np.arange(3)}) != freeze({"a": np.arange(3).astype(np.int8)})
