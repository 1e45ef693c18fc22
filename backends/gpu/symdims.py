"""Symbolic sizes of a function's dims: proofs that two dynamic dims are equal at every
shape bucket.

Generated GPU code is shape-agnostic, but some of its choices need facts that hold at
every bucket, e.g. that the consumers of `x @ W` walk exactly the product's elements (so
the GEMM's epilogue or the GEMV can apply them): `?` against `?` proves nothing, since
two dynamic dims may differ, or one be 1 and broadcast. Here every dim gets a form

    c * s1 * s2 * ...   (a monomial: an int coefficient over opaque symbols)

where the symbols are the function's dynamic input dims, and where no rule below follows
an op, one fresh symbol per dynamic result dim (equal only to itself). Static dims are
plain coefficients. The rules only ever derive a form that holds at every bucket, so
two dims with equal forms are equal at every bucket; unequal forms prove nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from xdsl.dialects import arith, func
from xdsl.dialects.builtin import IntegerAttr, TensorType
from xdsl.ir import Operation, SSAValue

from gimlet.dialects import gml
from gimlet.dialects.shapes import DYN, shape_of


@dataclass(frozen=True)
class Dim:
    """coef * product of symbols (sorted, with repeats)."""

    coef: int
    syms: tuple[int, ...] = ()

    @property
    def static(self) -> bool:
        return not self.syms

    def __mul__(self, other: Dim) -> Dim:
        coef = self.coef * other.coef
        return Dim(coef, tuple(sorted(self.syms + other.syms)) if coef else ())

    def can_be(self, n: int) -> bool:
        """Whether some bucket may give this form the value n > 0: the symbols' product
        is any integer, so n must be a multiple of the coefficient."""
        return self.coef == n if self.static else self.coef != 0 and n % abs(self.coef) == 0

    def exact_div(self, other: Dim) -> Dim | None:
        """self / other where that is a monomial (then floor and ceil division agree)."""
        rest = list(self.syms)
        for s in other.syms:
            if s not in rest:
                return None
            rest.remove(s)
        if other.coef == 0 or self.coef % other.coef:
            return None
        return Dim(self.coef // other.coef, tuple(rest))


SymShape = tuple[Dim, ...]
ONE = Dim(1)


def numel(shape: SymShape) -> Dim:
    out = ONE
    for d in shape:
        out = out * d
    return out


def covers(v: SymShape, dom: SymShape) -> bool:
    """Whether `v` (right-aligned, leading 1s) is `dom` itself at every bucket: read over
    dom, it is walked element by element in dom's order, never broadcast."""
    pad = len(dom) - len(v)
    return pad >= 0 and all(d == ONE for d in dom[:pad]) and tuple(dom[pad:]) == tuple(v)


