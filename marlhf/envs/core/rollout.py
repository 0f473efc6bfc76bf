"""Rollouts without a model: the uniform random policy and scripted policies.

Used to measure (and test) each task's documented random and optimal returns, and by the
benchmarks and the demo as baselines.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from marlhf.envs.core.batched import BatchedTokenEnv
from marlhf.envs.core.tasks import Prompt, Task

ScriptedPolicy = Callable[[Prompt], list[int]]


def random_returns(
    task: Task, episodes: int = 1024, seed: int = 0, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Episode returns of the uniform policy over ``task.action_mask()``.

    :param task: the task (used as is: no copy).
    :param episodes: episodes, all run as one batch.
    :param seed: seeds both the prompts and the actions.
    :param device: torch device of the batched env.
    :returns: ``float32[episodes]``.
    """
    env = BatchedTokenEnv(task, num_envs=episodes, device=device, seed=seed)
    gen = torch.Generator(device=env.device).manual_seed(seed)
    env.reset()
    info: dict = {}
    while not bool(env.done.all()):
        probs = env.action_masks().float()
        actions = torch.multinomial(probs, 1, generator=gen)[:, 0]
        *_, info = env.step(actions)
    return info["episode_return"].cpu().numpy()


def scripted_returns(
    task: Task, policy: ScriptedPolicy, episodes: int = 256, seed: int = 0
) -> np.ndarray:
    """Episode returns of a scripted policy that writes ``policy(prompt)`` token by token
    (followed by pad tokens when the script is shorter than the episode).

    :param task: the task.
    :param policy: maps a prompt to the response token ids it writes.
    :param episodes: episodes, all run as one batch.
    :param seed: seeds the prompts.
    :returns: ``float32[episodes]``.
    """
    env = BatchedTokenEnv(task, num_envs=episodes, seed=seed)
    _, reset_info = env.reset()
    scripts = [policy(p) for p in reset_info["prompts"]]
    width = env.max_new_tokens
    table = torch.full((episodes, width), env.pad_token_id, dtype=torch.int64)
    for i, s in enumerate(scripts):
        n = min(len(s), width)
        table[i, :n] = torch.as_tensor(s[:n], dtype=torch.int64)
    info: dict = {}
    for t in range(width):
        *_, info = env.step(table[:, t])
        if bool(env.done.all()):
            break
    return info["episode_return"].numpy()
