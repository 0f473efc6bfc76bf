"""Estimator specs with options, and weighted sums of estimators: ``A = sum_k w_k A_k``.

Grammar (parsed by hand, never evaluated)::

    expr    := ["-"] term (("+" | "-") term)*
    term    := [weight "*"] spec | spec "*" weight
    spec    := name [":" option (";" option)*]
    option  := key "=" value                     (value as in termination specs)
    weight  := a finite decimal number (1, 0.5, 2e-3)

Examples: ``gigpo:omega=0.5``, ``grpo + 0.5 * gigpo_step``, ``rloo + 0.1 * rebn:gamma=0.9``,
``turn_gae:inner=gae - 0.5 * grpo``. A term with options is best separated by spaces (its
options may hold ``-``, as in ``omega=1e-3``; a ``+`` there would end the term).

A spec's options go to the estimator's option dataclass (declared with
:func:`register_options`); an estimator without one takes none. A weighted sum declares the
union of its terms' inputs; its value targets (``returns``) are those of the first term that
has any (the term that trains the critic), its segment logs likewise.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from functools import lru_cache
from typing import Any

import torch

from marlhf.credit.estimators import (
    _REGISTRY,
    Estimate,
    EstimatorBatch,
    EstimatorFn,
    EstimatorSpec,
    available_estimators,
    register_resolver,
)
from marlhf.options.registry import parse_spec

#: Option dataclass of each estimator that takes options (see :func:`register_options`).
OPTIONS: dict[str, type] = {}


def register_options(name: str, cls: type) -> None:
    """Declare ``cls`` (a dataclass) as estimator ``name``'s options: ``name:key=value;...``
    builds ``cls(key=value, ...)`` and hands it to the estimator as ``options=``."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"register_options({name!r}): {cls!r} is not a dataclass")
    OPTIONS[name] = cls


def build_options(name: str, kwargs: dict[str, Any]) -> Any:
    """``OPTIONS[name](**kwargs)``, with errors naming the estimator, the key and the valid keys
    (and ints accepted where a float is declared)."""
    cls = OPTIONS.get(name)
    if cls is None:
        if kwargs:
            raise ValueError(f"estimator {name!r} takes no options, got {sorted(kwargs)}")
        return None
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key, value in kwargs.items():
        if key not in fields:
            raise ValueError(f"estimator {name!r}: unknown option {key!r}; valid: {fields}")
        if hints[key] is float and isinstance(value, int) and not isinstance(value, bool):
            kwargs[key] = float(value)
        want = hints[key]
        ok = isinstance(kwargs[key], want) if isinstance(want, type) else True
        if not ok or (want is float and isinstance(kwargs[key], bool)):
            raise ValueError(f"estimator {name!r}: option {key}={value!r} must be {want.__name__}")
    return cls(**kwargs)


def _call_with(spec: EstimatorSpec, options: Any) -> EstimatorFn:
    def run(batch: EstimatorBatch, config: Any) -> Estimate:
        return spec.fn(batch, config, options=options)  # type: ignore[call-arg]

    return run


def spec_with_options(text: str) -> EstimatorSpec:
    """The spec ``name:key=value;...``: the registered ``name`` run with those options."""
    name, args, kwargs = parse_spec(text)
    if name not in _REGISTRY:
        raise ValueError(
            f"estimator {name!r} (in {text!r}) is unknown; choose one of {available_estimators()}"
        )
    if args:
        raise ValueError(f"estimator spec {text!r}: options are key=value, got {args[0]!r}")
    base = _REGISTRY[name]
    options = build_options(name, dict(kwargs))
    requires = option_requires(options, base.requires)
    return EstimatorSpec(text, _call_with(base, options), requires, base.description)


def option_requires(options: Any, base: frozenset[str]) -> frozenset[str]:
    """The inputs an estimator with these options needs: ``options.requires(base)`` when the
    options define it (an option can add an input or swap one), else ``base``."""
    method = getattr(options, "requires", None)
    return frozenset(method(base)) if callable(method) else base


