"""Dependencies point one way (docs/design.md, "Layout").

Every import statement of every module under ``marlhf/`` (top level, inside functions, under
``TYPE_CHECKING``) is read with :mod:`ast` and checked against two kinds of rule:

- between packages (:data:`LAYERS`): a package imports only packages of lower layers, never a
  higher one nor a peer of its own layer;
- inside a package (:data:`INSIDE`): its modules are listed lowest first, and a module imports
  only the modules listed before it.

One test per rule: a failure names the rule and lists every import against it.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

import marlhf
from marlhf._compat import MOVED, PACKAGE_NAMES

ROOT = Path(marlhf.__file__).resolve().parent

#: The layers, lowest first; the units of one layer are peers (neither imports the other). A unit
#: is a package, a top-level module, or ``marlhf`` itself (the package root and ``_compat``).
LAYERS: list[tuple[str, ...]] = [
    ("marlhf.tokenization",),
    ("marlhf.models", "marlhf.threads", "marlhf.allocator"),
    ("marlhf.envs.core", "marlhf.options"),
    ("marlhf.envs.builtin", "marlhf.envs.coding"),
    ("marlhf.envs.multiturn",),
    ("marlhf.envs",),  # the facade: marlhf/envs/__init__.py
    ("marlhf.parallel",),
    ("marlhf.policy",),
    ("marlhf.credit",),
    ("marlhf.checkpoint",),
    ("marlhf.algorithms",),
    ("marlhf",),  # the package root registers the envs and exports the algorithms
    ("marlhf.audit",),
    ("marlhf.config",),
    ("marlhf.runs",),
    ("marlhf.commands",),
    ("marlhf.cli",),
    ("marlhf.__main__",),
]

#: Inside a package: its modules (and subpackages) lowest first; each imports only those listed
#: before it. A module added to a package goes where its imports put it.
INSIDE: dict[str, tuple[str, ...]] = {
    "marlhf.envs.core": (
        "action_checks",
        "caught_up",
        "contract",
        "numpy_view",
        "tasks",
        "registration",
        "reset_options",
        "token_vector_env",
        "batched",
        "rollout",
        "sb3_vec",
        "token_env",
    ),
    "marlhf.envs.builtin": ("reasoning", "reward_model", "safe_expr", "text", "toy", "credit"),
    "marlhf.envs.coding": (
        "cgroup",
        "channels",
        "child",
        "seccomp",
        "values",
        "plain",
        "process",
        "sandbox",
        "checks",
        "humaneval",
    ),
    "marlhf.envs.multiturn": ("contract", "protocol", "record", "task", "env", "tasks", "tool"),
    "marlhf.options": (
        "base",
        "segments",
        "registry",
        "textcuts",
        "lowprob",
        "ngram",
        "parse",
        "perplexity",
        "punctuation",
        "syntax",
        "wrapper",
        "combinators",
        "budget",
        "turn",
        "entropy",
        "learned",
        "value_change",
    ),
    "marlhf.parallel": ("distributed", "fsdp"),
    "marlhf.policy": (
        "lean",
        "lm_utils",
        "logprobs",
        "lora",
        "head_fusion",
        "static_decode",
        "actor_critic",
    ),
    "marlhf.credit": (
        "advantages",
        "truth_base",
        "turn_maths",
        "vine",
        "estimator_options",
        "estimators",
        "kl",
        "truth",
        "truth_multiturn",
        "turn_potentials",
        "combine",
        "diagnostics",
        "turn_credit",
    ),
    "marlhf.checkpoint": ("data", "rollout_io", "save_util"),
    "marlhf.algorithms": (
        "buffer",
        "losses",
        "groups",
        "knobs",
        "presets",
        "termination_training",
        "turn_checks",
        "config",
        "user_presets",
        "turn_presets",
        "collector",
        "pipeline",
        "preset_table",
        "updater",
        "base",
        "ppo",
        "mappo",
    ),
    "marlhf.audit": ("credit", "turn_audit", "turn_exact"),
    "marlhf.config": ("parse", "sections", "commands"),
    "marlhf.runs": (
        "builders",
        "errors",
        "io",
        "progress",
        "report",
        "request",
        "run_files",
        "runner",
    ),
    "marlhf.commands": (
        "credit_audit",
        "evaluate",
        "reward_modeling",
        "sft_data",
        "compare",
        "sft",
        "train",
    ),
}

UNITS = [unit for layer in LAYERS for unit in layer]
_RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}


def module_name(path: Path, root: Path = ROOT) -> str:
    """``marlhf.envs.core.batched`` for ``<root>/envs/core/batched.py`` (packages end at the
    folder)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["marlhf", *parts])


