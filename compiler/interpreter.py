"""A numpy reference interpreter for the `gml` dialect.

It gives every gml op an executable meaning, so that importers, passes and backends can
be checked against torch (and against each other) on real data, and so that constant
folding can evaluate ops without a second implementation of their semantics. It favours
clarity and torch-faithful numerics over speed.

Values are numpy arrays whose dtype is exactly the IR element type (0-d tensors are 0-d
arrays) and `index` values are python ints. Like torch on CPU, f16/bf16 ops compute in
float32 and round the result to the result type.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from io import StringIO
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    DenseArrayBase,
    IndexType,
    IntegerType,
    ModuleOp,
    TensorType,
)
from xdsl.interpreter import (
    Interpreter,
    InterpreterFunctions,
    PythonValues,
    ReturnedValues,
    TerminatorValue,
    impl,
    impl_terminator,
    register_impls,
)
from xdsl.interpreters.arith import ArithFunctions
from xdsl.interpreters.func import FuncFunctions
from xdsl.ir import Attribute, Operation
from xdsl.printer import Printer
from xdsl.traits import SymbolTable

from gimlet.dialects import comm, gml
from gimlet.dialects.shapes import DYN, shape_of
from gimlet.dtypes import element_type_for_numpy, numpy_dtype
from gimlet.errors import UserError

Array = npt.NDArray[Any]
Value = Array | int


class InterpreterError(UserError):
    """Bad inputs or weights for a run, or an op the interpreter cannot evaluate."""


# ------------------------------------------------------------------ dtypes ---

_LOW_PRECISION = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


def dtype_for(element_type: Attribute) -> np.dtype[Any]:
    """The numpy dtype holding values of an IR element type (gimlet.dtypes' table)."""
    try:
        return numpy_dtype(element_type)
    except UserError:
        raise InterpreterError(f"no numpy dtype for element type {_fmt(element_type)}") from None


def element_type_for(dtype: npt.DTypeLike) -> Attribute:
    """The IR element type of a numpy dtype (signed integers map to signless ones)."""
    try:
        return element_type_for_numpy(np.dtype(dtype))
    except UserError:
        raise InterpreterError(f"no element type for numpy dtype {np.dtype(dtype)}") from None


def _fmt(attr: Attribute) -> str:
    out = StringIO()
    Printer(stream=out).print_attribute(attr)
    return out.getvalue()


def _check_value(what: str, expected: Attribute, value: Array) -> None:
    """Raise unless `value` fits the tensor type `expected` (`?` matches any size)."""
    if not isinstance(expected, TensorType):
        raise InterpreterError(f"{what}: unsupported type {_fmt(expected)}")
    shape = shape_of(expected)
    fits = (
        value.dtype == dtype_for(expected.element_type)
        and value.ndim == len(shape)
        and all(d in (DYN, n) for d, n in zip(shape, value.shape, strict=True))
    )
    if not fits:
        raise InterpreterError(
            f"{what}: expected {_fmt(expected)}, got {value.dtype.name} array of shape "
            f"{value.shape}"
        )


# ------------------------------------------------------------------ helpers ---


def _is_float(dtype: np.dtype[Any]) -> bool:
    return dtype.kind == "f" or dtype in _LOW_PRECISION


def _wide(x: Array) -> Array:
    """f16/bf16 widened to float32 for computing; other dtypes unchanged."""
    return x.astype(np.float32) if x.dtype in _LOW_PRECISION else x


def _result_dtype(op: Operation) -> np.dtype[Any]:
    result_type = op.results[0].type
    assert isinstance(result_type, TensorType)
    return dtype_for(result_type.element_type)


def _out(op: Operation, value: Any) -> PythonValues:
    """The single result of `op` as an array of its result dtype."""
    return (np.asarray(value).astype(_result_dtype(op), copy=False),)


def _ints(attr: DenseArrayBase[IntegerType]) -> list[int]:
    return [int(v) for v in attr.get_values()]


def _result_shape(op: Operation, args: PythonValues) -> list[int]:
    """The result type's shape, `?` dims filled in order from the `index` operands."""
    sizes = iter(int(a) for a, v in zip(args, op.operands, strict=True) if v.type == IndexType())
    return [next(sizes) if d == DYN else d for d in shape_of(op.results[0].type)]


def _erf(x: Array) -> Array:
    """erf in float64 to ~1e-15: a positive-term series below 2.5, erfc's continued
    fraction above (numpy has no erf and scipy is no dependency)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    out = np.empty_like(a)
    small = a < 2.5
    # erf(a) = 2/sqrt(pi) exp(-a^2) sum_n 2^n a^(2n+1) / (2n+1)!!
    s = a[small]
    term, total = s.copy(), s.copy()
    for n in range(1, 35):
        term *= 2.0 * s * s / (2 * n + 1)
        total += term
    out[small] = 2.0 / math.sqrt(math.pi) * np.exp(-s * s) * total
    # erfc(a) = exp(-a^2)/sqrt(pi) / (a + (1/2)/(a + 1/(a + (3/2)/(a + ...))))
    b = a[~small]
    frac = b.copy()
    for k in range(25, 0, -1):
        frac = b + 0.5 * k / frac
    out[~small] = 1.0 - np.exp(-b * b) / math.sqrt(math.pi) / frac
    return np.copysign(out, x)


def _sigmoid(x: Array) -> Array:
    return 1 / (1 + np.exp(-x))


def _relu(x: Array) -> Array:
    return np.maximum(x, 0)


def _rsqrt(x: Array) -> Array:
    return np.reciprocal(np.sqrt(x))


def _silu(x: Array) -> Array:
    return x * _sigmoid(x)


def _div(lhs: Array, rhs: Array) -> Array:
    # The importer lowers integer division to gml.div with torch's floor rounding.
    if lhs.dtype.kind in "iub":
        return np.floor_divide(lhs, rhs)
    return np.true_divide(lhs, rhs)


_UNARY: dict[type[Operation], Callable[[Array], Array]] = {
    gml.NegOp: np.negative,
    gml.ExpOp: np.exp,
    gml.LogOp: np.log,
    gml.SqrtOp: np.sqrt,
    gml.RsqrtOp: _rsqrt,
    gml.AbsOp: np.abs,
    gml.TanhOp: np.tanh,
    gml.SigmoidOp: _sigmoid,
    gml.ReluOp: _relu,
    gml.SinOp: np.sin,
    gml.CosOp: np.cos,
    gml.ErfOp: _erf,
    gml.ReciprocalOp: np.reciprocal,
    gml.NotOp: np.logical_not,
    gml.SiluOp: _silu,
}

_BINARY: dict[type[Operation], Callable[[Array, Array], Array]] = {
    gml.AddOp: np.add,
    gml.SubOp: np.subtract,
    gml.MulOp: np.multiply,
    gml.DivOp: _div,
    gml.PowOp: np.power,
    gml.MaximumOp: np.maximum,
    gml.MinimumOp: np.minimum,
    # bitwise ops are logical on bools
    gml.AndOp: np.bitwise_and,
    gml.OrOp: np.bitwise_or,
    gml.EqOp: np.equal,
    gml.NeOp: np.not_equal,
    gml.LtOp: np.less,
    gml.LeOp: np.less_equal,
    gml.GtOp: np.greater,
    gml.GeOp: np.greater_equal,
}

_REDUCE: dict[type[Operation], Callable[..., Array]] = {
    gml.SumOp: np.sum,
    gml.MeanOp: np.mean,
    gml.AmaxOp: np.max,
    gml.AminOp: np.min,
    gml.AnyOp: np.any,
}


def _on_axis(fn: Callable[[Array, int], Array]) -> Callable[[Array, int], Array]:
    """`fn` along one axis, also for a 0-d `x` (as 1 element) and an empty one."""

    def run(x: Array, axis: int) -> Array:
        if x.ndim == 0:
            return fn(x.reshape(1), 0).reshape(())
        if x.size == 0:
            return x.copy()
        return fn(x, axis)

    return run


@_on_axis
def _softmax(x: Array, axis: int) -> Array:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


@_on_axis
def _log_softmax(x: Array, axis: int) -> Array:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _sdpa(
    q: Array, k: Array, v: Array, mask: Array | None, is_causal: bool, scale: float | None
) -> Array:
    if q.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        # grouped-query attention: each key/value head serves a run of query heads
        k = np.repeat(k, q.shape[-3] // k.shape[-3], axis=-3)
        v = np.repeat(v, q.shape[-3] // v.shape[-3], axis=-3)
    scores = (q @ np.swapaxes(k, -1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if is_causal:
        scores = np.where(np.tril(np.ones(scores.shape[-2:], dtype=bool)), scores, -np.inf)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + mask
    # torch's "safe" softmax: a fully masked row attends to nothing and yields zeros
    top = np.max(scores, axis=-1, keepdims=True)
    e = np.exp(scores - np.where(np.isneginf(top), 0, top))
    total = np.sum(e, axis=-1, keepdims=True)
    return (e / np.where(total == 0, 1, total)) @ v


def _conv(
    x: Array,
    w: Array,
    bias: Array | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Array:
    """N-d grouped convolution as im2col and one batched matmul per group."""
    n = x.ndim - 2
    spatial = tuple(range(2, 2 + n))
    ksize = w.shape[2:]
    x = np.pad(x, [(0, 0), (0, 0), *((p, p) for p in padding)])
    spans = tuple(d * (k - 1) + 1 for k, d in zip(ksize, dilation, strict=True))
    windows = sliding_window_view(x, spans, axis=spatial)
    windows = windows[(slice(None), slice(None), *(slice(None, None, s) for s in stride))]
    # [N, C, *out, *k]
    dilated: tuple[Any, ...] = (Ellipsis, *(slice(None, None, d) for d in dilation))
    patches = windows[dilated]
    batch, channels, out = patches.shape[0], patches.shape[1], patches.shape[2 : 2 + n]
    cg, og = channels // groups, w.shape[0] // groups
    # [N, G, Cg, *out, *k] -> [G, N, *out, Cg, *k] -> [G, N*out, Cg*k]
    patches = patches.reshape(batch, groups, cg, *out, *ksize)
    order = (1, 0, *range(3, 3 + n), 2, *range(3 + n, 3 + 2 * n))
    cols = patches.transpose(order).reshape(groups, batch * math.prod(out), -1)
    # [O, Cg, *k] -> [G, Cg*k, Og]
    kernel = w.reshape(groups, og, -1).transpose(0, 2, 1)
    # [G, N*out, Og] -> [N, G, Og, *out] -> [N, O, *out]
    y = (cols @ kernel).reshape(groups, batch, *out, og)
    y = y.transpose(1, 0, 2 + n, *range(2, 2 + n)).reshape(batch, groups * og, *out)
    if bias is not None:
        y = y + bias.reshape(-1, *(1,) * n)
    return y


def _pool2d(x: Array, op: gml.Pool2dOp) -> Array:
    kernel, stride, padding = _ints(op.kernel), _ints(op.stride), _ints(op.padding)
    dilation = list(op.window_dilation())
    ceil_mode = bool(op.ceil_mode.value.data)
    sizes = x.shape[2:]
    with_pad, without_pad, pads, spans = [], [], [], []
    for size, k, s, p, d in zip(sizes, kernel, stride, padding, dilation, strict=True):
        span = d * (k - 1) + 1  # input elements a (dilated) window covers
        reach = size + 2 * p - span
        n = (-(-reach // s) if ceil_mode else reach // s) + 1
        if ceil_mode and (n - 1) * s >= size + p:  # the last window must start inside
            n -= 1
        # ceil mode may let the last window run past the right padding
        pads.append((p, max(p, (n - 1) * s + span - size - p)))
        spans.append(span)
        # torch's avg divisor: the window clipped to the padded input (overhang past the
        # padding not counted), or to the input itself when padding does not count
        starts = np.arange(n) * s - p
        ends = np.minimum(starts + k, size + p)
        with_pad.append(ends - starts)
        without_pad.append(np.minimum(ends, size) - np.maximum(starts, 0))
    if isinstance(op, gml.MaxPool2dOp):
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        padded = np.pad(x, [(0, 0), (0, 0), *pads], constant_values=fill)
    else:
        padded = np.pad(x, [(0, 0), (0, 0), *pads])
    windows = sliding_window_view(padded, spans, axis=(2, 3))[:, :, :: stride[0], :: stride[1]]
    windows = windows[:, :, : len(with_pad[0]), : len(with_pad[1]), :: dilation[0], :: dilation[1]]
    if isinstance(op, gml.MaxPool2dOp):
        return windows.max(axis=(-2, -1))
    assert isinstance(op, gml.AvgPool2dOp)
    total = windows.sum(axis=(-2, -1))
    if op.divisor_override is not None:
        return total / op.divisor_override.value.data
    counts = with_pad if op.count_include_pad.value.data else without_pad
    return total / np.multiply.outer(counts[0], counts[1])


def _argreduce(fn: Callable[..., Array], x: Array, op: gml.ArgReduceOp) -> Array:
    """numpy's argmax/argmin: first index wins ties and NaN counts as the extreme, as in
    torch. No dim: an index into the flattened input."""
    keepdims = bool(op.keepdim.value.data)
    if op.dim is None or x.ndim == 0:
        flat = fn(x.reshape(-1))
        return np.reshape(flat, (1,) * x.ndim if keepdims else ())
    return fn(x, axis=op.dim.value.data % x.ndim, keepdims=keepdims)


def _adaptive_avg_pool(x: Array, axis: int, size: int) -> Array:
    """Average `x` along `axis` into `size` bins [floor(i*n/size), ceil((i+1)*n/size))."""
    n = x.shape[axis]
    bins = [
        x.take(range(i * n // size, -(-(i + 1) * n // size)), axis=axis).mean(
            axis=axis, keepdims=True
        )
        for i in range(size)
    ]
    return np.concatenate(bins, axis=axis)


# ---------------------------------------------------------- implementations ---


def _run_unary(
    self: GmlFunctions, interpreter: Interpreter, op: gml.UnaryOp, args: PythonValues
) -> PythonValues:
    return _out(op, _UNARY[type(op)](_wide(args[0])))


def _run_binary(
    self: GmlFunctions, interpreter: Interpreter, op: gml.BinaryOp, args: PythonValues
) -> PythonValues:
    return _out(op, _BINARY[type(op)](_wide(args[0]), _wide(args[1])))


def _run_reduce(
    self: GmlFunctions, interpreter: Interpreter, op: gml.ReduceOp, args: PythonValues
) -> PythonValues:
    x = _wide(args[0])
    # no dims: all of them; a 0-d input's dim 0 is the scalar itself
    axis = (tuple(_ints(op.dims)) or None) if x.ndim else None
    keepdims = bool(op.keepdim.value.data)
    if isinstance(op, gml.VarOp):
        ddof = op.correction.value.data
        with warnings.catch_warnings():  # N - correction <= 0 gives inf/nan, as in torch
            warnings.simplefilter("ignore", RuntimeWarning)
            y = np.var(x.astype(np.float64), axis=axis, keepdims=keepdims, ddof=ddof)
        return _out(op, y)
    result_dtype = _result_dtype(op)
    if isinstance(op, gml.SumOp) and result_dtype not in _LOW_PRECISION:
        # e.g. torch sums bool and int32 tensors into int64
        return _out(op, np.sum(x, axis=axis, keepdims=keepdims, dtype=result_dtype))
    return _out(op, _REDUCE[type(op)](x, axis=axis, keepdims=keepdims))


def _run_pool(
    self: GmlFunctions, interpreter: Interpreter, op: gml.Pool2dOp, args: PythonValues
) -> PythonValues:
    return _out(op, _pool2d(_wide(args[0]), op))


def _run_normalize(
    self: GmlFunctions, interpreter: Interpreter, op: gml.NormalizeLastDimOp, args: PythonValues
) -> PythonValues:
    fn = _softmax if isinstance(op, gml.SoftmaxOp) else _log_softmax
    return _out(op, fn(_wide(args[0]), op.dim.value.data))


@register_impls
class GmlFunctions(InterpreterFunctions):
    """Implementations of the gml ops; `weights` backs `gml.param`."""

    def __init__(self, weights: Mapping[str, Array] | None = None):
        self.weights: Mapping[str, Array] = weights or {}

    # sources

    @impl(gml.ParamOp)
    def run_param(
        self, interpreter: Interpreter, op: gml.ParamOp, args: PythonValues
    ) -> PythonValues:
        name = op.param_name.data
        if name not in self.weights:
            raise InterpreterError(f'missing weight "{name}"')
        value = np.asarray(self.weights[name])
        _check_value(f'weight "{name}"', op.result.type, value)
        return (value,)

    @impl(gml.ConstantOp)
    def run_constant(
        self, interpreter: Interpreter, op: gml.ConstantOp, args: PythonValues
    ) -> PythonValues:
        shape = op.value.get_shape()
        values = np.asarray(op.value.get_values())
        if values.size == 1:  # a splat
            values = np.full(shape, values.reshape(()))
        return _out(op, values.reshape(shape))

    @impl(gml.DimOp)
    def run_dim(self, interpreter: Interpreter, op: gml.DimOp, args: PythonValues) -> PythonValues:
        return (int(args[0].shape[op.index.value.data]),)

    @impl(gml.FullOp)
    def run_full(
        self, interpreter: Interpreter, op: gml.FullOp, args: PythonValues
    ) -> PythonValues:
        return _out(op, np.full(_result_shape(op, args), op.value.value.data))

    @impl(gml.ArangeOp)
    def run_arange(
        self, interpreter: Interpreter, op: gml.ArangeOp, args: PythonValues
    ) -> PythonValues:
        (n,) = _result_shape(op, args)
        return _out(op, op.start.value.data + op.step.value.data * np.arange(n, dtype=np.float64))

    # elementwise

    run_neg = impl(gml.NegOp)(_run_unary)
    run_exp = impl(gml.ExpOp)(_run_unary)
    run_log = impl(gml.LogOp)(_run_unary)
    run_sqrt = impl(gml.SqrtOp)(_run_unary)
    run_rsqrt = impl(gml.RsqrtOp)(_run_unary)
    run_abs = impl(gml.AbsOp)(_run_unary)
    run_tanh = impl(gml.TanhOp)(_run_unary)
    run_sigmoid = impl(gml.SigmoidOp)(_run_unary)
    run_relu = impl(gml.ReluOp)(_run_unary)
    run_sin = impl(gml.SinOp)(_run_unary)
    run_cos = impl(gml.CosOp)(_run_unary)
    run_erf = impl(gml.ErfOp)(_run_unary)
    run_reciprocal = impl(gml.ReciprocalOp)(_run_unary)
    run_not = impl(gml.NotOp)(_run_unary)
    run_silu = impl(gml.SiluOp)(_run_unary)

    @impl(gml.GeluOp)
    def run_gelu(
        self, interpreter: Interpreter, op: gml.GeluOp, args: PythonValues
    ) -> PythonValues:
        x = _wide(args[0])
        if op.approximate.data == "tanh":
            inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
            return _out(op, 0.5 * x * (1 + np.tanh(inner)))
        return _out(op, x * 0.5 * (1 + _erf(x / math.sqrt(2))))

    @impl(gml.ClampOp)
    def run_clamp(
        self, interpreter: Interpreter, op: gml.ClampOp, args: PythonValues
    ) -> PythonValues:
        x = _wide(args[0])
        if op.min is not None:
            x = np.maximum(x, op.min.value.data)
        if op.max is not None:
            x = np.minimum(x, op.max.value.data)
        return _out(op, x)

    run_add = impl(gml.AddOp)(_run_binary)
    run_sub = impl(gml.SubOp)(_run_binary)
    run_mul = impl(gml.MulOp)(_run_binary)
    run_div = impl(gml.DivOp)(_run_binary)
    run_pow = impl(gml.PowOp)(_run_binary)
    run_maximum = impl(gml.MaximumOp)(_run_binary)
    run_minimum = impl(gml.MinimumOp)(_run_binary)
    run_and = impl(gml.AndOp)(_run_binary)
    run_or = impl(gml.OrOp)(_run_binary)
    run_eq = impl(gml.EqOp)(_run_binary)
    run_ne = impl(gml.NeOp)(_run_binary)
    run_lt = impl(gml.LtOp)(_run_binary)
    run_le = impl(gml.LeOp)(_run_binary)
    run_gt = impl(gml.GtOp)(_run_binary)
    run_ge = impl(gml.GeOp)(_run_binary)

    @impl(gml.WhereOp)
    def run_where(
        self, interpreter: Interpreter, op: gml.WhereOp, args: PythonValues
    ) -> PythonValues:
        return _out(op, np.where(*args))

    @impl(gml.CastOp)
    def run_cast(
        self, interpreter: Interpreter, op: gml.CastOp, args: PythonValues
    ) -> PythonValues:
        x = args[0]
        if _result_dtype(op) in _LOW_PRECISION:
            # torch converts to half/bfloat16 through float, rounding twice from f64
            x = x.astype(np.float32)
        return _out(op, x)

    # shapes

    @impl(gml.ReshapeOp)
    def run_reshape(
        self, interpreter: Interpreter, op: gml.ReshapeOp, args: PythonValues
    ) -> PythonValues:
        return _out(op, np.reshape(args[0], _result_shape(op, args)))

    @impl(gml.ExpandOp)
    def run_expand(
        self, interpreter: Interpreter, op: gml.ExpandOp, args: PythonValues
    ) -> PythonValues:
        return _out(op, np.broadcast_to(args[0], _result_shape(op, args)))

    @impl(gml.PermuteOp)
    def run_permute(
        self, interpreter: Interpreter, op: gml.PermuteOp, args: PythonValues
    ) -> PythonValues:
        return _out(op, np.transpose(args[0], _ints(op.dims)))

    @impl(gml.SliceOp)
    def run_slice(
        self, interpreter: Interpreter, op: gml.SliceOp, args: PythonValues
    ) -> PythonValues:
        x, *bounds = args
        start = int(bounds.pop(0)) if op.dyn_start is not None else op.start.value.data
        end = int(bounds.pop(0)) if op.dyn_end is not None else op.end.value.data
        dim = op.dim.value.data % x.ndim
        key = (slice(None),) * dim + (slice(start, end, op.step.value.data),)
        return _out(op, x[key])

    @impl(gml.PadOp)
    def run_pad(self, interpreter: Interpreter, op: gml.PadOp, args: PythonValues) -> PythonValues:
        x = args[0]
        low, high = _ints(op.low), _ints(op.high)
        # negative amounts crop first; the rest pads with the value (in x's type)
        crop = tuple(
            slice(max(-lo, 0), n - max(-hi, 0))
            for n, lo, hi in zip(x.shape, low, high, strict=True)
        )
        widths = [(max(lo, 0), max(hi, 0)) for lo, hi in zip(low, high, strict=True)]
        fill = np.array(op.value.value.data).astype(x.dtype)
        return _out(op, np.pad(x[crop], widths, constant_values=fill))

    @impl(gml.ConcatOp)
    def run_concat(
        self, interpreter: Interpreter, op: gml.ConcatOp, args: PythonValues
    ) -> PythonValues:
        return _out(op, np.concatenate(args, axis=op.dim.value.data))

    # indexing

    @impl(gml.EmbeddingOp)
    def run_embedding(
        self, interpreter: Interpreter, op: gml.EmbeddingOp, args: PythonValues
    ) -> PythonValues:
        weight, indices = args
        return _out(op, np.take(weight, indices, axis=0))

    @impl(gml.GatherOp)
    def run_gather(
        self, interpreter: Interpreter, op: gml.GatherOp, args: PythonValues
    ) -> PythonValues:
        x, index = args
        dim = op.dim.value.data % x.ndim
        # torch lets `index` be smaller than `input` in the other dims
        x = x[tuple(slice(None) if d == dim else slice(n) for d, n in enumerate(index.shape))]
        return _out(op, np.take_along_axis(x, index, axis=dim))

    @impl(gml.IndexOp)
    def run_index(
        self, interpreter: Interpreter, op: gml.IndexOp, args: PythonValues
    ) -> PythonValues:
        x, *indices = args
        # numpy's advanced indexing places the result dims as torch's aten.index does
        key: list[Any] = []
        covered = 0  # input dims the key spans so far
        for dim, index in zip(_ints(op.dims), indices, strict=True):
            key += [slice(None)] * (dim - covered)
            key.append(index)
            # a boolean mask spans as many dims as it has
            covered = dim + (index.ndim if index.dtype == np.bool_ else 1)
        return _out(op, x[tuple(key)])

    @impl(gml.CumsumOp)
    def run_cumsum(
        self, interpreter: Interpreter, op: gml.CumsumOp, args: PythonValues
    ) -> PythonValues:
        # torch accumulates floats in double on CPU, ints in the (int64) result type
        dtype = _result_dtype(op)
        acc = np.float64 if _is_float(dtype) else dtype
        x = args[0]
        y = np.cumsum(x.reshape(x.shape or (1,)), axis=op.dim.value.data, dtype=acc)
        return _out(op, y.reshape(x.shape))

    # reductions

    run_sum = impl(gml.SumOp)(_run_reduce)
    run_mean = impl(gml.MeanOp)(_run_reduce)
    run_amax = impl(gml.AmaxOp)(_run_reduce)
    run_amin = impl(gml.AminOp)(_run_reduce)
    run_any = impl(gml.AnyOp)(_run_reduce)
    run_var = impl(gml.VarOp)(_run_reduce)

    @impl(gml.ArgmaxOp)
    def run_argmax(
        self, interpreter: Interpreter, op: gml.ArgmaxOp, args: PythonValues
    ) -> PythonValues:
        return _out(op, _argreduce(np.argmax, args[0], op))

    @impl(gml.ArgminOp)
    def run_argmin(
        self, interpreter: Interpreter, op: gml.ArgminOp, args: PythonValues
    ) -> PythonValues:
        return _out(op, _argreduce(np.argmin, args[0], op))

    # nn

    @impl(gml.MatmulOp)
    def run_matmul(
        self, interpreter: Interpreter, op: gml.MatmulOp, args: PythonValues
    ) -> PythonValues:
        return _out(op, np.matmul(_wide(args[0]), _wide(args[1])))

    run_softmax = impl(gml.SoftmaxOp)(_run_normalize)
    run_log_softmax = impl(gml.LogSoftmaxOp)(_run_normalize)

    @impl(gml.LayerNormOp)
    def run_layer_norm(
        self, interpreter: Interpreter, op: gml.LayerNormOp, args: PythonValues
    ) -> PythonValues:
        x, *affine = (_wide(a) for a in args)
        axes = tuple(range(x.ndim - op.ndim.value.data, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        var = np.square(x - mean).mean(axis=axes, keepdims=True)
        y = (x - mean) / np.sqrt(var + op.eps.value.data)
        if op.weight is not None:
            y = y * affine.pop(0)
        if op.bias is not None:
            y = y + affine.pop(0)
        return _out(op, y)

    @impl(gml.SdpaOp)
    def run_sdpa(
        self, interpreter: Interpreter, op: gml.SdpaOp, args: PythonValues
    ) -> PythonValues:
        q, k, v, *mask = (_wide(a) for a in args)
        scale = op.scale.value.data if op.scale is not None else None
        is_causal = bool(op.is_causal.value.data)
        return _out(op, _sdpa(q, k, v, mask[0] if mask else None, is_causal, scale))

    @impl(gml.ConvOp)
    def run_conv(
        self, interpreter: Interpreter, op: gml.ConvOp, args: PythonValues
    ) -> PythonValues:
        x, w, *bias = (_wide(a) for a in args)
        stride, padding, dilation = _ints(op.stride), _ints(op.padding), _ints(op.dilation)
        y = _conv(x, w, bias[0] if bias else None, stride, padding, dilation, op.groups.value.data)
        return _out(op, y)

    @impl(gml.BatchNormOp)
    def run_batch_norm(
        self, interpreter: Interpreter, op: gml.BatchNormOp, args: PythonValues
    ) -> PythonValues:
        x = _wide(args[0])
        # statistics are per channel, dim 1
        weight, bias, mean, var = (_wide(s).reshape(-1, *(1,) * (x.ndim - 2)) for s in args[1:])
        y = (x - mean) / np.sqrt(var + op.eps.value.data) * weight + bias
        return _out(op, y)

    run_max_pool2d = impl(gml.MaxPool2dOp)(_run_pool)
    run_avg_pool2d = impl(gml.AvgPool2dOp)(_run_pool)

    @impl(gml.AdaptiveAvgPool2dOp)
    def run_adaptive_avg_pool2d(
        self, interpreter: Interpreter, op: gml.AdaptiveAvgPool2dOp, args: PythonValues
    ) -> PythonValues:
        out_h, out_w = shape_of(op.result.type)[2:]
        # the bins are rectangles, so averaging rows then columns is their mean
        y = _adaptive_avg_pool(_adaptive_avg_pool(_wide(args[0]), 2, out_h), 3, out_w)
        return _out(op, y)

    # structure

    @impl(gml.FusionOp)
    def run_fusion(
        self, interpreter: Interpreter, op: gml.FusionOp, args: PythonValues
    ) -> PythonValues:
        # the body reads values defined outside it through the enclosing scope
        return interpreter.run_ssacfg_region(op.body, (), "gml.fusion")

    @impl(gml.SegmentOp)
    def run_segment(
        self, interpreter: Interpreter, op: gml.SegmentOp, args: PythonValues
    ) -> PythonValues:
        return interpreter.run_ssacfg_region(op.body, args, "gml.segment")

    @impl_terminator(gml.YieldOp)
    def run_yield(
        self, interpreter: Interpreter, op: gml.YieldOp, args: PythonValues
    ) -> tuple[TerminatorValue, PythonValues]:
        return ReturnedValues(args), ()


@register_impls
class CommFunctions(InterpreterFunctions):
    """Transfers simulated in one process: a send posts to its channel, a receive takes it.

    The function body runs segments in program order, which is a topological order, so
    every send runs before its receive; a receive with nothing posted is a bug in the
    partitioned program (it would hang on real devices) and is reported as such.
    """

    def __init__(self) -> None:
        self.channels: dict[int, list[Any]] = {}

    def _post(self, op: comm.SendOp | comm.ISendOp, value: Any) -> None:
        self.channels.setdefault(op.channel.value.data, []).append(value)

    def _take(self, op: comm.RecvOp | comm.IRecvOp) -> Any:
        queue = self.channels.get(op.channel.value.data)
        if not queue:
            raise InterpreterError(
                f"{op.name} on channel {op.channel.value.data} from {op.peer.data} has no "
                "matching send before it (this program would deadlock)"
            )
        return queue.pop(0)

    @impl(comm.SendOp)
    def run_send(
        self, interpreter: Interpreter, op: comm.SendOp, args: PythonValues
    ) -> PythonValues:
        self._post(op, args[0])
        return ()

    @impl(comm.RecvOp)
    def run_recv(
        self, interpreter: Interpreter, op: comm.RecvOp, args: PythonValues
    ) -> PythonValues:
        return (self._take(op),)

    @impl(comm.ISendOp)
    def run_isend(
        self, interpreter: Interpreter, op: comm.ISendOp, args: PythonValues
    ) -> PythonValues:
        self._post(op, args[0])
        return (None,)

    @impl(comm.IRecvOp)
    def run_irecv(
        self, interpreter: Interpreter, op: comm.IRecvOp, args: PythonValues
    ) -> PythonValues:
        return (("recv", op),)

    @impl(comm.WaitOp)
    def run_wait(
        self, interpreter: Interpreter, op: comm.WaitOp, args: PythonValues
    ) -> PythonValues:
        token = args[0]
        if isinstance(token, tuple) and token[0] == "recv":
            return (self._take(token[1]),)
        return ()


def _interpreter(module: ModuleOp, weights: Mapping[str, Array]) -> Interpreter:
    interpreter = Interpreter(module)
    interpreter.register_implementations(GmlFunctions(weights))
    interpreter.register_implementations(CommFunctions())
    interpreter.register_implementations(FuncFunctions())
    # arith computes dynamic sizes on `index` python ints
    interpreter.register_implementations(ArithFunctions())
    return interpreter


def run(
    module: ModuleOp,
    inputs: Sequence[Array],
    weights: Mapping[str, Array],
    entry: str = "main",
) -> list[Array]:
    """Run `func.func @entry` on `inputs`, reading `gml.param`s from `weights`."""
    fn = SymbolTable.lookup_symbol(module, entry)
    if not isinstance(fn, func.FuncOp):
        raise InterpreterError(f"no func.func @{entry} in the module")
    arg_types = fn.function_type.inputs.data
    if len(inputs) != len(arg_types):
        raise InterpreterError(f"@{entry} takes {len(arg_types)} inputs, got {len(inputs)}")
    arrays = [np.asarray(x) for x in inputs]
    for i, (arg_type, x) in enumerate(zip(arg_types, arrays, strict=True)):
        _check_value(f"input {i}", arg_type, x)
    with np.errstate(all="ignore"):  # inf and nan are results, as in torch
        results = _interpreter(module, weights).call_op(fn, tuple(arrays))
    # outputs may be views of inputs or weights (or read-only broadcasts): hand back copies
    return [np.array(r) for r in results]


def evaluate_op(op: Operation, operands: Sequence[Value]) -> list[Value]:
    """Evaluate one op (no regions, no `gml.param`) on constant operand values."""
    if op.regions:
        raise InterpreterError(f"cannot evaluate {op.name} on its own: it has regions")
    with np.errstate(all="ignore"):
        results = _interpreter(ModuleOp([]), {}).run_op(op, tuple(operands))
    return list(results)
