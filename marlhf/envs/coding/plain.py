"""Plain data from an untrusted program, decoded in the trainer without hashing, on a budget.

A program's answers come back as tagged JSON (:func:`~marlhf.envs.coding.child.encode`).
Decoding a set or a dict the ordinary way hashes every member, and a hostile program can pick
200,000 integers that all hash alike (multiples of ``2**61 - 1``): building that set takes
quadratic time, in the trainer, after the sandbox has ended. So here nothing untrusted is ever
hashed: :func:`decode_plain` keeps lists, tuples and scalars as Python values and turns a set,
frozenset or dict into a :class:`PlainSet` or :class:`PlainDict` whose members are **sorted**
by a total order on plain data (:func:`sort_key`; comparisons only, ``O(n log n)``). Two
equal members (which no real set has) make the data invalid. :func:`plain_equal` then compares
a decoded answer with a trusted expected value exactly as Python's ``==`` would, walking the
sorted members side by side.

The budget: the answer's bytes are bounded before this (the parent reads the result pipe with
a byte limit), the number of nodes here (:data:`MAX_NODES`), and the time: past ``deadline``
(the sample's own time limit) decoding stops with :class:`PlainDataTimeout` (looked at every
512 nodes and before each sort, so a small answer is never refused for the clock alone).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

from marlhf.envs.coding.child import MAX_DEPTH, PlainDataError, split_leaf

__all__ = [
    "MAX_NODES",
    "PlainDataTimeout",
    "PlainDict",
    "PlainSet",
    "decode_plain",
    "plain_equal",
    "sort_key",
]

MAX_NODES = 1_000_000
#: How often (in nodes) the deadline is looked at.
_CHECK_EVERY = 512
_NUMBERS = (bool, int, float)


class PlainDataTimeout(PlainDataError):
    """Decoding ran past the sample's time limit."""


