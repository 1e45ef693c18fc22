"""GPU lowering of gather, constant padding, argmax/argmin, variance and reductions over
dims that are not adjacent.

A reduction over non-adjacent dims (sum over dims 0 and 2, say) first copies the input
into a Scratch buffer with the kept dims leading and the reduced ones trailing, in
order; that makes the reduced elements of each output one contiguous row, which the
header's one-block-per-row kernels reduce. The result's layout is the kept dims in
order, as gml's reductions define it (keepdim only adds 1s).

Variance is computed in double, two passes (mean, then squared deviations), as the
oracle does (numpy's var on float64), divided by max(N - correction, 0) as numpy does.
Argmax/argmin keep torch's rules: the first index wins ties, NaN is the extreme.
The kernels live in include/gimlet/gpu/tensor_ops.cuh.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from xdsl.ir import Operation

from gimlet.backends.cpu.codegen import _REDUCE, literal
from gimlet.dialects import gml
from gimlet.dialects.shapes import shape_of

from .codegen import _BYTES, THREADS, Env, Scratch, _contiguous_strides, _ct, _numel

if TYPE_CHECKING:
    from .codegen import _Lowering


def handlers(low: _Lowering) -> dict[type[Operation], Callable[[Any], None]]:
    """This module's entries of codegen's handler table."""
    return {
        gml.GatherOp: partial(gather, low),
        gml.PadOp: partial(pad, low),
        gml.ArgmaxOp: partial(arg_reduce, low),
        gml.ArgminOp: partial(arg_reduce, low),
        gml.VarOp: partial(reduce_any_dims, low),
        **{kind: partial(reduce_any_dims, low) for kind in _REDUCE},  # sum, mean, max, ...
    }


def _launch(n_slot: int) -> str:
    return f"<<<gml::blocks_for(P[{n_slot}], {THREADS}), {THREADS}, 0, stream>>>"


def _itemsize(ct: str) -> int:
    return _BYTES.get(ct) or int("".join(c for c in ct if c.isdigit())) // 8


# ------------------------------------------------------------------ indexing


def gather(low: _Lowering, op: gml.GatherOp) -> None:
    x, idx, y = op.input, op.index, op.result
    rank = len(shape_of(x.type))
    if rank == 0:
        raise low.refuse(op, "gather from a 0-d tensor")
    d = op.dim.value.data % rank

    def params(env: Env) -> list[int]:
        xs = _contiguous_strides(env.shapes[x])
        others = [0 if i == d else s for i, s in enumerate(xs)]  # the index moves along d
        return [_numel(env.shapes[y]), *env.shapes[idx], *others, env.shapes[x][d], xs[d]]

    p = low.slots_of(params, 3 + 2 * rank)
    rows, stride = p + 1 + 2 * rank, p + 2 + 2 * rank
    low.comment([op])
    low.emit(
        f"gml::gather_dim<{_ct(y)}, {_ct(idx)}, {rank}>{_launch(p)}(P[{p}], "
        f"gml::strided_from<{rank}>(P + {p + 1}), P[{rows}], P[{stride}], "
        f"{low.ptr(x, const=True)}, {low.ptr(idx, const=True)}, {low.ptr(y)});"
    )


def pad(low: _Lowering, op: gml.PadOp) -> None:
    x, y = op.input, op.result
    rank, ct = len(shape_of(x.type)), _ct(y)
    value = op.value.value.data
    if ct not in ("float", "double", "gml::f16", "gml::bf16", "bool") and not math.isfinite(value):
        raise low.refuse(op, f"padding an integer tensor with {value}")
    lows = [int(v) for v in op.low.get_values()]
    p = low.slots_of(lambda env: [*env.shapes[y], *env.shapes[x], *lows], 3 * rank)
    n = low.slot(lambda env: _numel(env.shapes[y]))
    low.comment([op])
    low.emit(
        f"gml::pad<{ct}, {rank}>{_launch(n)}(P[{n}], gml::pad_from<{rank}>(P + {p}), "
        f"{literal(value, ct)}, {low.ptr(x, const=True)}, {low.ptr(y)});"
    )


# ------------------------------------------------------------------ reductions


def arg_reduce(low: _Lowering, op: gml.ArgmaxOp | gml.ArgminOp) -> None:
    x, y = op.input, op.result
    rank = len(shape_of(x.type))
    d = op.dim.value.data % rank if op.dim is not None and rank else None

    def split(env: Env) -> list[int]:
        s = env.shapes[x]
        if d is None:  # over all elements, flattened
            return [1, _numel(s), 1]
        return [_numel(s[:d]), s[d], _numel(s[d + 1 :])]

    p = low.slots_of(split, 3)
    is_max = "true" if isinstance(op, gml.ArgmaxOp) else "false"
    xp, yp = low.ptr(x, const=True), low.ptr(y)
    low.comment([op])
    if d is None or d == rank - 1:  # rows: one block each
        low.emit(
            f"if (P[{p}] > 0) gml::arg_rows<{_ct(x)}, {is_max}><<<unsigned(P[{p}]), {THREADS}, "
            f"0, stream>>>(P[{p + 1}], {xp}, {yp});"
        )
    else:
        outputs = low.slot(lambda env: split(env)[0] * split(env)[2])
        low.emit(
            f"gml::arg_mid<{_ct(x)}, {is_max}>{_launch(outputs)}(P[{p}], P[{p + 1}], "
            f"P[{p + 2}], {xp}, {yp});"
        )


def reduce_any_dims(low: _Lowering, op: gml.ReduceOp) -> None:
    """Any reduction (sum, mean, amax, amin, any, var) over any dims: adjacent dims are
    read in place, others through a permuted copy (see the module's docstring)."""
    x, y = op.input, op.result
    rank = len(shape_of(x.type))
    dims = sorted({d % rank for d in op.dims.get_values()}) if rank else []
    dims = dims or list(range(rank))
    kept = [d for d in range(rank) if d not in dims]
    ti, to = _ct(x), _ct(y)
    low.comment([op])
    if not dims or dims == list(range(dims[0], dims[-1] + 1)):
        lo, hi = (dims[0], dims[-1] + 1) if dims else (0, 0)

        def split(env: Env) -> list[int]:
            s = env.shapes[x]
            return [_numel(s[:lo]), _numel(s[lo:hi]), _numel(s[hi:])]

        src, rows = low.ptr(x, const=True), hi == rank
    else:
        perm = kept + dims
        moved = Scratch(f"permuted{low.step}", lambda env: _numel(env.shapes[x]) * _itemsize(ti))
        low.scratch.append((moved, low.step))

        def split(env: Env) -> list[int]:
            s = env.shapes[x]
            return [_numel(tuple(s[d] for d in kept)), _numel(tuple(s[d] for d in dims)), 1]

        def walk(env: Env) -> list[int]:
            s, xs = env.shapes[x], _contiguous_strides(env.shapes[x])
            return [*(s[d] for d in perm), *(xs[d] for d in perm)]

        ix = low.slots_of(walk, 2 * rank)
        n = low.slot(lambda env: _numel(env.shapes[x]))
        src, rows = low.ptr(moved, ti), True
        low.emit(
            f"gml::permute_copy<{ti}, {rank}>{_launch(n)}(P[{n}], "
            f"gml::strided_from<{rank}>(P + {ix}), {low.ptr(x, const=True)}, {src});"
        )
    p = low.slots_of(split, 3)
    if isinstance(op, gml.VarOp):
        kernel, extra = f"var_{{}}<{ti}, {to}>", f"{op.correction.value.data!r}, "
    else:
        kernel, extra = f"reduce_{{}}<{ti}, {to}, gml::Red::{_REDUCE[type(op)]}>", ""
    yp = low.ptr(y)
    if rows:  # one block per output row
        low.emit(
            f"if (P[{p}] > 0) gml::{kernel.format('rows')}<<<unsigned(P[{p}]), {THREADS}, 0, "
            f"stream>>>(P[{p + 1}], {extra}{src}, {yp});"
        )
    else:
        outputs = low.slot(lambda env: split(env)[0] * split(env)[2])
        low.emit(
            f"gml::{kernel.format('mid')}{_launch(outputs)}(P[{p}], P[{p + 1}], P[{p + 2}], "
            f"{extra}{src}, {yp});"
        )
