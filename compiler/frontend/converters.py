"""One converter per core-ATen overload gimlet imports.

Each takes the importer and an FX node and returns the gml value (or a tuple
for multi-output ATen ops, None where gimlet does not produce that output).
Result types always come from the node's FakeTensor (`imp.result_type`), so a
converter never re-derives torch's shape or type-promotion rules.
"""

from __future__ import annotations

from typing import Any

import torch
from xdsl.dialects.builtin import IntegerType, TensorType
from xdsl.ir import Attribute, SSAValue

from gimlet.dialects import gml
from gimlet.dialects.shapes import DYN
from gimlet.dtypes import element_type_for_torch
from gimlet.errors import UnsupportedOpError, with_location
from gimlet.frontend.registry import Emitter, as_exported_when, converts, meta_type

aten = torch.ops.aten
fx = torch.fx


def rtype(node: fx.Node) -> TensorType:
    return meta_type(node.meta["val"])


def elt_of(v: SSAValue) -> Attribute:
    assert isinstance(v.type, TensorType)
    return v.type.element_type


def rank_of(node: Any) -> int:
    return len(node.meta["val"].shape)


def norm_dim(dim: int, rank: int) -> int:
    """A torch dim in [0, rank); a 0-d tensor takes dim 0 or -1 and normalizes to 0."""
    return dim % rank if rank else 0


