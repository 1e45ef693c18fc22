"""One converter per gml op: gml semantics (dialects/gml.py, compiler/interpreter.py) as
ONNX opset-20 nodes that TensorRT's ONNX parser and onnxruntime both take.

A converter gets the graph and the op, and returns the tensor names of the op's results
(a [1] int64 tensor for an `index` result). Its docstring is the "how" column of
docs/tensorrt.md. Decompositions follow the patterns onnxruntime and TensorRT fuse
(attention as MatMul/Softmax/MatMul), so they cost no speed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from onnx import TensorProto, numpy_helper
from xdsl.dialects import arith
from xdsl.dialects.builtin import (
    BFloat16Type,
    Float16Type,
    Float32Type,
    Float64Type,
    IntegerType,
    i1,
    i64,
)
from xdsl.ir import Operation, SSAValue

from gimlet.dialects import gml
from gimlet.dialects.shapes import DYN, normalize_dim, shape_of
from gimlet.dtypes import numpy_dtype

from .graph import Graph, elt, onnx_type

Converter = Callable[[Graph, Any], list[str]]
CONVERTERS: dict[type[Operation], Converter] = {}

Op = TypeVar("Op", bound=Callable[..., list[str]])


def converts(*classes: type[Operation]) -> Callable[[Op], Op]:
    def register(fn: Op) -> Op:
        for cls in classes:
            CONVERTERS[cls] = fn
        return fn

    return register


def _ints(attr: Any) -> list[int]:
    return [int(v) for v in attr.get_values()]


def _flag(attr: Any) -> int:
    """A BoolAttr as ONNX's 0/1 (its stored i1 value reads as -1 for true)."""
    return 1 if attr.value.data else 0


def _is_float(t: Any) -> bool:
    return isinstance(t, Float16Type | BFloat16Type | Float32Type | Float64Type)


def _rank(v: SSAValue) -> int:
    return len(shape_of(v.type))


# ------------------------------------------------------------------ sources


@converts(gml.DimOp)
def _dim(g: Graph, op: gml.DimOp) -> list[str]:
    """Shape with start/end: a [1] int64 size."""
    return [g.dim(g.name(op.input), op.index.value.data)]


@converts(gml.FullOp)
def _full(g: Graph, op: gml.FullOp) -> list[str]:
    """ConstantOfShape (then Cast for bf16, which ConstantOfShape-9 lacks)."""
    shape = g.shape(g.result_dims(op, op.sizes))
    t = elt(op.result)
    value = op.value.value.data
    if isinstance(t, BFloat16Type):
        filled = g.one("ConstantOfShape", [shape], value=_tensor1(value, Float32Type()))
        return [g.one("Cast", [filled], to=TensorProto.BFLOAT16)]
    return [g.one("ConstantOfShape", [shape], value=_tensor1(value, t))]


def _tensor1(value: float, t: Any) -> TensorProto:
    dtype = numpy_dtype(t)
    v = int(value) if dtype.kind in "iu" else bool(value) if dtype.kind == "b" else value
    return numpy_helper.from_array(np.array([v]).astype(dtype))


@converts(gml.ArangeOp)
def _arange(g: Graph, op: gml.ArangeOp) -> list[str]:
    """Range over int64 (exact), then Cast/Mul/Add for a float or fractional range."""
    (n,) = g.result_dims(op, op.sizes)
    count = g.one("Reshape", [n if isinstance(n, str) else g.ints([n]), g.ints([])])
    start, step = op.start.value.data, op.step.value.data
    t = elt(op.result)
    if not _is_float(t) and float(start).is_integer() and float(step).is_integer():
        s, d = int(start), int(step)
        limit = g.one("Add", [g.one("Mul", [count, g.scalar(d, i64)]), g.scalar(s, i64)])
        r = g.one("Range", [g.scalar(s, i64), limit, g.scalar(d, i64)])
        return [r] if t == i64 else [g.one("Cast", [r], to=onnx_type(t))]
    # start + step * i in the result type (the interpreter does it in f64, then rounds)
    iota = g.one("Range", [g.scalar(0, i64), count, g.scalar(1, i64)])
    work = t if _is_float(t) else Float32Type()
    x = g.one("Cast", [iota], to=onnx_type(work))
    y = g.one("Add", [g.one("Mul", [x, g.scalar(step, work)]), g.scalar(start, work)])
    return [y] if work == t else [g.one("Cast", [y], to=onnx_type(t))]


# ------------------------------------------------------------------ elementwise

_UNARY = {
    gml.NegOp: "Neg",
    gml.ExpOp: "Exp",
    gml.LogOp: "Log",
    gml.SqrtOp: "Sqrt",
    gml.AbsOp: "Abs",
    gml.TanhOp: "Tanh",
    gml.SigmoidOp: "Sigmoid",
    gml.ReluOp: "Relu",
    gml.SinOp: "Sin",
    gml.CosOp: "Cos",
    gml.ErfOp: "Erf",
    gml.ReciprocalOp: "Reciprocal",
    gml.NotOp: "Not",
}


@converts(*_UNARY)
def _unary(g: Graph, op: gml.UnaryOp) -> list[str]:
    """The ONNX op of the same name (Neg, Exp, Log, Sqrt, Abs, Tanh, Sigmoid, Relu, Sin,
    Cos, Erf, Reciprocal, Not)."""
    return [g.one(_UNARY[type(op)], [g.name(op.input)])]


