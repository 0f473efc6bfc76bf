"""Gymnasium conventions of the batched env: numpy actions, the observation space, no
autoreset, and Gymnasium's vector wrappers (RecordEpisodeStatistics through TorchToNumpy)."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers.vector import RecordEpisodeStatistics, TransformReward

from marlhf.envs import BatchedTokenEnv, TorchToNumpy


def make(num_envs: int = 6) -> BatchedTokenEnv:
    env = gymnasium.make_vec(
        "marlhf/Reverse-v0", num_envs=num_envs, vectorization_mode="vector_entry_point"
    )
    assert isinstance(env, BatchedTokenEnv)
    return env


def as_numpy(obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.cpu().numpy() for k, v in obs.items()}


def test_numpy_actions_and_the_observation_space() -> None:
    env, twin = make(), make()
    assert env.metadata["autoreset_mode"] == AutoresetMode.DISABLED
    obs, _ = env.reset(seed=3)
    twin.reset(seed=3)
    assert env.observation_space.contains(as_numpy(obs))
    env.action_space.seed(0)
    while not env.all_done:
        actions = env.action_space.sample()  # numpy int64[B]
        assert isinstance(actions, np.ndarray)
        obs, reward, *_ = env.step(actions)
        _, twin_reward, *_ = twin.step(torch.as_tensor(actions))
        assert torch.equal(reward, twin_reward)  # same as the tensor it stands for
        assert env.observation_space.contains(as_numpy(obs))
    assert torch.equal(env.response_ids, twin.response_ids)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="numpy actions dtype float64; valid: an integer dtype"):
        env.step(np.zeros(6))
    with pytest.raises(TypeError, match="or a numpy integer array, got list"):
        env.step([0] * 6)  # type: ignore[arg-type]


def test_record_episode_statistics_through_torch_to_numpy() -> None:
    env = make()
    wrapped = RecordEpisodeStatistics(TorchToNumpy(env))
    obs, _ = wrapped.reset(seed=1)
    assert isinstance(obs["input_ids"], np.ndarray) and wrapped.observation_space.contains(obs)
    wrapped.action_space.seed(1)
    returns = np.full(6, np.nan)
    lengths = np.zeros(6, dtype=int)
    while not env.all_done:
        _, reward, terminated, truncated, info = wrapped.step(wrapped.action_space.sample())
        assert isinstance(reward, np.ndarray) and isinstance(terminated | truncated, np.ndarray)
        if "episode" in info:
            ended = info["_episode"]
            assert np.isnan(returns[ended]).all()  # recorded once per row
            returns[ended] = info["episode"]["r"][ended]
            lengths[ended] = info["episode"]["l"][ended]
    np.testing.assert_allclose(returns, env.episode_return.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(lengths, env.lengths.numpy())
    assert (lengths < env.max_new_tokens).any()  # some rows ended early, on EOS


def test_value_wrappers_work_on_tensors() -> None:
    env = TransformReward(make(), lambda r: torch.clamp(r, max=0.5))
    env.reset(seed=0)
    env.action_space.seed(0)
    while not env.unwrapped.all_done:  # type: ignore[attr-defined]
        _, reward, *_ = env.step(env.action_space.sample())
        assert isinstance(reward, torch.Tensor) and bool((reward <= 0.5).all())
