"""Optimization-profile shapes for a segment's parts, from the model's torch.export Dim
bounds.

The importer keeps each dynamic dim's bounds in the IR (compiler/frontend/importer.py):
the module's `gml.dims` gives each symbol `{min, max, example}` (no max where torch.export
gave none) and each program input's `gml.dims` names the symbols of its `?` dims in
order. A part's inputs are values inside the program, whose dynamic dims are sizes
derived from those symbols (s, 2*s, s+1, s0+s1, ...). Instead of deriving expressions,
the program's shapes are evaluated at three points, every symbol at its min, at its opt
and at its max, and each part input's shapes there are its profile's min/opt/max. That
keeps related sizes consistent (a carrier of 2*seq runs 2*min..2*max), whatever op made
them. Each dim's min and max are the least and greatest of the three, so a size that
shrinks as a symbol grows (s0 - s1) still gets a valid range.

opt is the size the model was exported with when it lies within the bounds (the size
torch.export saw, so presumably a typical one), else the default opt clamped into them;
a symbol without a max gets the default max (but at least its min and example). A dim
whose size the evaluation cannot work out (an op without shape inference) keeps the
defaults, and the plan says which.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from xdsl.dialects import func
from xdsl.dialects.builtin import DictionaryAttr, IntegerAttr, ModuleOp, TensorType
from xdsl.ir import Block, Operation, SSAValue
from xdsl.utils.exceptions import VerifyException

from gimlet.dialects import comm, gml
from gimlet.dialects.shapes import DYN, shape_of

DIMS_ATTR = "gml.dims"  # written by compiler/frontend/importer.py
DEFAULT_RANGE = (1, 64, 2048)  # min, opt, max of a dynamic dim without known bounds

Shape = tuple[int, ...]
Value = Shape | int  # a tensor's shape, or an index value
Profile = tuple[Shape, Shape, Shape]  # min, opt, max


@dataclass(frozen=True)
class DimRange:
    """One symbol's profile range; `bounded` is False where torch.export gave no max."""

    min: int
    opt: int
    max: int
    bounded: bool = True

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"min": self.min, "opt": self.opt, "max": self.max}
        if not self.bounded:
            out["max_from"] = "default (torch.export gave no upper bound)"
        return out


def _int(entry: DictionaryAttr, key: str) -> int | None:
    attr = entry.data.get(key)
    return attr.value.data if isinstance(attr, IntegerAttr) else None


def symbol_ranges(module: ModuleOp) -> dict[str, DimRange]:
    """Each dynamic-dim symbol's range, from the module's `gml.dims` (empty without it)."""
    attr = module.attributes.get(DIMS_ATTR)
    if not isinstance(attr, DictionaryAttr):
        return {}
    ranges = {}
    for name, entry in attr.data.items():
        if not isinstance(entry, DictionaryAttr) or _int(entry, "min") is None:
            continue
        lo, hi, example = _int(entry, "min"), _int(entry, "max"), _int(entry, "example")
        assert lo is not None
        bounded = hi is not None
        if hi is None:
            hi = max(DEFAULT_RANGE[2], lo, example or 0)
        if example is not None and lo <= example <= hi:
            opt = example
        else:
            opt = min(max(DEFAULT_RANGE[1], lo), hi)
        ranges[name] = DimRange(lo, opt, hi, bounded)
    return ranges


def input_symbols(fn: func.FuncOp) -> list[list[str]]:
    """Per program input, the symbols of its `?` dims in order ("" where none is known)."""
    out = []
    for i, arg in enumerate(fn.args):
        attrs = fn.arg_attrs.data[i].data if fn.arg_attrs else {}
        names = attrs.get(DIMS_ATTR)
        n_dyn = shape_of(arg.type).count(DYN) if isinstance(arg.type, TensorType) else 0
        given = [a.data for a in names.data] if names is not None else []  # type: ignore[attr-defined]
        out.append(given if len(given) == n_dyn else [""] * n_dyn)
    return out


# -- evaluating shapes at concrete sizes ----------------------------------------------------