@converts(gml.RsqrtOp)
def _rsqrt(g: Graph, op: gml.UnaryOp) -> list[str]:
    """Reciprocal(Sqrt)."""
    return [g.one("Reciprocal", [g.one("Sqrt", [g.name(op.input)])])]


@converts(gml.SiluOp)
def _silu(g: Graph, op: gml.UnaryOp) -> list[str]:
    """Mul(x, Sigmoid(x))."""
    x = g.name(op.input)
    return [g.one("Mul", [x, g.one("Sigmoid", [x])])]


@converts(gml.GeluOp)
def _gelu(g: Graph, op: gml.GeluOp) -> list[str]:
    """Gelu (opset 20) with its `approximate` ("none": erf, or "tanh")."""
    return [g.one("Gelu", [g.name(op.input)], approximate=op.approximate.data)]


@converts(gml.ClampOp)
def _clamp(g: Graph, op: gml.ClampOp) -> list[str]:
    """Clip with typed bounds (an absent bound is an empty input)."""
    t = elt(op.input)
    bounds = []
    for b in (op.min, op.max):
        value = b.value.data if b is not None else None
        if value is not None and not _is_float(t):
            value = math.trunc(value)  # trunc(max(x, b)) == max(x, trunc(b)) for integer x
        bounds.append(g.scalar(value, t) if value is not None else "")
    while bounds and bounds[-1] == "":
        bounds.pop()
    return [g.one("Clip", [g.name(op.input), *bounds])]


_BINARY = {
    gml.AddOp: "Add",
    gml.SubOp: "Sub",
    gml.MulOp: "Mul",
    gml.PowOp: "Pow",
    gml.MaximumOp: "Max",
    gml.MinimumOp: "Min",
    gml.EqOp: "Equal",
    gml.LtOp: "Less",
    gml.LeOp: "LessOrEqual",
    gml.GtOp: "Greater",
    gml.GeOp: "GreaterOrEqual",
}
# booleans: numpy's add/mul/maximum/minimum of bools are or/and
_BOOL = {gml.AddOp: "Or", gml.MulOp: "And", gml.MaximumOp: "Or", gml.MinimumOp: "And"}


@converts(*_BINARY, gml.NeOp, gml.DivOp, gml.AndOp, gml.OrOp)
def _binary(g: Graph, op: gml.BinaryOp) -> list[str]:
    """The ONNX op of the same name (Add, Sub, Mul, Pow, Max, Min, Equal, Less, ...),
    broadcasting as numpy does; ne is Not(Equal); integer div floors, as
    Div(a - Mod(a, b), b); on booleans add/max are Or, mul/min And, eq/ne Xor-based and
    orderings compare as int32."""
    a, b = g.name(op.lhs), g.name(op.rhs)
    t = elt(op.lhs)
    kind = type(op)
    if t == i1:
        if kind in _BOOL:
            return [g.one(_BOOL[kind], [a, b])]
        if kind in (gml.AndOp, gml.OrOp):
            return [g.one("And" if kind is gml.AndOp else "Or", [a, b])]
        if kind is gml.NeOp:
            return [g.one("Xor", [a, b])]
        if kind is gml.EqOp:
            return [g.one("Not", [g.one("Xor", [a, b])])]
        if kind in (gml.LtOp, gml.LeOp, gml.GtOp, gml.GeOp):
            a, b = (g.one("Cast", [x], to=TensorProto.INT32) for x in (a, b))
            return [g.one(_BINARY[kind], [a, b])]
        raise g.refuse(op, "arithmetic on booleans")
    if kind in (gml.AndOp, gml.OrOp):
        raise g.refuse(op, "bitwise and/or of integers (BitwiseAnd/Or need opset 18)")
    if kind is gml.NeOp:
        return [g.one("Not", [g.one("Equal", [a, b])])]
    if kind is gml.DivOp:
        if _is_float(t):
            return [g.one("Div", [a, b])]
        return [g.one("Div", [g.one("Sub", [a, g.one("Mod", [a, b], fmod=0)]), b])]
    return [g.one(_BINARY[kind], [a, b])]


@converts(gml.WhereOp)
def _where(g: Graph, op: gml.WhereOp) -> list[str]:
    """Where."""
    return [g.one("Where", [g.name(op.cond), g.name(op.lhs), g.name(op.rhs)])]


@converts(gml.CastOp)
def _cast(g: Graph, op: gml.CastOp) -> list[str]:
    """Cast (to a 16-bit float through f32, rounding as torch does)."""
    x = g.name(op.input)
    to = elt(op.result)
    if isinstance(to, Float16Type | BFloat16Type) and isinstance(elt(op.input), Float64Type):
        x = g.one("Cast", [x], to=TensorProto.FLOAT)
    return [g.one("Cast", [x], to=onnx_type(to))]


# ------------------------------------------------------------------ shapes


