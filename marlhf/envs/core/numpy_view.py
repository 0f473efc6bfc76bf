"""``TorchToNumpy``: the batched env seen through numpy arrays, for Gymnasium's numpy wrappers.

:class:`~marlhf.envs.BatchedTokenEnv` speaks torch tensors on its device (what the agents
drive). Gymnasium's vector wrappers that keep statistics in numpy arrays, such as
``gymnasium.wrappers.vector.RecordEpisodeStatistics``, need numpy values; wrapped in
:class:`TorchToNumpy` they work::

    env = RecordEpisodeStatistics(TorchToNumpy(gymnasium.make_vec(...)))

Observations, rewards, ``terminated``/``truncated`` and the tensors in ``info`` come back as
numpy arrays on the host (each step copies them from the device); actions may be numpy arrays
or tensors. The observations then lie in ``observation_space``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium.vector import VectorEnv, VectorWrapper


def _numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: _numpy(v) for k, v in value.items()}
    return value


class TorchToNumpy(VectorWrapper):
    """A vector env returning torch tensors, seen through numpy arrays (see the module doc).

    :param env: a vector env whose ``step``/``reset`` return torch tensors (a
        ``BatchedTokenEnv``, or a wrapper around one).
    """

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return _numpy(obs), _numpy(info)

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        return (
            _numpy(obs),
            _numpy(rewards),
            _numpy(terminated),
            _numpy(truncated),
            _numpy(info),
        )
