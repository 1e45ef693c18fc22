"""Lower a `func.func` of gml ops (a whole program, or one part of a segment) to GPU C++.

The output is one `.cu` file in the part of CUDA that HIP also compiles (it includes
only `gimlet/gpu/gml_gpu.cuh`): one kernel per elementwise op or `gml.fusion` group,
generated here; library kernels of the header for reductions, softmax, layer norm,
embedding, copies and decode-time GEMV; GEMMs and attention's two products through the
context's BLAS (`gml::Ctx::gemm`, cuBLAS on NVIDIA). Each launch is preceded by a
comment naming its gml ops and the user's `file.py:LINE`.

The code is shape-agnostic: sizes, strides and arena offsets are read from a parameter
table `P` that `Lowered.bucket` fills once per shape bucket (backends/gpu/shapes.py),
after which the runtime replays the bucket's CUDA graph. The host entry point is

    extern "C" int gimlet_gpu_main(const gml::Ctx*, char* arena, void* const* W,
                                   const int64_t* P, gmlStream_t stream);

where `W` holds the device pointers of the load-time values (weights, constants and
what is computed from them alone; a Linear weight is uploaded transposed, n x k, which
is what the GEMV kernel and cuBLAS's transposed-B path read).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from xdsl.dialects import arith, func
from xdsl.dialects.builtin import IndexType, TensorType
from xdsl.ir import Operation, SSAValue

from gimlet.backends.cpu.codegen import _ARITH, _scalar_expr, ctype, literal, where
from gimlet.dialects import comm, gml
from gimlet.dialects.shapes import shape_of
from gimlet.errors import UnsupportedOpError

from .shapes import Buffer, Shape, ShapeEvaluator, plan

ENTRY = "gimlet_gpu_main"
HEADER = "gimlet/gpu/gml_gpu.cuh"
THREADS = 256
HALF = ("gml::f16", "gml::bf16")
_DTYPE = {"float": "gml::DType::F32", "gml::f16": "gml::DType::F16", "gml::bf16": "gml::DType::BF16"}
_REDUCE = {gml.SumOp: "Sum", gml.MeanOp: "Mean", gml.AmaxOp: "Max", gml.AminOp: "Min", gml.AnyOp: "Any"}
_INDEX_OPS = (gml.DimOp, arith.ConstantOp, *_ARITH)


def _ct(v: SSAValue) -> str:
    assert isinstance(v.type, TensorType)
    t = ctype(v.type.element_type)
    assert t is not None
    return t


def _vt(v: SSAValue) -> str:
    """The type `v`'s elements are computed in (f16/bf16: float)."""
    t = _ct(v)
    return "float" if t in HALF else t


def _numel(s: Shape) -> int:
    return math.prod(s)


def _contiguous_strides(s: Shape) -> list[int]:
    out, acc = [0] * len(s), 1
    for d in range(len(s) - 1, -1, -1):
        out[d] = acc
        acc *= s[d]
    return out


def _broadcast(shapes: Sequence[Shape]) -> Shape:
    rank = max((len(s) for s in shapes), default=0)
    dims = [1] * rank
    for s in shapes:
        for i, d in enumerate(s):
            j = rank - len(s) + i
            if d != 1:
                dims[j] = d
    return tuple(dims)


def _strides_in(s: Shape, dom: Shape) -> list[int]:
    """Strides of a contiguous tensor of shape `s` read over domain `dom` (0: broadcast)."""
    own = _contiguous_strides(s)
    out = [0] * len(dom)
    for i, d in enumerate(s):
        j = len(dom) - len(s) + i
        out[j] = own[i] if d == dom[j] and d != 1 else 0
    return out


@dataclass
class Env:
    """One shape bucket: concrete shapes, index values and arena offsets."""

    shapes: dict[SSAValue, Shape]
    ints: dict[SSAValue, int]
    offsets: dict[Any, int] = field(default_factory=dict)


Slot = Callable[[Env], int]


@dataclass(frozen=True)
class Scratch:
    """A temporary buffer one op needs (attention scores), live for that op only."""

    name: str
    nbytes: Callable[[Env], int]


@dataclass
class Weight:
    value: SSAValue
    transposed: bool  # upload the last two dims swapped (a Linear weight as n x k)


@dataclass
class Bucket:
    """Everything one shape bucket needs at run time."""

    params: list[int]
    arena_bytes: int
    input_offsets: list[int]
    output_offsets: list[int]
    output_shapes: list[Shape]
    plan_bytes: int  # the arena (peak of the plan), weights excluded


