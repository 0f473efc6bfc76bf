"""Dependencies point one way (docs/design.md, "Layout").

``models``/``tokenization`` <- ``envs``, ``options`` <- ``agents`` <- ``training``: every import
statement of every module under ``marlhf/`` (top level, inside functions, under
``TYPE_CHECKING``) is read with :mod:`ast` and checked against the forbidden edges below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import marlhf

ROOT = Path(marlhf.__file__).resolve().parent

#: importer layer -> layers it must not import.
FORBIDDEN: dict[str, frozenset[str]] = {
    "models": frozenset({"envs", "options", "agents", "training"}),
    "tokenization": frozenset({"envs", "options", "agents", "training"}),
    "envs": frozenset({"agents", "training"}),
    "options": frozenset({"agents", "training"}),
    "agents": frozenset({"training"}),
    # the package root registers the envs and exports the agents; training is for the CLI only
    "__init__": frozenset({"training"}),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    """``marlhf.envs.batched`` for ``<root>/envs/batched.py`` (packages end at the folder)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["marlhf", *parts])


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``source``.

    ``from marlhf import models`` counts as importing ``marlhf.models`` (a name imported from a
    package may be a submodule; reading it as one can only find more edges, never fewer).
    Relative imports are resolved against ``module``.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def layer(module: str) -> str | None:
    """The layer of a ``marlhf`` module: its first component below ``marlhf``."""
    parts = module.split(".")
    if parts[0] != "marlhf":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def violations(source: str, module: str, is_package: bool) -> list[str]:
    """Every forbidden import of ``module``, as ``module:line -> target``."""
    own = layer(module)
    banned = FORBIDDEN.get(own or "", frozenset())
    out = []
    for line, target in imported_modules(source, module, is_package):
        if layer(target) in banned:
            out.append(f"{module}:{line} -> {target}")
    return sorted(set(out))


def all_modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_every_layer_is_checked() -> None:
    layers = {layer(module_name(p)) for p in all_modules()}
    assert {"models", "tokenization", "envs", "options", "agents", "training"} <= layers
    assert set(FORBIDDEN) <= layers


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path: Path) -> None:
    module = module_name(path)
    found = violations(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
    assert not found, "imports against docs/design.md's layering:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("from marlhf.training.models import tiny_gpt2", "marlhf.envs.text", ["training"]),
        ("def f():\n    import marlhf.agents.base", "marlhf.options.wrapper", ["agents"]),
        ("from marlhf import training", "marlhf.agents.base", ["training"]),
        ("from ..agents import PPO", "marlhf.envs.rollout", ["agents"]),
        ("from marlhf.envs import tasks", "marlhf.models", ["envs"]),
        ("from marlhf.options import base", "marlhf.tokenization", ["options"]),
        ("from marlhf.models import tiny_gpt2", "marlhf.envs.text", []),
        ("from marlhf.options import Termination", "marlhf.agents.ppo", []),
        ("from marlhf.agents import PPO", "marlhf.training.runner", []),
    ],
)
def test_checker_finds_forbidden_imports(source: str, module: str, expected: list[str]) -> None:
    found = violations(source, module, is_package=False)
    assert sorted({layer(v.split(" -> ")[1]) or "" for v in found}) == expected