_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE]-?\d+)?|inf(?:inity)?|nan"
_TOKEN = re.compile(
    rf"\s*(?:(?P<num>{_NUMBER})(?![A-Za-z0-9_])|(?P<op>[+*-])|"
    r"(?P<spec>[A-Za-z_][A-Za-z0-9_]*(?::[^\s+*]*)?))",
    re.IGNORECASE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    stripped = text.rstrip()
    while pos < len(stripped):
        m = _TOKEN.match(stripped, pos)
        if m is None or m.end() == pos:
            raise ValueError(
                f"estimator {text!r}: cannot read {stripped[pos:].strip()!r} (write terms as "
                "[WEIGHT *] NAME[:key=value;...] joined by + or -)"
            )
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _weight(text: str, token: str, spec: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(
            f"estimator {text!r}: the weight of {spec!r} is {token!r}, not a finite number"
        )
    return value


def parse_combination(text: str) -> list[tuple[float, str]]:
    """``[(weight, spec), ...]`` of an expression (see the module docstring).

    :raises ValueError: naming the expression and what is wrong (a weight that is not finite,
        a dangling operator, two operators in a row, an empty expression).
    """
    tokens = _tokens(text)
    if not tokens:
        raise ValueError("estimator: the expression is empty")

    def at(i: int) -> tuple[str, str]:
        return tokens[i] if i < len(tokens) else ("end", "the end")

    terms: list[tuple[float, str]] = []
    i, sign = 0, 1.0
    if at(0) == ("op", "-"):
        sign, i = -1.0, 1
    while True:
        weight = 1.0
        if at(i)[0] == "num":
            if at(i + 1) != ("op", "*") or at(i + 2)[0] != "spec":
                raise ValueError(
                    f"estimator {text!r}: a weight must be followed by '* NAME' (after "
                    f"{at(i)[1]!r})"
                )
            weight = _weight(text, at(i)[1], at(i + 2)[1])
            i += 2
        if at(i)[0] != "spec":
            raise ValueError(f"estimator {text!r}: expected an estimator name, got {at(i)[1]!r}")
        spec = at(i)[1]
        i += 1
        if at(i) == ("op", "*"):
            if at(i + 1)[0] != "num":
                raise ValueError(f"estimator {text!r}: '{spec} *' must be followed by a weight")
            weight *= _weight(text, at(i + 1)[1], spec)
            i += 2
        terms.append((sign * weight, spec))
        if at(i)[0] == "end":
            return terms
        if at(i) not in (("op", "+"), ("op", "-")):
            raise ValueError(
                f"estimator {text!r}: expected + or - after {spec!r}, got {at(i)[1]!r}"
            )
        sign = -1.0 if at(i)[1] == "-" else 1.0
        i += 1
        if at(i)[0] == "end":
            raise ValueError(f"estimator {text!r}: the expression ends with an operator")


def _term_spec(spec: str) -> EstimatorSpec:
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    return spec_with_options(spec)


def combine(terms: list[tuple[float, str]], name: str | None = None) -> EstimatorSpec:
    """The estimator ``sum_k w_k A_k`` of ``terms`` ``[(weight, spec), ...]``.

    :raises ValueError: a weight that is not a finite number, an unknown estimator, the same
        spec twice, or no term at all.
    """
    if not terms:
        raise ValueError("combine: no terms")
    label = name or " + ".join(f"{w:g} * {s}" for w, s in terms)
    seen: set[str] = set()
    parts: list[tuple[float, EstimatorSpec]] = []
    for weight, spec in terms:
        if (
            not isinstance(weight, int | float)
            or isinstance(weight, bool)
            or not math.isfinite(weight)
        ):
            raise ValueError(
                f"estimator {label!r}: the weight of {spec!r} is {weight!r}, not a finite number"
            )
        if spec in seen:
            raise ValueError(f"estimator {label!r}: {spec!r} appears twice; give it one weight")
        seen.add(spec)
        parts.append((float(weight), _term_spec(spec)))
    requires = frozenset().union(*(p.requires for _, p in parts))

    def run(batch: EstimatorBatch, config: Any) -> Estimate:
        total: torch.Tensor | None = None
        returns, segments = None, {}
        for weight, part in parts:
            est = part.fn(batch, config)
            adv = weight * est.advantages.double()
            total = adv if total is None else total + adv
            if returns is None and est.returns is not None:
                returns, segments = est.returns, est.segments
        assert total is not None
        advantages = torch.where(batch.mask, total, 0.0).float()
        return Estimate(advantages, returns, segments)

    description = "weighted sum: " + " + ".join(f"{w:g} x {p.name}" for w, p in parts)
    return EstimatorSpec(label, run, requires, description)


@lru_cache(maxsize=256)
def resolve(text: str) -> EstimatorSpec | None:
    """The spec of a name the registry lacks: ``name:options`` or a weighted sum; ``None`` when
    ``text`` is a bare unknown name (the registry's error then lists the valid ones)."""
    stripped = text.strip()
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", stripped):
        return _REGISTRY.get(stripped)
    terms = parse_combination(stripped)
    if len(terms) == 1 and terms[0][0] == 1.0:
        spec = _term_spec(terms[0][1])
        return EstimatorSpec(text, spec.fn, spec.requires, spec.description)
    return combine(terms, name=text)


register_resolver(resolve)
