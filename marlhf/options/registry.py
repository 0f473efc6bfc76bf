"""Termination registry and the string-spec grammar.

Spec grammar (the CLI, configs and ``MAPPO(termination=...)`` use it)::

    spec   := name [":" args]
    args   := arg (";" arg)*
    arg    := value | key "=" value          positional values first, then keywords
    value  := int | float | "inf" | "true" | "false" | list | word
    list   := value ("," value)+

Examples: ``"ngram:5"``, ``"ngram:inf"``, ``"random_ngram:sizes=1,2,3,5,10;repeat=3"``,
``"treesitter:python;mode=statement"``. Positional and keyword values are passed to the
registered factory (usually the termination class) as ``*args, **kwargs``.

A factory with a ``parse_spec_args`` attribute parses the text after ``name:`` itself. The
combinators do, because their arguments are specs: ``union:ngram:5|punctuation``,
``min_length:3|punctuation``, ``max_length:10|union:perplexity|punctuation``, with parentheses
to group a nested part (``union:(max_length:10|punctuation)|ngram:20``); see
:mod:`marlhf.options.combinators`. ``A > B`` nests ``B`` inside each segment of ``A``
(``turn > ngram:5``, :mod:`marlhf.options.turn`).

Checkpoints store a termination as structured data, ``{"name": ..., "kwargs": {...}}`` (a
nested rule as ``{"termination": {"name": ..., "kwargs": ...}}``), written by
:func:`termination_config` and rebuilt by :func:`build_termination` without any spec parsing.

Third-party packages register through the ``marlhf.terminations`` entry-point group: each
entry point names a ``Termination`` subclass (or a factory), registered under the entry point's
name the first time the registry is consulted.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, TypeVar

from marlhf.options.base import Termination

ENTRY_POINT_GROUP = "marlhf.terminations"

Factory = Callable[..., Termination]
F = TypeVar("F", bound=Factory)

_REGISTRY: dict[str, Factory] = {}
_entry_points_loaded = False


def register_termination(name: str, *, overwrite: bool = False) -> Callable[[F], F]:
    """Class decorator: make a termination buildable by ``make_termination(name)``."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"register_termination: name {name!r} must be alphanumeric/_/-")

    def deco(factory: F) -> F:
        if (
            name in _REGISTRY
            and not overwrite
            and _REGISTRY[name] is not factory
            and not _same_source(_REGISTRY[name], factory)
        ):
            raise ValueError(
                f"register_termination: {name!r} is already registered to {_REGISTRY[name]!r}; "
                "pass overwrite=True to replace it"
            )
        _REGISTRY[name] = factory
        if isinstance(factory, type) and issubclass(factory, Termination):
            factory.name = name
        return factory

    return deco


def _same_source(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are one definition imported twice (a script run as
    ``__main__`` and imported again by name, e.g. by ``--import`` or a worker process)."""
    try:
        return a.__qualname__ == b.__qualname__ and inspect.getfile(a) == inspect.getfile(b)
    except (AttributeError, TypeError):
        return False


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            factory = ep.load()
            register_termination(ep.name)(factory)
        except Exception as exc:  # a broken plugin must not take the built-ins down with it
            warnings.warn(
                f"marlhf: termination plugin {ep.name!r} = {ep.value!r} (entry-point group "
                f"{ENTRY_POINT_GROUP!r}) failed to load and is skipped: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )


def available_terminations() -> list[str]:
    """Sorted names of every registered termination (built-ins and entry points)."""
    _load_entry_points()
    return sorted(_REGISTRY)


def _parse_value(text: str) -> Any:
    text = text.strip()
    if "," in text:
        return [_parse_value(t) for t in text.split(",") if t.strip()]
    low = text.lower()
    if low in ("inf", "+inf", "infinity"):
        return math.inf
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> tuple[str, list[Any], dict[str, Any]]:
    """Split a spec into ``(name, args, kwargs)``; see the module docstring for the grammar."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"termination spec must be a non-empty string, got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(";"))):
        key, eq, value = part.partition("=")
        if eq:
            if not key.strip().isidentifier():
                raise ValueError(f"termination spec {spec!r}: {key!r} is not a valid keyword")
            kwargs[key.strip()] = _parse_value(value)
        elif kwargs:
            raise ValueError(f"termination spec {spec!r}: positional {part!r} after keywords")
        else:
            args.append(_parse_value(part))
    return name.strip(), args, kwargs


def split_nesting(spec: str) -> tuple[str, str] | None:
    """``"A > B"`` -> ``("A", "B")`` at the first ``>`` outside parentheses (nesting: ``B``
    inside each segment of ``A``, see :mod:`marlhf.options.turn`); ``None`` without one."""
    depth = 0
    for i, ch in enumerate(spec):
        depth += ch == "("
        depth -= ch == ")"
        if ch == ">" and depth == 0:
            return spec[:i].strip(), spec[i + 1 :].strip()
    return None


