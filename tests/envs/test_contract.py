"""Every batched env passes check_batched_env: each registered id and each test double."""

from __future__ import annotations

import re
from typing import Any

import gymnasium
import pytest
import torch

import marlhf  # noqa: F401  (registers the envs)
from marlhf.envs.core.contract import BatchedEnv, ContractError, check_batched_env
from marlhf.envs.multiturn.contract import check_multiturn_env
from marlhf.envs.multiturn.env import MultiTurnTokenEnv
from tests.agents.conftest import CueEnv
from tests.extras import NEEDS_GEM, NEEDS_REASONING_GYM

pytestmark = pytest.mark.usefixtures("one_thread")


def _needs(env_id: str) -> Any:
    if "ReasoningGym" in env_id or "ReasoningRetry" in env_id:
        return NEEDS_REASONING_GYM
    return NEEDS_GEM if "/Gem" in env_id else []


def _all_ids() -> list[Any]:
    ids = sorted(i for i in gymnasium.registry if i.startswith("marlhf/"))
    return [pytest.param(i, marks=_needs(i), id=i) for i in ids]


@pytest.mark.parametrize("env_id", _all_ids())
@pytest.mark.parametrize("num_envs", [1, 4])
def test_every_registered_env_passes(env_id: str, num_envs: int) -> None:
    env = gymnasium.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    assert isinstance(env, BatchedEnv)
    if isinstance(env, MultiTurnTokenEnv):
        check_multiturn_env(env, seed=num_envs)  # forced observations: the multi-turn rules
    else:
        check_batched_env(env, seed=num_envs)


@pytest.mark.parametrize("eos", [True, False])
@pytest.mark.parametrize("num_envs", [1, 4, 6])
def test_cue_env_double_passes(eos: bool, num_envs: int) -> None:
    check_batched_env(CueEnv(num_envs=num_envs, max_new_tokens=5, eos=eos), seed=num_envs)


# Each double below breaks one rule; the checker must name it (a checker that cannot fail is no
# check at all).
class _Thaws(CueEnv):
    """Finished rows keep taking tokens into their window."""

    def step(self, actions: torch.Tensor) -> tuple[Any, ...]:
        done = self.done.clone()
        out = super().step(actions)
        self.ids[done] = torch.cat([self.ids[done, 1:], actions[done, None].cpu()], dim=1)
        return (self._obs(), *out[1:])


class _EarlyScore(CueEnv):
    """Pays a reward on every token, although its mode says terminal."""

    def step(self, actions: torch.Tensor) -> tuple[Any, ...]:
        active = ~self.done
        obs, rewards, term, trunc, info = super().step(actions)
        return obs, rewards + 0.5 * active.float(), term, trunc, info


class _Unseeded(CueEnv):
    """Ignores the seed it is given."""

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        return super().reset(seed=None, options=options)


class _AllActive(CueEnv):
    """Reports every row active."""

    def step(self, actions: torch.Tensor) -> tuple[Any, ...]:
        *out, info = super().step(actions)
        return (*out, {"active": torch.ones_like(info["active"])})


class _LooseGroups(CueEnv):
    """Reports groups but samples a prompt per row."""

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        options = dict(options or {})
        k = options.pop("group_size", None)
        obs, info = super().reset(seed=seed, options=options)
        if k is not None:
            info["group_ids"] = torch.arange(self.num_envs) // k
        return obs, info


class _ForgetsPrefix(CueEnv):
    """Restarts from the prompt alone when given a prefix."""

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        options = dict(options or {})
        prefixes = options.pop("prefixes", None)
        if prefixes is not None and any(len(q) >= self.max_new_tokens for q in prefixes):
            raise ValueError("prefixes too long")
        return super().reset(seed=seed, options=options)


@pytest.mark.parametrize(
    ("double", "rule"),
    [
        (_Thaws, "finished rows frozen"),
        (_EarlyScore, "terminal score on the last real token"),
        (_Unseeded, "seeded determinism"),
        (_AllActive, "info['active']"),
        (_LooseGroups, "group resets"),
        (_ForgetsPrefix, "prefix resets"),
    ],
)
def test_checker_names_the_broken_rule(double: type[CueEnv], rule: str) -> None:
    with pytest.raises(ContractError, match=re.escape(f"({rule})")):
        check_batched_env(double(num_envs=4, max_new_tokens=5, eos=True), seed=1)


def test_checker_rejects_a_non_env() -> None:
    with pytest.raises(ContractError, match="attributes"):
        check_batched_env(object())


class _DropsForced(MultiTurnTokenEnv):
    """Appends the env's answer to its window but does not say so in ``info``."""

    def step(self, actions: Any) -> tuple[Any, ...]:
        out = super().step(actions)
        out[4].pop("forced_ids", None)
        out[4].pop("forced_lengths", None)
        return out


def test_multiturn_checker_names_the_window_rule() -> None:
    env = _DropsForced("GuessTheNumber", num_envs=2)  # random guesses get feedback
    with pytest.raises(ContractError, match=r"\(window\)"):
        check_multiturn_env(env, seed=0)
    with pytest.raises(ContractError, match="reward_mode"):
        check_batched_env(env, seed=0)  # the single-turn rules do not fit a multi-turn env
