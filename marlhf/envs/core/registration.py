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

User tasks reach the CLI and its worker processes in two ways:

- an installed package declares entry points in the ``marlhf.tasks`` group
  (:data:`ENTRY_POINT_GROUP`), ``Name = "package.module:TaskClass"``; each is registered as
  ``marlhf/Name-v0`` on ``import marlhf`` and imported only when the task is built;
- a script's own module is named with ``--import MODULE`` (or ``imports: [MODULE]`` in a config);
  :func:`import_modules` imports it (a dotted module name importable from the current folder,
  or the path of a ``.py`` file), in the CLI process and in every worker process.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium

from marlhf.envs.core.tasks import MultiTurnBase, Task, check_task

NAMESPACE = "marlhf"
TOKEN_ENV_ENTRY_POINT = "marlhf.envs.core.token_env:TokenEnv"
#: Entry-point group through which installed packages register their tasks.
ENTRY_POINT_GROUP = "marlhf.tasks"
BATCHED_ENV_ENTRY_POINT = "marlhf.envs.core.batched:BatchedTokenEnv"
#: The batched env of multi-turn tasks (``register_task(..., multiturn=True)``).
MULTITURN_ENV_ENTRY_POINT = "marlhf.envs.multiturn.env:MultiTurnTokenEnv"

#: Modules that register more tasks when imported (skipped when absent from the install).
TASK_MODULES: list[str] = [
    "marlhf.envs.builtin.toy",
    "marlhf.envs.builtin.credit",
    "marlhf.envs.coding.humaneval",
    "marlhf.envs.builtin.reasoning",
    "marlhf.envs.builtin.text",
    "marlhf.envs.multiturn.tool",
    "marlhf.envs.multiturn.tasks",
]

TaskFactory = Callable[..., "Task | MultiTurnBase"]
_TASKS: dict[str, TaskFactory | str] = {}


def _load(entry_point: str) -> Any:
    module, _, attr = entry_point.partition(":")
    if not module or not attr:
        raise ValueError(f"task entry point {entry_point!r} must look like 'package.module:Name'")
    return getattr(importlib.import_module(module), attr)


def register_task(
    name: str,
    factory: TaskFactory | str,
    *,
    version: int = 0,
    register_env: bool = True,
    multiturn: bool = False,
) -> str:
    """Register a task under ``name`` and (by default) its env id ``marlhf/<name>-v<version>``.

    :param name: the task's short name, e.g. ``"DelayedChoice"`` (letters, digits, ``_``).
    :param factory: a ``Task`` subclass or a callable returning a ``Task`` from keyword
        arguments, or a ``"module:attr"`` string naming one (imported lazily).
    :param version: the env id's version number (default 0).
    :param register_env: also register the Gymnasium env id (default True).
    :param multiturn: the factory builds a
        :class:`~marlhf.envs.multiturn.task.MultiTurnTask`: ``make_vec`` gives a
        :class:`~marlhf.envs.multiturn.env.MultiTurnTokenEnv` (there is no single-row
        ``gymnasium.make`` form).
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
            entry_point=None if multiturn else TOKEN_ENV_ENTRY_POINT,
            vector_entry_point=MULTITURN_ENV_ENTRY_POINT if multiturn else BATCHED_ENV_ENTRY_POINT,
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


def make_task(task: Task | MultiTurnBase | str, **task_kwargs: Any) -> Task:
    """Build a task from a registered name (``"Reverse"``), an env id (``"marlhf/Reverse-v0"``),
    or a ``"module:attr"`` entry point; a ``Task`` instance is returned as is.

    :param task: what to build.
    :param task_kwargs: keyword arguments for the task's constructor (``horizon`` etc.); must be
        empty when ``task`` is already a ``Task``.
    """
    if isinstance(task, MultiTurnBase):
        raise TypeError(
            f"task {task.name!r} is a multi-turn task: run it with "
            "marlhf.envs.multiturn.env.MultiTurnTokenEnv (or make_vec of its env id)"
        )
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
    if isinstance(built, MultiTurnBase):
        raise TypeError(
            f"task {task!r} is a multi-turn task: run it with "
            "marlhf.envs.multiturn.env.MultiTurnTokenEnv (or make_vec of its env id)"
        )
    check_task(built)
    return built


_REGISTERED = False


def register_envs() -> None:
    """Import :data:`TASK_MODULES` (each registers its tasks), then register the tasks of the
    ``marlhf.tasks`` entry points (lazily: a plugin is imported when its task is built);
    idempotent."""
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True
    for module in TASK_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    _register_entry_points()


def _register_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _TASKS:  # a built-in or an earlier registration keeps its name
            continue
        try:
            register_task(ep.name, f"{ep.module}:{ep.attr}")
        except (ValueError, TypeError) as exc:  # a broken plugin must not hide the others
            warnings.warn(
                f"marlhf: task plugin {ep.name!r} = {ep.value!r} (entry-point group "
                f"{ENTRY_POINT_GROUP!r}) is skipped: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )


def import_modules(modules: Sequence[str]) -> list[ModuleType]:
    """Import user modules so that the tasks and terminations they register exist here.

    :param modules: dotted module names (importable from the current folder or ``PYTHONPATH``)
        or paths of ``.py`` files; a module already imported is not imported again.
    :returns: the imported modules.
    :raises ValueError: naming the module when it cannot be found.
    """
    out = []
    for name in modules:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"imports: {name!r} must be a module name or a .py file path")
        try:
            out.append(_import_file(name) if name.endswith(".py") else _import_name(name.strip()))
        except ValueError:
            raise
        except Exception as err:  # the user's module failed: one line naming it, not a traceback
            raise ValueError(
                f"imports: importing {name!r} failed: {type(err).__name__}: {err}"
            ) from err
    return out


def _import_file(name: str) -> ModuleType:
    path = Path(name).resolve()
    if not path.is_file():
        raise ValueError(f"imports: file {name!r} does not exist")
    for module in list(sys.modules.values()):  # e.g. the running script, or an earlier import
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and Path(file).resolve() == path:
            return module
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"imports: {name!r} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[path.stem]
        raise
    return module


def _import_name(name: str) -> ModuleType:
    if os.getcwd() not in sys.path and "" not in sys.path:  # the console script lacks the cwd
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is None or not name.startswith(err.name):
            raise  # the module exists but one of its own imports is missing
        raise ValueError(
            f"imports: no module named {name!r} (looked in the current folder and on "
            "PYTHONPATH); give a dotted module name or the path of a .py file"
        ) from None