_ARITH: dict[str, Callable[[int, int], int]] = {
    "arith.addi": lambda a, b: a + b,
    "arith.subi": lambda a, b: a - b,
    "arith.muli": lambda a, b: a * b,
    "arith.divsi": lambda a, b: int(a / b),
    "arith.floordivsi": lambda a, b: a // b,
    "arith.ceildivsi": lambda a, b: -(-a // b),
    "arith.remsi": lambda a, b: a - b * int(a / b),
    "arith.maxsi": max,
    "arith.minsi": min,
}


@contextmanager
def _typed(values: Sequence[SSAValue], shapes: Sequence[Value | None]) -> Iterator[None]:
    """`values` temporarily typed with their concrete shapes, so an op's infer() sees them."""
    saved = [v.type for v in values]
    try:
        for v, s in zip(values, shapes, strict=True):
            if isinstance(v.type, TensorType) and isinstance(s, tuple):
                v._type = TensorType(v.type.element_type, list(s))  # noqa: SLF001
        yield
    finally:
        for v, t in zip(values, saved, strict=True):
            v._type = t  # noqa: SLF001


class _Evaluator:
    """Shapes (and index values) of a program's values with its symbols at given sizes."""

    def __init__(self) -> None:
        self.env: dict[SSAValue, Value] = {}
        self.channels: dict[int, Value] = {}

    def block(self, block: Block) -> None:
        for op in block.ops:
            self.op(op)

    def op(self, op: Operation) -> None:
        env = self.env
        if isinstance(op, gml.SegmentOp | gml.FusionOp):
            inputs = op.inputs if isinstance(op, gml.SegmentOp) else op.operands
            for arg, v in zip(op.body.block.args, inputs, strict=True):
                if v in env:
                    env[arg] = env[v]
            self.block(op.body.block)
            term = op.body.block.last_op
            assert term is not None
            for res, v in zip(op.results, term.operands, strict=True):
                if v in env:
                    env[res] = env[v]
        elif isinstance(op, comm.SendOp | comm.ISendOp):
            if op.value in env:
                self.channels[op.channel.value.data] = env[op.value]
        elif isinstance(op, comm.RecvOp):
            if op.channel.value.data in self.channels:
                env[op.result] = self.channels[op.channel.value.data]
        elif isinstance(op, comm.WaitOp):
            start = op.token.owner
            ch = start.channel.value.data if isinstance(start, comm.IRecvOp) else None
            if op.value is not None and ch in self.channels:
                env[op.value] = self.channels[ch]
        elif isinstance(op, gml.DimOp):
            shape = env.get(op.input)
            if isinstance(shape, tuple):
                env[op.results[0]] = shape[op.index.value.data]
        elif op.name == "arith.constant":
            value = getattr(op, "value", None)
            if isinstance(value, IntegerAttr):
                env[op.results[0]] = value.value.data
        elif op.name in _ARITH:
            a, b = (env.get(v) for v in op.operands)
            if isinstance(a, int) and isinstance(b, int):
                env[op.results[0]] = _ARITH[op.name](a, b)
        elif op.results:
            self.generic(op)

    def generic(self, op: Operation) -> None:
        """A tensor op: its declared shape, `?` filled from its size operands (a SizedOp)
        or by its infer() on the operands' concrete shapes."""
        res = op.results[0]
        if len(op.results) != 1 or not isinstance(res.type, TensorType):
            return
        declared = shape_of(res.type)
        if DYN not in declared:
            self.env[res] = tuple(declared)
            return
        if isinstance(op, gml.SizedOp):
            sizes = [self.env.get(v) for v in op.dynamic_sizes()]
            if all(isinstance(s, int) for s in sizes):
                it = iter(sizes)
                self.env[res] = tuple(next(it) if d == DYN else d for d in declared)  # type: ignore[misc]
            return
        if not isinstance(op, gml.GmlOp):
            return
        operands = list(op.operands)
        with _typed(operands, [self.env.get(v) for v in operands]):
            try:
                inferred = op.infer()
            except (VerifyException, ValueError, IndexError):
                return
        if isinstance(inferred, TensorType) and DYN not in shape_of(inferred):
            self.env[res] = tuple(shape_of(inferred))


def evaluate(fn: func.FuncOp, sizes: Mapping[str, int]) -> dict[SSAValue, Value]:
    """Every value's shape (tensors) or value (index) with each symbol at `sizes[symbol]`,
    where it can be worked out; values inside segments and fusions included."""
    ev = _Evaluator()
    for arg, names in zip(fn.args, input_symbols(fn), strict=True):
        if not isinstance(arg.type, TensorType) or any(n not in sizes for n in names):
            continue
        it = iter(names)
        ev.env[arg] = tuple(sizes[next(it)] if d == DYN else d for d in shape_of(arg.type))
    for _ in range(4):  # a receive before its send in block order: another sweep
        known = len(ev.env)
        ev.block(fn.body.block)
        if len(ev.env) == known:
            break
    return ev.env


def profiles(
    fn: func.FuncOp, ranges: Mapping[str, DimRange], values: Sequence[SSAValue]
) -> list[Profile | None]:
    """min/opt/max shapes of each of `values` (an index value: its carrier's [n]), None
    where the evaluation could not work them all out."""
    if not ranges:
        return [None] * len(values)
    points = [
        evaluate(fn, {name: getattr(r, key) for name, r in ranges.items()})
        for key in ("min", "opt", "max")
    ]
    out: list[Profile | None] = []
    for v in values:
        found = [p.get(v) for p in points]
        shapes = [(s,) if isinstance(s, int) else s for s in found]
        if any(s is None for s in shapes):
            out.append(None)
            continue
        lo_s, opt_s, hi_s = shapes
        assert lo_s is not None and opt_s is not None and hi_s is not None
        lo = tuple(min(x) for x in zip(lo_s, opt_s, hi_s, strict=True))
        hi = tuple(max(x) for x in zip(lo_s, opt_s, hi_s, strict=True))
        opt = tuple(min(max(o, a), b) for o, a, b in zip(opt_s, lo, hi, strict=True))
        out.append((lo, opt, hi))
    return out