class PlainSet:
    """A decoded ``set``/``frozenset``: members in the program's order (``items``) and their
    sort keys in sorted order (``keys``). Never hashed; compare with :func:`plain_equal`."""

    __slots__ = ("items", "keys", "kind")

    def __init__(self, kind: str, items: tuple, keys: tuple) -> None:
        self.kind, self.items, self.keys = kind, items, keys

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __eq__(self, other: object) -> bool:
        return plain_equal(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PlainSet({self.kind}, {list(self.items)[:20]!r})"


class PlainDict:
    """A decoded ``dict``: ``(key, value)`` pairs in the program's order (``items``) and
    ``(sort key, value)`` sorted by key (``pairs``). Iterates over keys, like a dict."""

    __slots__ = ("items", "pairs")

    def __init__(self, items: tuple, pairs: tuple) -> None:
        self.items, self.pairs = items, pairs

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        return (k for k, _ in self.items)

    def __eq__(self, other: object) -> bool:
        return plain_equal(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PlainDict({list(self.items)[:20]!r})"


def sort_key(value: Any) -> tuple:
    """A key that orders hashable plain values totally and is equal exactly when the values
    are (``1 == 1.0 == True``; a ``str`` never equals ``bytes``; NaN equals nothing).

    :raises PlainDataError: for an unhashable value (a list, dict or set as a member).
    """
    kind = type(value)
    if kind in _NUMBERS:
        return (0, value)
    if kind is str:
        return (1, value)
    if kind is bytes:
        return (2, value)
    if kind is tuple:
        return (3, tuple(sort_key(v) for v in value))
    if kind is frozenset:
        return (4, tuple(sorted(sort_key(v) for v in value)))
    if kind is PlainSet and value.kind == "frozenset":
        return (4, value.keys)
    if value is None:
        return (5, 0)
    raise PlainDataError(f"a {kind.__name__} cannot be a set member or dict key")


class _Budget:
    def __init__(self, nodes: int, deadline: float | None) -> None:
        self.nodes, self.deadline = nodes, deadline

    def spend(self) -> None:
        self.nodes -= 1
        if self.nodes < 0:
            raise PlainDataError("too large")
        if self.deadline is not None and self.nodes % _CHECK_EVERY == 0:
            self.check()

    def check(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise PlainDataTimeout("decoding the answer ran past the time limit")


def decode_plain(data: Any, deadline: float | None = None, max_nodes: int = MAX_NODES) -> Any:
    """The value :func:`~marlhf.envs.coding.child.encode` wrote, with sets and dicts as
    :class:`PlainSet`/:class:`PlainDict` (no hashing of anything untrusted).

    :param data: the parsed JSON of one encoded value.
    :param deadline: a :func:`time.monotonic` time after which decoding stops.
    :param max_nodes: the most values (nodes) accepted.
    :raises PlainDataTimeout: past ``deadline``.
    :raises PlainDataError: when ``data`` is not exactly what ``encode`` writes, has two equal
        members in one set (or keys in one dict), or is too deep or too large.
    """
    return _decode(data, 0, _Budget(max_nodes, deadline))


def _sorted_unique(keys: list[tuple], what: str) -> list[int]:
    """Indices of ``keys`` in sorted order; two equal keys are an error."""
    order = sorted(range(len(keys)), key=keys.__getitem__)
    for a, b in itertools.pairwise(order):
        if keys[a] == keys[b]:
            raise PlainDataError(f"a {what} with two equal members")
    return order


def _decode(data: Any, depth: int, budget: _Budget) -> Any:
    budget.spend()
    if depth > MAX_DEPTH:
        raise PlainDataError("too deep")
    tag, body = split_leaf(data)
    if tag is None:
        return body
    if tag in ("list", "tuple"):
        items = [_decode(v, depth + 1, budget) for v in body]
        return items if tag == "list" else tuple(items)
    if tag in ("set", "frozenset"):
        members = tuple(_decode(v, depth + 1, budget) for v in body)
        keys = [sort_key(m) for m in members]
        budget.check()
        order = _sorted_unique(keys, tag)
        return PlainSet(tag, members, tuple(keys[i] for i in order))
    if tag == "dict":
        pairs = []
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise PlainDataError("a dict entry is not a [key, value] pair")
            pairs.append((_decode(pair[0], depth + 1, budget), _decode(pair[1], depth + 1, budget)))
        keys = [sort_key(k) for k, _ in pairs]
        budget.check()
        order = _sorted_unique(keys, "dict")
        return PlainDict(tuple(pairs), tuple((keys[i], pairs[i][1]) for i in order))
    raise PlainDataError(f"unknown tag {str(tag)[:40]!r}")


def _expected_members(expected: set | frozenset) -> list[tuple]:
    return sorted(sort_key(v) for v in expected)


def plain_equal(value: Any, expected: Any) -> bool:
    """Whether a decoded ``value`` equals ``expected`` (a trusted plain Python value, or
    another decoded one) as ``value == expected`` would, without hashing ``value``."""
    kind = type(expected)
    if kind is PlainSet or kind is PlainDict:
        value, expected = expected, value  # compare from the decoded side
        kind = type(expected)
        if kind is PlainSet or kind is PlainDict:
            return _both_decoded(value, expected)
    if kind in (set, frozenset):
        if type(value) is not PlainSet or len(value) != len(expected):
            return False
        try:
            return list(value.keys) == _expected_members(expected)
        except PlainDataError:
            return False
    if kind is dict:
        if type(value) is not PlainDict or len(value) != len(expected):
            return False
        try:
            trusted = sorted(((sort_key(k), v) for k, v in expected.items()), key=_first)
        except PlainDataError:
            return False
        return all(
            kv == ke and plain_equal(vv, ve)
            for (kv, vv), (ke, ve) in zip(value.pairs, trusted, strict=True)
        )
    if kind is list or kind is tuple:
        if type(value) is not kind or len(value) != len(expected):
            return False
        return all(plain_equal(v, e) for v, e in zip(value, expected, strict=True))
    if kind in _NUMBERS:
        return type(value) in _NUMBERS and bool(value == expected)
    if kind is str or kind is bytes:
        return type(value) is kind and value == expected
    if expected is None:
        return value is None
    return False


def _first(pair: tuple) -> Any:
    return pair[0]


def _both_decoded(a: Any, b: Any) -> bool:
    if type(a) is PlainSet and type(b) is PlainSet:
        return len(a) == len(b) and a.keys == b.keys
    if type(a) is PlainDict and type(b) is PlainDict:
        return len(a) == len(b) and all(
            ka == kb and plain_equal(va, vb)
            for (ka, va), (kb, vb) in zip(a.pairs, b.pairs, strict=True)
        )
    return False