def unsupported(imp: Emitter, node: fx.Node, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(with_location(imp.location, f"unsupported {node.target}: {why}"))


def target(node: fx.Node) -> Any:
    return node.target


def args(node: fx.Node) -> tuple[Any, ...]:
    """FX arguments are dynamically typed; converters check what they rely on."""
    return tuple(node.args)


def kwarg(node: fx.Node, i: int, name: str, default: Any) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


# ------------------------------------------------------------ elementwise ---

_UNARY = {
    aten.neg.default: gml.NegOp,
    aten.exp.default: gml.ExpOp,
    aten.log.default: gml.LogOp,
    aten.sqrt.default: gml.SqrtOp,
    aten.rsqrt.default: gml.RsqrtOp,
    aten.abs.default: gml.AbsOp,
    aten.tanh.default: gml.TanhOp,
    aten.sigmoid.default: gml.SigmoidOp,
    aten.relu.default: gml.ReluOp,
    aten.sin.default: gml.SinOp,
    aten.cos.default: gml.CosOp,
    aten.erf.default: gml.ErfOp,
    aten.reciprocal.default: gml.ReciprocalOp,
    aten.logical_not.default: gml.NotOp,
}


@converts(*_UNARY)
def unary(imp: Emitter, node: fx.Node) -> SSAValue:
    x = imp.as_type(args(node)[0], rtype(node).element_type)
    return imp.emit(_UNARY[target(node)](x))


@converts(aten.gelu.default)
def gelu(imp: Emitter, node: fx.Node) -> SSAValue:
    approx = node.kwargs.get("approximate", "none")
    op = gml.GeluOp(imp.value(args(node)[0]))
    op.properties["approximate"] = gml.StringAttr(str(approx))
    return imp.emit(op)


@converts(aten.clamp.default, aten.hardtanh.default, aten.clamp_min.default, aten.clamp_max.default)
def clamp(imp: Emitter, node: fx.Node) -> SSAValue:
    if node.target == aten.clamp_max.default:
        lo, hi = None, args(node)[1]
    else:
        lo = kwarg(node, 1, "min", None)
        hi = kwarg(node, 2, "max", None)
    op = gml.ClampOp(imp.value(args(node)[0]))
    if lo is not None:
        op.properties["min"] = gml.float_attr(float(lo))
    if hi is not None:
        op.properties["max"] = gml.float_attr(float(hi))
    return imp.emit(op)


@converts(aten.clamp.Tensor, aten.clamp_min.Tensor, aten.clamp_max.Tensor)
def clamp_tensor(imp: Emitter, node: fx.Node) -> SSAValue:
    """Tensor bounds broadcast: max(x, min) then min(., max), in the promoted type
    (maximum/minimum propagate NaN from either side, as torch's clamp does)."""
    out = rtype(node)
    if node.target == aten.clamp_max.Tensor:
        lo, hi = None, args(node)[1]
    elif node.target == aten.clamp_min.Tensor:
        lo, hi = args(node)[1], None
    else:
        lo, hi = kwarg(node, 1, "min", None), kwarg(node, 2, "max", None)
    x = imp.as_type(args(node)[0], out.element_type)
    if lo is not None:
        x = imp.emit(gml.MaximumOp(x, imp.as_type(lo, out.element_type)))
    if hi is not None:
        x = imp.emit(gml.MinimumOp(x, imp.as_type(hi, out.element_type)))
    if x.type != out:  # bounds broadcast x to a larger shape
        x = imp.emit(gml.ExpandOp(x, out, imp.sizes(out, node.meta["val"])))
    return x


_ARITH = {
    aten.add.Tensor: gml.AddOp,
    aten.add.Scalar: gml.AddOp,
    aten.sub.Tensor: gml.SubOp,
    aten.sub.Scalar: gml.SubOp,
    aten.mul.Tensor: gml.MulOp,
    aten.mul.Scalar: gml.MulOp,
    aten.div.Tensor: gml.DivOp,
    aten.div.Scalar: gml.DivOp,
    aten.pow.Tensor_Scalar: gml.PowOp,
    aten.pow.Tensor_Tensor: gml.PowOp,
    aten.pow.Scalar: gml.PowOp,
    aten.maximum.default: gml.MaximumOp,
    aten.minimum.default: gml.MinimumOp,
    aten.bitwise_and.Tensor: gml.AndOp,
    aten.bitwise_or.Tensor: gml.OrOp,
    aten.logical_and.default: gml.AndOp,
    aten.logical_or.default: gml.OrOp,
    aten.__and__.Tensor: gml.AndOp,  # bitwise_and.Tensor, as exported
    aten.__or__.Tensor: gml.OrOp,
}
_COMPARE = {
    aten.eq.Tensor: gml.EqOp,
    aten.eq.Scalar: gml.EqOp,
    aten.ne.Tensor: gml.NeOp,
    aten.ne.Scalar: gml.NeOp,
    aten.lt.Tensor: gml.LtOp,
    aten.lt.Scalar: gml.LtOp,
    aten.le.Tensor: gml.LeOp,
    aten.le.Scalar: gml.LeOp,
    aten.gt.Tensor: gml.GtOp,
    aten.gt.Scalar: gml.GtOp,
    aten.ge.Tensor: gml.GeOp,
    aten.ge.Scalar: gml.GeOp,
}


def _operand_meta(a: Any) -> Any:
    return a.meta["val"] if isinstance(a, fx.Node) else a


@converts(*_ARITH)
def arithmetic(imp: Emitter, node: fx.Node) -> SSAValue:
    out = rtype(node).element_type
    lhs, rhs = imp.as_type(args(node)[0], out), imp.as_type(args(node)[1], out)
    alpha: Any = node.kwargs.get("alpha", 1)
    if alpha != 1:
        rhs = imp.emit(gml.MulOp(rhs, imp.scalar(float(alpha), out)))
    return imp.emit(_ARITH[target(node)](lhs, rhs, rtype(node)))


@converts(aten.div.Tensor_mode)
def div_mode(imp: Emitter, node: fx.Node) -> SSAValue:
    mode = node.kwargs.get("rounding_mode")
    out = rtype(node).element_type
    if mode == "floor" and isinstance(out, IntegerType):
        lhs, rhs = imp.as_type(args(node)[0], out), imp.as_type(args(node)[1], out)
        return imp.emit(gml.DivOp(lhs, rhs, rtype(node)))
    raise unsupported(imp, node, f"rounding_mode={mode!r} on {out}")


@converts(aten.rsub.Scalar)
def rsub(imp: Emitter, node: fx.Node) -> SSAValue:
    out = rtype(node).element_type
    lhs, rhs = imp.as_type(args(node)[1], out), imp.as_type(args(node)[0], out)
    return imp.emit(gml.SubOp(lhs, rhs, rtype(node)))


@converts(*_COMPARE)
def compare(imp: Emitter, node: fx.Node) -> SSAValue:
    common = torch.result_type(_operand_meta(args(node)[0]), _operand_meta(args(node)[1]))
    elt = element_type_for_torch(common)
    lhs, rhs = imp.as_type(args(node)[0], elt), imp.as_type(args(node)[1], elt)
    return imp.emit(_COMPARE[target(node)](lhs, rhs, rtype(node)))


@converts(aten.where.self)
def where(imp: Emitter, node: fx.Node) -> SSAValue:
    out = rtype(node).element_type
    cond = imp.as_type(args(node)[0], IntegerType(1))
    return imp.emit(
        gml.WhereOp(cond, imp.as_type(args(node)[1], out), imp.as_type(args(node)[2], out))
    )


@converts(aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.to.device)
def to_copy(imp: Emitter, node: fx.Node) -> SSAValue:
    return imp.as_type(args(node)[0], rtype(node).element_type)


@converts(
    aten.clone.default,
    aten.alias.default,
    aten.detach.default,
    aten.lift_fresh_copy.default,
    aten.contiguous.default,
)
def identity(imp: Emitter, node: fx.Node) -> SSAValue:
    return imp.value(args(node)[0])


# ------------------------------------------------------------ shape ops ---


@converts(
    aten.view.default,
    aten._unsafe_view.default,
    aten.reshape.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
    aten.flatten.using_ints,
)
def reshape(imp: Emitter, node: fx.Node) -> SSAValue:
    t = rtype(node)
    return imp.emit(gml.ReshapeOp(imp.value(args(node)[0]), t, imp.sizes(t, node.meta["val"])))


@converts(aten.expand.default)
def expand(imp: Emitter, node: fx.Node) -> SSAValue:
    t = rtype(node)
    x = imp.value(args(node)[0])
    if x.type == t:
        return x
    return imp.emit(gml.ExpandOp(x, t, imp.sizes(t, node.meta["val"])))


@converts(aten.permute.default)
def permute(imp: Emitter, node: fx.Node) -> SSAValue:
    dims = [norm_dim(d, rank_of(node)) for d in args(node)[1]]
    return imp.emit(gml.PermuteOp(imp.value(args(node)[0]), dims))


@converts(aten.t.default, aten.transpose.int)
def transpose(imp: Emitter, node: fx.Node) -> SSAValue:
    rank = rank_of(node)
    d0, d1 = (args(node)[1], args(node)[2]) if len(args(node)) > 1 else (0, 1)
    dims = list(range(rank))
    if rank >= 2:
        dims[d0 % rank], dims[d1 % rank] = dims[d1 % rank], dims[d0 % rank]
    return imp.emit(gml.PermuteOp(imp.value(args(node)[0]), dims))


def _slice(
    imp: Emitter, x: SSAValue, dim: int, start: Any, end: Any, step: int, t: TensorType
) -> SSAValue:
    dyn_start = imp.sym(start) if isinstance(start, torch.SymInt) else None
    dyn_end = imp.sym(end) if isinstance(end, torch.SymInt) else None
    s = 0 if dyn_start is not None or start is None else int(start)
    e = 0 if dyn_end is not None else (2**62 if end is None else min(int(end), 2**62))
    return imp.emit(gml.SliceOp(x, dim, s, e, step, t, dyn_start, dyn_end))


@converts(aten.slice.Tensor)
def slice_(imp: Emitter, node: fx.Node) -> SSAValue:
    x = imp.value(args(node)[0])
    dim = norm_dim(kwarg(node, 1, "dim", 0), rank_of(node))
    start, end = kwarg(node, 2, "start", None), kwarg(node, 3, "end", None)
    return _slice_tensor(imp, x, dim, start, end, kwarg(node, 4, "step", 1), rtype(node))


def _slice_tensor(
    imp: Emitter, x: SSAValue, dim: int, start: Any, end: Any, step: int, t: TensorType
) -> SSAValue:
    """aten.slice.Tensor: nothing when it keeps all of x."""
    if x.type == t and (start in (None, 0)) and step == 1:
        return x
    return _slice(imp, x, dim, start, end, step, t)


@converts(aten.select.int)
def select(imp: Emitter, node: fx.Node) -> SSAValue:
    x = imp.value(args(node)[0])
    src = args(node)[0].meta["val"]
    dim, index = args(node)[1] % src.dim(), args(node)[2]
    if isinstance(index, int) and index < 0:
        index += src.shape[dim]
    kept = list(meta_type(src).get_shape())
    kept[dim] = 1
    part = _slice(imp, x, dim, index, index + 1, 1, TensorType(elt_of(x), kept))
    t = rtype(node)
    return imp.emit(gml.ReshapeOp(part, t, imp.sizes(t, node.meta["val"])))


@converts(aten.split_with_sizes.default, aten.split.Tensor)
def split(imp: Emitter, node: fx.Node) -> tuple[SSAValue, ...]:
    x = imp.value(args(node)[0])
    dim = norm_dim(kwarg(node, 2, "dim", 0), len(args(node)[0].meta["val"].shape))
    outs, start = [], 0
    for val in node.meta["val"]:
        size = val.shape[dim]
        outs.append(_slice(imp, x, dim, start, start + size, 1, meta_type(val)))
        start = start + size
    return tuple(outs)


@converts(aten.cat.default)
def cat(imp: Emitter, node: fx.Node) -> SSAValue:
    out = rtype(node)
    rank = rank_of(node)
    # torch still accepts 1-d empty tensors of any other rank in cat, and skips them
    parts = [
        a for a in args(node)[0] if not (rank_of(a) == 1 != rank and a.meta["val"].shape[0] == 0)
    ]
    return _cat(imp, parts, norm_dim(kwarg(node, 1, "dim", 0), rank), out)


def _cat(imp: Emitter, parts: list[Any], dim: int, out: TensorType) -> SSAValue:
    inputs = [imp.as_type(a, out.element_type) for a in parts]
    if len(inputs) == 1 and inputs[0].type == out:
        return inputs[0]
    return imp.emit(gml.ConcatOp(inputs, dim, out))


@converts(aten.constant_pad_nd.default)
def constant_pad(imp: Emitter, node: fx.Node) -> SSAValue:
    """torch lists (before, after) pairs from the LAST dim backwards."""
    x = imp.value(args(node)[0])
    pads = list(args(node)[1])
    rank = rank_of(node)
    low, high = [0] * rank, [0] * rank
    for i in range(len(pads) // 2):
        low[rank - 1 - i], high[rank - 1 - i] = int(pads[2 * i]), int(pads[2 * i + 1])
    value = float(kwarg(node, 2, "value", 0))
    return imp.emit(gml.PadOp(x, low, high, value))


# ------------------------------------------------------------ indexing ---


@converts(aten.embedding.default)
def embedding(imp: Emitter, node: fx.Node) -> SSAValue:
    return imp.emit(gml.EmbeddingOp(imp.value(args(node)[0]), imp.value(args(node)[1])))


@converts(aten.gather.default)
def gather(imp: Emitter, node: fx.Node) -> SSAValue:
    out = rtype(node)
    x, index = imp.value(args(node)[0]), imp.value(args(node)[2])
    if 0 in out.get_shape():  # torch accepts any index shape when it selects nothing
        return imp.emit(gml.FullOp(0.0, out, imp.sizes(out, node.meta["val"])))
    dim = norm_dim(args(node)[1], rank_of(node))
    if rank_of(args(node)[0]) == 0:
        # a 0-d input gathers from its one element: as a [1, ...] of the index's rank
        rank = max(rank_of(args(node)[2]), 1)
        x = imp.emit(gml.ReshapeOp(x, TensorType(elt_of(x), [1] * rank)))
        if rank_of(args(node)[2]) == 0:
            index = imp.emit(gml.ReshapeOp(index, TensorType(elt_of(index), [1])))
        part = imp.emit(gml.GatherOp(x, index, 0))
        return imp.emit(gml.ReshapeOp(part, out))
    return imp.emit(gml.GatherOp(x, index, dim))


@converts(aten.index.Tensor)
def index(imp: Emitter, node: fx.Node) -> SSAValue:
    dims, idx = [], []
    for d, i in enumerate(args(node)[1]):
        if i is not None:
            dims.append(d)
            idx.append(imp.value(i))
    return imp.emit(gml.IndexOp(imp.value(args(node)[0]), idx, dims, rtype(node)))


@converts(aten.index_select.default)
def index_select(imp: Emitter, node: fx.Node) -> SSAValue:
    dim = norm_dim(args(node)[1], rank_of(node))
    x, index, out = imp.value(args(node)[0]), imp.value(args(node)[2]), rtype(node)
    if rank_of(node) == 0:  # a 0-d input is indexed as its one element, [1]
        x = imp.emit(gml.ReshapeOp(x, TensorType(elt_of(x), [1])))
        index = imp.emit(gml.ReshapeOp(index, TensorType(elt_of(index), [1])))
        part = imp.emit(gml.IndexOp(x, [index], [0], TensorType(out.element_type, [1])))
        return imp.emit(gml.ReshapeOp(part, out))
    return imp.emit(gml.IndexOp(x, [index], [dim], out))


@converts(aten.cumsum.default)
def cumsum(imp: Emitter, node: fx.Node) -> SSAValue:
    out = rtype(node)
    x = imp.as_type(args(node)[0], out.element_type)
    return imp.emit(gml.CumsumOp(x, norm_dim(args(node)[1], rank_of(node)), out))


# --------------------------------------------------------- constructors ---


_FILLS = {
    aten.zeros_like.default: 0.0,
    aten.ones_like.default: 1.0,
    aten.new_zeros.default: 0.0,
    aten.new_ones.default: 1.0,
}


@converts(aten.full.default, aten.full_like.default, *_FILLS)
def full(imp: Emitter, node: fx.Node) -> SSAValue:
    fill = _FILLS.get(target(node))
    value = fill if fill is not None else args(node)[1]
    t = rtype(node)
    return imp.emit(gml.FullOp(float(value), t, imp.sizes(t, node.meta["val"])))


@converts(aten.scalar_tensor.default)
def scalar_tensor(imp: Emitter, node: fx.Node) -> SSAValue:
    return imp.scalar(args(node)[0], rtype(node).element_type)


@converts(aten.arange.start_step, aten.arange.default, aten.arange.start)
def arange(imp: Emitter, node: fx.Node) -> SSAValue:
    start, step = 0, 1
    if node.target != aten.arange.default:
        start = args(node)[0]
        step = kwarg(node, 2, "step", 1)
    if isinstance(start, torch.SymInt):
        raise unsupported(imp, node, "symbolic start")
    t = rtype(node)
    return imp.emit(gml.ArangeOp(float(start), float(step), t, imp.sizes(t, node.meta["val"])))


# ----------------------------------------------------------- reductions ---

_REDUCE = {
    aten.sum.dim_IntList: gml.SumOp,
    aten.mean.dim: gml.MeanOp,
    aten.amax.default: gml.AmaxOp,
    aten.amin.default: gml.AminOp,
    aten.any.dim: gml.AnyOp,
    aten.any.dims: gml.AnyOp,
    aten.sum.default: gml.SumOp,
    aten.mean.default: gml.MeanOp,
    aten.any.default: gml.AnyOp,
}


@converts(*_REDUCE)
def reduce(imp: Emitter, node: fx.Node) -> SSAValue:
    src_rank = len(args(node)[0].meta["val"].shape)
    dims = kwarg(node, 1, "dim", None)
    if node.target in (aten.sum.default, aten.mean.default, aten.any.default) or dims is None:
        dims = []
    dims = [dims] if isinstance(dims, int) else list(dims)
    keepdim = bool(kwarg(node, 2, "keepdim", False))
    out = rtype(node)
    x = imp.value(args(node)[0])
    if node.target not in (aten.any.dim, aten.any.dims, aten.any.default):
        x = imp.as_type(args(node)[0], out.element_type)
    elif elt_of(x) != IntegerType(1):
        x = imp.as_type(args(node)[0], IntegerType(1))
    return imp.emit(_REDUCE[target(node)](x, [d % max(src_rank, 1) for d in dims], keepdim))


@converts(aten.argmax.default, aten.argmin.default)
def argreduce(imp: Emitter, node: fx.Node) -> SSAValue:
    src_rank = rank_of(args(node)[0])
    dim = kwarg(node, 1, "dim", None)
    keepdim = bool(kwarg(node, 2, "keepdim", False))
    cls = gml.ArgmaxOp if node.target == aten.argmax.default else gml.ArgminOp
    x = imp.value(args(node)[0])
    if elt_of(x) == IntegerType(1):  # numbers only: a bool's index is its int's
        x = imp.emit(gml.CastOp(x, IntegerType(8)))
    return imp.emit(cls(x, None if dim is None else norm_dim(dim, src_rank), keepdim))


@converts(aten.var.correction, aten.var.dim)
def var(imp: Emitter, node: fx.Node) -> SSAValue:
    src_rank = rank_of(args(node)[0])
    dims = kwarg(node, 1, "dim", None)
    dims = [] if dims is None else [dims] if isinstance(dims, int) else list(dims)
    if node.target == aten.var.dim:
        correction = 1.0 if kwarg(node, 2, "unbiased", True) else 0.0
        keepdim = bool(kwarg(node, 3, "keepdim", False))
    else:
        c: Any = node.kwargs.get("correction")
        correction = 1.0 if c is None else float(c)
        keepdim = bool(node.kwargs.get("keepdim", False))
    out = rtype(node)
    x = imp.as_type(args(node)[0], out.element_type)
    return imp.emit(gml.VarOp(x, [norm_dim(d, src_rank) for d in dims], keepdim, correction))


# --------------------------------------------------------------- nn ops ---


@converts(aten.mm.default, aten.bmm.default)
def matmul(imp: Emitter, node: fx.Node) -> SSAValue:
    return imp.emit(gml.MatmulOp(imp.value(args(node)[0]), imp.value(args(node)[1])))


@converts(aten.addmm.default)
def addmm(imp: Emitter, node: fx.Node) -> SSAValue:
    beta: Any = node.kwargs.get("beta", 1)
    alpha: Any = node.kwargs.get("alpha", 1)
    out = rtype(node)
    prod = imp.emit(gml.MatmulOp(imp.value(args(node)[1]), imp.value(args(node)[2])))
    if alpha != 1:
        prod = imp.emit(gml.MulOp(prod, imp.scalar(float(alpha), out.element_type)))
    if beta == 0:  # torch ignores the input then, nan and inf included
        return prod if prod.type == out else imp.emit(gml.ExpandOp(prod, out))
    bias = imp.value(args(node)[0])
    if beta != 1:
        bias = imp.emit(gml.MulOp(bias, imp.scalar(float(beta), out.element_type)))
    return imp.emit(gml.AddOp(prod, bias, out))


# ----------------------------------------- ops of torch.export's training IR ---
# Composite ops the graph holds before run_decompositions (registry.py: AS_EXPORTED says why).
# Each emits what its decomposition is imported as, in the same order, so the IR is the
# same whether or not the program was decomposed.


@as_exported_when(aten.linear.default)
def _linear_folds(node: fx.Node) -> bool:
    """torch decomposes linear as addmm/mm over the input's rows (what `linear` below
    emits) for a 2-d input and a contiguous one of higher rank; other inputs go through
    matmul's expand/bmm."""
    x = args(node)[0].meta["val"]
    return bool(x.dim() == 2 or (x.dim() > 2 and x.is_contiguous()))


@converts(aten.linear.default)
def linear(imp: Emitter, node: fx.Node) -> SSAValue:
    """x @ w.T + b as decomposed: rows = x viewed as 2-d, then permute(w), addmm (or
    permute, view, mm without a bias: matmul's order), then the view back."""
    xn, wn = args(node)[0], args(node)[1]
    bias = kwarg(node, 2, "bias", None)
    out = rtype(node)
    x, w = imp.value(xn), imp.value(wn)
    shape = list(xn.meta["val"].shape)
    rows = shape[0]
    for d in shape[1:-1]:
        rows = rows * d

    def flat(v: SSAValue) -> SSAValue:
        if len(shape) == 2:
            return v
        t = TensorType(elt_of(v), [rows if isinstance(rows, int) else DYN, shape[-1]])
        return imp.emit(gml.ReshapeOp(v, t, [] if isinstance(rows, int) else [imp.sym(rows)]))

    if bias is not None:
        x = flat(x)
        wt = imp.emit(gml.PermuteOp(w, [1, 0]))
    else:
        wt = imp.emit(gml.PermuteOp(w, [1, 0]))
        x = flat(x)
    y = imp.emit(gml.MatmulOp(x, wt))
    if bias is not None:
        assert isinstance(y.type, TensorType)
        y = imp.emit(gml.AddOp(y, imp.value(bias), y.type))
    if len(shape) == 2:
        return y
    return imp.emit(gml.ReshapeOp(y, out, imp.sizes(out, node.meta["val"])))


@as_exported_when(aten.matmul.default)
def _matmul_plain(node: fx.Node) -> bool:
    """torch decomposes matmul case by case; taken as exported: 2-d @ 2-d (mm) and
    operands of one rank >= 3 with the same batch dims (no broadcasting)."""
    a, b = (x.meta["val"] for x in args(node)[:2])
    if a.dim() == 2 == b.dim():
        return True
    return bool(
        a.dim() == b.dim() >= 3
        and all(_same_size(x, y) for x, y in zip(a.shape[:-2], b.shape[:-2], strict=True))
    )


def _same_size(x: Any, y: Any) -> bool:
    """Equal without asking torch's shape environment (which would add a guard)."""
    if isinstance(x, int) or isinstance(y, int):
        return bool(isinstance(x, int) and isinstance(y, int) and x == y)
    return bool(x.node.expr == y.node.expr)


@converts(aten.matmul.default)
def matmul_composite(imp: Emitter, node: fx.Node) -> SSAValue:
    """As decomposed: mm for 2-d operands; batched ones each expanded (a no-op here) and
    viewed as [batch, rows, cols], then bmm and the view back."""
    an, bn = args(node)[0], args(node)[1]
    a, b = imp.value(an), imp.value(bn)
    if rank_of(an) == 2:
        return imp.emit(gml.MatmulOp(a, b))
    batch = 1
    for d in an.meta["val"].shape[:-2]:
        batch = batch * d
    flat = []
    for v, n in ((a, an), (b, bn)):
        rows, cols = n.meta["val"].shape[-2:]
        t, sizes = _shaped(imp, elt_of(v), [batch, rows, cols])
        flat.append(imp.emit(gml.ReshapeOp(v, t, sizes)))
    y = imp.emit(gml.MatmulOp(flat[0], flat[1]))
    out = rtype(node)
    return imp.emit(gml.ReshapeOp(y, out, imp.sizes(out, node.meta["val"])))


@as_exported_when(aten.diff.default)
def _diff_numbers(node: fx.Node) -> bool:
    """A bool diff decomposes to logical_xor, which gimlet does not convert."""
    return bool(args(node)[0].meta["val"].dtype != torch.bool)


@converts(aten.diff.default)
def diff(imp: Emitter, node: fx.Node) -> SSAValue:
    """As decomposed: cat(prepend, x, append) along dim, then n times
    x[1:] - x[:-1] (sliced in that order: [0, len-1) first)."""
    xn = args(node)[0]
    n, d = kwarg(node, 1, "n", 1), norm_dim(kwarg(node, 2, "dim", -1), rank_of(xn))
    prepend, append = kwarg(node, 3, "prepend", None), kwarg(node, 4, "append", None)
    dims = list(xn.meta["val"].shape)
    elt = rtype(node).element_type
    x = imp.value(xn)
    if prepend is not None or append is not None:
        parts = [a for a in (prepend, xn, append) if a is not None]
        dims[d] = sum(a.meta["val"].shape[d] for a in parts)
        x = _cat(imp, parts, d, _shaped(imp, elt, dims)[0])
    for _ in range(n):
        dims[d] = dims[d] - 1
        t = _shaped(imp, elt, dims)[0]
        before = _slice_tensor(imp, x, d, 0, dims[d], 1, t)
        after = _slice_tensor(imp, x, d, 1, dims[d] + 1, 1, t)
        x = imp.emit(gml.SubOp(after, before, t))
    return x


def _shaped(imp: Emitter, elt: Attribute, dims: list[Any]) -> tuple[TensorType, list[SSAValue]]:
    """The type of a tensor of `dims` (ints and SymInts) and its dynamic sizes."""
    t = TensorType(elt, [d if isinstance(d, int) else DYN for d in dims])
    return t, [imp.sym(d) for d in dims if not isinstance(d, int)]


@as_exported_when(aten.stack.default)
def _stack_same_shapes(node: fx.Node) -> bool:
    """torch decomposes stack as a cat of same-shaped tensors (then a view or unsqueezes);
    one dtype, so that no cast is needed."""
    vals = [a.meta["val"] for a in args(node)[0]]
    return len({(tuple(v.shape), v.dtype) for v in vals}) == 1


@converts(aten.stack.default)
def stack(imp: Emitter, node: fx.Node) -> SSAValue:
    """As decomposed: inside the inputs' rank, cat along dim then view; at its end, each
    input unsqueezed then cat."""
    parts = list(args(node)[0])
    dims = list(parts[0].meta["val"].shape)
    d = kwarg(node, 1, "dim", 0) % (len(dims) + 1)
    out = rtype(node)
    if d == len(dims):
        ups = []
        for a in parts:
            v = imp.value(a)
            t, sizes = _shaped(imp, elt_of(v), [*dims, 1])
            ups.append(imp.emit(gml.ReshapeOp(v, t, sizes)))
        return ups[0] if len(ups) == 1 else imp.emit(gml.ConcatOp(ups, d, out))
    dims[d] = dims[d] * len(parts)
    joined = _cat(imp, parts, d, _shaped(imp, out.element_type, dims)[0])
    return imp.emit(gml.ReshapeOp(joined, out, imp.sizes(out, node.meta["val"])))


_LOW_FLOATS = (torch.float16, torch.bfloat16)


@converts(aten.silu.default)
def silu(imp: Emitter, node: fx.Node) -> SSAValue:
    """As decomposed: x * sigmoid(x), in f32 for f16/bf16 (cast there and back)."""
    x = imp.value(args(node)[0])
    low = args(node)[0].meta["val"].dtype in _LOW_FLOATS
    if low:
        x = imp.emit(gml.CastOp(x, element_type_for_torch(torch.float32)))
    assert isinstance(x.type, TensorType)
    y = imp.emit(gml.MulOp(x, imp.emit(gml.SigmoidOp(x)), x.type))
    return imp.emit(gml.CastOp(y, rtype(node).element_type)) if low else y


@converts(aten.layer_norm.default)
def layer_norm_composite(imp: Emitter, node: fx.Node) -> SSAValue:
    """layer_norm(x, shape, weight, bias, eps): native_layer_norm's first result."""
    x, shape = args(node)[0], args(node)[1]
    w, b = kwarg(node, 2, "weight", None), kwarg(node, 3, "bias", None)
    eps = float(kwarg(node, 4, "eps", 1e-5))
    weight = imp.value(w) if w is not None else None
    bias = imp.value(b) if b is not None else None
    return imp.emit(gml.LayerNormOp(imp.value(x), weight, bias, len(shape), eps))


@as_exported_when(aten.dropout.default)
def _dropout_off(node: fx.Node) -> bool:
    return not kwarg(node, 2, "train", True)


@converts(aten.dropout.default)
def dropout(imp: Emitter, node: fx.Node) -> SSAValue:
    """Dropout off (an eval-mode model): the input, as its decomposition (a clone)."""
    if kwarg(node, 2, "train", True):
        raise unsupported(imp, node, "dropout in an inference graph")
    return imp.value(args(node)[0])


@converts(aten._softmax.default, aten._log_softmax.default, aten.softmax.int)
def softmax(imp: Emitter, node: fx.Node) -> SSAValue:
    out = rtype(node)
    x = imp.as_type(args(node)[0], out.element_type)
    dim = norm_dim(args(node)[1], rank_of(node))
    cls = gml.LogSoftmaxOp if node.target == aten._log_softmax.default else gml.SoftmaxOp
    return imp.emit(cls(x, dim))


@converts(aten.native_layer_norm.default)
def layer_norm(imp: Emitter, node: fx.Node) -> tuple[SSAValue, None, None]:
    x, shape, w, b, eps = args(node)
    weight = imp.value(w) if w is not None else None
    bias = imp.value(b) if b is not None else None
    op = gml.LayerNormOp(imp.value(x), weight, bias, len(shape), float(eps))
    return imp.emit(op), None, None


@converts(aten.scaled_dot_product_attention.default)
def sdpa(imp: Emitter, node: fx.Node) -> SSAValue:
    q, k, v = (imp.value(a) for a in args(node)[:3])
    mask = kwarg(node, 3, "attn_mask", None)
    if kwarg(node, 4, "dropout_p", 0.0) != 0.0:
        raise unsupported(imp, node, "dropout in an inference graph")
    causal = bool(kwarg(node, 5, "is_causal", False))
    scale = kwarg(node, 6, "scale", None)
    op = gml.SdpaOp(q, k, v, imp.value(mask) if mask is not None else None, causal, scale)
    return imp.emit(op)


@converts(aten.convolution.default)
def convolution(imp: Emitter, node: fx.Node) -> SSAValue:
    x, w, b, stride, padding, dilation, transposed, _, groups = args(node)
    if transposed:
        raise unsupported(imp, node, "transposed convolution")
    return _conv(imp, node, x, w, b, stride, padding, dilation, groups)


@as_exported_when(aten.conv2d.default)
def _conv2d_batched(node: fx.Node) -> bool:
    """An unbatched (CHW) conv2d decomposes with an unsqueeze around it."""
    return rank_of(args(node)[0]) == 4


@converts(aten.conv2d.default)
def conv2d(imp: Emitter, node: fx.Node) -> SSAValue:
    """As exported: the convolution it decomposes to (not transposed)."""
    x, w = args(node)[0], args(node)[1]
    b, stride = kwarg(node, 2, "bias", None), kwarg(node, 3, "stride", [1])
    padding, dilation = kwarg(node, 4, "padding", [0]), kwarg(node, 5, "dilation", [1])
    return _conv(imp, node, x, w, b, stride, padding, dilation, kwarg(node, 6, "groups", 1))


def _conv(
    imp: Emitter,
    node: fx.Node,
    x: Any,
    w: Any,
    b: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
) -> SSAValue:
    n = rank_of(node) - 2
    stride, padding, dilation = (
        list(p) * (n if len(p) == 1 else 1) for p in (stride, padding, dilation)
    )
    bias = imp.value(b) if b is not None else None
    return imp.emit(
        gml.ConvOp(imp.value(x), imp.value(w), bias, stride, padding, dilation, groups, rtype(node))
    )


@converts(aten._native_batch_norm_legit_no_training.default)
def batch_norm(imp: Emitter, node: fx.Node) -> tuple[SSAValue, None, None]:
    x, w, b, mean, var, _momentum, eps = args(node)
    x, w, b, mean, var = (imp.value(a) for a in (x, w, b, mean, var))
    op = gml.BatchNormOp(x, w, b, mean, var, float(eps))
    return imp.emit(op), None, None


@as_exported_when(aten.batch_norm.default)
def _batch_norm_eval(node: fx.Node) -> bool:
    """Eval mode with every statistic and affine tensor: what gml.batch_norm takes."""
    x, w, b, mean, var, training = args(node)[:6]
    return not training and all(a is not None for a in (w, b, mean, var))


@converts(aten.batch_norm.default)
def batch_norm_composite(imp: Emitter, node: fx.Node) -> SSAValue:
    """As exported: _native_batch_norm_legit_no_training's first result."""
    x, w, b, mean, var, _training, _momentum, eps = args(node)[:8]
    x, w, b, mean, var = (imp.value(a) for a in (x, w, b, mean, var))
    return imp.emit(gml.BatchNormOp(x, w, b, mean, var, float(eps)))


def _pair(v: Any) -> list[int]:
    v = list(v) if isinstance(v, list | tuple) else [v]
    return v * 2 if len(v) == 1 else v


@converts(aten.max_pool2d_with_indices.default)
def max_pool(imp: Emitter, node: fx.Node) -> tuple[SSAValue, None]:
    return _max_pool(imp, node, meta_type(node.meta["val"][0])), None


@converts(aten.max_pool2d.default)
def max_pool_values(imp: Emitter, node: fx.Node) -> SSAValue:
    """As exported: max_pool2d_with_indices' first result (same arguments)."""
    return _max_pool(imp, node, rtype(node))


def _max_pool(imp: Emitter, node: fx.Node, t: TensorType) -> SSAValue:
    x = args(node)[0]
    k = _pair(args(node)[1])
    s = _pair(kwarg(node, 2, "stride", None) or k)
    p = _pair(kwarg(node, 3, "padding", 0))
    d = _pair(kwarg(node, 4, "dilation", 1))
    ceil = bool(kwarg(node, 5, "ceil_mode", False))
    if len(t.get_shape()) == 3:  # CHW
        x4 = imp.emit(gml.ReshapeOp(imp.value(x), TensorType(t.element_type, [1, *_shape(x)])))
        t4 = TensorType(t.element_type, [1, *t.get_shape()])
        y4 = imp.emit(gml.MaxPool2dOp(x4, k, s, p, ceil, t4, d))
        return imp.emit(gml.ReshapeOp(y4, t))
    return imp.emit(gml.MaxPool2dOp(imp.value(x), k, s, p, ceil, t, d))


def _shape(node: Any) -> list[int]:
    return list(meta_type(node.meta["val"]).get_shape())


@converts(aten.avg_pool2d.default)
def avg_pool(imp: Emitter, node: fx.Node) -> SSAValue:
    k = _pair(args(node)[1])
    s = _pair(kwarg(node, 2, "stride", None) or k)
    p = _pair(kwarg(node, 3, "padding", 0))
    ceil = bool(kwarg(node, 4, "ceil_mode", False))
    include = bool(kwarg(node, 5, "count_include_pad", True))
    divisor = kwarg(node, 6, "divisor_override", None)

    def make(x: SSAValue, t: TensorType) -> gml.AvgPool2dOp:
        return gml.AvgPool2dOp(x, k, s, p, ceil, t, include, divisor)

    x = imp.value(args(node)[0])
    if rank_of(node) == 3:  # CHW
        return _batched_2d(imp, node, x, make)
    return imp.emit(make(x, rtype(node)))


@converts(aten.adaptive_avg_pool2d.default)
def adaptive_avg_pool_composite(imp: Emitter, node: fx.Node) -> SSAValue:
    """As decomposed: a 1x1 output is the mean over the last two dims, others
    _adaptive_avg_pool2d."""
    if list(args(node)[1]) != [1, 1]:
        return adaptive_avg_pool(imp, node)
    rank = rank_of(node)
    x = imp.as_type(args(node)[0], rtype(node).element_type)
    return imp.emit(gml.MeanOp(x, [-1 % rank, -2 % rank], True))


@converts(aten._adaptive_avg_pool2d.default)
def adaptive_avg_pool(imp: Emitter, node: fx.Node) -> SSAValue:
    x, out = imp.value(args(node)[0]), rtype(node)
    if rank_of(node) == 3:  # CHW: pooled as a batch of one
        return _batched_2d(imp, node, x, lambda x4, t4: gml.AdaptiveAvgPool2dOp(x4, t4))
    return imp.emit(gml.AdaptiveAvgPool2dOp(x, out))


def _batched_2d(imp: Emitter, node: fx.Node, x: SSAValue, make: Any) -> SSAValue:
    """A 2-d op on an unbatched CHW input, run as NCHW with N = 1 (static shapes)."""
    out = rtype(node)
    x4 = imp.emit(gml.ReshapeOp(x, TensorType(elt_of(x), [1, *x.type.get_shape()])))  # type: ignore[attr-defined]
    y4 = imp.emit(make(x4, TensorType(out.element_type, [1, *out.get_shape()])))
    return imp.emit(gml.ReshapeOp(y4, out))
