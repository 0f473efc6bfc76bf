"""The one flat-name table and the paths of the knobs in :class:`PPOConfig`'s groups.

Every knob's name is unique across the groups (and the estimators' options inside ``credit``),
so each flat name (``clip_range``) has one path (``("loss", "clip_range")``,
``("credit", "grpo", "group_std")``): :data:`FLAT_KEYS`. Everything that takes flat names goes
through it: ``PPO(clip_range=0.1)``, presets, ``agent.clip_range`` on the command line and in
YAML, checkpoints' saved hyper-parameters.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from marlhf.algorithms.groups import GROUPS


def leaves(cls: type, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """``(path, field)`` of every knob of dataclass ``cls``, in field order, nested sections
    (an estimator's options) walked into."""
    hints = typing.get_type_hints(cls)
    out: list[tuple[tuple[str, ...], Any]] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(leaves(hints[f.name], (*prefix, f.name)))
        else:
            out.append(((*prefix, f.name), f))
    return out


def _flat_table() -> dict[str, tuple[str, ...]]:
    table: dict[str, tuple[str, ...]] = {}
    for group, cls in GROUPS.items():
        for path, f in leaves(cls, (group,)):
            if f.name in table:  # every flat name must stay unique (one table, no ambiguity)
                raise TypeError(f"knob {f.name!r} is at {table[f.name]} and {path}")
            table[f.name] = path
    clash = sorted(set(table) & set(GROUPS))
    if clash:
        raise TypeError(f"knob {clash[0]!r} has a group's name")
    return table


#: The one mapping table: flat name (``clip_range``) -> group path (``("loss", "clip_range")``,
#: ``("credit", "grpo", "group_std")`` for a knob an estimator owns). ``PPO(clip_range=0.1)``,
#: presets' flat dicts, ``agent.clip_range`` in YAML and ``--set`` and checkpoints' saved
#: hyper-parameters all go through it.
FLAT_KEYS: dict[str, tuple[str, ...]] = _flat_table()


def knob_fields() -> dict[str, dataclasses.Field[Any]]:
    """Every knob's dataclass field (help text, default) by flat name."""
    return {path[-1]: f for cls in GROUPS.values() for path, f in leaves(cls)}


def knob_types() -> dict[str, Any]:
    """Every knob's type annotation by flat name (``Literal`` choices included)."""
    out: dict[str, Any] = {}
    for name, path in FLAT_KEYS.items():
        cls = GROUPS[path[0]]
        for part in path[1:-1]:
            cls = typing.get_type_hints(cls)[part]
        out[name] = typing.get_type_hints(cls)[path[-1]]
    return out


def get_knob(config: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` (``("loss", "clip_range")``) of a config or group."""
    for part in path:
        config = getattr(config, part)
    return config


def with_knobs(cls: type, base: Any, changes: dict[tuple[str, ...], Any]) -> Any:
    """Group ``cls`` (``base``, or its defaults when ``None``) with ``changes`` set, each keyed by
    its path inside the group; a nested section is rebuilt only where a change reaches it."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[tuple[str, ...], Any]] = {}
    for path, value in changes.items():
        if len(path) == 1:
            direct[path[0]] = value
        else:
            nested.setdefault(path[0], {})[path[1:]] = value
    hints = typing.get_type_hints(cls) if nested else {}
    for name, sub in nested.items():
        inner = None if base is None else getattr(base, name)
        direct[name] = with_knobs(hints[name], inner, sub)
    if base is None:
        return cls(**direct)
    return dataclasses.replace(base, **direct) if direct else base