class SymbolicShapes:
    """The forms of every tensor dim and `index` value of `fn` (fusion bodies included).
    `known`: the shapes and index values of a function's one bucket (no dynamic inputs),
    which make every form static, also where a type kept a `?`."""

    def __init__(
        self,
        fn: func.FuncOp,
        known: tuple[dict[SSAValue, tuple[int, ...]], dict[SSAValue, int]] | None = None,
    ):
        self._fresh = itertools.count()
        self.shapes: dict[SSAValue, SymShape] = {}
        self.ints: dict[SSAValue, Dim] = {}
        if known is not None:
            self.shapes = {v: tuple(Dim(d) for d in s) for v, s in known[0].items()}
            self.ints = {v: Dim(n) for v, n in known[1].items()}
            return
        for a in fn.body.block.args:
            if isinstance(a.type, TensorType):
                self.shapes[a] = self._declared(a)
        for op in fn.body.block.ops:
            self._op(op)

    def __getitem__(self, v: SSAValue) -> SymShape:
        return self.shapes[v]

    def _new(self) -> Dim:
        return Dim(1, (next(self._fresh),))

    def _declared(self, v: SSAValue, derived: Sequence[Dim] | None = None) -> SymShape:
        """v's dims: the static ones its type declares (the type system's, exact), the
        others `derived` by a rule where there is one of the right rank, else fresh."""
        declared = shape_of(v.type)
        if derived is not None and len(derived) != len(declared):
            derived = None
        return tuple(
            Dim(d) if d != DYN else (derived[i] if derived is not None else self._new())
            for i, d in enumerate(declared)
        )

    def _int(self, op: Operation) -> Dim:
        if isinstance(op, gml.DimOp):
            return self.shapes[op.input][op.index.value.data]
        if isinstance(op, arith.ConstantOp) and isinstance(op.value, IntegerAttr):
            return Dim(op.value.value.data)
        xs = [self.ints[v] for v in op.operands]
        if isinstance(op, arith.MuliOp):
            return xs[0] * xs[1]
        if isinstance(op, arith.FloorDivSIOp | arith.DivSIOp | arith.CeilDivSIOp):
            q = xs[0].exact_div(xs[1])  # dims are >= 0: the three agree on exact quotients
            if q is not None:
                return q
        if all(x.static for x in xs) and type(op) in _STATIC:
            return Dim(_STATIC[type(op)](*(x.coef for x in xs)))
        return self._new()

    def _op(self, op: Operation) -> None:
        if isinstance(op, gml.DimOp | arith.ConstantOp) or type(op) in _ARITH_OPS:
            try:
                self.ints[op.results[0]] = self._int(op)
            except (KeyError, IndexError):  # an operand no rule reached
                self.ints[op.results[0]] = self._new()
            return
        if isinstance(op, gml.FusionOp):
            for inner in op.body.block.ops:
                self._op(inner)
            term = op.body.block.last_op
            assert isinstance(term, gml.YieldOp)
            for r, y in zip(op.results, term.values, strict=True):
                self.shapes[r] = self._declared(r, self.shapes[y])
            return
        for r in op.results:
            if isinstance(r.type, TensorType):
                try:
                    derived = self._rule(op, r)
                except (KeyError, IndexError):  # an operand no rule reached: nothing known
                    derived = None
                self.shapes[r] = self._declared(r, derived)

    def _rule(self, op: Operation, r: SSAValue) -> Sequence[Dim] | None:
        """r's dims where a rule follows `op`'s operands to them, else None (fresh)."""
        s = self.shapes
        if isinstance(op, gml.SizedOp):
            sizes = iter(self.ints[v] for v in op.dynamic_sizes())
            return [next(sizes) if d == DYN else Dim(d) for d in shape_of(r.type)]
        if isinstance(op, gml.ELEMENTWISE):
            return self.broadcast([s[v] for v in op.operands if isinstance(v.type, TensorType)])
        if isinstance(op, gml.LayerNormOp | gml.NormalizeLastDimOp | gml.CumsumOp):
            return s[op.operands[0]]
        if isinstance(op, gml.PermuteOp):
            return [s[op.input][p] for p in op.dims.get_values()]
        if isinstance(op, gml.EmbeddingOp):
            return [*s[op.indices], s[op.weight][-1]]
        if isinstance(op, gml.MatmulOp):
            a, b = s[op.lhs], s[op.rhs]
            return [*self.broadcast([a[:-2], b[:-2]]), a[-2], b[-1]]
        if isinstance(op, gml.SdpaOp):
            return [*s[op.query][:-1], s[op.value][-1]]
        if isinstance(op, gml.SliceOp):  # the sliced dim's size is its own
            x = list(s[op.input])
            x[op.dim.value.data % len(x)] = self._new()
            return x
        return None

    def broadcast(self, shapes: Sequence[SymShape]) -> list[Dim]:
        """numpy broadcasting of forms: a dim of 1 takes the other; a static n against a
        form is n (the form must be n or 1 there); equal forms stay; else fresh."""
        rank = max((len(x) for x in shapes), default=0)
        out: list[Dim] = []
        for j in range(rank):
            dims = {x[len(x) - rank + j] for x in shapes if len(x) - rank + j >= 0} - {ONE}
            static = {d for d in dims if d.static}
            if not dims:
                out.append(ONE)
            elif len(dims) == 1:
                out.append(dims.pop())
            elif len(static) == 1:
                out.append(static.pop())
            else:
                out.append(self._new())
        return out


_STATIC: dict[type[Operation], Callable[..., int]] = {
    arith.AddiOp: lambda a, b: a + b,
    arith.SubiOp: lambda a, b: a - b,
    arith.MuliOp: lambda a, b: a * b,
    arith.FloorDivSIOp: lambda a, b: a // b if b else 0,
    arith.DivSIOp: lambda a, b: int(a / b) if b else 0,
    arith.RemSIOp: lambda a, b: a - b * int(a / b) if b else 0,
    arith.MaxSIOp: max,
    arith.MinSIOp: min,
    arith.CeilDivSIOp: lambda a, b: -(-a // b) if b else 0,
}
_ARITH_OPS = frozenset(_STATIC)
