"""Config machinery: dataclasses with help text, loaded from YAML, overridden from the CLI.

Every config field carries its help text in its metadata (``field(metadata=doc(...))``, the TRL
convention), so the CLI's ``--help``, the docs and the code read one source.

Values are merged in this order: the dataclass defaults, then a YAML file (``--config``), then
``--set key=value`` overrides (dotted keys reach nested configs, e.g. ``agent.kl_coef=0.1``; the
value is parsed as YAML, so ``0.1`` is a float, ``[0, 1]`` a list and ``null`` is None). Every
value is type-checked against the field's annotation: an unknown key is an error that lists the
valid keys, a wrong type an error naming the key and the expected type.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from marlhf.algorithms.config import doc

__all__ = ["ConfigError", "doc", "from_dict", "load_config", "to_dict"]

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, reading ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``) and refusing
    a key written twice in one mapping (YAML would keep the last one without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` overrides on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
                seen.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first + 1}); each key may appear once",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML text safely, with ``1e-3`` read as a float."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass


class ConfigError(ValueError):
    """A config file or override that does not fit the config's schema."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_name(annotation: Any) -> str:
    """A readable name for a type annotation (``int``, ``list[str]``, ``str or None``)."""
    origin = get_origin(annotation)
    if annotation is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(annotation))
    if origin in (list, Sequence):
        (inner,) = get_args(annotation) or (Any,)
        return f"list[{type_name(inner)}]"
    if origin in (dict, Mapping):
        return "mapping"
    if annotation is Any:
        return "any value"
    return getattr(annotation, "__name__", str(annotation))


def check_value(value: Any, annotation: Any, key: str) -> Any:
    """Return ``value`` checked (and int widened to float) against ``annotation``, or raise."""
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if annotation is type(None):
        if value is None:
            return None
    elif origin in (Union, types.UnionType):
        for arm in get_args(annotation):
            try:
                return check_value(value, arm, key)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in get_args(annotation):
            return value
    elif origin in (list, Sequence):
        if isinstance(value, list | tuple):
            (inner,) = get_args(annotation) or (Any,)
            return [check_value(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin in (dict, Mapping):
        if isinstance(value, Mapping):
            return dict(value)
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise ConfigError(
        f"config key {key!r}: got {value!r} ({type(value).__name__}), "
        f"expected {type_name(annotation)}"
    )


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "", build: bool = False) -> T:
    """Build config ``cls`` from a (possibly partial) nested mapping, checking keys and types.

    :param cls: a dataclass whose fields are declared with :func:`doc` help text.
    :param data: values to set; missing fields keep their defaults.
    :param prefix: dotted path of ``cls`` inside its parent config (for error messages).
    :param build: True skips ``cls.from_mapping`` (used by ``from_mapping`` itself).
    """
    if not build and hasattr(cls, "from_mapping"):
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"config section {prefix.rstrip('.')!r}: expected a mapping, got {data!r}"
            )
        return cls.from_mapping(data, prefix=prefix or "")  # type: ignore[attr-defined]
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"config section {prefix.rstrip('.') or '<root>'!r}: expected a mapping, got {data!r}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        valid = ", ".join(prefix + k for k in sorted(fields))
        raise ConfigError(
            f"unknown config key {prefix + str(unknown[0])!r}; valid keys here: {valid}"
        )
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        annotation = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(annotation):
            if isinstance(value, Mapping):  # a partial section keeps its field's own default
                value = _merge(_section_default(fields[name], annotation), value)  # type: ignore[arg-type]
            kwargs[name] = from_dict(annotation, value, prefix=key + ".")  # type: ignore[arg-type]
        else:
            kwargs[name] = check_value(value, annotation, key)
    try:
        return cls(**kwargs)
    except ConfigError as err:  # a section's own check names the field without the section
        raise ConfigError(f"{prefix}{err}" if prefix else str(err)) from None


def _section_default(field: dataclasses.Field[Any], cls: type) -> dict[str, Any]:
    """The values of a section field's default when it is not the section class's own default
    (``task`` of ``marlhf audit`` defaults to CreditSum, not to ``TaskConfig()``'s task), so that
    ``-s task.num_envs=8`` changes that one key of it; ``{}`` otherwise."""
    if field.default_factory is dataclasses.MISSING:
        return {}
    if "preset" in {f.name for f in dataclasses.fields(cls)}:
        return {}  # presets resolve the agent section's defaults (its values would fight them)
    default = to_dict(field.default_factory())
    return default if default != to_dict(cls()) else {}


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists (for YAML dumps and run records)."""
    return dataclasses.asdict(config)


def _set_dotted(data: dict[str, Any], cls: type, key: str, value: Any) -> None:
    parts = key.split(".")
    node, node_cls = data, cls
    i = 0
    while i < len(parts):
        part = parts[i]
        fields = {f.name for f in dataclasses.fields(node_cls)}
        aliases: Mapping[str, tuple[str, ...]] = getattr(node_cls, "flat_keys", {})
        if part not in fields and part in aliases and i == len(parts) - 1:
            # A knob by its flat name (kept as the user wrote it, for errors naming it); it wins
            # over the same knob set by its group path before (in the YAML file).
            group = node.get(aliases[part][0])
            if isinstance(group, dict):
                group.pop(aliases[part][-1], None)
            node[part] = value
            return
        if part not in fields:
            here = ".".join(parts[:i])
            raise ConfigError(
                f"unknown config key {key!r}; valid keys here: {valid_keys(node_cls, here)}"
            )
        annotation = _hints(node_cls)[part]
        if i == len(parts) - 1:
            node[part] = value
        elif dataclasses.is_dataclass(annotation):
            if aliases and i + 2 == len(parts):  # the group path wins over a flat name set before
                node.pop(parts[i + 1], None)
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} must be a mapping")
            node, node_cls = child, annotation  # type: ignore[assignment]
        elif get_origin(annotation) in (dict, Mapping):
            # free-form mapping (e.g. task.kwargs.horizon=64): the rest of the key is one name
            child = node.setdefault(part, {})
            child[".".join(parts[i + 1 :])] = value
            return
        else:
            raise ConfigError(
                f"config key {'.'.join(parts[: i + 1])!r} is a {type_name(annotation)}, "
                f"it has no sub-key {parts[i + 1]!r}"
            )
        i += 1


def valid_keys(cls: type, here: str) -> str:
    """The keys ``cls`` takes at ``here``, for an error: its fields (a section by its name), or
    for a class with flat names (the agent section) every leaf and every flat name. A field
    set elsewhere (``cli=False``) is not listed."""
    prefix = here + "." if here else ""
    aliases: Mapping[str, tuple[str, ...]] = getattr(cls, "flat_keys", {})
    if not aliases:
        fields = [f for f in dataclasses.fields(cls) if f.metadata.get("cli") is not False]
        return ", ".join(prefix + f.name for f in sorted(fields, key=_name))
    keys = [key for key, *_ in describe(cls, prefix)]
    flat = ", ".join(
        prefix + name
        for name in sorted(aliases)
        if prefix + ".".join(aliases[name]) in keys  # (a knob set elsewhere has no flat key)
    )
    return ", ".join(keys) + f"; or a knob by its flat name: {flat}"


def _name(f: dataclasses.Field[Any]) -> str:
    return f.name


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"agent.kl_coef=0.1"`` into the key and the YAML-parsed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. agent.kl_coef=0.1")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(
            f"--set {text!r}: the value is not valid YAML ({_one_line(err)})"
        ) from None
    return key.strip(), value


def _one_line(err: yaml.YAMLError) -> str:
    """A YAML error in one line: where, then what."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark
        where = "" if mark is None else f"line {mark.line + 1}, column {mark.column + 1}: "
        what = " ".join(str(x) for x in (err.context, err.problem) if x)
        return where + what
    return " ".join(str(err).split())


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` with clear errors for a missing or malformed file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} does not exist") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {str(p)!r} is not UTF-8 text (byte {err.object[err.start]:#04x} at "
            f"offset {err.start}); save it as UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {err}") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {_one_line(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r}: expected a mapping at the top level")
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> T:
    """Defaults, then ``base``, then the YAML file at ``path``, then ``overrides``.

    :param cls: the config dataclass.
    :param path: a YAML file (optional).
    :param overrides: ``KEY=VALUE`` strings with dotted keys.
    :param base: values applied before the file (e.g. a command's own defaults).
    """
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = _merge(data, load_yaml(path))
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, cls, key, value)
    return from_dict(cls, data)


def describe(cls: type, prefix: str = "", instance: Any = None) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, help)`` for every leaf field of ``cls`` (nested keys dotted).

    :param instance: the defaults to show (default: ``cls``'s own); a section shows the
        defaults its parent gives it (e.g. ``marlhf audit``'s task is CreditSum).
    """
    rows: list[tuple[str, str, str, str]] = []
    hints = _hints(cls)
    if instance is None:
        instance = cls.cli_default() if hasattr(cls, "cli_default") else cls()
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if f.metadata.get("cli") is False:
            continue
        if dataclasses.is_dataclass(annotation):
            section = getattr(instance, f.name)
            rows.extend(describe(annotation, prefix + f.name + ".", section))  # type: ignore[arg-type]
            continue
        default = getattr(instance, f.name)
        rows.append((prefix + f.name, type_name(annotation), repr(default), f.metadata["help"]))
    return rows


def sections(cls: type, prefix: str = "") -> dict[str, str]:
    """``{dotted section: its help}`` for every nested config section of ``cls`` (``agent``,
    ``agent.loss``...), in field order."""
    out: dict[str, str] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if f.metadata.get("cli") is False or not dataclasses.is_dataclass(annotation):
            continue
        text = " ".join(str(f.metadata.get("help", "")).replace("``", "").split())
        if getattr(annotation, "flat_keys", None):
            text += f" (each knob also by its flat name: {prefix}{f.name}.clip_range, ...)"
        out[prefix + f.name] = text
        out.update(sections(annotation, prefix + f.name + "."))  # type: ignore[arg-type]
    return out


def help_text(cls: type) -> str:
    """The ``--help`` epilog: one paragraph per config key, under a heading per section (the
    agent's groups each have theirs: ``agent.loss``, ``agent.kl``...)."""
    lines = ["config keys (set with --set KEY=VALUE or in the --config YAML file):"]
    headings = sections(cls)
    shown: set[str] = set()
    for key, tname, default, text in describe(cls):
        section = key.rpartition(".")[0]
        parts = section.split(".") if section else []
        for depth in range(1, len(parts) + 1):  # the section's heading, and its parents'
            name = ".".join(parts[:depth])
            if name in headings and name not in shown:
                shown.add(name)
                lines.append(f"{'  ' * depth}[{name}] {headings[name]}")
        indent = "  " * (len(parts) + 1)
        lines.append(f"{indent}{key} ({tname}, default {default})")
        lines.append(f"{indent}    {text}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- value checks
#: The largest seed accepted (numpy's legacy seeding and many libraries take 32 bits).
MAX_SEED = 2**32 - 1


def check_int(key: str, value: int, low: int, high: int | None = None, note: str = "") -> None:
    """Raise a :class:`ConfigError` naming ``key`` unless ``low <= value <= high``."""
    if low <= value and (high is None or value <= high):
        return
    bounds = f">= {low}" if high is None else f"between {low} and {high}"
    raise ConfigError(f"{key}={value!r} must be an integer {bounds}{note}")


def check_float(key: str, value: float, low: float, high: float, *, open_low: bool = True) -> None:
    """Raise a :class:`ConfigError` naming ``key`` unless ``value`` is finite and in range."""
    inside = (low < value if open_low else low <= value) and value <= high
    if not (math.isfinite(value) and inside):
        left = "(" if open_low else "["
        raise ConfigError(f"{key}={value!r} must be a finite number in {left}{low}, {high}]")


def check_seed(key: str, value: int) -> None:
    """Seeds are integers in ``[0, MAX_SEED]``."""
    check_int(key, value, 0, MAX_SEED)


def check_folder(key: str, value: str) -> None:
    """A folder path that names a folder: not empty (``""`` would mean the current folder)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"{key}={value!r} is empty; name a folder for the results, e.g. {key}=runs/mine"
        )


DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(key: str, value: str) -> None:
    """``value`` names a device (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``); whether the
    machine has it is checked when the run starts."""
    if value == "auto":
        return
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ConfigError(
            f"{key}={value!r} is not a device; valid: auto, cpu, cuda, cuda:N (N a GPU index), mps"
        )