@converts(gml.ReshapeOp)
def _reshape(g: Graph, op: gml.ReshapeOp) -> list[str]:
    """Reshape; one dynamic dim becomes -1 (a constant shape), several a Concat of sizes.
    The flatten around a linear layer (reshape to 2-d, matmul, bias, reshape back) is
    dropped: ONNX's MatMul takes the N-d input as it is."""
    tails = _flattened_linears(op)
    if tails:
        for mm, back in tails:
            g.notes[mm.result] = back
        return [g.name(op.input)]
    out = shape_of(op.result.type)
    if out.count(DYN) == 1 and 0 not in out:
        shape = g.ints([-1 if d == DYN else d for d in out])
    else:
        shape = g.shape(g.result_dims(op, op.sizes))
    # allowzero: a static 0 means an empty dim, not "copy the input's"
    return [g.one("Reshape", [g.name(op.input), shape], allowzero=1 if 0 in out else None)]


def _single_use(v: SSAValue) -> Operation | None:
    uses = list(v.uses)
    return uses[0].operation if len(uses) == 1 else None


def _flattened_linears(op: gml.ReshapeOp) -> list[tuple[gml.MatmulOp, gml.ReshapeOp]]:
    """(matmul, reshape back) for each use, when `op` flattens [.., K] to [N, K] only for
    matmuls whose results (plus a bias vector) are reshaped back to the same leading dims
    (then [.., M], or [.., heads, size]): as at most one leading dim is dynamic, the
    element count makes it the input's. Empty when any use is something else, or when
    it would not save nodes (a bias then needs its own Add, which Gemm had included)."""
    src, flat = shape_of(op.input.type), shape_of(op.result.type)
    if len(src) < 3 or len(flat) != 2 or src[-1] != flat[1] or src[-1] == DYN:
        return []
    if src[:-1].count(DYN) > 1:
        return []
    found, nodes = [], 0  # nodes without the reshapes: MatMul, Add, Reshape per use
    for use in op.result.uses:
        mm = use.operation
        if not isinstance(mm, gml.MatmulOp) or mm.lhs != op.result or _rank(mm.rhs) != 2:
            return []
        m = shape_of(mm.result.type)[1]
        tail: Operation | None = _single_use(mm.result)
        if isinstance(tail, gml.AddOp) and tail.parent_block() is mm.parent_block():
            bias = tail.rhs if tail.lhs == mm.result else tail.lhs
            if shape_of(bias.type) not in ((m,), (1, m)):
                return []
            tail = _single_use(tail.result)
        if not isinstance(tail, gml.ReshapeOp):
            return []
        back, lead = shape_of(tail.result.type), len(src) - 1
        rest = back[lead:]  # [M], or M split into static dims (heads x head size)
        if back[:lead] != src[:-1] or DYN in rest or m == DYN or math.prod(rest) != m:
            return []
        found.append((mm, tail))
        nodes += 1 + (tail.input != mm.result) + (len(back) != len(src))
    # kept: the flatten, and per matmul Gemm/MatMul and the reshape back
    return found if nodes < 1 + 2 * len(found) else []


@converts(gml.ExpandOp)
def _expand(g: Graph, op: gml.ExpandOp) -> list[str]:
    """Expand; a dynamic dim the input already has (its own gml.dim) is 1 in the shape."""
    src, dst = shape_of(op.input.type), shape_of(op.result.type)
    offset = len(dst) - len(src)
    sizes = iter(op.sizes)
    dims: list[int | str] = []
    for i, d in enumerate(dst):
        if d != DYN:
            dims.append(d)
            continue
        size = next(sizes)
        owner = size.owner
        same = (
            isinstance(owner, gml.DimOp)
            and owner.input == op.input
            and owner.index.value.data == i - offset
        )
        dims.append(1 if same else g.size(size))
    return [g.one("Expand", [g.name(op.input), g.shape(dims)])]


@converts(gml.PermuteOp)
def _permute(g: Graph, op: gml.PermuteOp) -> list[str]:
    """Transpose."""
    return [g.one("Transpose", [g.name(op.input)], perm=_ints(op.dims))]


@converts(gml.SliceOp)
def _slice(g: Graph, op: gml.SliceOp) -> list[str]:
    """Slice with constant axes/steps; dynamic bounds are [1] int64 sizes."""
    rank = _rank(op.input)
    axis = normalize_dim(op.dim.value.data, rank)
    start = g.index(op.dyn_start) if op.dyn_start else g.ints([op.start.value.data])
    end = g.index(op.dyn_end) if op.dyn_end else g.ints([op.end.value.data])
    inputs = [g.name(op.input), start, end, g.ints([axis]), g.ints([op.step.value.data])]
    return [g.one("Slice", inputs)]


@converts(gml.ConcatOp)
def _concat(g: Graph, op: gml.ConcatOp) -> list[str]:
    """Concat."""
    axis = normalize_dim(op.dim.value.data, _rank(op.inputs[0]))
    return [g.one("Concat", [g.name(v) for v in op.inputs], axis=axis)]


@converts(gml.PadOp)
def _pad(g: Graph, op: gml.PadOp) -> list[str]:
    """Pad (constant mode; negative amounts crop, as in gml)."""
    pads = g.ints(_ints(op.low) + _ints(op.high))
    value = g.scalar(op.value.value.data, elt(op.input))
    return [g.one("Pad", [g.name(op.input), pads, value], mode="constant")]


# ------------------------------------------------------------------ indexing


