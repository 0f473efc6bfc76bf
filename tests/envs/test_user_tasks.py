"""User tasks reach marlhf: the ``marlhf.tasks`` entry-point group and :func:`import_modules`."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import gymnasium
import pytest
import torch

from marlhf.envs import BatchedTokenEnv
from marlhf.envs.core import registration
from marlhf.options import make_termination
from marlhf.options import registry as term_registry

ROOT = Path(__file__).resolve().parents[2]
TASK_FILE = ROOT / "examples" / "custom_task.py"

#: The modules these tests write and import (forgotten after each test).
USER_MODULES = {"plugged_tasks", "counted", "pkg", "broken", "needs_dep", "as_main", "by_name"}
USER_MODULES |= {"custom_task", "other"}

COUNTING_MODULE = """
import builtins
builtins.MARLHF_TEST_IMPORTS = getattr(builtins, "MARLHF_TEST_IMPORTS", 0) + 1
"""


@pytest.fixture
def clean_registries() -> Iterator[None]:
    """Restore the task, env-id and termination registries after a test that registers."""
    tasks = dict(registration._TASKS)
    env_ids = set(gymnasium.registry)
    terms = dict(term_registry._REGISTRY)
    modules = set(sys.modules)
    yield
    registration._TASKS.clear()
    registration._TASKS.update(tasks)
    for env_id in set(gymnasium.registry) - env_ids:
        del gymnasium.registry[env_id]
    term_registry._REGISTRY.clear()
    term_registry._REGISTRY.update(terms)
    for name in set(sys.modules) - modules:  # only the tests' own modules: re-importing a
        if name.split(".")[0] in USER_MODULES:  # library module would duplicate its state
            del sys.modules[name]


def test_entry_point_task_is_registered_lazily(
    clean_registries: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "plugged_tasks.py").write_text(
        # the example without its own register_task call: the entry point registers it
        TASK_FILE.read_text().replace('register_task("RepeatFirst", RepeatFirstTask)', "")
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    group = registration.ENTRY_POINT_GROUP
    points = [
        EntryPoint("Plugged", "plugged_tasks:RepeatFirstTask", group),
        EntryPoint("bad name!", "plugged_tasks:RepeatFirstTask", group),
    ]
    monkeypatch.setattr(registration, "entry_points", lambda *, group: points)
    monkeypatch.setattr(registration, "_REGISTERED", False)
    with pytest.warns(RuntimeWarning, match="'bad name!'.*skipped"):
        ids = registration.env_ids()
    assert "marlhf/Plugged-v0" in ids
    assert "plugged_tasks" not in sys.modules  # nothing imported before the task is built
    env = gymnasium.make_vec(
        "marlhf/Plugged-v0", num_envs=2, vectorization_mode="vector_entry_point", horizon=3
    )
    assert isinstance(env, BatchedTokenEnv)
    assert env.task.name == "RepeatFirst" and env.max_new_tokens == 3


def test_import_modules_by_path_and_by_name(
    clean_registries: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import builtins

    monkeypatch.setattr(builtins, "MARLHF_TEST_IMPORTS", 0, raising=False)
    (tmp_path / "counted.py").write_text(COUNTING_MODULE)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "named.py").write_text(COUNTING_MODULE)
    monkeypatch.chdir(tmp_path)
    first = registration.import_modules(["counted.py"])
    again = registration.import_modules([str(tmp_path / "counted.py")])
    count = lambda: getattr(builtins, "MARLHF_TEST_IMPORTS")  # noqa: E731, B009
    assert first == again and count() == 1  # one import per file
    registration.import_modules(["pkg.named", "pkg.named"])  # found from the current folder
    assert count() == 2


def test_import_modules_errors_name_the_module(
    clean_registries: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="no module named 'not_a_module_xyz'"):
        registration.import_modules(["not_a_module_xyz"])
    with pytest.raises(ValueError, match=r"file 'missing\.py' does not exist"):
        registration.import_modules(["missing.py"])
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match=r"importing 'broken\.py' failed: RuntimeError: boom"):
        registration.import_modules(["broken.py"])
    assert "broken" not in sys.modules
    (tmp_path / "needs_dep.py").write_text("import not_installed_dep_xyz\n")
    with pytest.raises(ValueError, match="No module named 'not_installed_dep_xyz'"):
        registration.import_modules(["needs_dep"])  # its own import is missing, not it


def test_imported_script_registers_task_and_termination(clean_registries: None) -> None:
    (module,) = registration.import_modules([str(TASK_FILE)])
    env = gymnasium.make_vec(
        "marlhf/RepeatFirst-v0", num_envs=3, vectorization_mode="vector_entry_point", seed=0
    )
    assert isinstance(env, BatchedTokenEnv)
    obs, _ = env.reset(seed=0)
    first = obs["input_ids"][:, -3]
    for _ in range(env.max_new_tokens):  # the optimal answer: the first prompt letter
        _, reward, *_ = env.step(first)
    assert torch.equal(reward, torch.ones(3))
    term = make_termination("letter_runs")
    assert isinstance(term, module.LetterRuns)


def test_same_definition_imported_twice_registers_once(
    clean_registries: None, tmp_path: Path
) -> None:
    """A script run as __main__ and imported again by name (--import, a worker process)."""
    import importlib.util

    for name in ("as_main", "by_name"):
        spec = importlib.util.spec_from_file_location(name, TASK_FILE)
        assert spec is not None and spec.loader is not None
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # no "already registered" the second time
    other = tmp_path / "other.py"
    other.write_text(TASK_FILE.read_text())  # same name, another definition: still refused
    with (
        pytest.raises(ValueError, match="'letter_runs' is already registered"),
        warnings.catch_warnings(),
    ):
        registration.import_modules([str(other)])
