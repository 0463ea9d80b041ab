"""Run program-of-thought answers without running arbitrary code: a small interpreter over Python's AST.

Teachers and students write programs like

    in_bags = 3 * 14
    total = 7 + in_bags
    print(total)

`run_program` parses the text and evaluates only a whitelisted subset: numbers and strings, names,
arithmetic and comparisons, assignments (also augmented and tuple), `if`, `for ... in range(...)`, `while`
with a step budget, and calls to a few pure builtins (print, round, int, float, abs, min, max, sum, len,
range, divmod, pow with small exponents). Nothing else is reachable: no imports, no attributes, no
subscripts of objects it did not build, no function definitions, no I/O besides the captured `print`. A
step budget and a cap on number size stop runaway programs. Nothing is ever passed to exec or eval, so a
hostile program can at worst be rejected (SandboxError).

The answer is the last thing printed, else the value of a variable named `answer`/`result`, else the last
assigned value.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any

MAX_STEPS = 10_000
MAX_ABS = 10**15
MAX_CHARS = 4_000

_FENCE = re.compile(r"```(?:python)?\n(.*?)```", re.DOTALL)


class SandboxError(Exception):
    """The program uses something outside the subset, runs too long, or fails."""


_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def extract_program(text: str) -> str:
    """The code of an answer: a fenced block if there is one, else the text after a '[pot]:' tag."""
    fenced = _FENCE.search(text)
    if fenced:
        return fenced.group(1)
    body = text.split("]:", 1)[1] if text.lstrip().startswith("[pot]") and "]:" in text else text
    return body.strip()


def run_program(source: str) -> str | None:
    """The program's answer as text, or None when it printed and assigned nothing."""
    if len(source) > MAX_CHARS:
        raise SandboxError(f"program longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as exc:
        raise SandboxError(f"not valid Python: {exc.msg}") from None
    interpreter = _Interpreter()
    interpreter.block(tree.body)
    if interpreter.printed:
        return interpreter.printed[-1]
    for name in ("answer", "result", "ans"):
        if name in interpreter.env:
            return _text(interpreter.env[name])
    return _text(interpreter.last) if interpreter.last is not None else None


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class _Interpreter:
    def __init__(self) -> None:
        self.env: dict[str, Any] = {}
        self.printed: list[str] = []
        self.steps = 0
        self.last: Any = None

    def tick(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise SandboxError(f"more than {MAX_STEPS} steps")

    # statements
    def block(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.stmt(stmt)

    def stmt(self, node: ast.stmt) -> None:
        self.tick()
        if isinstance(node, ast.Assign):
            value = self.expr(node.value)
            for target in node.targets:
                self.assign(target, value)
            self.last = value
        elif isinstance(node, ast.AugAssign):
            if not isinstance(node.target, ast.Name):
                raise SandboxError("only names can be updated")
            value = self.binop(node.op, self.name(node.target.id), self.expr(node.value))
            self.env[node.target.id] = self.last = value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            self.assign(node.target, self.expr(node.value))
        elif isinstance(node, ast.Expr):
            self.expr(node.value)
        elif isinstance(node, ast.If):
            self.block(node.body if self.expr(node.test) else node.orelse)
        elif isinstance(node, ast.For):
            iterable = self.expr(node.iter)
            if not isinstance(iterable, (range, list, tuple)):
                raise SandboxError("for loops may only go over range(...) or a list")
            for value in iterable:
                self.tick()
                self.assign(node.target, value)
                self.block(node.body)
        elif isinstance(node, ast.While):
            while self.expr(node.test):
                self.tick()
                self.block(node.body)
        elif isinstance(node, ast.Pass):
            pass
        else:
            raise SandboxError(f"{type(node).__name__} statements are not allowed")

    def assign(self, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Name):
            if target.id.startswith("_"):
                raise SandboxError("names may not start with '_'")
            self.env[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (tuple, list)):
            if len(target.elts) != len(value):
                raise SandboxError("unpacking the wrong number of values")
            for t, v in zip(target.elts, value, strict=True):
                self.assign(t, v)
        else:
            raise SandboxError("only names and tuples of names can be assigned")

    # expressions
    def name(self, name: str) -> Any:
        if name in self.env:
            return self.env[name]
        raise SandboxError(f"name {name!r} is not defined")

    def expr(self, node: ast.expr) -> Any:
        self.tick()
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
            return node.value
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.BinOp):
            return self.binop(node.op, self.expr(node.left), self.expr(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
            value = self.expr(node.operand)
            return -value if isinstance(node.op, ast.USub) else (+value if isinstance(node.op, ast.UAdd) else not value)
        if isinstance(node, ast.Compare):
            left = self.expr(node.left)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self.expr(comparator)
                if type(op) not in _CMPOPS or not _CMPOPS[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.BoolOp):
            values = [self.expr(v) for v in node.values]
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.IfExp):
            return self.expr(node.body) if self.expr(node.test) else self.expr(node.orelse)
        if isinstance(node, (ast.Tuple, ast.List)):
            values = [self.expr(e) for e in node.elts]
            return tuple(values) if isinstance(node, ast.Tuple) else values
        if isinstance(node, ast.JoinedStr):
            return "".join(self._format(v) for v in node.values)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise SandboxError(f"{type(node).__name__} expressions are not allowed")

    def _format(self, node: ast.expr) -> str:
        if isinstance(node, ast.FormattedValue):
            return _text(self.expr(node.value))
        return str(self.expr(node))

    def binop(self, op: ast.operator, left: Any, right: Any) -> Any:
        fn = _BINOPS.get(type(op))
        if fn is None or not all(isinstance(v, (int, float)) for v in (left, right)):
            raise SandboxError("only arithmetic on numbers is allowed")
        if isinstance(op, ast.Pow) and (abs(right) > 64 or abs(left) > MAX_ABS):
            raise SandboxError("exponent too large")
        try:
            value = fn(left, right)
        except (ZeroDivisionError, OverflowError, ValueError) as exc:
            raise SandboxError(f"arithmetic failed: {exc}") from None
        if isinstance(value, (int, float)) and (abs(value) > MAX_ABS or (isinstance(value, float) and math.isnan(value))):
            raise SandboxError("number too large")
        return value

    def call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.keywords and node.func.id != "print":
            raise SandboxError("only calls of a few builtins are allowed")
        args = [self.expr(a) for a in node.args]
        name = node.func.id
        if name == "print":
            self.printed.append(" ".join(_text(a) for a in args))
            return None
        fn = _CALLS.get(name)
        if fn is None:
            raise SandboxError(f"calling {name!r} is not allowed")
        try:
            value = fn(*args)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
            raise SandboxError(f"{name} failed: {exc}") from None
        if isinstance(value, range) and len(value) > MAX_STEPS:
            raise SandboxError("range too long")
        return value


def _pow(a: Any, b: Any) -> Any:
    if abs(b) > 64:
        raise ValueError("exponent too large")
    return a**b


_CALLS = {
    "round": round, "int": int, "float": float, "abs": abs, "min": min, "max": max, "sum": sum, "len": len,
    "range": range, "divmod": divmod, "pow": _pow,
}