@dataclass
class Lowered:
    fn: func.FuncOp
    source: str
    slots: list[Slot]
    weights: list[Weight]
    buffers: list[tuple[Any, int, int, Callable[[Env], int]]]  # key, first, last, bytes
    aliases: dict[SSAValue, SSAValue]
    evaluator: ShapeEvaluator

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def bucket(self, input_shapes: Sequence[Shape]) -> Bucket:
        shapes, ints = self.evaluator.evaluate(input_shapes)
        env = Env(shapes, ints)
        bufs = [Buffer(max(nbytes(env), 1), first, last) for _, first, last, nbytes in self.buffers]
        arena = plan(bufs)
        for (key, *_), b in zip(self.buffers, bufs, strict=True):
            env.offsets[key] = b.offset
        for alias, root in self.aliases.items():
            env.offsets[alias] = env.offsets[root]
        ret = self.fn.body.block.last_op
        assert isinstance(ret, func.ReturnOp)
        return Bucket(
            params=[slot(env) for slot in self.slots],
            arena_bytes=arena,
            input_offsets=[env.offsets[a] for a in self.fn.body.block.args],
            output_offsets=[env.offsets[v] for v in ret.arguments],
            output_shapes=[shapes[v] for v in ret.arguments],
            plan_bytes=arena,
        )


def load_time_values(fn: func.FuncOp) -> set[SSAValue]:
    """Values computable at load time: params, constants and tensors computed from
    them alone (a transposed weight), which the runtime evaluates once and uploads."""
    free: set[SSAValue] = set()
    for op in fn.body.block.ops:
        if isinstance(op, gml.ParamOp | gml.ConstantOp) or (
            isinstance(op, gml.GmlOp)
            and op.operands
            and not op.regions
            and all(v in free for v in op.operands)
        ):
            free.update(op.results)
    return free


def unsupported(fn: func.FuncOp) -> list[str]:
    """One line per op this backend cannot lower: op, location and why."""
    try:
        lower(fn)
    except UnsupportedOpError as e:
        return [str(e)]
    return []


class _Lowering:
    def __init__(self, fn: func.FuncOp):
        self.fn = fn
        self.kernels: list[str] = []
        self.body: list[str] = []
        self.slots: list[Slot] = []
        self.free = load_time_values(fn)
        self.weights: list[Weight] = []
        self.weight_index: dict[tuple[SSAValue, bool], int] = {}
        self.aliases: dict[SSAValue, SSAValue] = {}
        self.offset_slot: dict[Any, int] = {}
        self.step = 0
        self.scratch: list[tuple[Scratch, int]] = []

    # ------------------------------------------------------------ helpers
    def slot(self, f: Slot) -> int:
        self.slots.append(f)
        return len(self.slots) - 1

    def slots_of(self, f: Callable[[Env], Sequence[int]], n: int) -> int:
        """n consecutive slots holding f(env) (computed once per slot, cheap)."""
        first = len(self.slots)
        for i in range(n):
            self.slots.append(lambda env, i=i: int(f(env)[i]))
        return first

    def root(self, v: SSAValue) -> SSAValue:
        while v in self.aliases:
            v = self.aliases[v]
        return v

    def weight(self, v: SSAValue, transposed: bool = False) -> int:
        key = (v, transposed)
        if key not in self.weight_index:
            self.weight_index[key] = len(self.weights)
            self.weights.append(Weight(v, transposed))
        return self.weight_index[key]

    def ptr(self, v: SSAValue | Scratch, ct: str | None = None, const: bool = False) -> str:
        if isinstance(v, Scratch):
            key: Any = v
            assert ct is not None
        else:
            ct = ct or _ct(v)
            if v in self.free:
                return f"static_cast<const {ct}*>(W[{self.weight(v)}])"
            key = self.root(v)
        if key not in self.offset_slot:
            self.offset_slot[key] = self.slot(lambda env, key=key: env.offsets[key])
        q = "const " if const else ""
        return f"reinterpret_cast<{q}{ct}*>(A + P[{self.offset_slot[key]}])"

    def emit(self, line: str) -> None:
        self.body.append("  " + line)

    def kernel(self, text: str) -> str:
        name = f"k{len(self.kernels)}"
        self.kernels.append(text.replace("KERNEL", name))
        return name

    def comment(self, ops: Sequence[Operation]) -> None:
        for op in ops:
            self.emit(f"// {op.name} {where(op)}")

    # ------------------------------------------------------------ driver
    def run(self) -> None:
        for op in self.fn.body.block.ops:
            self.step += 1
            if isinstance(op, func.ReturnOp) or isinstance(op, _INDEX_OPS):
                continue
            if any(r in self.free for r in op.results):
                continue
            self.lower_op(op)

    def lower_op(self, op: Operation) -> None:
        if isinstance(op, gml.FusionOp) or isinstance(op, gml.ELEMENTWISE):
            return self.elementwise(op)
        for v in [*op.operands, *op.results]:
            if isinstance(v.type, TensorType) and ctype(v.type.element_type) is None:
                raise self.refuse(op, f"unsupported element type {v.type.element_type}")
        handler = {
            gml.ReshapeOp: self.reshape,
            gml.PermuteOp: self.permute,
            gml.ExpandOp: self.expand,
            gml.SliceOp: self.slice,
            gml.ConcatOp: self.concat,
            gml.FullOp: self.full,
            gml.ArangeOp: self.arange,
            gml.EmbeddingOp: self.embedding,
            gml.MatmulOp: self.matmul,
            gml.SdpaOp: self.sdpa,
            gml.LayerNormOp: self.layer_norm,
            gml.SoftmaxOp: self.softmax,
            gml.LogSoftmaxOp: self.softmax,
            gml.CumsumOp: self.cumsum,
            gml.IndexOp: self.index,
            **_more_handlers(self),
        }.get(type(op))
        if handler is None and isinstance(op, gml.ReduceOp):
            handler = self.reduce
        if handler is None:
            raise self.refuse(op, "no GPU lowering for this op yet")
        handler(op)

    def refuse(self, op: Operation, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{op.name} at {where(op)}: {why}")

    # ------------------------------------------------------------ elementwise
    def elementwise(self, op: Operation) -> None:
        if isinstance(op, gml.FusionOp):
            members = [m for m in op.body.block.ops if not isinstance(m, gml.YieldOp)]
            term = op.body.block.last_op
            assert isinstance(term, gml.YieldOp)
            yielded, results = list(term.values), list(op.results)
        else:
            members, yielded, results = [op], list(op.results), list(op.results)
        for v in [v for m in members for v in (*m.operands, *m.results)]:
            if ctype(v.type.element_type) is None:  # type: ignore[attr-defined]
                raise self.refuse(op, f"unsupported element type {v.type}")
        inside = {r for m in members for r in m.results}
        externals: list[SSAValue] = []
        for m in members:
            for v in m.operands:
                if v not in inside and v not in externals:
                    externals.append(v)
        member_results = [m.results[0] for m in members]
        rank = max((len(shape_of(r.type)) for r in member_results), default=0)
        k = len(externals) + len(results)

        def params(env: Env) -> list[int]:
            dom = _broadcast([env.shapes[r] for r in member_results])
            out = list(dom)
            for v in [*externals, *yielded]:
                out.extend(_strides_in(env.shapes[v], dom))
            return out

        ix = self.slots_of(params, rank * (1 + k))
        n = self.slot(lambda env: _numel(_broadcast([env.shapes[r] for r in member_results])))
        args = [f"const {_ct(v)}* __restrict__ p{i}" for i, v in enumerate(externals)]
        args += [f"{_ct(r)}* __restrict__ q{i}" for i, r in enumerate(results)]
        lines = [
            f"__global__ void KERNEL(int64_t n, gml::Index<{rank}, {k}> ix, {', '.join(args)}) {{",
            "  GML_FOR(i, n) {",
            f"    int64_t off[{max(k, 1)}];",
            "    gml::offsets(ix, i, off);",
        ]
        val: dict[SSAValue, str] = {}
        for i, v in enumerate(externals):
            val[v] = f"x{i}"
            lines.append(f"    const {_vt(v)} x{i} = gml::load(p{i} + off[{i}]);")
        for j, m in enumerate(members):
            r = m.results[0]
            ct = _vt(m.operands[0]) if m.operands else _vt(r)
            if isinstance(m, gml.WhereOp):
                ct = _vt(m.lhs)
            expr = _scalar_expr(m, [val[v] for v in m.operands], ct)
            if _ct(r) in HALF:  # each member rounds its result, as the ops one by one would
                expr = f"gml::rounded<{_ct(r)}>({expr})"
            lines.append(f"    const {_vt(r)} s{j} = {expr};  // {m.name}")
            val[r] = f"s{j}"
        for i, y in enumerate(yielded):
            store = f"gml::store(q{i} + off[{len(externals) + i}], {val[y]});"
            if shape_of(y.type) != _broadcast([shape_of(r.type) for r in member_results]) or any(
                d < 0 for d in shape_of(y.type)
            ):
                store = f"if (gml::first_along_broadcast(ix, i, {len(externals) + i})) {store}"
            lines.append(f"    {store}")
        lines += ["  }", "}"]
        name = self.kernel("\n".join(lines))
        self.comment(members)
        ptrs = [self.ptr(v, const=True) for v in externals] + [self.ptr(r) for r in results]
        self.emit(
            f"{name}<<<gml::blocks_for(P[{n}], {THREADS}), {THREADS}, 0, stream>>>"
            f"(P[{n}], gml::index_from<{rank}, {k}>(P + {ix}), {', '.join(ptrs)});"
        )

    # ------------------------------------------------------------ data movement
    def reshape(self, op: gml.ReshapeOp) -> None:
        self.aliases[op.result] = op.input  # same bytes: every arena value is contiguous

    def copy(self, op: Operation, src: str, out: SSAValue, params: Callable[[Env], list[int]], rank: int, base: int | None = None) -> None:
        """out (contiguous) = src read through the strides params(env) gives."""
        ix = self.slots_of(params, rank * 3)
        n = self.slot(lambda env: _numel(env.shapes[out]))
        ct = _ct(out)
        src_ptr = f"{src} + P[{base}]" if base is not None else src
        self.comment([op])
        self.emit(
            f"gml::copy_strided<{ct}, {rank}><<<gml::blocks_for(P[{n}], {THREADS}), {THREADS}, 0, stream>>>"
            f"(P[{n}], gml::index_from<{rank}, 2>(P + {ix}), {src_ptr}, {self.ptr(out)});"
        )

    def permute(self, op: gml.PermuteOp) -> None:
        perm = list(op.dims.get_values())
        x, y = op.input, op.result

        def params(env: Env) -> list[int]:
            src = _contiguous_strides(env.shapes[x])
            out = env.shapes[y]
            return [*out, *(src[p] for p in perm), *_contiguous_strides(out)]

        self.copy(op, self.ptr(x, const=True), y, params, len(perm))

    def expand(self, op: gml.ExpandOp) -> None:
        x, y = op.input, op.result

        def params(env: Env) -> list[int]:
            out = env.shapes[y]
            return [*out, *_strides_in(env.shapes[x], out), *_contiguous_strides(out)]

        self.copy(op, self.ptr(x, const=True), y, params, len(shape_of(y.type)))

    def slice(self, op: gml.SliceOp) -> None:
        x, y = op.input, op.result
        rank = len(shape_of(x.type))
        d = op.dim.value.data % rank

        def bounds(env: Env) -> tuple[int, int]:
            start = env.ints[op.dyn_start] if op.dyn_start else op.start.value.data
            end = env.ints[op.dyn_end] if op.dyn_end else op.end.value.data
            first, _, step = slice(start, end, op.step.value.data).indices(env.shapes[x][d])
            return first, step

        def params(env: Env) -> list[int]:
            src = _contiguous_strides(env.shapes[x])
            st = list(src)
            st[d] *= bounds(env)[1]
            out = env.shapes[y]
            return [*out, *st, *_contiguous_strides(out)]

        base = self.slot(lambda env: bounds(env)[0] * _contiguous_strides(env.shapes[x])[d])
        self.copy(op, self.ptr(x, const=True), y, params, rank, base)

    def concat(self, op: gml.ConcatOp) -> None:
        y = op.result
        rank = len(shape_of(y.type))
        d = op.dim.value.data % rank
        for i, x in enumerate(op.inputs):

            def params(env: Env, i: int = i, x: SSAValue = x) -> list[int]:
                s = env.shapes[x]
                return [*s, *_contiguous_strides(s), *_contiguous_strides(env.shapes[y])]

            def start(env: Env, i: int = i) -> int:
                before = sum(env.shapes[v][d] for v in list(op.inputs)[:i])
                return before * _contiguous_strides(env.shapes[y])[d]

            ix = self.slots_of(params, rank * 3)
            n = self.slot(lambda env, x=x: _numel(env.shapes[x]))
            at = self.slot(start)
            self.comment([op])
            ct = _ct(y)
            self.emit(
                f"gml::copy_strided<{ct}, {rank}><<<gml::blocks_for(P[{n}], {THREADS}), {THREADS}, 0, stream>>>"
                f"(P[{n}], gml::index_from<{rank}, 2>(P + {ix}), {self.ptr(x, const=True)}, {self.ptr(y)} + P[{at}]);"
            )

    def full(self, op: gml.FullOp) -> None:
        self._fill(op, op.value.value.data, 0.0)

    def arange(self, op: gml.ArangeOp) -> None:
        self._fill(op, op.start.value.data, op.step.value.data)

    def _fill(self, op: Operation, start: float, step: float) -> None:
        y = op.results[0]
        n = self.slot(lambda env: _numel(env.shapes[y]))
        self.comment([op])
        self.emit(
            f"gml::arange<{_ct(y)}><<<gml::blocks_for(P[{n}], {THREADS}), {THREADS}, 0, stream>>>"
            f"(P[{n}], {float(start)!r}, {float(step)!r}, {self.ptr(y)});"
        )

    def embedding(self, op: gml.EmbeddingOp) -> None:
        w, idx, y = op.weight, op.indices, op.result
        n = self.slot(lambda env: _numel(env.shapes[idx]))
        dim = self.slot(lambda env: env.shapes[w][1])
        rows = self.slot(lambda env: env.shapes[w][0])
        total = self.slot(lambda env: _numel(env.shapes[y]))
        self.comment([op])
        self.emit(
            f"gml::embedding<{_ct(y)}, {_ct(idx)}><<<gml::blocks_for(P[{total}], {THREADS}), {THREADS}, 0, stream>>>"
            f"(P[{n}], P[{dim}], P[{rows}], {self.ptr(w, const=True)}, {self.ptr(idx, const=True)}, {self.ptr(y)});"
        )

    def index(self, op: gml.IndexOp) -> None:
        x, y = op.input, op.result
        dims = list(op.dims.get_values())
        idx = list(op.indices)
        if any(_ct(i) == "bool" for i in idx) or dims != list(range(dims[0], dims[0] + len(dims))):
            raise self.refuse(op, "indexing with a boolean mask or on non-adjacent dims")
        it = _ct(idx[0])
        if any(_ct(i) != it for i in idx):
            raise self.refuse(op, "index tensors of different integer types")
        k, d0, d1 = len(idx), dims[0], dims[-1] + 1
        rank = max(len(shape_of(i.type)) for i in idx)

        def bdom(env: Env) -> Shape:
            return _broadcast([env.shapes[i] for i in idx])

        def params(env: Env) -> list[int]:
            s, dom = env.shapes[x], bdom(env)
            xs = _contiguous_strides(s)
            return [
                _numel(env.shapes[y]), _numel(dom), _numel(s[d1:]), _numel(s[d0:]),
                *dom, *(st for i in idx for st in _strides_in(env.shapes[i], dom)),
                *(s[d] for d in dims), *(xs[d] for d in dims),
            ]  # fmt: skip

        p = self.slots_of(params, 4 + rank * (1 + k) + 2 * k)
        ts = p + 4 + rank * (1 + k)
        ptrs = ", ".join(self.ptr(i, const=True) for i in idx)
        self.comment([op])
        self.emit(
            f"gml::gather_nd<{_ct(y)}, {it}, {rank}, {k}><<<gml::blocks_for(P[{p}], {THREADS}), {THREADS}, 0, stream>>>"
            f"(P[{p}], P[{p + 1}], P[{p + 2}], P[{p + 3}], gml::index_from<{rank}, {k}>(P + {p + 4}), "
            f"gml::IndexTensors<{it}, {k}>{{{{{ptrs}}}, {{{', '.join(f'P[{ts + j}]' for j in range(k))}}}, "
            f"{{{', '.join(f'P[{ts + k + j}]' for j in range(k))}}}}}, {self.ptr(x, const=True)}, {self.ptr(y)});"
        )

    # ------------------------------------------------------------ reductions and norms
    def reduce(self, op: gml.ReduceOp) -> None:
        x, y = op.input, op.result
        rank = len(shape_of(x.type))
        dims = sorted(d % rank for d in op.dims.get_values()) or list(range(rank))
        if dims != list(range(dims[0], dims[-1] + 1)):
            from .tensor_ops import reduce_any_dims  # late: tensor_ops builds on this module

            return reduce_any_dims(self, op)
        kind = _REDUCE[type(op)]  # type: ignore[index]
        lo, hi = (dims[0], dims[-1] + 1) if dims else (0, 0)

        def split(env: Env) -> list[int]:
            s = env.shapes[x]
            return [_numel(s[:lo]), _numel(s[lo:hi]), _numel(s[hi:])]

        p = self.slots_of(split, 3)
        outer = self.slot(lambda env: split(env)[0] * split(env)[2])
        self.comment([op])
        ti, to = _ct(x), _ct(y)
        if hi == rank:  # rows: one block each
            self.emit(
                f"gml::reduce_rows<{ti}, {to}, gml::Red::{kind}><<<unsigned(P[{p}]), {THREADS}, 0, stream>>>"
                f"(P[{p + 1}], {self.ptr(x, const=True)}, {self.ptr(y)});"
            )
        else:
            self.emit(
                f"gml::reduce_mid<{ti}, {to}, gml::Red::{kind}><<<gml::blocks_for(P[{outer}], {THREADS}), {THREADS}, 0, stream>>>"
                f"(P[{p}], P[{p + 1}], P[{p + 2}], {self.ptr(x, const=True)}, {self.ptr(y)});"
            )

    def softmax(self, op: gml.SoftmaxOp | gml.LogSoftmaxOp) -> None:
        x, y = op.input, op.result
        rank = len(shape_of(x.type))
        if rank == 0 or op.dim.value.data % rank != rank - 1:
            raise self.refuse(op, "softmax over a dim other than the last")
        n = self.slot(lambda env: env.shapes[x][-1])
        rows = self.slot(lambda env: _numel(env.shapes[x][:-1]))
        log = "true" if isinstance(op, gml.LogSoftmaxOp) else "false"
        self.comment([op])
        self.emit(
            f"gml::softmax_rows<{_ct(x)}, {_ct(y)}, {log}><<<unsigned(P[{rows}]), {THREADS}, 0, stream>>>"
            f"(P[{n}], {self.ptr(x, const=True)}, {self.ptr(y)}, 1.0f, gml::NoBias{{}});"
        )

    def layer_norm(self, op: gml.LayerNormOp) -> None:
        x, y = op.input, op.result
        nd = op.ndim.value.data
        n = self.slot(lambda env: _numel(env.shapes[x][len(env.shapes[x]) - nd :]))
        rows = self.slot(lambda env: _numel(env.shapes[x][: len(env.shapes[x]) - nd]))
        ct = _ct(x)
        w = self.ptr(op.weight, const=True) if op.weight else "nullptr"
        b = self.ptr(op.bias, const=True) if op.bias else "nullptr"
        self.comment([op])
        self.emit(
            f"gml::layer_norm_rows<{ct}><<<unsigned(P[{rows}]), {THREADS}, 0, stream>>>"
            f"(P[{n}], {self.ptr(x, const=True)}, {w}, {b}, {self.ptr(y)}, {op.eps.value.data!r}f);"
        )

    # ------------------------------------------------------------ products
    def matmul(self, op: gml.MatmulOp) -> None:
        a, b, y = op.lhs, op.rhs, op.result
        ra, rb = len(shape_of(a.type)), len(shape_of(b.type))
        ct = _ct(y)
        if ct not in _DTYPE:
            raise self.refuse(op, f"matmul on {ct} (the GPU backend multiplies f32, f16 and bf16)")
        if ra < 2 or rb < 2:
            raise self.refuse(op, "matmul with a 1-d operand")
        self.comment([op])
        dt = _DTYPE[ct]
        if rb == 2 and b in self.free:  # x @ W: W uploaded as n x k (a Linear's own layout)
            m = self.slot(lambda env: _numel(env.shapes[a][:-1]))
            k = self.slot(lambda env: env.shapes[a][-1])
            n = self.slot(lambda env: env.shapes[b][1])
            w = f"static_cast<const {ct}*>(W[{self.weight(b, transposed=True)}])"
            x, out = self.ptr(a, const=True), self.ptr(y)
            # decode: a few rows against a weight read once, bandwidth-bound
            self.emit(f"if (P[{m}] <= 4 && P[{k}] % 8 == 0) {{")
            for rows in (1, 2, 3, 4):
                self.emit(
                    f"  {'' if rows == 1 else 'else '}if (P[{m}] == {rows}) gml::gemv_nt<{ct}, {rows}>"
                    f"<<<unsigned((P[{n}] + 7) / 8), 256, 0, stream>>>(P[{n}], P[{k}], {x}, {w}, {out});"
                )
            self.emit("} else {")
            self.emit(
                f"  if (int e = ctx->gemm(ctx, stream, {dt}, {dt}, true, P[{m}], P[{n}], P[{k}], "
                f"{x}, P[{k}], 0, {w}, P[{k}], 0, {out}, P[{n}], 0, 1, 1.0f)) return e;"
            )
            self.emit("}")
            return
        sa, sb = shape_of(a.type), shape_of(b.type)
        if ra != rb:
            raise self.refuse(op, "batched matmul with different operand ranks")

        def dims(env: Env) -> list[int]:
            xa, xb = env.shapes[a], env.shapes[b]
            if xa[:-2] != xb[:-2]:
                raise UnsupportedOpError(f"{op.name} at {where(op)}: broadcast batch dims")
            m_, k_, n_ = xa[-2], xa[-1], xb[-1]
            return [m_, n_, k_, _numel(xa[:-2])]

        del sa, sb
        p = self.slots_of(dims, 4)
        self.emit(
            f"if (int e = ctx->gemm(ctx, stream, {dt}, {dt}, false, P[{p}], P[{p + 1}], P[{p + 2}], "
            f"{self.ptr(a, const=True)}, P[{p + 2}], P[{p}] * P[{p + 2}], {self.ptr(b, const=True)}, P[{p + 1}], "
            f"P[{p + 2}] * P[{p + 1}], {self.ptr(y)}, P[{p + 1}], P[{p}] * P[{p + 1}], P[{p + 3}], 1.0f)) return e;"
        )

    def sdpa(self, op: gml.SdpaOp) -> None:
        q, k, v, y = op.query, op.key, op.value, op.result
        ct = _ct(y)
        if ct not in _DTYPE:
            raise self.refuse(op, f"attention on {ct}")
        dt = _DTYPE[ct]
        causal = "true" if op.is_causal.value.data else "false"

        # q [B.., H, Tq, D], k [B.., KV, Tk, D], v [B.., KV, Tk, Dv]; heads h = kv * G + g,
        # so Q is [B..*KV, G*Tq, D] as it lies: one strided-batched GEMM per product.
        def dims(env: Env) -> list[int]:
            sq, sk, sv = env.shapes[q], env.shapes[k], env.shapes[v]
            h, tq, d = sq[-3], sq[-2], sq[-1]
            kv, tk, dv = sk[-3], sk[-2], sv[-1]
            batch = _numel(sq[:-3]) * kv
            return [batch, (h // kv) * tq, tk, d, dv, tq]

        p = self.slots_of(dims, 6)
        scale = op.scale.value.data if op.scale is not None else None
        sc = self.slot(
            lambda env: 0 if scale is not None else env.shapes[q][-1]
        )  # default scale 1/sqrt(D), computed in the host code
        scores = Scratch(f"scores{self.step}", lambda env: _prod(dims(env)[:3]) * 4)
        probs = Scratch(f"probs{self.step}", lambda env: _prod(dims(env)[:3]) * 2 if ct in HALF else _prod(dims(env)[:3]) * 4)
        self.scratch += [(scores, self.step), (probs, self.step)]
        s_ptr, p_ptr = self.ptr(scores, "float"), self.ptr(probs, ct)
        alpha = f"{scale!r}f" if scale is not None else f"1.0f / sqrtf(float(P[{sc}]))"
        B, M, N, D, DV, TQ = (f"P[{p + i}]" for i in range(6))
        self.comment([op])
        self.emit(
            f"if (int e = ctx->gemm(ctx, stream, {dt}, gml::DType::F32, true, {M}, {N}, {D}, "
            f"{self.ptr(q, const=True)}, {D}, {M} * {D}, {self.ptr(k, const=True)}, {D}, {N} * {D}, "
            f"{s_ptr}, {N}, {M} * {N}, {B}, {alpha})) return e;"
        )
        bias = f"gml::Causal{{{N}, {TQ}}}" if causal == "true" else "gml::NoBias{}"
        if op.mask is not None:
            bias = self.mask_bias(op, causal, N, TQ)
        self.emit(
            f"gml::softmax_rows<float, {ct}, false><<<unsigned({B} * {M}), {THREADS}, 0, stream>>>"
            f"({N}, {s_ptr}, {p_ptr}, 1.0f, {bias});"
        )
        self.emit(
            f"if (int e = ctx->gemm(ctx, stream, {dt}, {dt}, false, {M}, {DV}, {N}, "
            f"{p_ptr}, {N}, {M} * {N}, {self.ptr(v, const=True)}, {DV}, {N} * {DV}, "
            f"{self.ptr(y)}, {DV}, {M} * {DV}, {B}, 1.0f)) return e;"
        )

    def mask_bias(self, op: gml.SdpaOp, causal: str, n: str, tq: str) -> str:
        """A `gml::Masked` reading the mask broadcast over the scores' rows and keys."""
        mask, q = op.mask, op.query
        assert mask is not None
        rank = len(shape_of(q.type)) - 1  # the rows' dims: [batch.., heads, tq]

        def params(env: Env) -> list[int]:
            sq, sk = env.shapes[q], env.shapes[op.key]
            full = (*sq[:-1], sk[-2])  # [batch.., heads, tq, tk]
            st = _strides_in(env.shapes[mask], full)
            return [*sq[:-1], *st[:-1], st[-1]]

        p = self.slots_of(params, 2 * rank + 1)
        mt = _ct(mask)
        return (
            f"gml::Masked<{mt}, {rank}>{{{self.ptr(mask, const=True)}, gml::index_from<{rank}, 1>(P + {p}), "
            f"P[{p + 2 * rank}], gml::Causal{{{n}, {tq}}}, {causal}}}"
        )

    def cumsum(self, op: gml.CumsumOp) -> None:
        x, y = op.input, op.result
        rank = len(shape_of(x.type))
        d = op.dim.value.data % max(rank, 1)

        def split(env: Env) -> list[int]:
            s = env.shapes[x] or (1,)
            return [_numel(s[:d]), s[d], _numel(s[d + 1 :])]

        p = self.slots_of(split, 3)
        outer = self.slot(lambda env: split(env)[0] * split(env)[2])
        self.comment([op])
        self.emit(
            f"gml::cumsum_mid<{_ct(x)}, {_ct(y)}><<<gml::blocks_for(P[{outer}], {THREADS}), {THREADS}, 0, stream>>>"
            f"(P[{p}], P[{p + 1}], P[{p + 2}], {self.ptr(x, const=True)}, {self.ptr(y)});"
        )

    # ------------------------------------------------------------ output
    def source(self) -> str:
        head = [
            "// Generated by gimlet (backends/gpu/codegen.py): one segment's GPU program.",
            "// Sizes, strides and arena offsets come from the parameter table P (per shape bucket).",
            f"#include <{HEADER}>",
            "",
        ]
        entry = [
            f'extern "C" int {ENTRY}(const gml::Ctx* ctx, char* A, void* const* W, const int64_t* P,',
            "                             gmlStream_t stream) {",
            "  (void)ctx; (void)A; (void)W; (void)P;",
            *self.body,
            "  return int(gmlGetLastError());",
            "}",
        ]
        return "\n".join([*head, *(k + "\n" for k in self.kernels), *entry]) + "\n"

    def buffers(self) -> list[tuple[Any, int, int, Callable[[Env], int]]]:
        """(key, first step, last step, bytes) of every arena buffer (alias roots)."""
        end = self.step + 1
        first: dict[Any, int] = {}
        last: dict[Any, int] = {}
        for a in self.fn.body.block.args:
            first[a], last[a] = 0, 0
        for i, op in enumerate(self.fn.body.block.ops, start=1):
            for inner in op.walk():
                for v in inner.operands:
                    if v in first or self.root(v) in first:
                        r = self.root(v)
                        last[r] = max(last[r], end if isinstance(op, func.ReturnOp) else i)
            for r in op.results:
                if isinstance(r.type, TensorType) and r not in self.free and r not in self.aliases:
                    first[r], last[r] = i, i
        for a in self.fn.body.block.args:  # inputs are copied in before step 1
            last[a] = max(last[a], 0)
        out: list[tuple[Any, int, int, Callable[[Env], int]]] = []
        for key in first:
            out.append((key, first[key], last[key], lambda env, key=key: _nbytes(key, env)))
        for s, step in self.scratch:
            out.append((s, step, step, s.nbytes))
        return out


def _more_handlers(low: _Lowering) -> dict[type[Operation], Callable[[Any], None]]:
    """Lowerings kept in their own modules (conv.py: convolution, batch norm, pooling;
    tensor_ops.py: gather, pad, arg-reductions, var). Imported late: they build on this
    module."""
    from . import conv, tensor_ops

    return {**conv.handlers(low), **tensor_ops.handlers(low)}


def _prod(xs: Sequence[int]) -> int:
    return math.prod(xs)


_BYTES = {"float": 4, "double": 8, "gml::f16": 2, "gml::bf16": 2, "bool": 1}


def _nbytes(v: SSAValue, env: Env) -> int:
    ct = _ct(v)
    size = _BYTES.get(ct) or int("".join(c for c in ct if c.isdigit()) or 8) // 8
    return _numel(env.shapes[v]) * size


def lower(fn: func.FuncOp) -> Lowered:
    """The GPU program for `fn`; raises UnsupportedOpError naming the first op it cannot
    lower (the caller falls back to the interpreter for that function)."""
    for a in fn.body.block.args:
        if not isinstance(a.type, TensorType) or ctype(a.type.element_type) is None:
            raise UnsupportedOpError(f"GPU function input of type {a.type}")
    for op in fn.body.block.ops:
        if isinstance(op, comm.SendOp | comm.RecvOp | comm.ISendOp | comm.IRecvOp | comm.WaitOp):
            raise UnsupportedOpError(f"{op.name}: comm ops are the runtime's (cut segments first)")
        if isinstance(op, func.ReturnOp):
            for v in op.arguments:
                if isinstance(v.type, IndexType):
                    raise UnsupportedOpError("a GPU function returning an index")
    low = _Lowering(fn)
    low.run()
    ret = fn.body.block.last_op
    assert isinstance(ret, func.ReturnOp)
    for v in ret.arguments:  # outputs that are load-time values or inputs: copy them out
        if v in low.free:
            raise UnsupportedOpError("a GPU function returning a weight")
    return Lowered(
        fn=fn,
        source=low.source(),
        slots=low.slots,
        weights=low.weights,
        buffers=low.buffers(),
        aliases=low.aliases,
        evaluator=ShapeEvaluator(fn),
    )


__all__ = ["ENTRY", "HEADER", "Bucket", "Lowered", "load_time_values", "lower", "unsupported", "literal"]
