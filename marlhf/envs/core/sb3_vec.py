"""``SB3VecEnv``: Stable-Baselines3's ``VecEnv`` view of a :class:`~marlhf.envs.BatchedTokenEnv`.

SB3's tools (``evaluate_policy``, ``EvalCallback``, ``VecMonitor``, ``model.get_env()``) speak
SB3's vector-env protocol: numpy values, ``step`` returning ``(obs, rewards, dones, infos)``
with one info dict per row, and every row restarting on its own the step it ends (its last
observation in ``infos[i]["terminal_observation"]``). The batched env steps torch tensors and
keeps a finished row waiting until every row has finished; this view restarts such a row at
once with a fresh prompt while the others go on: it resets the batched env with the prompts
of the running rows and their responses so far as ``prefixes`` (which puts them exactly where
they were) and new prompts for the finished rows. So every row of the view is always in an
episode, and returns and lengths counted per step (``VecMonitor``, ``evaluate_policy``) are
the episodes' own.

    from stable_baselines3.common.evaluation import evaluate_policy
    mean, std = evaluate_policy(model, model.get_env(), n_eval_episodes=64)

``model.get_env()`` of ``PPO``/``MAPPO`` returns ``sb3_vec_env(model.env)``: this view inside
SB3's ``VecMonitor``. It shares the batched env the agent trains on, so evaluating through it
resets that env: use it between ``learn`` calls, and give ``EvalCallback`` a view of another
env (``sb3_vec_env(gymnasium.make_vec(...))``), as SB3 asks for any eval env.

Actions are numpy integer arrays (what ``predict`` returns for numpy observations). Reset
options (groups, fixed prompts) are not part of SB3's protocol and are not offered here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from marlhf.envs.core.batched import BatchedTokenEnv


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class SB3VecEnv(VecEnv):
    """SB3's ``VecEnv`` protocol over a :class:`BatchedTokenEnv` (see the module doc).

    :param env: the batched env (a ``gymnasium.make_vec`` of a ``marlhf/`` id).
    """

    def __init__(self, env: BatchedTokenEnv) -> None:
        if not isinstance(env, BatchedTokenEnv):
            raise TypeError(
                f"SB3VecEnv: env is a {type(env).__name__}; expected a BatchedTokenEnv "
                "(gymnasium.make_vec('marlhf/...', vectorization_mode='vector_entry_point'))"
            )
        self.env = env
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self._actions: np.ndarray | None = None

    # ---------------------------------------------------------------- SB3's protocol
    def reset(self) -> dict[str, np.ndarray]:
        """Start one episode in every row (the seed given to :meth:`seed`, if any, is used
        once, as SB3 does)."""
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        obs, _ = self.env.reset(seed=seed)
        self._reset_seeds()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return self._obs(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs)

    def step_wait(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, list[dict]]:
        if self._actions is None:
            raise RuntimeError("SB3VecEnv: step_wait() without step_async(actions)")
        actions, self._actions = self._actions, None
        if not np.issubdtype(actions.dtype, np.integer):
            actions = actions.astype(np.int64)
        obs, rewards, terminated, truncated, _ = self.env.step(actions)
        ended = _numpy(terminated).astype(bool)
        cut = _numpy(truncated).astype(bool) & ~ended
        dones = ended | cut
        view = self._obs(obs)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = {k: v[i].copy() for k, v in view.items()}
            infos[i]["TimeLimit.truncated"] = bool(cut[i])
        if dones.any():
            view = self._restart(dones)
        return view, _numpy(rewards).astype(np.float32), dones, infos

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """The batched env's attribute, once per row asked for."""
        return [getattr(self.env, attr_name) for _ in self._rows(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        """Set the batched env's attribute (it is shared by every row)."""
        setattr(self.env, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call the batched env's method once; ``action_masks`` gives each row its own mask
        (what sb3-contrib's ``get_action_masks`` reads), any other result is repeated."""
        rows = self._rows(indices)
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        if method_name == "action_masks":
            masks = _numpy(result)
            return [masks[i] for i in rows]
        return [result for _ in rows]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False for _ in self._rows(indices)]

    def action_masks(self) -> np.ndarray:
        """``bool[B, vocab]``: the tokens each row may take now (sb3-contrib's MaskablePPO)."""
        return _numpy(self.env.action_masks()).astype(bool)

    # ---------------------------------------------------------------- helpers
    def _rows(self, indices: Any) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return list(indices if isinstance(indices, Iterable) else [indices])

    def _obs(self, obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {k: _numpy(v).copy() for k, v in obs.items()}

    def _restart(self, finished: np.ndarray) -> dict[str, np.ndarray]:
        """New episodes in the ``finished`` rows; the others go on where they were."""
        env = self.env
        fresh = iter(env.task.sample_prompts(env.np_random, int(finished.sum())))
        prompts = [next(fresh) if f else p for p, f in zip(env.prompts, finished, strict=True)]
        if finished.all():
            obs, _ = env.reset(options={"prompts": prompts})
            return self._obs(obs)
        lengths = env.lengths.tolist()
        responses = env.response_ids.tolist()
        prefixes = [
            [] if f else responses[i][: lengths[i]] for i, f in enumerate(finished.tolist())
        ]
        obs, _ = env.reset(options={"prompts": prompts, "prefixes": prefixes})
        return self._obs(obs)


def sb3_vec_env(env: BatchedTokenEnv) -> VecMonitor:
    """``VecMonitor(SB3VecEnv(env))``: what ``model.get_env()`` returns (episode returns and
    lengths in ``infos[i]["episode"]``, as SB3's tools expect)."""
    return VecMonitor(SB3VecEnv(env))
