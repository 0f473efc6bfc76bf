"""Task registry and Gymnasium registration of every env id under the ``marlhf/`` namespace.

A task is registered under a short name with :func:`register_task` (a class or factory, or a
``"module:attr"`` string so nothing is imported until the task is built). Each task name
``Name`` becomes the env id ``marlhf/Name-v0`` with two entry points:

- ``gymnasium.make("marlhf/Name-v0", **task_kwargs)`` -> :class:`~marlhf.envs.TokenEnv`;
- ``gymnasium.make_vec("marlhf/Name-v0", num_envs=B, vectorization_mode="vector_entry_point",
  device=..., seed=..., **task_kwargs)`` -> :class:`~marlhf.envs.BatchedTokenEnv`.

Task keyword arguments (``horizon`` etc.) pass straight through both.

Modules of other task families register themselves when imported; the modules listed in
:data:`TASK_MODULES` are imported by :func:`register_envs` (on ``import marlhf``) when they exist.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gymnasium

if TYPE_CHECKING:
    from marlhf.envs.tasks import Task

NAMESPACE = "marlhf"
TOKEN_ENV_ENTRY_POINT = "marlhf.envs.token_env:TokenEnv"
BATCHED_ENV_ENTRY_POINT = "marlhf.envs.batched:BatchedTokenEnv"

#: Modules that register more tasks when imported (skipped when absent from the install).
TASK_MODULES: list[str] = [
    "marlhf.envs.toy",
    "marlhf.envs.credit",
    "marlhf.envs.code",
    "marlhf.envs.reasoning",
    "marlhf.envs.text",
]

TaskFactory = Callable[..., "Task"]
_TASKS: dict[str, TaskFactory | str] = {}


def _load(entry_point: str) -> Any:
    module, _, attr = entry_point.partition(":")
    if not module or not attr:
        raise ValueError(f"task entry point {entry_point!r} must look like 'package.module:Name'")
    return getattr(importlib.import_module(module), attr)


def register_task(
    name: str, factory: TaskFactory | str, *, version: int = 0, register_env: bool = True
) -> str:
    """Register a task under ``name`` and (by default) its env id ``marlhf/<name>-v<version>``.

    :param name: the task's short name, e.g. ``"DelayedChoice"`` (letters, digits, ``_``).
    :param factory: a ``Task`` subclass or a callable returning a ``Task`` from keyword
        arguments, or a ``"module:attr"`` string naming one (imported lazily).
    :param version: the env id's version number (default 0).
    :param register_env: also register the Gymnasium env id (default True).
    :returns: the env id.
    """
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"register_task: name={name!r} must be letters, digits or '_'")
    if not (callable(factory) or isinstance(factory, str)):
        raise TypeError(
            f"register_task: factory for {name!r} must be callable or a 'module:attr' string"
        )
    _TASKS[name] = factory
    env_id = f"{NAMESPACE}/{name}-v{version}"
    if register_env and env_id not in gymnasium.registry:
        gymnasium.register(
            id=env_id,
            entry_point=TOKEN_ENV_ENTRY_POINT,
            vector_entry_point=BATCHED_ENV_ENTRY_POINT,
            kwargs={"task": name},
        )
    return env_id


def available_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    register_envs()
    return sorted(_TASKS)


def env_ids() -> list[str]:
    """Every Gymnasium id under the ``marlhf/`` namespace, sorted."""
    register_envs()
    return sorted(i for i in gymnasium.registry if i.startswith(NAMESPACE + "/"))


def task_factory(task: str) -> TaskFactory:
    """The factory registered for a task name or env id, without building the task.

    :param task: a registered name (``"Reverse"``) or env id (``"marlhf/Reverse-v0"``).
    """
    register_envs()
    name = task
    if name.startswith(NAMESPACE + "/"):
        name = name[len(NAMESPACE) + 1 :].rsplit("-v", 1)[0]
    factory: TaskFactory | str | None = _TASKS.get(name)
    if factory is None and ":" in name:
        factory = name
    if factory is None:
        raise ValueError(f"unknown task {task!r}; registered tasks: {sorted(_TASKS)}")
    return _load(factory) if isinstance(factory, str) else factory


def make_task(task: Task | str, **task_kwargs: Any) -> Task:
    """Build a task from a registered name (``"Reverse"``), an env id (``"marlhf/Reverse-v0"``),
    or a ``"module:attr"`` entry point; a ``Task`` instance is returned as is.

    :param task: what to build.
    :param task_kwargs: keyword arguments for the task's constructor (``horizon`` etc.); must be
        empty when ``task`` is already a ``Task``.
    """
    from marlhf.envs.tasks import Task, check_task

    if isinstance(task, Task):
        if task_kwargs:
            raise TypeError(
                f"make_task: task {task.name!r} is already built; task kwargs "
                f"{sorted(task_kwargs)} can only be given with a task name"
            )
        check_task(task)
        return task
    if not isinstance(task, str):
        raise TypeError(f"make_task: `task` must be a Task or a str, got {type(task).__name__}")
    built = task_factory(task)(**task_kwargs)
    check_task(built)
    return built


_REGISTERED = False


def register_envs() -> None:
    """Import :data:`TASK_MODULES` (each registers its tasks); idempotent."""
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True
    for module in TASK_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
