"""Old import paths, kept for one release: ``marlhf.agents.*``, ``marlhf.training.*`` and the flat
``marlhf.envs.*`` modules (before the layout of docs/design.md, "Layout").

One :data:`sys.meta_path` finder, installed by ``marlhf/__init__.py``, maps each old module name
to its new module (:data:`MOVED`): importing the old name returns the new module object itself
(``marlhf.agents.ppo is marlhf.algorithms.ppo``) and emits a :class:`DeprecationWarning` that
names the new path. The old packages ``marlhf.agents`` and ``marlhf.training`` are stand-in
packages: their package-level names (``from marlhf.agents import PPO``) resolve, with the same
warning, to where those names live now (:data:`PACKAGE_NAMES`). Nothing else imports through
here: every module of marlhf uses the new paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

#: old module -> new module.
MOVED: dict[str, str] = {
    "marlhf.envs.batched": "marlhf.envs.core.batched",
    "marlhf.envs.token_env": "marlhf.envs.core.token_env",
    "marlhf.envs.token_vector_env": "marlhf.envs.core.token_vector_env",
    "marlhf.envs.action_checks": "marlhf.envs.core.action_checks",
    "marlhf.envs.reset_options": "marlhf.envs.core.reset_options",
    "marlhf.envs.contract": "marlhf.envs.core.contract",
    "marlhf.envs.numpy_view": "marlhf.envs.core.numpy_view",
    "marlhf.envs.sb3_vec": "marlhf.envs.core.sb3_vec",
    "marlhf.envs.registration": "marlhf.envs.core.registration",
    "marlhf.envs.tasks": "marlhf.envs.core.tasks",
    "marlhf.envs.rollout": "marlhf.envs.core.rollout",
    "marlhf.envs.toy": "marlhf.envs.builtin.toy",
    "marlhf.envs.credit": "marlhf.envs.builtin.credit",
    "marlhf.envs.text": "marlhf.envs.builtin.text",
    "marlhf.envs.reasoning": "marlhf.envs.builtin.reasoning",
    "marlhf.envs.reward_model": "marlhf.envs.builtin.reward_model",
    "marlhf.envs.safe_expr": "marlhf.envs.builtin.safe_expr",
    "marlhf.envs.code": "marlhf.envs.coding.humaneval",
    "marlhf.envs.checks": "marlhf.envs.coding.checks",
    "marlhf.envs.sandbox": "marlhf.envs.coding.sandbox",
    "marlhf.envs.sandbox_cgroup": "marlhf.envs.coding.cgroup",
    "marlhf.envs.sandbox_child": "marlhf.envs.coding.child",
    "marlhf.envs.sandbox_io": "marlhf.envs.coding.channels",
    "marlhf.envs.sandbox_plain": "marlhf.envs.coding.plain",
    "marlhf.envs.sandbox_process": "marlhf.envs.coding.process",
    "marlhf.envs.sandbox_seccomp": "marlhf.envs.coding.seccomp",
    "marlhf.envs.sandbox_types": "marlhf.envs.coding.values",
    "marlhf.agents.distributed": "marlhf.parallel.distributed",
    "marlhf.agents.fsdp": "marlhf.parallel.fsdp",
    "marlhf.agents.policy": "marlhf.policy.actor_critic",
    "marlhf.agents.policy_io": "marlhf.policy.actor_critic",
    "marlhf.agents.lm_utils": "marlhf.policy.lm_utils",
    "marlhf.agents.logprobs": "marlhf.policy.logprobs",
    "marlhf.agents.lora": "marlhf.policy.lora",
    "marlhf.agents.advantages": "marlhf.credit.advantages",
    "marlhf.agents.estimators": "marlhf.credit.estimators",
    "marlhf.agents.combine": "marlhf.credit.combine",
    "marlhf.agents.kl": "marlhf.credit.kl",
    "marlhf.agents.vine": "marlhf.credit.vine",
    "marlhf.agents.turn_credit": "marlhf.credit.turn_credit",
    "marlhf.agents.turn_maths": "marlhf.credit.turn_maths",
    "marlhf.agents.turn_potentials": "marlhf.credit.turn_potentials",
    "marlhf.agents.diagnostics": "marlhf.credit.diagnostics",
    "marlhf.agents.truth": "marlhf.credit.truth",
    "marlhf.agents.truth_base": "marlhf.credit.truth_base",
    "marlhf.agents.truth_multiturn": "marlhf.credit.truth_multiturn",
    "marlhf.agents.save_util": "marlhf.checkpoint.save_util",
    "marlhf.agents.checkpoint_data": "marlhf.checkpoint.data",
    "marlhf.agents.rollout_io": "marlhf.checkpoint.rollout_io",
    "marlhf.agents.base": "marlhf.algorithms.base",
    "marlhf.agents.ppo": "marlhf.algorithms.ppo",
    "marlhf.agents.mappo": "marlhf.algorithms.mappo",
    "marlhf.agents.losses": "marlhf.algorithms.losses",
    "marlhf.agents.buffer": "marlhf.algorithms.buffer",
    "marlhf.agents.config": "marlhf.algorithms.config",
    "marlhf.agents.presets": "marlhf.algorithms.presets",
    "marlhf.agents.turn_presets": "marlhf.algorithms.turn_presets",
    "marlhf.agents.preset_table": "marlhf.algorithms.preset_table",
    "marlhf.agents.termination_training": "marlhf.algorithms.termination_training",
    "marlhf.agents.turn_checks": "marlhf.algorithms.turn_checks",
    "marlhf.agents.collector": "marlhf.algorithms.collector",
    "marlhf.agents.pipeline": "marlhf.algorithms.pipeline",
    "marlhf.agents.updater": "marlhf.algorithms.updater",
    "marlhf.agents.audit": "marlhf.audit.credit",
    "marlhf.agents.turn_audit": "marlhf.audit.turn_audit",
    "marlhf.agents.turn_exact": "marlhf.audit.turn_exact",
    "marlhf.training.config": "marlhf.config.parse",
    "marlhf.training.sections": "marlhf.config.sections",
    "marlhf.training.configs": "marlhf.config.commands",
    "marlhf.training.runner": "marlhf.runs.runner",
    "marlhf.training.builders": "marlhf.runs.builders",
    "marlhf.training.run_files": "marlhf.runs.run_files",
    "marlhf.training.report": "marlhf.runs.report",
    "marlhf.training.io": "marlhf.runs.io",
    "marlhf.training.train": "marlhf.commands.train",
    "marlhf.training.compare": "marlhf.commands.compare",
    "marlhf.training.evaluate": "marlhf.commands.evaluate",
    "marlhf.training.sft": "marlhf.commands.sft",
    "marlhf.training.sft_data": "marlhf.commands.sft_data",
    "marlhf.training.reward_modeling": "marlhf.commands.reward_modeling",
    "marlhf.training.audit": "marlhf.commands.credit_audit",
    "marlhf.training.cli": "marlhf.cli.main",
    "marlhf.training.progress": "marlhf.runs.progress",
}

#: old package -> its package-level names -> the module that holds each now.
PACKAGE_NAMES: dict[str, dict[str, str]] = {
    "marlhf.agents": {
        name: "marlhf.algorithms"
        for name in (
            "MAPPO",
            "PPO",
            "PRESETS",
            "CausalLMActorCritic",
            "Estimate",
            "EstimatorBatch",
            "GenerationState",
            "LMOnPolicyAlgorithm",
            "LMRolloutBuffer",
            "MAPPOConfig",
            "PPOConfig",
            "Preset",
            "RolloutSamples",
            "available_estimators",
            "available_presets",
            "register_estimator",
        )
    },
    "marlhf.training": {},
}

_HERE = os.path.normcase(__file__)


def _stacklevel() -> int:
    """The stack level of the first frame outside the import machinery and this module, so the
    warning points at the line that imported the old path. :func:`warnings.warn` does not count
    the frames of ``importlib._bootstrap`` (CPython skips them), so neither does this."""
    frame = sys._getframe(1)  # _warn's
    level = 1
    while frame is not None:
        name = frame.f_code.co_filename
        if "importlib" in name and "_bootstrap" in name:
            frame = frame.f_back  # type: ignore[assignment]
            continue
        if name != _HERE:
            return level
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release: import {new} instead",
        DeprecationWarning,
        stacklevel=_stacklevel(),
    )


class _AliasLoader(importlib.abc.Loader):
    """Loads an old module name as the new module object itself."""

    def __init__(self, new: str) -> None:
        self.new = new
        self.spec: Any = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(self.new)
        self.spec = module.__spec__  # the import system overwrites __spec__: restored below
        _warn(spec.name, self.new)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = self.spec


class _PackageLoader(importlib.abc.Loader):
    """Builds a stand-in for an old package whose package-level names moved."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # the default module

    def exec_module(self, module: types.ModuleType) -> None:
        names = PACKAGE_NAMES[module.__name__]
        old = module.__name__

        def __getattr__(name: str) -> Any:
            if name not in names:
                raise AttributeError(f"module {old!r} has no attribute {name!r}")
            _warn(f"{old}.{name}", f"{names[name]}.{name}")
            return getattr(importlib.import_module(names[name]), name)

        module.__getattr__ = __getattr__  # type: ignore[method-assign]
        module.__path__ = []
        module.__doc__ = f"Deprecated alias package (see marlhf._compat): {old}."


class AliasFinder(importlib.abc.MetaPathFinder):
    """Finds the old module names of :data:`MOVED` and the old packages of
    :data:`PACKAGE_NAMES`; every other name is left to the import system."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in MOVED:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(MOVED[fullname]))
        if fullname in PACKAGE_NAMES:
            return importlib.machinery.ModuleSpec(fullname, _PackageLoader(), is_package=True)
        return None


def install() -> None:
    """Put the finder first on :data:`sys.meta_path` (once)."""
    if not any(isinstance(f, AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, AliasFinder())