def make_termination(spec: str | Termination | Mapping[str, Any]) -> Termination:
    """Build a termination from a spec string (a ``Termination`` passes through unchanged; a
    mapping ``{"name", "kwargs"}`` is built by :func:`build_termination`).

    A factory with a ``parse_spec_args(rest: str) -> (args, kwargs)`` attribute parses the text
    after ``name:`` itself (the combinators do: their arguments are nested specs).
    """
    if isinstance(spec, Termination):
        return spec
    if isinstance(spec, Mapping):
        return build_termination(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"termination spec must be a non-empty string, got {spec!r}; "
            f"registered: {available_terminations()}"
        )
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if split_nesting(spec) is not None:  # "turn > ngram:5": the nesting combinator
        name, rest = "within", spec.strip()
    _load_entry_points()
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown termination {name!r} in spec {spec!r}; registered: {available_terminations()}"
        )
    custom = getattr(_REGISTRY[name], "parse_spec_args", None)
    try:
        if custom is not None:
            args, kwargs = custom(rest)
        else:
            _, args, kwargs = parse_spec(spec)
    except ValueError as exc:
        raise ValueError(f"{exc}; registered: {available_terminations()}") from exc
    try:
        term = _REGISTRY[name](*args, **kwargs)
    except TypeError as exc:
        raise ValueError(f"termination spec {spec!r}: {exc}") from exc
    if not isinstance(term, Termination):
        raise TypeError(f"termination factory {name!r} returned {type(term)}, not a Termination")
    if type(term).spec is Termination.spec:  # no own spec: remember the one it came from
        term._built_from_spec = spec.strip()
    return term


#: The key that marks a nested termination inside a structured termination's arguments.
NESTED = "termination"


def termination_config(term: Termination) -> dict[str, Any]:
    """``{"name", "kwargs"}``: the data :func:`build_termination` rebuilds ``term`` from.

    The arguments are the rule's :meth:`~Termination.config_kwargs` (by default those its
    constructor was called with); nested terminations become ``{"termination": {...}}``.

    :raises ValueError: naming the argument, when one is not plain data (numbers, strings,
        bools, None, lists and string-keyed mappings of those, or terminations).
    """
    owner = type(term).__name__
    kwargs = term.config_kwargs()
    bad = [key for key in kwargs if key.startswith("*")]
    if bad:
        raise ValueError(
            f"{owner}: argument {bad[0]!r} is positional-only or variadic; a structured "
            "termination passes keywords"
        )
    return {"name": term.name, "kwargs": {k: _to_data(owner, k, v) for k, v in kwargs.items()}}


def _to_data(owner: str, key: str, value: Any) -> Any:
    if isinstance(value, Termination):
        return {NESTED: termination_config(value)}
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and not math.isnan(value):
        return float(value)
    if isinstance(value, list | tuple):
        return [_to_data(owner, key, v) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        if set(value) == {NESTED}:
            raise ValueError(f"{owner}: argument {key}={value!r} reads as a nested termination")
        return {k: _to_data(owner, f"{key}.{k}", v) for k, v in value.items()}
    raise ValueError(
        f"{owner}: argument {key}={value!r} ({type(value).__name__}) is not plain data "
        "(numbers, strings, bools, None, lists, mappings, terminations)"
    )


def build_termination(config: Mapping[str, Any]) -> Termination:
    """The termination described by ``{"name": ..., "kwargs": {...}}`` (see
    :func:`termination_config`); no spec string is parsed."""
    if not isinstance(config, Mapping) or not isinstance(config.get("name"), str):
        raise ValueError(
            f"structured termination {config!r} must be a mapping with a 'name' (and 'kwargs'); "
            f"registered: {available_terminations()}"
        )
    name, kwargs = config["name"], config.get("kwargs") or {}
    extra = set(config) - {"name", "kwargs"}
    if extra or not isinstance(kwargs, Mapping):
        raise ValueError(
            f"structured termination {dict(config)!r}: expected keys 'name' and 'kwargs' "
            "(a mapping)"
        )
    _load_entry_points()
    if name not in _REGISTRY:
        raise ValueError(f"unknown termination {name!r}; registered: {available_terminations()}")
    try:
        term = _REGISTRY[name](**{k: _from_data(v) for k, v in kwargs.items()})
    except TypeError as exc:
        raise ValueError(f"termination {name!r} with arguments {dict(kwargs)}: {exc}") from exc
    if not isinstance(term, Termination):
        raise TypeError(f"termination factory {name!r} returned {type(term)}, not a Termination")
    return term


def _from_data(value: Any) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {NESTED}:
            return build_termination(value[NESTED])
        return {k: _from_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_data(v) for v in value]
    return value
