"""``TokenEnv``: one text-generation episode as a plain ``gymnasium.Env`` with numpy observations.

It wraps a :class:`~marlhf.envs.BatchedTokenEnv` with one row on the CPU, so a batched env and
B single envs stepped in lockstep agree by construction. It passes Gymnasium's and SB3's env
checkers, so stock SB3 algorithms (``MultiInputPolicy``, or ``MlpPolicy`` after
``FlattenObservation``) and sb3-contrib's ``MaskablePPO`` (through :meth:`TokenEnv.action_masks`)
train on it.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch

from marlhf.envs.core.batched import BatchedTokenEnv
from marlhf.envs.core.tasks import Prompt, Task

ObsArrays = dict[str, np.ndarray]


class TokenEnv(gymnasium.Env[ObsArrays, np.int64]):
    """A single sequence: observation ``Dict(input_ids=int64[L], attention_mask=int64[L])``,
    action ``Discrete(vocab)``.

    :param task: a :class:`~marlhf.envs.Task`, or the name / env id of a registered one.
    :param render_mode: ``None`` or ``"ansi"`` (``render()`` returns prompt and response text).
    :param task_kwargs: keyword arguments of the task (only with a task name), e.g. ``horizon``.
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 30}  # noqa: RUF012

    def __init__(
        self, task: Task | str, render_mode: str | None = None, **task_kwargs: Any
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"TokenEnv: render_mode={render_mode!r}; valid: None or "
                f"{self.metadata['render_modes']}"
            )
        self._env = BatchedTokenEnv(task, num_envs=1, device="cpu", **task_kwargs)
        self.task: Task = self._env.task
        self.codec = self._env.codec
        self.render_mode = render_mode
        self.observation_space = self._env.single_observation_space
        self.action_space = self._env.single_action_space
        self.max_prompt_len = self._env.max_prompt_len
        self.max_new_tokens = self._env.max_new_tokens
        self.seq_len = self._env.seq_len
        self._episode_over = True
        self._action_mask = np.asarray(self.task.action_mask(), dtype=bool)

    def _where(self) -> str:
        return f"TokenEnv(task {self.task.name!r})"

    def _obs(self, obs: dict[str, torch.Tensor]) -> ObsArrays:
        return {k: v[0].numpy().copy() for k, v in obs.items()}

    @property
    def prompt(self) -> Prompt:
        """The current episode's prompt."""
        return self._env.prompts[0]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsArrays, dict[str, Any]]:
        """Start an episode.

        :param seed: reseeds the prompt sampler.
        :param options: ``{"prompt": Prompt}`` to use this prompt instead of sampling one.
        :returns: ``(obs, info)`` with ``info["prompt"]`` (text) and ``info["metadata"]``.
        """
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"prompt"}
        if unknown:
            raise ValueError(
                f"{self._where()}: unknown reset options {sorted(unknown)}; valid: ['prompt']"
            )
        prompts = (
            [options["prompt"]]
            if "prompt" in options
            else self.task.sample_prompts(self.np_random, 1)
        )
        obs, info = self._env.reset(options={"prompts": prompts})
        self._episode_over = False
        p = self.prompt
        return self._obs(obs), {"prompt": info["prompt_text"][0], "metadata": p.metadata}

    def step(self, action: Any) -> tuple[ObsArrays, float, bool, bool, dict[str, Any]]:
        """Append token ``action``.

        :returns: ``(obs, reward, terminated, truncated, info)``; when the episode ends ``info``
            holds ``prompt``, ``response`` (texts) and ``episode_return``.
        """
        if self._episode_over:
            raise RuntimeError(
                f"{self._where()}: step() after the episode ended (or before reset()); call reset()"
            )
        if isinstance(action, torch.Tensor) and action.numel() == 1:
            action = action.reshape(()).numpy()
        if isinstance(action, np.ndarray) and action.shape in ((), (1,)):
            action = (
                action.reshape(()).item() if np.issubdtype(action.dtype, np.integer) else action
            )
        if isinstance(action, bool) or not isinstance(action, (int, np.integer)):
            raise TypeError(
                f"{self._where()}: action must be an integer token id, got {action!r} "
                f"({type(action).__name__})"
            )
        if not 0 <= int(action) < self._env.vocab_size:
            raise ValueError(
                f"{self._where()}: action {int(action)} is outside the vocabulary; valid token ids "
                f"are 0..{self._env.vocab_size - 1} (Discrete({self._env.vocab_size}))"
            )
        obs, rewards, terminated, truncated, binfo = self._env.step(torch.tensor([int(action)]))
        term, trunc = bool(terminated[0]), bool(truncated[0])
        info: dict[str, Any] = {}
        if term or trunc:
            self._episode_over = True
            info = {
                "prompt": binfo["prompt_text"][0],
                "response": binfo["response_text"][0],
                "episode_return": float(binfo["episode_return"][0]),
            }
        return self._obs(obs), float(rewards[0]), term, trunc, info

    def action_masks(self) -> np.ndarray:
        """``bool[vocab]``: the tokens the task allows (for sb3-contrib ``MaskablePPO``)."""
        return self._action_mask.copy()

    def response_text(self) -> str:
        """The response generated so far, decoded."""
        n = int(self._env.lengths[0])
        return self.codec.decode(self._env.response_ids[0, :n].tolist())

    def render(self) -> str | None:
        """``"ansi"`` mode: the prompt and the response so far as text."""
        if self.render_mode != "ansi":
            return None
        prompt = self.codec.decode(self.prompt.ids) if self._env.prompts else ""
        return f"{prompt}|{self.response_text()}"

    def __repr__(self) -> str:
        return f"TokenEnv(task={self.task.name!r}, seq_len={self.seq_len})"