@functools.cache
def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``source``.

    ``from marlhf.envs import core`` counts as importing ``marlhf.envs`` and
    ``marlhf.envs.core`` (a name imported from a package may be a submodule; reading it as one
    can only find more edges, never fewer), except that ``from marlhf import x`` is not an import
    of the package root itself (every module imports the root; ``x`` is what it reads). Relative
    imports are resolved against ``module``.
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
            if base != "marlhf":
                found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


@functools.cache
def current(module: str) -> str:
    """The module an old import path (``marlhf._compat``) stands for; other names as they are."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in MOVED:
            return ".".join([MOVED[head], *parts[n:]])
        if head in PACKAGE_NAMES and n < len(parts) and parts[n] in PACKAGE_NAMES[head]:
            return ".".join([PACKAGE_NAMES[head][parts[n]], *parts[n:]])
    return module


@functools.cache
def unit(module: str) -> str | None:
    """The unit of :data:`LAYERS` holding ``module`` (the longest one that prefixes it)."""
    module = current(module)
    best = None
    for name in UNITS:
        if (module == name or module.startswith(name + ".")) and (
            best is None or len(name) > len(best)
        ):
            best = name
    return best


def forbidden(own: str) -> frozenset[str]:
    """The units that ``own`` must not import: every higher layer's and its peers'."""
    rank = _RANK[own]
    return frozenset(u for u in UNITS if u != own and _RANK[u] >= rank)


def violations(source: str, module: str, is_package: bool) -> list[str]:
    """Every import of ``module`` against the layers, as ``module:line -> target``."""
    own = unit(module)
    banned = forbidden(own) if own else frozenset()
    out = []
    for line, target in imported_modules(source, module, is_package):
        if unit(target) in banned:
            out.append(f"{module}:{line} -> {target}")
    return sorted(set(out))


def inside_violations(source: str, module: str, is_package: bool, package: str) -> list[str]:
    """Every import of ``module`` (inside ``package``) of a module of ``package`` listed at or
    after its own in :data:`INSIDE` (a subpackage's modules count as the subpackage)."""
    order = INSIDE[package]

    def entry(name: str) -> str | None:
        if not name.startswith(package + "."):
            return None
        head = name[len(package) + 1 :].split(".")[0]
        return head if head in order else None

    own = entry(module)
    if own is None:
        return []
    allowed = set(order[: order.index(own)])
    out = []
    for line, target in imported_modules(source, module, is_package):
        hit = entry(current(target))
        if hit is not None and hit != own and hit not in allowed:
            out.append(f"{module}:{line} -> {package}.{hit}")
    return sorted(set(out))


def all_modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


@functools.cache
def _sources() -> list[tuple[str, str, bool]]:
    """``(module, source, is_package)`` of every module (read once per session)."""
    return [
        (module_name(p), p.read_text(encoding="utf-8"), p.name == "__init__.py")
        for p in all_modules()
    ]


def test_every_folder_of_marlhf_is_a_package() -> None:
    """A folder without ``__init__.py`` imports as a namespace package from a checkout, but
    setuptools' ``packages.find`` leaves it out of an installed wheel."""
    folders = {p.parent for p in all_modules()}
    assert (
        sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file()) == []
    )


def test_every_module_is_in_a_layer() -> None:
    units = {unit(module_name(p)) for p in all_modules()}
    assert None not in units, [
        module_name(p) for p in all_modules() if unit(module_name(p)) is None
    ]
    assert set(UNITS) == units, set(UNITS) ^ units


