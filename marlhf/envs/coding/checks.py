"""Unit-test assertions split into calls and expected values, judged outside the program.

HumanEval's ``check(candidate)`` functions are almost all lists of assertions about one call
each. :func:`parse_check` turns such a check into :class:`CallCheck` records: the call's inputs
and the expected outcome, both computed here in the trusted process by evaluating literals
(:func:`constant`; nothing is ever passed to ``eval``). The sandbox gets only the inputs
(:func:`~marlhf.envs.coding.sandbox.run_calls`) and returns plain data, decoded without hashing
(:mod:`~marlhf.envs.coding.plain`); :func:`grade_calls` compares it.

Forms understood (an optional assertion message is ignored):

==========================================  =====================================================
``assert candidate(A) == E``                 ``eq``: Python ``==`` between two plain values
``assert tuple(candidate(A)) == tuple(E)``   ``eq`` after ``tuple()`` of the plain result
``assert abs(candidate(A) - E) < tol``       ``close`` (also ``<=``): numbers only
``assert candidate(A) is True/False/None``   ``is``
``assert candidate(A)`` / ``assert not …``   ``truthy`` / ``falsy``
``assert <constant>``                        ``const`` (``assert True``): decided here
==========================================  =====================================================

Any other statement (a loop, a helper call, an expected value that is not a literal) makes the
whole check unstructured; :func:`~marlhf.envs.coding.sandbox.run_judged` is its sound path.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from marlhf.envs.coding.plain import plain_equal
from marlhf.envs.coding.sandbox import CallsOutcome, SandboxResult, tally

__all__ = ["CallCheck", "call_inputs", "constant", "grade_calls", "parse_check"]

MAX_NODES = 100_000
MAX_SIZE = 1_000_000


class NotConstant(ValueError):
    """The expression is not a literal this module evaluates."""


@dataclass(frozen=True)
class CallCheck:
    """One assertion: call ``candidate(*args, **kwargs)``, then test the result by ``kind``.

    :param kind: ``eq``, ``close``, ``is``, ``truthy``, ``falsy`` or ``const`` (no call:
        ``expected`` is the verdict).
    :param expected: the expected value (``eq``, ``close``, ``is``) or verdict (``const``).
    :param tol: ``close``: the bound on ``abs(result - expected)``; ``inclusive`` for ``<=``.
    :param as_tuple: compare ``tuple(result)`` (the ``tuple(candidate(..)) == tuple(..)`` form).
    :param source: the assertion as written, for messages.
    """

    kind: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    expected: Any = None
    tol: float = 0.0
    inclusive: bool = False
    as_tuple: bool = False
    source: str = ""


_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Any] = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_NUMBER = (bool, int, float)


def constant(node: ast.AST) -> Any:
    """The value of a literal expression: constants, lists, tuples, sets, dicts, unary and
    binary arithmetic on numbers, ``+``/``*`` on strings and sequences (bounded in size).

    :raises NotConstant: for anything else (names, calls, attributes, comprehensions...).
    """
    budget = [MAX_NODES]

    def size(value: Any) -> int:
        return len(value) if isinstance(value, str | bytes | list | tuple) else 1

    def walk(n: ast.AST) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise NotConstant("too large")
        if isinstance(n, ast.Constant) and (n.value is None or type(n.value) in (*_NUMBER, str)):
            return n.value
        if isinstance(n, ast.Constant) and type(n.value) is bytes:
            return n.value
        if isinstance(n, ast.List | ast.Tuple | ast.Set):
            items = [walk(e) for e in n.elts]
            if isinstance(n, ast.List):
                return items
            return tuple(items) if isinstance(n, ast.Tuple) else set(items)
        if isinstance(n, ast.Dict) and all(k is not None for k in n.keys):
            return {walk(k): walk(v) for k, v in zip(n.keys, n.values, strict=True)}  # type: ignore[arg-type]
        if isinstance(n, ast.UnaryOp) and type(n.op) in _UNARY:
            value = walk(n.operand)
            if not isinstance(value, _NUMBER):
                raise NotConstant("unary operator on a non-number")
            return _UNARY[type(n.op)](value)
        if isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
            left, right = walk(n.left), walk(n.right)
            numbers = isinstance(left, _NUMBER) and isinstance(right, _NUMBER)
            if isinstance(n.op, ast.Pow) and not (numbers and abs(right) <= 64):
                raise NotConstant("power too large")
            if not numbers and not isinstance(n.op, ast.Add | ast.Mult):
                raise NotConstant("arithmetic on a non-number")
            if isinstance(n.op, ast.Mult) and not numbers:
                count = right if isinstance(right, int) else left
                if not isinstance(count, int) or size(left) * size(right) * abs(count) > MAX_SIZE:
                    raise NotConstant("repetition too large")
            try:
                return _BINOPS[type(n.op)](left, right)
            except (ArithmeticError, TypeError, ValueError) as exc:
                raise NotConstant(str(exc)) from exc
        raise NotConstant(type(n).__name__)

    return walk(node)


def _call(node: ast.AST, names: set[str]) -> ast.Call | None:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names:
        return node
    return None


def _parse_assert(node: ast.Assert, names: set[str]) -> CallCheck:
    test, source = node.test, ast.unparse(node)
    uses = any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(test))
    if not uses:
        return CallCheck("const", expected=bool(constant(test)), source=source)
    as_tuple, kind, expected, tol, inclusive = False, "", None, 0.0, False
    target: ast.AST = test
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        target, kind = test.operand, "falsy"
    elif isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, op, right = test.left, test.ops[0], test.comparators[0]
        wrapped = isinstance(left, ast.Call) and isinstance(left.func, ast.Name)
        if wrapped and left.func.id == "tuple" and len(left.args) == 1 and not left.keywords:  # type: ignore[attr-defined]
            if not (isinstance(right, ast.Call) and ast.unparse(right.func) == "tuple"):
                raise NotConstant("tuple() on one side only")
            left, right, as_tuple = left.args[0], right.args[0], True  # type: ignore[attr-defined]
            expected = tuple(constant(right))
        if isinstance(op, ast.Eq):
            target, kind = left, "eq"
            expected = expected if as_tuple else constant(right)
        elif isinstance(op, ast.Is) and not as_tuple:
            target, kind, expected = left, "is", constant(right)
            if expected not in (True, False, None) or type(expected) not in (bool, type(None)):
                raise NotConstant("`is` against a non-singleton")
        elif isinstance(op, ast.Lt | ast.LtE) and not as_tuple:
            is_abs = isinstance(left, ast.Call) and ast.unparse(left.func) == "abs"
            inner = left.args[0] if is_abs and len(left.args) == 1 else None  # type: ignore[attr-defined]
            if not (isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.Sub)):
                raise NotConstant("unknown comparison")
            target, kind, expected = inner.left, "close", constant(inner.right)
            tol, inclusive = constant(right), isinstance(op, ast.LtE)
            if not isinstance(expected, _NUMBER) or not isinstance(tol, _NUMBER):
                raise NotConstant("tolerance form on non-numbers")
        else:
            raise NotConstant("unknown comparison")
    else:
        kind = "truthy"
    call = _call(target, names)
    if call is None or any(isinstance(a, ast.Starred) for a in call.args):
        raise NotConstant("not a direct call of the candidate")
    if any(k.arg is None for k in call.keywords):
        raise NotConstant("** arguments")
    args = tuple(constant(a) for a in call.args)
    kwargs = {k.arg: constant(k.value) for k in call.keywords if k.arg is not None}
    return CallCheck(kind, args, kwargs, expected, float(tol), inclusive, as_tuple, source)


def parse_check(test_source: str, entry_point: str) -> list[CallCheck] | None:
    """The assertions of ``check(candidate)`` as :class:`CallCheck` records, in order; None
    when any statement is not of a form in the table above (then use the judged path).

    Module-level statements besides ``check`` (``METADATA = {...}``) are ignored; no-op
    statements inside ``check`` (a docstring, a bare ``print``) are skipped.
    """
    module = ast.parse(test_source)
    check = next(
        (n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None
    )
    if check is None:
        raise ValueError(f"test source of {entry_point!r} defines no `check(candidate)` function")
    names = {check.args.args[0].arg if check.args.args else "candidate", entry_point}
    checks: list[CallCheck] = []
    for stmt in check.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant | ast.Name):
            continue
        if not isinstance(stmt, ast.Assert):
            return None
        try:
            checks.append(_parse_assert(stmt, names))
        except (NotConstant, RecursionError, TypeError):
            return None
    return checks or None


def _judge(check: CallCheck, value: Any) -> tuple[str, str]:
    """``(outcome, error)`` of one plain ``value`` against ``check``, as the assertion would."""
    try:
        if check.as_tuple:
            value = tuple(value)
        if check.kind == "eq":  # as `==`, hashing nothing the program sent
            ok = plain_equal(value, check.expected)
        elif check.kind == "is":
            ok = value is check.expected
        elif check.kind == "truthy":
            ok = bool(value)
        elif check.kind == "falsy":
            ok = not value
        else:  # close: as `abs(value - expected) < tol`, numbers only
            if not isinstance(value, _NUMBER):
                raise TypeError(f"unsupported operand type for -: {type(value).__name__!r}")
            gap = abs(value - check.expected)
            ok = gap <= check.tol if check.inclusive else gap < check.tol
    except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:
        return "runtime_error", f"{check.source}: {type(exc).__name__}: {exc}"
    return ("passed", "") if ok else ("failed", f"{check.source}: AssertionError")


def grade_calls(checks: Sequence[CallCheck], outcome: CallsOutcome) -> SandboxResult:
    """The graded result of ``outcome`` (from ``run_calls`` on :func:`call_inputs`) against
    ``checks``: a result that is not plain data fails its assertion; a call that raised or never
    answered is a runtime error for its assertion."""
    if outcome.status is not None:
        return SandboxResult(
            outcome.status, 0, len(checks), outcome.duration_s, outcome.error,
            outcome.returncode, outcome.network_isolated, outcome.stdout, outcome.stderr,
        )  # fmt: skip
    answers = iter(outcome.results)
    verdicts = []
    for check in checks:
        if check.kind == "const":
            verdicts.append(("passed", "") if check.expected else ("failed", check.source))
            continue
        answer = next(answers)
        if answer.kind == "value":
            verdicts.append(_judge(check, answer.value))
        elif answer.kind == "unplain":
            verdicts.append(("failed", f"{check.source}: result is not plain data"))
        else:
            verdicts.append(("runtime_error", f"{check.source}: {answer.error}"))
    return tally(
        verdicts, outcome.duration_s, outcome.returncode, outcome.network_isolated,
        outcome.stdout, outcome.stderr,
    )  # fmt: skip


def call_inputs(checks: Sequence[CallCheck]) -> list[tuple[tuple, dict]]:
    """The ``(args, kwargs)`` of every check that makes a call, in order."""
    return [(c.args, c.kwargs) for c in checks if c.kind != "const"]
