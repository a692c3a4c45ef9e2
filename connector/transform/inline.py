"""The builders of :mod:`connector.transform.events` with the value helpers written in place (issue 31).

A builder reads a field as ``put(target, key, text(data.get(key)))``: three Python calls for one
field, most of the builders' cost. This module rewrites the builders' own source (its AST) once at
start: ``put(t, k, v)`` statements become ``if (tmp := v) is not None: t[k] = tmp`` and ``text``,
``id_str``, ``num``, ``int_or_none`` and ``to_iso`` calls become expressions that take the usual input
type in place and call the helper for any other. The rewritten module is a second copy of
``events`` used by the fast path only; its output is the original's (``tests/test_transform_compiled.py``
compares them through the generic path, which keeps the original builders).
"""

from __future__ import annotations

import ast
import functools
import inspect
import sys
import types
from typing import Any

from connector.transform import events
from connector.transform.times import iso_ms, to_iso
from connector.transform.values import id_str, int_or_none, num, text

_HELPERS = {"_text_": text, "_id_str_": id_str, "_num_": num, "_int_or_none_": int_or_none, "_to_iso_": to_iso,
            "_iso_ms_": iso_ms}


def _expr(source: str) -> ast.expr:
    return ast.parse(source, mode="eval").body


# Each template reads its argument once, into the temporary ``T``.
_TEMPLATES = {
    "text": "(T.strip() or None) if type(T := X) is str else _text_(T)",
    "id_str": "(T.strip() or None) if type(T := X) is str else str(T) if type(T) is int else _id_str_(T)",
    "num": "T if type(T := X) is int or type(T) is float and T - T == 0 else _num_(T)",
    "int_or_none": "T if type(T := X) is int else _int_or_none_(T)",
    "to_iso": "_iso_ms_(T) if type(T := X) is int and 100000000000 <= T < 100000000000000 else _to_iso_(T)",
}


class _Inliner(ast.NodeTransformer):
    def __init__(self) -> None:
        self.count = 0
        self.depth = 0  # inside a function body: where a temporary may be assigned

    def _temp(self) -> str:
        self.count += 1
        return f"_in{self.count}"

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self.depth += 1
        node.body = [self.visit(stmt) for stmt in node.body]  # decorators, defaults: left as they are
        self.depth -= 1
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return node  # nothing of ours inside, and no place for statements

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        node.ifs = [self.visit(test) for test in node.ifs]  # a temporary may not be bound in the iterable
        return node

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        call = node.value
        if (self.depth and isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "put"
                and len(call.args) == 3 and not call.keywords):
            target, key, value = (self.visit(arg) for arg in call.args)
            temp = self._temp()
            test = ast.Compare(ast.NamedExpr(ast.Name(temp, ast.Store()), value), [ast.IsNot()],
                               [ast.Constant(None)])
            store = ast.Assign([ast.Subscript(target, key, ast.Store())], ast.Name(temp, ast.Load()))
            return ast.copy_location(ast.If(test, [store], []), node)
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        node = self.generic_visit(node)  # type: ignore[assignment] # a Call stays a Call
        if (self.depth and isinstance(node.func, ast.Name) and node.func.id in _TEMPLATES and len(node.args) == 1
                and not node.keywords):
            temp = self._temp()
            expr = _expr(_TEMPLATES[node.func.id].replace("T", temp).replace("X", "__ARG__"))
            return ast.copy_location(_Substitute(node.args[0]).visit(expr), node)
        return node


class _Substitute(ast.NodeTransformer):
    def __init__(self, arg: ast.expr) -> None:
        self.arg = arg

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return self.arg if node.id == "__ARG__" else node


@functools.cache
def inlined_events() -> types.ModuleType:
    """A copy of :mod:`connector.transform.events` with the value helpers inlined (made once per process,
    registered in ``sys.modules`` as dataclasses need)."""
    tree = _Inliner().visit(ast.parse(inspect.getsource(events)))
    ast.fix_missing_locations(tree)
    module = types.ModuleType("connector.transform.events_inlined")
    scope: dict[str, Any] = module.__dict__
    scope.update(_HELPERS)
    sys.modules[module.__name__] = module
    exec(compile(tree, "<connector.transform.events, inlined>", "exec"), scope)
    return module