@converts(gml.EmbeddingOp)
def _embedding(g: Graph, op: gml.EmbeddingOp) -> list[str]:
    """Gather along axis 0."""
    return [g.one("Gather", [g.name(op.weight), g.name(op.indices)], axis=0)]


@converts(gml.GatherOp)
def _gather(g: Graph, op: gml.GatherOp) -> list[str]:
    """GatherElements; an index smaller than the input in other dims first Slices the
    input to it (torch allows that, ONNX does not)."""
    x, index = g.name(op.input), g.name(op.index)
    rank = _rank(op.input)
    axis = normalize_dim(op.dim.value.data, rank)
    src, idx = shape_of(op.input.type), shape_of(op.index.type)
    others = [d for d in range(rank) if d != axis]
    if any(src[d] != idx[d] or src[d] == DYN for d in others):
        ends = g.one("Gather", [g.one("Shape", [index]), g.ints(others)], axis=0)
        x = g.one("Slice", [x, g.ints([0] * len(others)), ends, g.ints(others)])
    return [g.one("GatherElements", [x, index], axis=axis)]


@converts(gml.IndexOp)
def _index(g: Graph, op: gml.IndexOp) -> list[str]:
    """One index tensor: Gather on its dim. Several: the indexed dims Transposed to the
    front, the indices broadcast and stacked, GatherND, and the result dims moved to
    where numpy puts them (in place when the indexed dims are adjacent)."""
    dims = _ints(op.dims)
    if any(elt(v) == i1 for v in op.indices):
        raise g.refuse(op, "boolean mask indexing (its result size depends on the data)")
    x = g.name(op.input)
    rank = _rank(op.input)
    if len(dims) == 1:
        return [g.one("Gather", [x, g.name(op.indices[0])], axis=dims[0])]
    rest = [d for d in range(rank) if d not in dims]
    xt = g.one("Transpose", [x], perm=dims + rest)
    idx = [g.name(v) for v in op.indices]
    idx = [
        i if elt(v) == i64 else g.one("Cast", [i], to=TensorProto.INT64)
        for i, v in zip(idx, op.indices, strict=True)
    ]
    zero = g.one("Mul", [idx[0], g.scalar(0, i64)])
    for i in idx[1:]:
        zero = g.one("Add", [zero, g.one("Mul", [i, g.scalar(0, i64)])])  # the broadcast shape
    stacked = g.one(
        "Concat",
        [g.one("Unsqueeze", [g.one("Add", [i, zero]), g.ints([-1])]) for i in idx],
        axis=-1,
    )
    out = g.one("GatherND", [xt, stacked])
    b = max(_rank(v) for v in op.indices)  # result: broadcast dims, then `rest`
    adjacent = dims == list(range(dims[0], dims[0] + len(dims)))
    if not adjacent or dims[0] == 0:
        return [out]
    before = dims[0]  # the non-indexed dims ahead of the indexed run stay in front
    perm = list(range(b, b + before)) + list(range(b)) + list(range(b + before, b + len(rest)))
    return [g.one("Transpose", [out], perm=perm)]


@converts(gml.CumsumOp)
def _cumsum(g: Graph, op: gml.CumsumOp) -> list[str]:
    """CumSum for floats; integers and booleans (widened to the i64 result) as an exact
    masked sum, Mul by a Range/LessOrEqual triangle then ReduceSum."""
    x = g.name(op.input)
    if elt(op.input) != elt(op.result):
        x = g.one("Cast", [x], to=onnx_type(elt(op.result)))
    rank = _rank(op.input)
    if rank == 0:
        return [g.one("Identity", [x])]
    axis = normalize_dim(op.dim.value.data, rank)
    if _is_float(elt(op.result)):
        return [g.one("CumSum", [x, g.array(np.array(axis, dtype=np.int64))])]
    # TensorRT's CumSum is float-only and a float sum is inexact past 2**24: integers sum
    # exactly as y[.., i] = sum_j x[.., j] * (j <= i), quadratic in the scanned dim (these
    # are position ids and mask counts, a sequence long)
    perm = [d for d in range(rank) if d != axis] + [axis]
    if axis != rank - 1:
        x = g.one("Transpose", [x], perm=perm)
    n = _scalar_dim(g, x, rank - 1)
    iota = g.one("Range", [g.scalar(0, i64), n, g.scalar(1, i64)])
    lower = g.one("LessOrEqual", [iota, g.one("Unsqueeze", [iota, g.ints([1])])])  # [i, j]: j <= i
    mask = g.one("Cast", [lower], to=onnx_type(elt(op.result)))
    terms = g.one("Mul", [g.one("Unsqueeze", [x, g.ints([rank - 1])]), mask])
    y = g.one("ReduceSum", [terms, g.ints([-1])], keepdims=0)
    if axis == rank - 1:
        return [y]
    return [g.one("Transpose", [y], perm=[perm.index(d) for d in range(rank)])]


# ------------------------------------------------------------------ reductions


def _axes(op: gml.ReduceOp) -> list[int] | None:
    rank = _rank(op.input)
    dims = _ints(op.dims)
    if not dims or rank == 0:
        return None  # every dim (a 0-d input: the scalar itself)
    return sorted({normalize_dim(d, rank) for d in dims})


