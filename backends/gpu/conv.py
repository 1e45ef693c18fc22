"""GPU lowering of the vision ops: convolution, inference batch norm and pooling.

A convolution is an implicit GEMM: `gml::im2col` lays the input's windows out as a
(C*KH*KW) x (N*OH*OW) matrix in a Scratch buffer, one strided-batched `ctx->gemm` over
the groups multiplies each group's weight rows by its block of rows of that matrix
(f32 accumulation, also for f16/bf16), and `gml::conv_out` adds the bias while it
reorders the channel-major result into NCHW and rounds once. Two common cases skip a
pass: an f32 convolution of one image has the GEMM write the output itself (the layouts
agree), and a 1x1 convolution of one image (stride 1, no padding) hands the input
itself to the GEMM as the im2col matrix.

Batch norm and pooling are one thread per output element. A 1-d convolution is lowered
as a 2-d one with H = 1. Every size comes from the parameter table (`gml::Window2d`),
so dynamic batch and spatial sizes need nothing special. The kernels live in
include/gimlet/gpu/conv.cuh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from xdsl.dialects.builtin import DenseArrayBase, IntegerType
from xdsl.ir import Operation

from gimlet.dialects import gml
from gimlet.dialects.shapes import shape_of

from .codegen import _BYTES, _DTYPE, THREADS, Env, Scratch, _ct, _numel

if TYPE_CHECKING:
    from .codegen import _Lowering


def handlers(low: _Lowering) -> dict[type[Operation], Callable[[Any], None]]:
    """This module's entries of codegen's handler table."""
    return {
        gml.ConvOp: partial(conv, low),
        gml.BatchNormOp: partial(batch_norm, low),
        gml.MaxPool2dOp: partial(pool2d, low),
        gml.AvgPool2dOp: partial(pool2d, low),
        gml.AdaptiveAvgPool2dOp: partial(pool2d, low),
    }


def _ints(attr: DenseArrayBase[IntegerType]) -> tuple[int, ...]:
    return tuple(int(v) for v in attr.get_values())


def _window(
    x: Sequence[int],
    y: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    dil: Sequence[int],
) -> list[int]:
    """The 14 slots of a `gml::Window2d`; a 1-d op (rank 3) as a 2-d one with H = 1."""
    if len(x) == 3:
        x, y = (x[0], x[1], 1, x[2]), (y[0], y[1], 1, y[2])
        kernel, stride, pad, dil = ((1, *v) for v in (kernel, stride, pad, dil))
        pad = (0, pad[1])
    return [*x, *y[2:], *kernel, *stride, *pad, *dil]


def _launch(n_slot: int) -> str:
    return f"<<<gml::blocks_for(P[{n_slot}], {THREADS}), {THREADS}, 0, stream>>>"


# ------------------------------------------------------------------ convolution


def conv(low: _Lowering, op: gml.ConvOp) -> None:
    x, w, y, bias = op.input, op.weight, op.result, op.bias
    ct = _ct(y)
    if ct not in _DTYPE:
        raise low.refuse(op, f"convolution on {ct} (the GPU backend's GEMMs are f32, f16 and bf16)")
    nd = len(shape_of(x.type)) - 2
    if nd not in (1, 2):
        raise low.refuse(op, f"{nd}-d convolution (the GPU backend lowers 1-d and 2-d)")
    stride, pad, dil = (_ints(a) for a in (op.stride, op.padding, op.dilation))
    groups = op.groups.value.data
    # a 1x1 window moved by 1 over an unpadded input: the input is its own im2col matrix
    ksize = shape_of(w.type)[2:]
    pointwise = all(k == 1 for k in ksize) and set(stride) == {1} and set(pad) == {0}

    def geom(env: Env) -> list[int]:
        return _window(env.shapes[x], env.shapes[y], env.shapes[w][2:], stride, pad, dil)

    def gemm(env: Env) -> list[int]:
        """Per group: m = O/G output channels, n = N*OH*OW columns, k = C/G*KH*KW."""
        ws, ys = env.shapes[w], env.shapes[y]
        return [ws[0] // groups, ys[0] * _numel(ys[2:]), _numel(ws[1:])]

    def one_image(env: Env) -> bool:
        return env.shapes[x][0] == 1

    def col_bytes(env: Env) -> int:
        _, n, k = gemm(env)
        return 0 if pointwise and one_image(env) else groups * k * n * _BYTES[ct]

    def acc_bytes(env: Env) -> int:
        m, n, _ = gemm(env)
        return 0 if ct == "float" and one_image(env) else groups * m * n * 4

    col, acc = Scratch(f"im2col{low.step}", col_bytes), Scratch(f"conv_acc{low.step}", acc_bytes)
    low.scratch += [(col, low.step), (acc, low.step)]
    g = low.slots_of(geom, 14)
    p = low.slots_of(gemm, 3)
    m, n, k = f"P[{p}]", f"P[{p + 1}]", f"P[{p + 2}]"
    n_col = low.slot(lambda env: groups * gemm(env)[1] * gemm(env)[2])
    n_out = low.slot(lambda env: _numel(env.shapes[y]))
    hw = low.slot(lambda env: _numel(env.shapes[y][2:]))
    xp, yp, colp = low.ptr(x, const=True), low.ptr(y), low.ptr(col, ct)
    batch = f"P[{g}]"
    im2col = f"gml::im2col<{ct}>{_launch(n_col)}(gml::window_from(P + {g}), {xp}, {colp});"
    low.comment([op])
    low.emit("{  // im2col, one GEMM per group, then bias and NCHW order")
    if pointwise:
        low.emit(f"  const {ct}* col = {batch} == 1 ? {xp} : {colp};")
        low.emit(f"  if ({batch} != 1) {im2col}")
    else:
        low.emit(f"  const {ct}* col = {colp};")
        low.emit(f"  {im2col}")
    direct = f"{batch} == 1 ? {yp} : " if ct == "float" else ""
    low.emit(f"  float* acc = {direct}{low.ptr(acc, 'float')};")
    low.emit(
        f"  if (int e = ctx->gemm(ctx, stream, {_DTYPE[ct]}, gml::DType::F32, false, {m}, {n}, {k}, "
        f"{low.ptr(w, const=True)}, {k}, {m} * {k}, col, {n}, {k} * {n}, acc, {n}, {m} * {n}, "
        f"{groups}, 1.0f)) return e;"
    )
    bt = _ct(bias) if bias is not None else ct
    bp = low.ptr(bias, const=True) if bias is not None else "nullptr"
    out = (
        f"gml::conv_out<{ct}, {bt}>{_launch(n_out)}({batch}, {groups} * {m}, P[{hw}], acc, "
        f"{bp}, {yp});"
    )
    # f32 of one image without a bias: the GEMM wrote the output, nothing is left to do
    low.emit(f"  if (acc != {yp}) {out}" if ct == "float" and bias is None else f"  {out}")
    low.emit("}")


# ------------------------------------------------------------------ batch norm and pooling


def batch_norm(low: _Lowering, op: gml.BatchNormOp) -> None:
    x, y = op.input, op.result
    stats = [op.weight, op.bias, op.mean, op.var]
    st = _ct(stats[0])
    if any(_ct(s) != st for s in stats):
        raise low.refuse(op, "batch norm statistics of different element types")
    if len(shape_of(x.type)) < 2:
        raise low.refuse(op, "batch norm of an input without a channel dim")

    def dims(env: Env) -> list[int]:
        s = env.shapes[x]
        return [_numel(s), s[1], _numel(s[2:])]

    p = low.slots_of(dims, 3)
    ptrs = ", ".join(low.ptr(s, const=True) for s in stats)
    low.comment([op])
    low.emit(
        f"gml::batch_norm<{_ct(x)}, {st}>{_launch(p)}(P[{p}], P[{p + 1}], P[{p + 2}], "
        f"{low.ptr(x, const=True)}, {ptrs}, {op.eps.value.data!r}, {low.ptr(y)});"
    )


def pool2d(low: _Lowering, op: Operation) -> None:
    """max_pool2d, avg_pool2d (every option the ops carry) and adaptive_avg_pool2d."""
    x, y = op.operands[0], op.results[0]
    if isinstance(op, gml.Pool2dOp):
        window = (_ints(op.kernel), _ints(op.stride), _ints(op.padding), op.window_dilation())
    else:  # adaptive: the bins follow from the sizes alone
        window = ((0, 0), (1, 1), (0, 0), (1, 1))

    def geom(env: Env) -> list[int]:
        return _window(env.shapes[x], env.shapes[y], *window)

    g = low.slots_of(geom, 14)
    n = low.slot(lambda env: _numel(env.shapes[y]))
    ct, args = _ct(y), f"gml::window_from(P + {g})"
    if isinstance(op, gml.AvgPool2dOp):
        divisor = op.divisor_override.value.data if op.divisor_override is not None else 0
        include = "true" if op.count_include_pad.value.data else "false"
        args += f", {include}, int64_t({divisor})"
    kernel = {
        gml.MaxPool2dOp: "max_pool2d",
        gml.AvgPool2dOp: "avg_pool2d",
        gml.AdaptiveAvgPool2dOp: "adaptive_avg_pool2d",
    }[type(op)]
    low.comment([op])
    low.emit(f"gml::{kernel}<{ct}>{_launch(n)}({args}, {low.ptr(x, const=True)}, {low.ptr(y)});")
