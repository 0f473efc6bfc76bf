"""Old import paths (``marlhf._compat``): every old module imports, warns naming its new path, and
is the new module object; the old packages' names resolve with the same warning; checkpoints
name no module, so one written before the re-layout loads after it."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import pytest

import marlhf
from marlhf import _compat
from marlhf._compat import MOVED, PACKAGE_NAMES


def _fresh_import(name: str) -> tuple[object, list[warnings.WarningMessage]]:
    """Import ``name`` as if for the first time (its new module stays loaded)."""
    sys.modules.pop(name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(name)
    return module, [w for w in caught if issubclass(w.category, DeprecationWarning)]


def test_the_finder_is_installed_once() -> None:
    _compat.install()
    assert sum(isinstance(f, _compat.AliasFinder) for f in sys.meta_path) == 1


def test_every_old_module_is_gone_from_the_tree() -> None:
    root = Path(marlhf.__file__).resolve().parent.parent
    for old in [*MOVED, *PACKAGE_NAMES]:
        path = root.joinpath(*old.split("."))
        assert not path.with_suffix(".py").exists(), old
        assert not (path / "__init__.py").exists(), old


@pytest.fixture(scope="module")
def new_modules() -> None:
    """Every module of marlhf imported once up front (the first import of all of them takes
    seconds; the tests then time what they check)."""
    root = Path(marlhf.__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] not in {"__init__", "__main__"}:
            importlib.import_module(".".join(parts))


@pytest.mark.usefixtures("new_modules")
@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_imports_warns_and_is_the_new_module(old: str) -> None:
    new = MOVED[old]
    module, caught = _fresh_import(old)
    assert module is importlib.import_module(new)
    assert [str(w.message) for w in caught] == [
        f"{old} is deprecated and will be removed in the next release: import {new} instead"
    ]
    # the new module keeps its own identity
    assert module.__name__ == new
    assert module.__spec__ is not None and module.__spec__.name == new


def test_the_warning_points_at_the_importing_line() -> None:
    sys.modules.pop("marlhf.agents.ppo", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import marlhf.agents.ppo  # noqa: F401
    assert [Path(w.filename).name for w in caught] == [Path(__file__).name]


def test_from_import_of_an_old_submodule() -> None:
    sys.modules.pop("marlhf.training.runner", None)
    vars(importlib.import_module("marlhf.training")).pop("runner", None)  # as on a first import
    with pytest.warns(DeprecationWarning, match=r"import marlhf\.runs\.runner instead"):
        from marlhf.training import runner
    from marlhf.runs import runner as new

    assert runner is new


@pytest.mark.parametrize(
    ("package", "name"),
    [(package, name) for package, names in PACKAGE_NAMES.items() for name in sorted(names)],
)
def test_an_old_package_level_name_warns_and_is_the_new_object(package: str, name: str) -> None:
    old = importlib.import_module(package)
    with pytest.warns(DeprecationWarning, match=rf"import {PACKAGE_NAMES[package][name]}\.{name}"):
        value = getattr(old, name)
    assert value is getattr(importlib.import_module(PACKAGE_NAMES[package][name]), name)


def test_from_the_old_agents_package_import_ppo() -> None:
    with pytest.warns(DeprecationWarning, match=r"marlhf\.agents\.PPO is deprecated"):
        from marlhf.agents import PPO
    assert PPO is marlhf.PPO


def test_an_unknown_name_of_an_old_package_is_an_import_error() -> None:
    with pytest.raises(ImportError, match="no_such_name"):
        from marlhf.agents import no_such_name  # noqa: F401
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("marlhf.training.no_such_module")


def test_no_module_of_marlhf_imports_an_old_path() -> None:
    from tests.test_layering import all_modules, imported_modules, module_name

    old = [
        f"{module_name(path)}:{line} -> {target}"
        for path in all_modules()
        if path.name != "_compat.py"
        for line, target in imported_modules(
            path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py"
        )
        if any(target == o or target.startswith(o + ".") for o in [*MOVED, *PACKAGE_NAMES])
    ]
    assert not old, old


@pytest.mark.slow  # a fresh interpreter importing torch and every layer: ~11 s on a loaded machine
def test_new_paths_import_without_a_warning(tmp_path: Path) -> None:
    import subprocess

    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "import marlhf, marlhf.cli.main, marlhf.commands.compare, marlhf.audit.credit\n"
        "from marlhf.algorithms import PPO\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=120)


def test_a_checkpoint_names_no_module(tmp_path: Path) -> None:
    """A checkpoint is JSON, safetensors and a weights-only torch state: it names no module, so
    moving modules cannot break loading one written before (checked by hand at the re-layout: a
    MAPPO checkpoint saved by the old layout loaded and resumed)."""
    from marlhf.algorithms import MAPPO
    from tests.agents.conftest import CueEnv, tiny_model

    env = CueEnv(2, 4, eos=False)
    algo = MAPPO(tiny_model(env.codec), env, n_epochs=1, batch_size=2, seed=0, device="cpu")
    algo.save(tmp_path / "agent")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".zip" for p in files)
    import zipfile

    for path in files:
        blobs = [path.read_bytes()]
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as z:
                blobs = [z.read(n) for n in z.namelist()]
        for blob in blobs:
            assert b"marlhf." not in blob, path
    loaded = MAPPO.load(tmp_path / "agent", env=CueEnv(2, 4, eos=False), device="cpu")
    assert type(loaded) is MAPPO


#: Dotted names in the docs that are not modules: entry-point groups and a page's file name.
NOT_MODULES = {"marlhf.tasks", "marlhf.terminations", "marlhf.md"}


def _named_in_docs() -> tuple[set[str], set[str]]:
    """The ``marlhf/...py`` paths and ``marlhf.x.y`` names that docs/ and marlhf/ name."""
    import re

    root = Path(marlhf.__file__).resolve().parent.parent
    texts = [p.read_text(encoding="utf-8") for p in sorted((root / "docs").rglob("*.md"))]
    texts += [
        p.read_text(encoding="utf-8")
        for p in sorted((root / "marlhf").rglob("*.py"))
        if p.name != "_compat.py"
    ]
    paths: set[str] = set()
    names: set[str] = set()
    for text in texts:
        paths |= set(re.findall(r"(?<![\w/])marlhf/[\w/]+\.py", text))
        names |= set(re.findall(r"(?<![\w.])marlhf(?:\.[A-Za-z_]\w*)+", text))
    return paths, names - NOT_MODULES


def test_every_module_path_the_docs_name_exists() -> None:
    root = Path(marlhf.__file__).resolve().parent.parent
    paths, _ = _named_in_docs()
    assert paths
    assert sorted(p for p in paths if not (root / p).is_file()) == []


@pytest.mark.usefixtures("new_modules")
def test_every_dotted_name_the_docs_name_resolves() -> None:
    _, names = _named_in_docs()
    assert names
    unresolved = []
    for name in sorted(names):
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    obj: object = importlib.import_module(".".join(parts[:n]))
            except ImportError:
                continue
            for attr in parts[n:]:
                obj = getattr(obj, attr, None)
            if obj is None:
                unresolved.append(name)
            break
    assert unresolved == []