@converts(gml.SumOp, gml.MeanOp, gml.AmaxOp, gml.AminOp)
def _reduce(g: Graph, op: gml.ReduceOp) -> list[str]:
    """ReduceSum/ReduceMean/ReduceMax/ReduceMin with constant axes; a sum into a wider
    integer type Casts first."""
    x = g.name(op.input)
    if elt(op.input) != elt(op.result):
        x = g.one("Cast", [x], to=onnx_type(elt(op.result)))
    axes, keep = _axes(op), _flag(op.keepdim)
    if _rank(op.input) == 0:
        return [g.one("Identity", [x])]
    name = {
        gml.SumOp: "ReduceSum",
        gml.MeanOp: "ReduceMean",
        gml.AmaxOp: "ReduceMax",
        gml.AminOp: "ReduceMin",
    }
    return [g.one(name[type(op)], [x, *([g.ints(axes)] if axes else [])], keepdims=keep)]


@converts(gml.AnyOp)
def _any(g: Graph, op: gml.ReduceOp) -> list[str]:
    """Cast to bool, then int32, ReduceMax, Cast back to bool."""
    x = g.name(op.input)
    if elt(op.input) != i1:
        x = g.one("Cast", [x], to=TensorProto.BOOL)
    if _rank(op.input) == 0:
        return [g.one("Identity", [x])]
    as_int = g.one("Cast", [x], to=TensorProto.INT32)
    axes = _axes(op)
    m = g.one("ReduceMax", [as_int, *([g.ints(axes)] if axes else [])], keepdims=_flag(op.keepdim))
    return [g.one("Cast", [m], to=TensorProto.BOOL)]


@converts(gml.VarOp)
def _var(g: Graph, op: gml.VarOp) -> list[str]:
    """ReduceSum of squared deviations from ReduceMean, over N - correction (N from the
    static shape, or the product of the reduced dims read with Shape)."""
    x, t = g.name(op.input), elt(op.input)
    rank = _rank(op.input)
    axes = _axes(op) or list(range(rank))
    keep = _flag(op.keepdim)
    if rank == 0:
        d = g.one("Sub", [x, x])
        n_minus = g.scalar(1 - op.correction.value.data, t)
        return [g.one("Div", [g.one("Mul", [d, d]), n_minus])]
    mean = g.one("ReduceMean", [x, g.ints(axes)], keepdims=1)
    d = g.one("Sub", [x, mean])
    ss = g.one("ReduceSum", [g.one("Mul", [d, d]), g.ints(axes)], keepdims=keep)
    src = shape_of(op.input.type)
    correction = op.correction.value.data
    if all(src[a] != DYN for a in axes):
        count = math.prod(src[a] for a in axes)
        return [g.one("Div", [ss, g.scalar(count - correction, t)])]
    sizes = g.one("Gather", [g.one("Shape", [x]), g.ints(axes)], axis=0)
    n = g.one("Cast", [g.one("ReduceProd", [sizes], keepdims=0)], to=onnx_type(t))
    return [g.one("Div", [ss, g.one("Sub", [n, g.scalar(correction, t)])])]


@converts(gml.ArgmaxOp, gml.ArgminOp)
def _argreduce(g: Graph, op: gml.ArgReduceOp) -> list[str]:
    """ArgMax/ArgMin (first index wins ties); without a dim, over the input Reshaped to 1-d."""
    kind = "ArgMax" if isinstance(op, gml.ArgmaxOp) else "ArgMin"
    x = g.name(op.input)
    rank, keep = _rank(op.input), _flag(op.keepdim)
    if op.dim is None or rank == 0:
        flat = g.one("Reshape", [x, g.ints([-1])])
        r = g.one(kind, [flat], axis=0, keepdims=0)
        return [g.one("Reshape", [r, g.ints([1] * rank)])] if keep and rank else [r]
    axis = normalize_dim(op.dim.value.data, rank)
    return [g.one(kind, [x], axis=axis, keepdims=keep)]


# ------------------------------------------------------------------ nn


@converts(gml.MatmulOp)
def _matmul(g: Graph, op: gml.MatmulOp) -> list[str]:
    """MatMul; a 2-d product whose only use adds a bias vector known at compile time is
    one Gemm (the bias add then lowers to nothing); a flattened linear layer is MatMul
    (and Add) on the N-d input, its reshapes dropped."""
    a, b = g.name(op.lhs), g.name(op.rhs)
    back_op = g.notes.get(op.result)
    if back_op is not None:
        y = g.one("MatMul", [a, b])
        user = _single_use(op.result)
        if isinstance(user, gml.BinaryOp) and user.name == "gml.add":
            other = user.rhs if user.lhs == op.result else user.lhs
            out = g.one("Add", [y, g.name(other)])
            g.bind(user.result, out)
        else:
            out = y
        flatten = op.lhs.owner
        assert isinstance(flatten, gml.ReshapeOp)
        src, back = shape_of(flatten.input.type), shape_of(back_op.result.type)
        if len(back) != len(src):  # [.., M] -> [.., heads, size]: 0 keeps a leading dim
            shape = g.ints([0] * (len(src) - 1) + list(back[len(src) - 1 :]))
            out = g.one("Reshape", [out, shape])
        g.bind(back_op.result, out)
        return [y]
    gemm = _gemm_bias(g, op)
    if gemm is None:
        return [g.one("MatMul", [a, b])]
    y = g.one("Gemm", [a, b, g.name(gemm[1])])
    g.bind(gemm[0].result, y)
    return [y]


