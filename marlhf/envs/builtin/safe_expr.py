"""Safe evaluation of tiny integer expressions (the ExprTarget task's outputs).

Text is parsed with ``ast.parse(mode="eval")`` and walked by hand; nothing is ever passed to
``eval``. Allowed: integer literals, binary ``+ - *``, unary ``-``, parentheses. Size is bounded
before parsing (characters) and while walking (nodes, magnitude of every intermediate value).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

MAX_CHARS = 64
MAX_NODES = 64
MAX_ABS = 10**12

_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


@dataclass(frozen=True)
class ExprResult:
    """Outcome of :func:`evaluate`.

    :param valid: True when the text parsed and stayed inside the grammar and bounds.
    :param value: the integer value (``None`` when not valid).
    :param num_operators: binary operators in the expression.
    :param reason: why it is not valid (empty when valid).
    """

    valid: bool
    value: int | None = None
    num_operators: int = 0
    reason: str = ""


class _Reject(Exception):
    pass


def evaluate(
    text: str, max_chars: int = MAX_CHARS, max_nodes: int = MAX_NODES, max_abs: int = MAX_ABS
) -> ExprResult:
    """Evaluate ``text`` as an integer expression, safely.

    :param text: the expression, e.g. ``"3*(4-1)"``.
    :param max_chars: longer texts are rejected before parsing (default 64).
    :param max_nodes: expressions with more AST nodes are rejected (default 64).
    :param max_abs: any literal or intermediate value above this magnitude is rejected
        (default 10**12).
    """
    if not text.strip():
        return ExprResult(False, reason="empty")
    if len(text) > max_chars:
        return ExprResult(False, reason=f"longer than {max_chars} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return ExprResult(False, reason=f"not parseable: {type(exc).__name__}")
    budget = [max_nodes]
    operators = [0]

    def walk(node: ast.AST) -> int:
        budget[0] -= 1
        if budget[0] < 0:
            raise _Reject(f"more than {max_nodes} nodes")
        if isinstance(node, ast.Constant):
            if type(node.value) is not int:  # bool is an int subclass: excluded on purpose
                raise _Reject(f"literal {node.value!r} is not an integer")
            value = node.value
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            operators[0] += 1
            value = _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value = -walk(node.operand)
        else:
            raise _Reject(f"{type(node).__name__} is outside the grammar")
        if abs(value) > max_abs:
            raise _Reject(f"value magnitude above {max_abs}")
        return value

    try:
        value = walk(tree.body)
    except _Reject as exc:
        return ExprResult(False, reason=str(exc))
    except RecursionError:
        return ExprResult(False, reason="nested too deeply")
    return ExprResult(True, value=value, num_operators=operators[0])
