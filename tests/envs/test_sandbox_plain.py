"""Answers decoded without hashing: the same verdicts as Python's ``==``, on a budget."""

from __future__ import annotations

import json
import math
import random
import time

import pytest

from marlhf.envs.coding.child import PlainDataError, encode
from marlhf.envs.coding.plain import (
    PlainDataTimeout,
    decode_plain,
    plain_equal,
)

#: Multiples of the modulus of Python's int hash: every one hashes to 0.
MODULUS = 2**61 - 1


def wire(value: object) -> object:
    """``value`` as the trainer receives it: encoded, through JSON."""
    return json.loads(json.dumps(encode(value)))


def test_values_decode_and_compare_as_python_does() -> None:
    pairs: list[tuple[object, object]] = [
        ({1, 2}, frozenset({1.0, 2})),
        ({True, "a"}, {1, "a"}),
        ({(1, frozenset({2, 3}))}, {(1.0, frozenset({3, 2}))}),
        ({"k": {1}, 2: [3]}, {2: [3], "k": {1}}),
        ({1: 2}, {1: 3}),
        ({1: 2}, {1.0: 2, 2: 2}),
        ([1], (1,)),
        ("a", b"a"),
        ({1, 2}, [1, 2]),
        ({frozenset()}, {frozenset()}),
        ([{1}, {2: None}], [{1}, {2: None}]),
        ({(1, 2)}, {(1, 3)}),
        ({None, 0}, {None, False}),
        ({0.5, -0.0}, {0.0, 0.5}),
        (2**80, float(2**80)),
        ({2**80 + 1}, {float(2**80)}),
    ]
    for a, b in pairs:
        decoded = decode_plain(wire(a))
        assert plain_equal(decoded, b) == (a == b), (a, b)
        assert plain_equal(decoded, decode_plain(wire(b))) == (a == b), (a, b)
    assert not plain_equal(decode_plain(wire({math.nan})), {math.nan})  # two distinct NaNs


def random_plain(rng: random.Random, depth: int = 0, hashable: bool = False) -> object:
    atoms = [0, 1, 2, 1.0, 2.5, True, False, None, "a", "b", b"a", -1]
    kind = rng.random()
    if depth > 2 or kind < 0.4:
        return rng.choice(atoms)
    items = [random_plain(rng, depth + 1, True) for _ in range(rng.randint(0, 3))]
    if hashable:
        return tuple(items) if kind < 0.7 else frozenset(items)
    if kind < 0.55:
        return items
    if kind < 0.7:
        return tuple(items)
    if kind < 0.85:
        return set(items)
    return {k: random_plain(rng, depth + 1) for k in items}


def test_random_values_agree_with_python_equality() -> None:
    rng = random.Random(0)
    agreed = equal = 0
    for _ in range(4000):
        a, b = random_plain(rng), random_plain(rng)
        expected = a == b  # Python's verdict, before b may be replaced
        if rng.random() < 0.3:  # equal values built another way
            b = json.loads(json.dumps(encode(a)))
            b = decode_plain(b)
            expected = True  # a round trip of data without NaN (not plain_equal's own verdict)
        assert plain_equal(decode_plain(wire(a)), b) == expected, (a, b)
        agreed += 1
        equal += expected
    assert agreed == 4000 and 800 < equal < 3500  # both outcomes were exercised


def test_a_set_with_equal_members_or_unhashable_ones_is_refused() -> None:
    for forged in [
        {"set": [1, 1]},
        {"set": [1, {"float": "1.0"}]},
        {"frozenset": [True, 1]},
        {"dict": [[1, 0], [True, 1]]},
        {"set": [{"list": []}]},
        {"dict": [[{"set": []}, 1]]},
    ]:
        with pytest.raises(PlainDataError):
            decode_plain(forged)


def test_the_program_order_is_kept_for_tuple() -> None:
    decoded = decode_plain({"set": [3, 1, 2]})
    assert tuple(decoded) == (3, 1, 2) and len(decoded) == 3 and bool(decoded)
    assert list(decode_plain({"dict": [["b", 1], ["a", 2]]})) == ["b", "a"]
    assert not decode_plain({"set": []})


def test_colliding_hashes_cost_no_more_than_sorting() -> None:
    """200,000 integers with one hash: building that set takes minutes; decoding and comparing
    it here takes a sort."""
    colliding = [k * MODULUS for k in range(1, 200_001)]
    data = {"set": colliding}
    start = time.perf_counter()
    decoded = decode_plain(data)
    assert not plain_equal(decoded, {1, 2})
    pairs = decode_plain({"dict": [[k, 0] for k in colliding]})
    assert not plain_equal(pairs, {1: 0})
    elapsed = time.perf_counter() - start
    assert elapsed < 20.0, elapsed  # 1-4 s on a loaded 2-core machine; hashing: minutes
    assert plain_equal(decoded, decode_plain({"set": colliding[::-1]}))


def test_decoding_stops_at_the_deadline_and_the_node_budget() -> None:
    data = {"list": list(range(100_000))}
    with pytest.raises(PlainDataTimeout):
        decode_plain(data, deadline=time.monotonic() - 1.0)
    with pytest.raises(PlainDataError, match="too large"):
        decode_plain(data, max_nodes=1000)
    assert decode_plain({"list": [1, 2]}, deadline=time.monotonic() - 1.0) == [1, 2]