def _gemm_bias(g: Graph, op: gml.MatmulOp) -> tuple[gml.BinaryOp, SSAValue] | None:
    if _rank(op.lhs) != 2 or _rank(op.rhs) != 2 or not _is_float(elt(op.lhs)):
        return None
    uses = list(op.result.uses)
    if len(uses) != 1 or not isinstance(uses[0].operation, gml.AddOp):
        return None
    add = uses[0].operation
    assert isinstance(add, gml.BinaryOp)  # in the same block or a gml.fusion after it
    other = add.rhs if add.lhs == op.result else add.lhs
    n = shape_of(op.result.type)[1]
    if g.const_of(other) is None or shape_of(other.type) not in ((n,), (1, n)):
        return None
    if shape_of(add.result.type) != shape_of(op.result.type):
        return None
    return add, other


@converts(gml.SoftmaxOp, gml.LogSoftmaxOp)
def _softmax(g: Graph, op: gml.NormalizeLastDimOp) -> list[str]:
    """Softmax / LogSoftmax on the dim (a 0-d input goes through a 1-element Reshape)."""
    kind = "Softmax" if isinstance(op, gml.SoftmaxOp) else "LogSoftmax"
    x, rank = g.name(op.input), _rank(op.input)
    if rank == 0:
        y = g.one(kind, [g.one("Reshape", [x, g.ints([1])])], axis=0)
        return [g.one("Reshape", [y, g.ints([])])]
    return [g.one(kind, [x], axis=normalize_dim(op.dim.value.data, rank))]


@converts(gml.LayerNormOp)
def _layer_norm(g: Graph, op: gml.LayerNormOp) -> list[str]:
    """LayerNormalization over the last `ndim` dims, statistics in f32 (stash_type 1);
    a missing scale is ones."""
    x, t = g.name(op.input), elt(op.input)
    n = op.ndim.value.data
    norm = shape_of(op.input.type)[-n:]
    if op.weight is not None:
        scale = g.name(op.weight)
    elif DYN in norm:
        raise g.refuse(op, "layer norm without a scale over dynamic dims")
    else:
        scale = g.scalar(1.0, t, tuple(norm))
    inputs = [x, scale, *([g.name(op.bias)] if op.bias is not None else [])]
    return [g.one("LayerNormalization", inputs, axis=-n, epsilon=op.eps.value.data, stash_type=1)]


