"""OPTIMADE filters as boolean masks over a node's table.

optimade's Lark grammar parses the filter; ``MaskTransformer`` turns the tree into one function
of a ``StructureColumns`` that returns a boolean mask of the rows (NaN and None are OPTIMADE's null:
no comparison matches them, ``IS UNKNOWN`` does)."""

from __future__ import annotations

import operator
from functools import reduce

import numpy as np
from lark import Token, v_args
from optimade.exceptions import BadRequest, NotImplementedResponse
from optimade.filtertransformers.base_transformer import BaseTransformer, Quantity

OPS = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
REVERSED = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


class Unknown(str):
    """A property this provider does not serve: every value is null."""


class MaskTransformer(BaseTransformer):
    """Transforms a parsed OPTIMADE filter into ``mask(columns) -> np.ndarray[bool]``."""

    def postprocess(self, query):
        return query

    def value_list(self, arg):
        for v in arg:
            if isinstance(v, Token) and str(v) in OPS:
                raise NotImplementedResponse(detail=f"an operator inside a value list ({arg}) is not supported")
        return list(arg)

    def value_zip(self, arg):
        raise NotImplementedResponse(detail="correlated list queries (':') are not supported")

    value_zip_list = value_zip

    def set_zip_op_rhs(self, arg):
        raise NotImplementedResponse(detail="correlated list queries (':') are not supported")

    property_zip_addon = set_zip_op_rhs

    def expression(self, arg):
        parts = list(arg)
        return parts[0] if len(parts) == 1 else (lambda c: reduce(np.logical_or, (p(c) for p in parts)))

    def expression_clause(self, arg):
        parts = list(arg)
        return parts[0] if len(parts) == 1 else (lambda c: reduce(np.logical_and, (p(c) for p in parts)))

    def expression_phrase(self, arg):
        if len(arg) == 1:
            return arg[0]
        inner = arg[1]
        return lambda c: ~inner(c)

    def property(self, args):
        q = super().property(args)
        if len(args) > 1:
            raise NotImplementedResponse(detail=f"nested property {'.'.join(map(str, args))} is not supported")
        if isinstance(q, Quantity):
            return q.backend_field or q.name
        return Unknown(q)

    @v_args(inline=True)
    def value_op_rhs(self, op, value):
        return ("op", str(op), value)

    def known_op_rhs(self, arg):
        return ("known", str(arg[1]) == "KNOWN")

    def fuzzy_string_op_rhs(self, arg):
        kind = str(arg[0])
        pattern = arg[2] if isinstance(arg[1], Token) and arg[1].type == "WITH" else arg[1]
        return ("fuzzy", kind, pattern)

    def set_op_rhs(self, arg):
        if len(arg) == 2:
            return ("has", "ANY", [arg[1]])
        if str(arg[1]) in ("ALL", "ANY", "ONLY"):
            return ("has", str(arg[1]), list(arg[2]))
        raise NotImplementedResponse(detail="HAS with an operator is not supported")

    def length_op_rhs(self, arg):
        op = str(arg[1]) if len(arg) == 3 else "="
        return ("length", op, arg[-1])

    def constant_first_comparison(self, arg):
        value, op, prop = arg[0], str(arg[1]), arg[2]
        if not isinstance(prop, str):  # two constants
            raise NotImplementedResponse(detail="a comparison of two constants is not supported")
        return self.property_first_comparison([prop, ("op", REVERSED[op], value)])

    def property_first_comparison(self, arg):
        name, rhs = arg[0], arg[1]
        if isinstance(rhs, str) or not isinstance(rhs, tuple):
            raise NotImplementedResponse(detail="comparing two properties is not supported")
        return lambda cols: _evaluate(cols, name, rhs)


def _evaluate(cols, name: str, rhs: tuple) -> np.ndarray:
    n = cols.n
    if isinstance(name, Unknown) or name not in cols.fields:
        # a property nobody serves is null on every row: only IS UNKNOWN matches
        if rhs[0] == "known":
            return np.full(n, not rhs[1])
        return np.zeros(n, dtype=bool)
    f = cols.fields[name]
    kind = rhs[0]
    if kind == "known":
        if f.uniques is None:
            known = ~np.isnan(f.values)
        else:
            known = f.where(lambda v: v is not None)
        return known if rhs[1] else ~known
    if kind == "op":
        op, value = rhs[1], rhs[2]
        if f.uniques is None:
            if isinstance(value, str):
                raise BadRequest(detail=f"{name} is a number: compare it with a number, not {value!r}")
            with np.errstate(invalid="ignore"):
                m = OPS[op](f.values, float(value))
            return m & ~np.isnan(f.values)
        if f.kind == "list":
            raise BadRequest(detail=f"{name} is a list: use HAS, HAS ALL, HAS ANY, HAS ONLY or LENGTH")
        if not isinstance(value, str):
            raise BadRequest(detail=f"{name} is a string: compare it with a string, not {value!r}")
        return f.where(lambda v: v is not None and OPS[op](v, value))
    if kind == "fuzzy":
        if f.uniques is None or f.kind != "str":
            raise BadRequest(detail=f"{rhs[1]} needs a string property; {name} is not one")
        how, pat = rhs[1], str(rhs[2])
        test = {"CONTAINS": lambda v: pat in v, "STARTS": lambda v: v.startswith(pat),
                "ENDS": lambda v: v.endswith(pat)}[how]
        return f.where(lambda v: v is not None and test(v))
    if kind == "has":
        if f.kind != "list":
            raise BadRequest(detail=f"HAS needs a list property; {name} is not one")
        how, values = rhs[1], set(rhs[2])
        test = {"ALL": lambda v: values <= set(v), "ANY": lambda v: bool(values & set(v)),
                "ONLY": lambda v: set(v) <= values}[how]
        return f.where(lambda v: v is not None and test(v))
    if kind == "length":
        op, value = rhs[1], rhs[2]
        if f.kind != "list":
            raise BadRequest(detail=f"LENGTH needs a list property; {name} is not one")
        if not isinstance(value, (int, float)):
            raise BadRequest(detail="LENGTH compares with a number")
        if f.lengths is not None:
            return OPS[op](f.lengths, float(value))
        return f.where(lambda v: v is not None and OPS[op](len(v), value))
    raise NotImplementedResponse(detail=f"filter construct {kind!r} is not supported")