def test_every_package_module_is_ordered() -> None:
    for package, order in INSIDE.items():
        found = {
            module_name(p)[len(package) + 1 :].split(".")[0]
            for p in all_modules()
            if module_name(p).startswith(package + ".")
        }
        assert len(order) == len(set(order)), package
        assert set(order) == found, (package, set(order) ^ found)


@pytest.mark.parametrize("own", UNITS)
def test_layer_imports_only_lower_layers(own: str) -> None:
    """Rule: ``own`` imports no unit of a higher layer and none of its peers."""
    found = [
        v
        for module, source, is_package in _sources()
        if unit(module) == own
        for v in violations(source, module, is_package)
    ]
    assert not found, (
        f"{own} must not import {sorted(forbidden(own))}; against docs/design.md's layering:\n"
        + "\n".join(found)
    )


@pytest.mark.parametrize("package", sorted(INSIDE))
def test_package_modules_import_only_earlier_ones(package: str) -> None:
    """Rule: inside ``package``, a module imports only the modules listed before it."""
    found = [
        v
        for module, source, is_package in _sources()
        for v in inside_violations(source, module, is_package, package)
    ]
    assert not found, f"{package}'s order is {INSIDE[package]}; against it:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("from marlhf.runs.builders import make_any_task", "marlhf.envs.builtin.text", ["runs"]),
        ("def f():\n    import marlhf.algorithms.base", "marlhf.options.wrapper", ["algorithms"]),
        ("from marlhf import commands", "marlhf.algorithms.base", ["commands"]),
        ("from ..algorithms import PPO", "marlhf.envs.rollout", ["algorithms"]),
        ("from marlhf.envs import tasks", "marlhf.models", ["envs", "envs.core"]),
        ("from marlhf.options import base", "marlhf.tokenization", ["options"]),
        ("from marlhf.models import tiny_gpt2", "marlhf.envs.builtin.text", []),
        ("from marlhf.options import Termination", "marlhf.algorithms.ppo", []),
        ("from marlhf.algorithms import PPO", "marlhf.runs.runner", []),
        # old import paths (marlhf._compat) count as the modules they stand for
        ("from marlhf.training.runner import RunSpec", "marlhf.envs.core.rollout", ["runs"]),
        ("from marlhf.agents import PPO", "marlhf.policy.lora", ["algorithms", "marlhf"]),
        ("from marlhf.agents.distributed import barrier", "marlhf.policy.lora", []),
        ("if TYPE_CHECKING:\n    from marlhf.policy import x", "marlhf.parallel.fsdp", ["policy"]),
        ("import marlhf", "marlhf.threads", ["marlhf"]),
        ("from marlhf import __version__", "marlhf.cli.main", []),
        ("from marlhf.envs.coding import sandbox", "marlhf.envs.builtin.toy", ["envs.coding"]),
    ],
)
def test_checker_finds_forbidden_imports(source: str, module: str, expected: list[str]) -> None:
    found = violations(source, module, is_package=False)
    names = {(unit(v.split(" -> ")[1]) or "").removeprefix("marlhf.") for v in found}
    assert sorted(names) == expected


def test_inside_checker_finds_later_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(INSIDE, "marlhf.x", ("low", "sub", "mid", "high"))
    src = "from marlhf.x.low import a\nfrom marlhf.x import high\nimport marlhf.x.sub.leaf\n"
    assert inside_violations(src, "marlhf.x.mid", False, "marlhf.x") == [
        "marlhf.x.mid:2 -> marlhf.x.high"
    ]
    assert inside_violations(src, "marlhf.x.high", False, "marlhf.x") == []
    # a subpackage's modules count as the subpackage, inside it too
    assert inside_violations(src, "marlhf.x.sub.leaf", False, "marlhf.x") == [
        "marlhf.x.sub.leaf:2 -> marlhf.x.high"
    ]
    # old paths count as the modules they stand for
    old = "def f():\n    from marlhf.agents.ppo import PPO\n"
    assert inside_violations(old, "marlhf.algorithms.base", False, "marlhf.algorithms") == [
        "marlhf.algorithms.base:2 -> marlhf.algorithms.ppo"
    ]