@converts(gml.SdpaOp)
def _sdpa(g: Graph, op: gml.SdpaOp) -> list[str]:
    """MatMul(q, k^T) * scale, the causal mask (a constant, or Range/Less for dynamic sizes)
    and the given mask (Where for booleans, Add otherwise), Softmax, MatMul with v. Grouped-query k/v heads are repeated
    with Unsqueeze/Expand/Reshape. A row every mask hides yields zeros, as torch's."""
    q, k, v = g.name(op.query), g.name(op.key), g.name(op.value)
    t = elt(op.query)
    qs, ks = shape_of(op.query.type), shape_of(op.key.type)
    rank = len(qs)
    if rank >= 3 and qs[-3] != ks[-3]:
        if DYN in (qs[-3], ks[-3]):
            raise g.refuse(op, "grouped-query attention with a dynamic head count")
        k, v = (
            _repeat_heads(g, name, rank, qs[-3] // ks[-3], qs[-3], shape_of(val.type)[-1])
            for name, val in ((k, op.key), (v, op.value))
        )
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    scores = g.one("MatMul", [q, g.one("Transpose", [k], perm=perm)])
    scale = op.scale.value.data if op.scale is not None else None
    if scale is None:
        if qs[-1] == DYN:
            raise g.refuse(op, "attention with a dynamic head size and no scale")
        scale = qs[-1] ** -0.5
    scores = g.one("Mul", [scores, g.scalar(scale, t)])
    neg_inf = g.scalar(-np.inf, t)
    if op.is_causal.value.data:
        rows_n, cols_n = qs[-2], ks[-2]
        if DYN not in (rows_n, cols_n) and rows_n * cols_n <= 1 << 20:
            # a constant additive mask: Add is cheaper than Where on every backend
            above = np.triu(np.ones((rows_n, cols_n), dtype=bool), 1)  # column > row
            bias = np.where(above, -np.inf, 0.0).astype(numpy_dtype(t))
            scores = g.one("Add", [scores, g.array(bias, "causal")])
        else:
            rows = g.one("Range", [g.scalar(0, i64), _scalar_dim(g, q, rank - 2), g.scalar(1, i64)])
            cols = g.one("Range", [g.scalar(0, i64), _scalar_dim(g, k, rank - 2), g.scalar(1, i64)])
            rows = g.one("Unsqueeze", [rows, g.ints([1])])
            hidden = g.one("Less", [rows, cols])  # column > row
            scores = g.one("Where", [hidden, neg_inf, scores])
    if op.mask is None:
        return [g.one("MatMul", [g.one("Softmax", [scores], axis=-1), v])]
    attend = _known_attend(g, op)
    if attend is not None and attend.all() and elt(op.mask) == i1:
        return [g.one("MatMul", [g.one("Softmax", [scores], axis=-1), v])]  # hides nothing
    mask = g.name(op.mask)
    if elt(op.mask) == i1:
        scores = g.one("Where", [mask, scores, neg_inf])
    else:
        scores = g.one("Add", [scores, mask])
    p = g.one("Softmax", [scores], axis=-1)
    if attend is not None and _every_row_attends(attend, bool(op.is_causal.value.data)):
        return [g.one("MatMul", [p, v])]  # a mask known at compile time hides no whole row
    # torch's safe softmax: a row with nothing to attend to gives zeros, not NaN
    top = g.one("ReduceMax", [scores, g.ints([-1])], keepdims=1)
    empty = g.one("Equal", [top, neg_inf])
    p = g.one("Where", [empty, g.scalar(0.0, t), p])
    return [g.one("MatMul", [p, v])]


def _known_attend(g: Graph, op: gml.SdpaOp) -> np.ndarray | None:
    """Where a mask known at compile time lets a query attend (boolean: true; additive:
    not -inf), or None."""
    assert op.mask is not None
    known = g.const_of(op.mask)
    if known is None:
        return None
    m = np.asarray(known)
    return m if m.dtype == np.bool_ else ~np.isneginf(m.astype(np.float32))


def _every_row_attends(attend: np.ndarray, causal: bool) -> bool:
    """No query row is hidden whole (then Softmax cannot see a row of -inf only). With the
    causal mask on top, row i keeps the columns j <= i the mask keeps."""
    if attend.ndim < 2 or attend.shape[-1] == 0:
        return False
    if causal:
        rows, cols = attend.shape[-2:]
        if rows == 1 or cols == 1:
            return False  # broadcast against sizes unknown here
        attend = attend & np.tril(np.ones((rows, cols), dtype=bool))
    return bool(attend.any(axis=-1).all())


def _scalar_dim(g: Graph, x: str, axis: int) -> str:
    return g.one("Reshape", [g.dim(x, axis), g.ints([])])


def _repeat_heads(g: Graph, x: str, rank: int, times: int, heads: int, depth: int) -> str:
    """numpy.repeat(x, times, axis=-3): [.., H, S, D] -> [.., H, times, S, D] -> [.., H*times, S, D]."""
    u = g.one("Unsqueeze", [x, g.ints([rank - 2])])
    e = g.one("Expand", [u, g.ints([1] * (rank - 2) + [times, 1, 1])])
    # Reshape's 0 copies the input dim at that position: the batch dims are in place
    last: int | str = depth if depth != DYN else g.dim(x, rank - 1)
    return g.one("Reshape", [e, g.shape([*([0] * (rank - 3)), heads, -1, last])])


@converts(gml.ConvOp)
def _conv(g: Graph, op: gml.ConvOp) -> list[str]:
    """Conv (1-, 2- or 3-d) with group, strides, symmetric pads and dilations; an inference
    batch norm that alone reads it, with weights and statistics known at compile time, is
    folded into its weight and bias (one Conv)."""
    pad = _ints(op.padding)
    inputs = [g.name(op.input)]
    bn = _folded_batch_norm(g, op)
    if bn is None:
        inputs.append(g.name(op.weight))
        if op.bias is not None:
            inputs.append(g.name(op.bias))
    else:
        inputs += bn[1:]
    kernel = shape_of(op.weight.type)[2:]
    y = g.one(
        "Conv",
        inputs,
        strides=_ints(op.stride),
        pads=pad + pad,
        dilations=_ints(op.dilation),
        group=op.groups.value.data,
        kernel_shape=list(kernel),
    )
    if bn is not None:
        g.bind(bn[0].result, y)
    return [y]


def _folded_batch_norm(g: Graph, op: gml.ConvOp) -> tuple[gml.BatchNormOp, str, str] | None:
    """(the batch norm, folded weight, folded bias) or None: w * s and (b - mean) * s + beta
    with s = gamma / sqrt(var + eps), computed in f64 and rounded to the weight's type."""
    uses = list(op.result.uses)
    if len(uses) != 1 or not isinstance(uses[0].operation, gml.BatchNormOp):
        return None
    bn = uses[0].operation
    if bn.input != op.result or not _is_float(elt(op.weight)):
        return None
    stats = [g.const_of(v) for v in (bn.weight, bn.bias, bn.mean, bn.var)]
    w = g.const_of(op.weight)
    b = g.const_of(op.bias) if op.bias is not None else 0.0
    if w is None or b is None or any(x is None for x in stats):
        return None
    gamma, beta, mean, var = (np.asarray(x, dtype=np.float64) for x in stats)
    scale = gamma / np.sqrt(var + bn.eps.value.data)
    w = np.asarray(w)
    folded_w = (w.astype(np.float64) * scale.reshape(-1, *[1] * (w.ndim - 1))).astype(w.dtype)
    folded_b = ((np.asarray(b, dtype=np.float64) - mean) * scale + beta).astype(w.dtype)
    hint = g.const_hint.get(op.weight, "conv")
    return bn, g.weight(folded_w, f"{hint}.bn"), g.weight(folded_b, f"{hint}.bn_bias")


@converts(gml.BatchNormOp)
def _batch_norm(g: Graph, op: gml.BatchNormOp) -> list[str]:
    """BatchNormalization (inference: running statistics)."""
    inputs = [g.name(v) for v in (op.input, op.weight, op.bias, op.mean, op.var)]
    return [g.one("BatchNormalization", inputs, epsilon=op.eps.value.data)]


@converts(gml.MaxPool2dOp)
def _max_pool(g: Graph, op: gml.MaxPool2dOp) -> list[str]:
    """MaxPool with kernel, strides, pads, dilations and ceil_mode."""
    if not _is_float(elt(op.input)) and elt(op.input) not in (IntegerType(8),):
        raise g.refuse(
            op, f"max pooling of {elt(op.input)} (ONNX MaxPool takes floats and 8-bit ints)"
        )
    p = _ints(op.padding)
    dil = list(op.window_dilation())
    return [
        g.one(
            "MaxPool",
            [g.name(op.input)],
            kernel_shape=_ints(op.kernel),
            strides=_ints(op.stride),
            pads=p + p,
            dilations=dil if dil != [1, 1] else None,
            ceil_mode=_flag(op.ceil_mode),
        )
    ]


@converts(gml.AvgPool2dOp)
def _avg_pool(g: Graph, op: gml.AvgPool2dOp) -> list[str]:
    """AveragePool with count_include_pad and ceil_mode; a divisor_override (without
    ceil_mode, so every window lies in the padded input) rescales the padded mean."""
    p, k = _ints(op.padding), _ints(op.kernel)
    override = op.divisor_override.value.data if op.divisor_override is not None else None
    ceil = _flag(op.ceil_mode)
    if override is not None and ceil:
        raise g.refuse(op, "average pooling with both divisor_override and ceil_mode")
    include = 1 if override is not None else _flag(op.count_include_pad)
    y = g.one(
        "AveragePool",
        [g.name(op.input)],
        kernel_shape=k,
        strides=_ints(op.stride),
        pads=p + p,
        ceil_mode=ceil,
        count_include_pad=include,
    )
    if override is None:
        return [y]
    return [g.one("Mul", [y, g.scalar(k[0] * k[1] / override, elt(op.input))])]


@converts(gml.AdaptiveAvgPool2dOp)
def _adaptive_avg_pool(g: Graph, op: gml.AdaptiveAvgPool2dOp) -> list[str]:
    """GlobalAveragePool for a 1x1 output; AveragePool when the bins are uniform; else
    per-bin ReduceMean of Slices, Concatenated (static input sizes only)."""
    x = g.name(op.input)
    src, dst = shape_of(op.input.type), shape_of(op.result.type)
    if dst[2:] == (1, 1):
        return [g.one("GlobalAveragePool", [x])]
    if DYN in src[2:]:
        raise g.refuse(op, "adaptive pooling of a dynamic spatial size")
    if all(s % d == 0 for s, d in zip(src[2:], dst[2:], strict=True)):
        k = [s // d for s, d in zip(src[2:], dst[2:], strict=True)]
        return [g.one("AveragePool", [x], kernel_shape=k, strides=k)]
    for axis in (2, 3):
        n, size = src[axis], dst[axis]
        bins = []
        for i in range(size):
            lo, hi = i * n // size, -(-(i + 1) * n // size)
            piece = g.one("Slice", [x, g.ints([lo]), g.ints([hi]), g.ints([axis])])
            bins.append(g.one("ReduceMean", [piece, g.ints([axis])], keepdims=1))
        x = g.one("Concat", bins, axis=axis)
    return [x]


# ------------------------------------------------------------------ size arithmetic


def _floordiv(g: Graph, a: str, b: str) -> str:
    return g.one("Div", [g.one("Sub", [a, g.one("Mod", [a, b], fmod=0)]), b])


_ARITH: dict[type[Operation], Callable[[Graph, str, str], str]] = {
    arith.AddiOp: lambda g, a, b: g.one("Add", [a, b]),
    arith.SubiOp: lambda g, a, b: g.one("Sub", [a, b]),
    arith.MuliOp: lambda g, a, b: g.one("Mul", [a, b]),
    arith.MaxSIOp: lambda g, a, b: g.one("Max", [a, b]),
    arith.MinSIOp: lambda g, a, b: g.one("Min", [a, b]),
    arith.DivSIOp: lambda g, a, b: g.one("Div", [a, b]),  # int64 Div truncates
    arith.RemSIOp: lambda g, a, b: g.one("Mod", [a, b], fmod=1),
    arith.FloorDivSIOp: _floordiv,
    arith.CeilDivSIOp: lambda g, a, b: g.one("Neg", [_floordiv(g, g.one("Neg", [a]), b)]),
}


@converts(*_ARITH)
def _arith(g: Graph, op: Operation) -> list[str]:
    """Sizes: Add/Sub/Mul/Max/Min/Div/Mod on [1] int64 tensors (floor and ceil division
    through Mod)."""
    a, b = (g.index(v) for v in op.operands)
    return [_ARITH[type(op)](g, a, b)]


def lowered_ops() -> list[type[Operation]]:
    """Every op class with a converter, gml first."""
    return sorted(CONVERTERS, key=lambda c: (not c.name.startswith("gml."), c.name))


__all__ = ["CONVERTERS", "lowered_ops"]
