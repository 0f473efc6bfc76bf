"""Both agents learn the delayed-credit toy task well above random in a test-sized budget."""

from __future__ import annotations

from typing import Any

import gymnasium
import pytest
import torch

import marlhf  # noqa: F401  (registers the marlhf/ env ids)
from marlhf.algorithms import MAPPO, PPO
from marlhf.models import tiny_gpt2

HORIZON, NUM_ENVS, MAX_ITERS = 8, 32, 60


def _env(seed: int) -> Any:
    return gymnasium.make_vec(
        "marlhf/DelayedChoice-v0",
        num_envs=NUM_ENVS,
        vectorization_mode="vector_entry_point",
        horizon=HORIZON,
        seed=seed,
    )


def greedy_score(algo: Any, env: Any) -> float:
    """Mean return of greedy decoding on a fixed set of fresh prompts."""
    obs, _ = env.reset(seed=1234)
    state, total = None, torch.zeros(env.num_envs)
    pad = env.codec.pad_token_id
    while not bool(env.done.all()):
        actions, state = algo.predict(obs, state, deterministic=True)
        actions = torch.where(env.done, torch.full_like(actions, pad), actions)
        obs, rewards, _, _, _ = env.step(actions)
        total += rewards
    return float(total.mean())


def _train(cls: Any, kwargs: dict[str, Any], seed: int) -> tuple[float, list[float]]:
    """Train until two iterations in a row score >= 0.9 (or MAX_ITERS); greedy score after."""
    env = _env(seed=seed)
    model = tiny_gpt2(env.codec, n_layer=1, n_embd=32, n_head=2, n_positions=32, seed=seed)
    algo = cls(
        model, env, learning_rate=3e-3, batch_size=16, kl_coef=0.0, seed=seed, device="cpu",
        **kwargs,
    )  # fmt: skip
    scores: list[float] = []
    for it in range(MAX_ITERS):
        algo.learn(NUM_ENVS * HORIZON, reset_num_timesteps=it == 0)
        scores.append(algo.rollout_stats["rollout/score_mean"])
        if len(scores) >= 2 and min(scores[-2:]) >= 0.9:
            break
    return greedy_score(algo, _env(seed=1234)), scores


@pytest.mark.slow  # trains until the greedy policy is right
@pytest.mark.parametrize(("cls", "kwargs"), [(PPO, {}), (MAPPO, {"termination": "ngram:4"})])
def test_agent_learns_delayed_choice(cls: Any, kwargs: dict[str, Any]) -> None:
    # Three seeds and their median: one seed in about twenty gets stuck on a wrong answer for
    # a cue (measured over 12 seeds), and which one does changes with the torch build.
    random_return = _env(seed=0).task.random_return  # 1 / num_choices among allowed letters
    runs = [_train(cls, kwargs, seed) for seed in (0, 1, 2)]
    greedy = sorted(score for score, _ in runs)
    assert greedy[1] >= 0.75 > random_return + 0.4, runs
    assert sorted(max(scores[-2:]) for _, scores in runs)[1] > 3 * random_return / 2, runs
