"""marlhf.envs: Gymnasium text environments, tasks, reward functions and their registration.

- :class:`TokenEnv`: one sequence, numpy observations (SB3 and Gymnasium checkers pass).
- :class:`BatchedTokenEnv`: the native batched form on a torch device (what the agents drive).
- :class:`TorchToNumpy`: its numpy view, for Gymnasium's numpy wrappers.
- :class:`BatchedEnv`: the protocol agents rely on; :func:`check_batched_env` executes it.
- :class:`Task`, :class:`RewardFunction`, :class:`Prompt`, :class:`RewardBatch`: the task contract.
- Toy tasks in :mod:`marlhf.envs.builtin.toy`; every task is registered as ``marlhf/<Name>-v0``.
"""

from marlhf.envs.builtin.toy import DelayedChoiceTask, ExprTargetTask, ReverseDenseTask, ReverseTask
from marlhf.envs.core.batched import BatchedTokenEnv
from marlhf.envs.core.contract import BatchedEnv, MaskableBatchedEnv, check_batched_env
from marlhf.envs.core.numpy_view import TorchToNumpy
from marlhf.envs.core.registration import (
    TASK_MODULES,
    available_tasks,
    env_ids,
    make_task,
    register_envs,
    register_task,
)
from marlhf.envs.core.rollout import random_returns, scripted_returns
from marlhf.envs.core.tasks import Prompt, RewardBatch, RewardFunction, Task, check_task
from marlhf.envs.core.token_env import TokenEnv

__all__ = [
    "TASK_MODULES",
    "BatchedEnv",
    "BatchedTokenEnv",
    "DelayedChoiceTask",
    "ExprTargetTask",
    "MaskableBatchedEnv",
    "Prompt",
    "ReverseDenseTask",
    "ReverseTask",
    "RewardBatch",
    "RewardFunction",
    "Task",
    "TokenEnv",
    "TorchToNumpy",
    "available_tasks",
    "check_batched_env",
    "check_task",
    "env_ids",
    "make_task",
    "random_returns",
    "register_envs",
    "register_task",
    "scripted_returns",
]
