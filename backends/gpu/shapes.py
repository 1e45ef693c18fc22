"""Concrete shapes of every value for one shape bucket, and the arena's memory plan.

Generated GPU code is shape-agnostic: every size it needs is a slot of a parameter table
filled per *shape bucket* (one distinct tuple of input shapes). This module computes,
for a bucket, the concrete shape of every tensor and the value of every `index` by
running the ops' own shape rules (`GmlOp.infer`, the rule the verifier and infer-shapes
use) on a private clone of the function, so the GPU backend and the type system cannot
disagree. It runs once per bucket (then the bucket's CUDA graph replays), never per call.

The memory plan gives each arena value an offset: liveness-based reuse, best fit by
size, reshapes aliasing their input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xdsl.dialects import arith, func
from xdsl.dialects.builtin import IntegerAttr, TensorType
from xdsl.ir import Operation, SSAValue

from gimlet.dialects import gml
from gimlet.dialects.shapes import DYN, shape_of
from gimlet.errors import UserError

Shape = tuple[int, ...]

_ARITH = {
    arith.AddiOp: lambda a, b: a + b,
    arith.SubiOp: lambda a, b: a - b,
    arith.MuliOp: lambda a, b: a * b,
    arith.FloorDivSIOp: lambda a, b: a // b,
    arith.DivSIOp: lambda a, b: int(a / b),
    arith.RemSIOp: lambda a, b: a - b * int(a / b),
    arith.MaxSIOp: max,
    arith.MinSIOp: min,
    arith.CeilDivSIOp: lambda a, b: -(-a // b),
}


class ShapeEvaluator:
    """Shapes and index values of `fn`'s ops for given input shapes."""

    def __init__(self, fn: func.FuncOp):
        self.fn = fn
        self.clone = fn.clone()
        originals = [v for op in fn.walk() for v in _defined(op)]
        copies = [v for op in self.clone.walk() for v in _defined(op)]
        self.copy_of = dict(zip(originals, copies, strict=True))

    def evaluate(
        self, input_shapes: Sequence[Shape]
    ) -> tuple[dict[SSAValue, Shape], dict[SSAValue, int]]:
        shapes: dict[SSAValue, Shape] = {}
        ints: dict[SSAValue, int] = {}
        args = self.fn.body.block.args
        if len(input_shapes) != len(args):
            raise UserError(f"expected {len(args)} inputs, got {len(input_shapes)}")
        for a, s in zip(args, input_shapes, strict=True):
            assert isinstance(a.type, TensorType)
            static = shape_of(a.type)
            if len(static) != len(s) or any(
                d != DYN and d != x for d, x in zip(static, s, strict=True)
            ):
                raise UserError(f"input {a.index}: shape {tuple(s)} does not match {_fmt(static)}")
            self._set(a, tuple(int(x) for x in s), shapes)
        for op in self.fn.body.block.ops:
            self._op(op, shapes, ints)
        return shapes, ints

    def _set(self, v: SSAValue, shape: Shape, shapes: dict[SSAValue, Shape]) -> None:
        shapes[v] = shape
        c = self.copy_of[v]
        assert isinstance(c.type, TensorType)
        if shape_of(c.type) != shape:  # (a new type only where a dim was dynamic)
            c._type = TensorType(c.type.element_type, list(shape))  # noqa: SLF001

    def _op(self, op: Operation, shapes: dict[SSAValue, Shape], ints: dict[SSAValue, int]) -> None:
        if isinstance(op, gml.DimOp):
            ints[op.result] = shapes[op.input][op.index.value.data]
            return
        if isinstance(op, arith.ConstantOp):
            assert isinstance(op.value, IntegerAttr)
            ints[op.result] = op.value.value.data
            return
        if type(op) in _ARITH:
            ints[op.results[0]] = _ARITH[type(op)](*(ints[v] for v in op.operands))  # type: ignore[operator]
            return
        if isinstance(op, gml.FusionOp):
            for inner in op.body.block.ops:
                self._op(inner, shapes, ints)
            term = op.body.block.last_op
            assert isinstance(term, gml.YieldOp)
            for r, y in zip(op.results, term.values, strict=True):
                self._set(r, shapes[y], shapes)
            return
        if isinstance(op, gml.YieldOp | func.ReturnOp):
            return
        for r in op.results:
            if isinstance(r.type, TensorType):
                self._set(r, self._result_shape(op, r, ints), shapes)

    def _result_shape(self, op: Operation, r: SSAValue, ints: dict[SSAValue, int]) -> Shape:
        declared = shape_of(r.type)
        if DYN not in declared:  # the verifier holds it to its static type for any input
            return declared
        if isinstance(op, gml.SizedOp):
            sizes = iter(ints[v] for v in op.dynamic_sizes())
            return tuple(next(sizes) if d == DYN else d for d in declared)
        if isinstance(op, gml.SliceOp):
            src = list(shape_of(self.copy_of[op.input].type))
            d = op.dim.value.data % len(src)
            start = ints[op.dyn_start] if op.dyn_start else op.start.value.data
            end = ints[op.dyn_end] if op.dyn_end else op.end.value.data
            src[d] = len(range(*slice(start, end, op.step.value.data).indices(src[d])))
            return tuple(src)
        copy = self.copy_of[r].owner
        if isinstance(copy, gml.GmlOp):
            inferred = copy.infer()
            if inferred is not None and DYN not in shape_of(inferred):
                return shape_of(inferred)
        if DYN in declared:
            raise UserError(f"{op.name}: cannot compute its result shape for this input")
        return declared


def _defined(op: Operation) -> list[SSAValue]:
    values: list[SSAValue] = list(op.results)
    for region in op.regions:
        for block in region.blocks:
            values.extend(block.args)
    return values


def _fmt(s: Shape) -> str:
    return "(" + ", ".join("?" if d == DYN else str(d) for d in s) + ")"


# ---------------------------------------------------------------- memory plan

ALIGN = 256  # bytes: coalesced 16-byte vector loads and cuBLAS's preferred alignment


@dataclass
class Buffer:
    """One arena allocation: live over program steps [first, last]."""

    size: int
    first: int
    last: int
    offset: int = -1


def plan(buffers: Sequence[Buffer]) -> int:
    """Give each buffer an offset so buffers live at the same time never overlap;
    returns the arena's size. Largest first, each at the lowest gap that fits among
    the already placed buffers whose lifetimes overlap it (greedy by size, as in
    TFLite's and XLA's planners)."""
    end = 0
    placed: list[Buffer] = []
    for b in sorted(buffers, key=lambda b: (-b.size, b.first)):
        busy = sorted(
            (p.offset, p.offset + p.size) for p in placed if p.first <= b.last and b.first <= p.last
        )
        offset = 0
        for lo, hi in busy:
            if offset + b.size <= lo:
                break
            offset = max(offset, _align(hi))
        b.offset = offset
        placed.append(b)
        end = max(end, offset + b.size)
    return _align(end)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN
