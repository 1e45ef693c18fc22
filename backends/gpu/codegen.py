"""Lower a `func.func` of gml ops (a whole program, or one part of a segment) to GPU C++.

The output is one `.cu` file in the part of CUDA that HIP also compiles (it includes
only `gimlet/gpu/gml_gpu.cuh`): one kernel per elementwise op or `gml.fusion` group,
generated here; library kernels of the header for reductions, softmax, layer norm,
embedding, copies and decode-time GEMV; GEMMs and attention's two products through the
context's BLAS (`gml::Ctx::gemm`, cuBLAS on NVIDIA). Each launch is preceded by a
comment naming its gml ops and the user's `file.py:LINE`. A program with many kernels
is laid out in units (backends/gpu/units.py): each kernel with the launches that use
it, which nvcc compiles on separate cores; the file stays one valid translation unit.

The code is shape-agnostic: sizes, strides and arena offsets are read from a parameter
table `P` that `Lowered.bucket` fills once per shape bucket (backends/gpu/shapes.py),
after which the runtime replays the bucket's CUDA graph. The host entry point is

    extern "C" int gimlet_gpu_main(const gml::Ctx*, char* arena, void* const* W,
                                   const int64_t* P, gmlStream_t stream);

where `W` holds the device pointers of the load-time values (weights, constants and
what is computed from them alone; a Linear weight is uploaded transposed, n x k, which
is what the GEMV kernel and cuBLAS's transposed-B path read).

This module is the lowering's driver (`_Lowering.run` hands each op to its family), the
program's output (the source, its chains and units; `Lowered` and its buckets) and the
entry `lower_with`. The op families live in modules of their own, each a class that the
next one builds on: lower_base.py (the lowering's state and the helpers that emit code),
lower_attention.py (gml.sdpa), lower_tensor.py (elementwise kernels, data movement,
norms) and lower_matmul.py (GEMMs and decode GEMVs). The switches (`GIMLET_GPU_*`) are
switches.py's, read as a function is lowered (tests and benchmarks set them there).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from xdsl.dialects import arith, func
from xdsl.dialects.builtin import IndexType, TensorType
from xdsl.ir import Operation, SSAValue

from gimlet.backends.cpu.codegen import _ARITH, ctype, literal
from gimlet.dialects import comm, gml
from gimlet.dialects.shapes import shape_of
from gimlet.errors import UnsupportedOpError

from . import chains, inplace, switches, units

# `X as X`: a name of the modules the lowering is split into that other modules and
# tests import from here
from .lower_attention import _decode_split as _decode_split
from .lower_attention import _prefill_split as _prefill_split
from .lower_base import _BYTES as _BYTES
from .lower_base import _DTYPE as _DTYPE
from .lower_base import HALF as HALF
from .lower_base import THREADS as THREADS
from .lower_base import Env as Env
from .lower_base import Scratch as Scratch
from .lower_base import Slot as Slot
from .lower_base import ViewRule as ViewRule
from .lower_base import Weight as Weight
from .lower_base import _contiguous_strides as _contiguous_strides
from .lower_base import _ct as _ct
from .lower_base import _itemsize as _itemsize
from .lower_base import _nbytes as _nbytes
from .lower_base import _numel as _numel
from .lower_base import _strides_in as _strides_in
from .lower_base import index_params as index_params
from .lower_base import load_time_values as load_time_values
from .lower_matmul import MatmulLowering
from .lower_matmul import _gemv_loads as _gemv_loads
from .lower_matmul import _gemv_split as _gemv_split
from .shapes import Buffer, Shape, ShapeEvaluator, plan

ENTRY = "gimlet_gpu_main"
HEADER = "gimlet/gpu/gml_gpu.cuh"
_INDEX_OPS: tuple[type[Operation], ...] = (gml.DimOp, arith.ConstantOp, *_ARITH)

MoreHandlers = Callable[["_Lowering"], dict[type[Operation], Callable[[Any], None]]]


@dataclass
class Bucket:
    """Everything one shape bucket needs at run time."""

    params: list[int]
    arena_bytes: int  # the memory plan's peak: one arena, weights excluded
    input_offsets: list[int]
    output_offsets: list[int]
    output_shapes: list[Shape]
    # per output: elements from one row (last dim) to the next where the arena holds it
    # padded (a model's head written by one GEMM at an aligned width), else 0: contiguous
    output_pitches: list[int] = field(default_factory=list)
    # per input, then per output: the slots that address it, which the runtime moves to
    # read or write the caller's tensor in place (backends/gpu/inplace.py); None: copied
    bound: list[list[int] | None] = field(default_factory=list)

    @property
    def plan_bytes(self) -> int:
        return self.arena_bytes

    def output_elements(self, i: int) -> int:
        """Elements output `i` spans in the arena (its padding included)."""
        shape, pitch = self.output_shapes[i], self.pitch(i)
        return _numel(shape[:-1]) * pitch if pitch else _numel(shape)

    def output_strides(self, i: int) -> tuple[int, ...]:
        """Output `i`'s strides in elements: contiguous, or rows `pitch` apart."""
        shape, pitch = self.output_shapes[i], self.pitch(i)
        if not pitch:
            return tuple(_contiguous_strides(shape))
        return (*(s * pitch for s in _contiguous_strides(shape[:-1])), 1)

    def pitch(self, i: int) -> int:
        return self.output_pitches[i] if i < len(self.output_pitches) else 0


@dataclass
class Lowered:
    """A function's GPU program: its source, and what a bucket needs to run it."""

    fn: func.FuncOp
    source: str
    slots: list[Slot]
    weights: list[Weight]
    values: list[tuple[SSAValue, int, int]]  # arena values: first, last program step
    scratch: list[tuple[Scratch, int]]
    views: list[tuple[SSAValue, SSAValue, ViewRule]]  # in program order
    evaluator: ShapeEvaluator
    # values the arena holds with rows further apart than their last dim (a padded head
    # GEMM writes the function's result in place): the pitch in elements at a bucket, 0
    # where that bucket writes them contiguous
    pitches: dict[SSAValue, Callable[[Env], int]] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def bucket(self, input_shapes: Sequence[Shape]) -> Bucket:
        """Shapes, views and the memory plan for these input shapes; the parameter table."""
        shapes, ints = self.evaluator.evaluate(input_shapes)
        env = Env(shapes, ints)
        alias: dict[SSAValue, tuple[SSAValue, int]] = {}  # value -> (root, byte offset)
        for v, src, rule in self.views:
            off = rule(env)
            if off is not None:
                root, base = alias.get(src, (src, 0))
                alias[v] = (root, base + off * _itemsize(src))
                env.views.add(v)
        life = {v: [first, last] for v, first, last in self.values if v not in alias}
        for v, first, last in self.values:  # a view keeps its root alive as long as itself
            if v in alias:
                span = life[alias[v][0]]
                span[0], span[1] = min(span[0], first), max(span[1], last)
        pitch = {v: f(env) for v, f in self.pitches.items()}
        keys: list[Any] = list(life)
        bufs = [Buffer(max(_nbytes(v, env, pitch.get(v, 0)), 1), *life[v]) for v in life]
        for s, step in self.scratch:
            keys.append(s)
            bufs.append(Buffer(max(s.nbytes(env), 1), step, step))
        arena = plan(bufs)
        for key, b in zip(keys, bufs, strict=True):
            env.offsets[key] = b.offset
        for v, (root, base) in alias.items():
            env.offsets[v] = env.offsets[root] + base
        ret = self.fn.body.block.last_op
        assert isinstance(ret, func.ReturnOp)
        args, outs = list(self.fn.body.block.args), list(ret.arguments)
        env.memo.clear()  # (the offsets are all set only now)
        params = [slot(env) for slot in self.slots]

        def out_bytes(v: SSAValue) -> tuple[int, int]:  # the caller's tensor, v's root
            r = alias.get(v, (v, 0))[0]
            return _nbytes(v, env, pitch.get(r, 0)), _nbytes(r, env, pitch.get(r, 0))

        return Bucket(
            params=params,
            arena_bytes=arena,
            input_offsets=[env.offsets[a] for a in args],
            output_offsets=[env.offsets[v] for v in outs],
            output_shapes=[shapes[v] for v in outs],
            output_pitches=[pitch.get(alias.get(v, (v, 0))[0], 0) for v in outs],
            bound=inplace.binding(self.slots, params, env, alias, args, outs, out_bytes),
        )


class _Lowering(MatmulLowering):
    """A function's GPU lowering with every op family of the modules above; `more` adds
    those kept in other modules (backends/gpu/lower.py)."""

    def __init__(self, fn: func.FuncOp, more: MoreHandlers | None = None):
        super().__init__(fn)
        self.more = more  # lowerings kept in other modules (backends/gpu/lower.py)

    # ------------------------------------------------------------ driver
    def run(self) -> None:
        self.plan_attention_operands()
        for op in self.fn.body.block.ops:
            self.step += 1
            if isinstance(op, (func.ReturnOp, _INDEX_OPS)) or op in self.done:
                continue
            if any(r in self.free for r in op.results):
                continue
            start = len(self.body)
            self.lower_op(op)
            self.step_lines.append((start, len(self.body)))
            self.chain_parts.append(self.chain_part)
            self.chain_part = None

    def lower_op(self, op: Operation) -> None:
        if isinstance(op, (gml.FusionOp, *gml.ELEMENTWISE)):
            return self.elementwise(op)
        for v in [*op.operands, *op.results]:
            if isinstance(v.type, TensorType) and ctype(v.type.element_type) is None:
                raise self.refuse(op, f"unsupported element type {v.type.element_type}")
        table: dict[type[Operation], Callable[[Any], None]] = {
            gml.ReshapeOp: self.reshape,
            gml.PermuteOp: self.permute,
            gml.ExpandOp: self.expand,
            gml.SliceOp: self.slice,
            gml.ConcatOp: self.concat,
            gml.FullOp: self.full,
            gml.ArangeOp: self.arange,
            gml.EmbeddingOp: self.embedding,
            gml.IndexOp: self.index,
            **(self.more(self) if self.more else {}),
            gml.MatmulOp: self.matmul,
            gml.SdpaOp: self.sdpa,
            gml.LayerNormOp: self.layer_norm,
            gml.SoftmaxOp: self.softmax,
            gml.LogSoftmaxOp: self.softmax,
            gml.CumsumOp: self.cumsum,
        }
        handler = table.get(type(op))
        if handler is None:
            raise self.refuse(op, "no GPU lowering for this op yet")
        handler(op)

    # ------------------------------------------------------------ output
    def source(self) -> str:
        head = [
            "// Generated by gimlet (backends/gpu/codegen.py): one segment's GPU program.",
            "// Sizes, strides and arena offsets come from the parameter table P (per shape bucket).",
            *(["#define GML_CHAIN_TRACE 1"] if switches.CHAIN and switches.CHAIN_TRACE else []),
            f'#include "{HEADER}"',
            "",
        ]
        entry_open = [
            f'extern "C" int {ENTRY}(const gml::Ctx* ctx, char* A, void* const* W, const int64_t* P,',
            "                             gmlStream_t stream) {",
            "  (void)ctx; (void)A; (void)W; (void)P;",
        ]
        entry_close = ["  return int(gmlGetLastError());", "}"]
        assert sum(b - a for a, b in self.step_lines) == len(self.body)
        self.resolve_ahead()
        steps = self.chained([self.body[a:b] for a, b in self.step_lines])
        # kernel bodies a chain calls come before every unit: each unit may instantiate them
        head += [b + "\n" for b in self.bodies if b]
        return units.arrange(
            head,
            [(f"k{i}", k) for i, k in enumerate(self.kernels)],
            steps,
            entry_open,
            entry_close,
        )

    def resolve_ahead(self) -> None:
        """Each decode GEMV's gml::L2Ahead: what the decode kernel after it in the program
        reads (the next GEMV's weight, attention's KV cache), or nothing for the last."""
        args: dict[str, str] = {}
        for i, (token, _) in enumerate(self.ahead):
            if token is None:
                continue
            args[token] = "gml::L2Ahead{}"
            if switches.L2_AHEAD and i + 1 < len(self.ahead):
                ranges = self.ahead[i + 1][1]
                ptrs = ", ".join(p for p, _ in ranges)
                sizes = ", ".join(n for _, n in ranges)
                args[token] = f"gml::L2Ahead{{{{{ptrs}}}, {{{sizes}}}}}"
        if args:  # one pass over the body (a token a GEMV launch: GPT-2 decode has 61)
            tokens = re.compile(r"@ahead\d+@")
            self.body = [tokens.sub(lambda m: args[m.group()], line) for line in self.body]

    def chained(self, steps: list[list[str]]) -> list[list[str]]:
        """The steps with runs of decode kernels made persistent chains (chains.py): each
        run's chain kernel, launched by a step before it where the bucket's slot says so;
        the run's steps as they were where it does not."""
        if not switches.CHAIN or not any(self.chain_parts):
            return steps
        static = None
        if self.static is not None:  # the one bucket's table: its guards are known now
            args = [shape_of(a.type) for a in self.fn.body.block.args]
            static = self.as_lowered("").bucket(args).params
        offsets = [a for a, _ in self.step_lines]
        runs = chains.find(steps, offsets, self.chain_parts, static)
        out: list[list[str]] = []
        done = 0
        for first, last, conds in runs:
            out += steps[done:first]
            slot = self.slot(partial(self._conds_hold, conds))
            parts = self.chain_parts[first : last + 1]
            out.append(chains.launch(steps[first : last + 1], parts, slot, switches.CHAIN_BLOCKS))
            out += [chains.wrap(lines, slot) for lines in steps[first : last + 1]]
            done = last + 1
        return out + steps[done:]

    def _conds_hold(self, conds: Sequence[chains.Cond], env: Env) -> int:
        """1 where a chain's conditions hold at this bucket (its slot)."""
        return int(chains.holds(conds, {s: self.slots[s](env) for s, _, _ in conds}))

    def as_lowered(self, source: str) -> Lowered:
        return Lowered(
            fn=self.fn,
            source=source,
            slots=self.slots,
            weights=self.weights,
            values=self.values(),
            scratch=self.scratch,
            views=self.views,
            evaluator=self.evaluator,
            pitches=self.pitches,
        )

    def values(self) -> list[tuple[SSAValue, int, int]]:
        """(value, first step, last step) of every arena value, program order."""
        end = self.step + 1
        read_at = self._attention_roots()
        first: dict[SSAValue, int] = {a: 0 for a in self.fn.body.block.args}
        last: dict[SSAValue, int] = {a: 0 for a in self.fn.body.block.args}
        for i, op in enumerate(self.fn.body.block.ops, start=1):
            for inner in op.walk():
                for v in inner.operands:
                    if v in first:
                        last[v] = max(last[v], end if isinstance(op, func.ReturnOp) else i)
            for r in op.results:
                if isinstance(r.type, TensorType) and r not in self.free:
                    first[r] = self.defined_at.get(r, i)
                    last[r] = max(first[r], i)
        for v, step in read_at.items():  # cuBLAS attention may read it in place
            if v in last:
                last[v] = max(last[v], step)
        return [(v, first[v], last[v]) for v in first]

    def _attention_roots(self) -> dict[SSAValue, int]:
        """The buffers attention reads in place, with the attention's step: q/k/v where it
        folds their views (each chain's first value), and the KV pieces decode reads."""
        steps = {op: i for i, op in enumerate(self.fn.body.block.ops, start=1)}
        out: dict[SSAValue, int] = {}
        for sdpa in {s for s in self.fold_chain.values()}:
            for v in (sdpa.query, sdpa.key, sdpa.value):
                while isinstance(v.owner, Operation) and self.fold_chain.get(v.owner) is sdpa:
                    v = v.owner.operands[0]
                out[v] = max(out.get(v, 0), steps[sdpa])
        # the decode kernel reads a KV concat's pieces in place, at the attention's step,
        # not at the concat's (where their uses end): without this the plan gave a piece's
        # bytes to the attention's own scratch, which its blocks write while others still
        # read the step's new K/V entry (wrong decode at batch 2 on the H200)
        for sdpa in self.fn.body.block.ops:
            if isinstance(sdpa, gml.SdpaOp):
                for kv in (sdpa.key, sdpa.value):
                    pieces = self._kv_pieces(sdpa, kv)
                    for v in pieces if len(pieces) > 1 else []:
                        out[v] = max(out.get(v, 0), steps[sdpa])
        return out


def lower_with(fn: func.FuncOp, more: MoreHandlers | None = None) -> Lowered:
    """The GPU program for `fn` with this module's lowerings and `more`'s; raises
    UnsupportedOpError naming the first op it cannot lower (the caller falls back to the
    interpreter for that function). Callers want backends/gpu/lower.py's `lower`, which
    passes every op family."""
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
    low = _Lowering(fn, more)
    low.run()
    ret = fn.body.block.last_op
    assert isinstance(ret, func.ReturnOp)
    for v in ret.arguments:  # outputs that are load-time values or inputs: copy them out
        if v in low.free:
            raise UnsupportedOpError("a GPU function returning a weight")
    return low.as_lowered(low.source())


__all__ = [
    "ENTRY",
    "HEADER",
    "Bucket",
    "Lowered",
    "load_time_values",
    "lower_with",
    "literal",
]
