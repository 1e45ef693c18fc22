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
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from xdsl.dialects import arith, func
from xdsl.dialects.builtin import IndexType, TensorType
from xdsl.ir import Operation, SSAValue

from gimlet.backends.cpu.codegen import _ARITH, _scalar_expr, ctype, literal, where
from gimlet.dialects import comm, gml
from gimlet.dialects.shapes import DYN, shape_of
from gimlet.errors import UnsupportedOpError

from . import chains, inplace, units, vectorize
from .shapes import Buffer, Shape, ShapeEvaluator, plan
from .symdims import SymbolicShapes, covers, numel

ENTRY = "gimlet_gpu_main"
# cuBLAS attention reading q/k/v through strides (no copies); GIMLET_GPU_FOLD_ATTENTION=0
# turns it off (to compare, or to rule it out).
FOLD_ATTENTION = os.environ.get("GIMLET_GPU_FOLD_ATTENTION", "1") == "1"
# Prefill attention in f16/bf16 as one flash-attention kernel (gml::attention_prefill,
# tensor cores, no scores in memory) instead of two cuBLAS GEMMs around a softmax; on
# since the H200 ran it (gpu_tests.md run 10; GPT-2 prefill -0.125 ms, gpu_gpt2.md run G).
FLASH_PREFILL = os.environ.get("GIMLET_GPU_FLASH", "1") == "1"
# Linear layers on the GEMM path through cuBLASLt with bias/GELU/residual in its epilogue
# (the runtime library always has it), and weights with an odd number of outputs padded
# to an aligned width: on by default since the H200 ran them (gpu_tests.md run 9; GPT-2
# prefill 1.56 -> 1.10 ms, gpu_gpt2.md run F); "0" turns either off.
VENDOR_EPILOGUE = os.environ.get("GIMLET_GPU_CUBLASLT", "1") == "1"
PAD_WEIGHTS = os.environ.get("GIMLET_GPU_PAD_WEIGHTS", "1") == "1"
# Decode's chain (GEMVs, split-KV attention and its combine) launched with programmatic
# dependent launch (gml::launch_pdl): each kernel starts while the one before it ends, a
# GEMV streaming its weight meanwhile; "0" launches them with <<<>>>.
PDL = os.environ.get("GIMLET_GPU_PDL", "1") == "1"
# Runs of those kernels as one persistent kernel, grid barriers between them (chains.py,
# gml::launch_chain). Off unless "1": on the H200 GPT-2's decode chain took 550 us against
# 412 us of kernels launched one by one (benchmarks/results/gpu_chain.md), so it is there
# to be worked on, not to be used.
CHAIN = os.environ.get("GIMLET_GPU_CHAIN", "0") == "1"
# a decode GEMV's 16-byte weight loads in flight a lane: a column's (up to 16) where k is
# static, so k = 3072 is one batch, not two; "0" keeps 8 (gml::gemv_nt's U)
GEMV_LOADS_PER_COLUMN = os.environ.get("GIMLET_GPU_GEMV_LOADS", "1") == "1"
# decode kernels issue what they can before their wait and load what the previous kernel
# wrote all at once after it: a GEMV's epilogue operands beside x after the wait, the
# split attention's KV cache rows before it where the cache is the segment's input; "0"
# keeps each load where its use is
DECODE_PREFETCH = os.environ.get("GIMLET_GPU_PREFETCH", "1") == "1"
# a decode GEMV after a layer norm loads the norm's weight and bias for its first chunks
# into registers before its wait (more registers: 74 instead of 61 for GPT-2's qkv)
NORM_EARLY = os.environ.get("GIMLET_GPU_NORM_EARLY", "1") == "1"
# a decode GEMV with too few columns to fill the GPU a warp each (GPT-2's fc2 and proj)
# splits each column's k over 2-8 warps of a block (_gemv_split); "0": a warp a column
GEMV_SPLIT = os.environ.get("GIMLET_GPU_GEMV_SPLIT", "1") == "1"
CHAIN_BLOCKS = int(os.environ.get("GIMLET_GPU_CHAIN_BLOCKS", "1"))  # a chain's blocks an SM
# a layer norm feeding a decode GEMV is folded into its weight (gml::LnFoldRows: the
# statistics from the product's own pass over x); "0": each warp normalizes x first
FOLD_NORM = os.environ.get("GIMLET_GPU_FOLD_NORM", "1") == "1"
# a decode GEMV prefetches the next one's weight into L2 (its first L2_AHEAD_BYTES: a
# vocabulary-sized head is larger than L2) as it starts (gml::L2Ahead); "0": none
L2_AHEAD = os.environ.get("GIMLET_GPU_L2_AHEAD", "1") == "1"
L2_AHEAD_BYTES = 16 << 20
# "1": chain kernels print, for blocks 0 and last, each phase's cycles up to its barrier,
# after it, and to arrive at the next (gml::run_phase); a diagnosis, not for use
CHAIN_TRACE = os.environ.get("GIMLET_GPU_CHAIN_TRACE", "0") == "1"
# layer norm keeps a row in registers up to this many elements (a warp a row up to 1024
# on NVIDIA, 2048 on AMD: 32 a lane; a block a row beyond); the variant is the smallest
# that holds the row
LN_ROWS = (128, 256, 512, 1024, 2048, 4096, 8192)
PADDED_SCRATCH_BYTES = 16 << 20  # a padded product copied out unpadded: this much at a time
HEADER = "gimlet/gpu/gml_gpu.cuh"
THREADS = 256
HALF = ("gml::f16", "gml::bf16")
_DTYPE = {
    "float": "gml::DType::F32",
    "gml::f16": "gml::DType::F16",
    "gml::bf16": "gml::DType::BF16",
}
_INDEX_OPS: tuple[type[Operation], ...] = (gml.DimOp, arith.ConstantOp, *_ARITH)


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
    """One shape bucket: concrete shapes, index values, views and arena offsets."""

    shapes: dict[SSAValue, Shape]
    ints: dict[SSAValue, int]
    offsets: dict[Any, int] = field(default_factory=dict)
    views: set[SSAValue] = field(default_factory=set)  # values aliasing their source


Slot = Callable[[Env], int]
MoreHandlers = Callable[["_Lowering"], dict[type[Operation], Callable[[Any], None]]]
ViewRule = Callable[[Env], int | None]
"""A value's element offset into its source when it is a view at this bucket, else None."""


# Decode attention splits the keys into chunks so that blocks x chunks fills the GPU
# (an H200 has 132 SMs: two blocks each); a chunk holds 32..256 keys, its scores in
# shared memory.
DECODE_TARGET_BLOCKS = 264
# in a persistent chain (its blocks an SM x 132 SMs): one round of the chain's blocks
CHAIN_TARGET_SMS = 132
DECODE_CHUNK_MIN, DECODE_CHUNK_MAX = 32, 256


def _launch(kernel: str, grid: str, threads: str, args: Sequence[str]) -> str:
    """One launch statement of a decode-chain kernel: through gml::launch_pdl (it may
    start while the kernel before it ends; the kernel calls gml::pdl_wait before it reads
    the arena) when PDL is on, else <<<>>>."""
    if PDL:
        return f"gml::launch_pdl({kernel}, {grid}, {threads}, stream, {', '.join(args)});"
    return f"{kernel}<<<{grid}, {threads}, 0, stream>>>({', '.join(args)});"


def _warp_elements(ct: str) -> int:
    """A warp's elements in one 16-byte load a lane."""
    return 32 * (16 // (2 if ct in HALF else 4))


def _gemv_loads(k: int, ct: str, split: int = 1) -> int:
    """gml::gemv_nt's U: 16-byte loads a lane in flight, its share of a column's (split
    warps a column) where k is static."""
    if not GEMV_LOADS_PER_COLUMN or k <= 0:
        return 8
    step = split * _warp_elements(ct)  # elements a load of the column's warps
    return min(16, max(1, -(-k // step)))


def _gemv_split(n: int, k: int, ct: str) -> int:
    """gml::gemv_nt's S: warps a column (1, 2, 4 or 8), doubled while a warp a column
    leaves fewer than DECODE_TARGET_BLOCKS blocks (GPT-2's fc2: 768 columns are 96
    blocks of 8 warps, on 96 of 132 SMs) and each warp keeps at least a load a lane.
    1 where n or k is dynamic, or GEMV_SPLIT is off."""
    step = _warp_elements(ct)
    s = 1
    while GEMV_SPLIT and n > 0 and k > 0 and s < 8:
        if -(-n * s // 8) >= DECODE_TARGET_BLOCKS or k < 2 * s * step:
            break
        s *= 2
    return s


def _phase(body: str, runs: str, blocks: str, args: Sequence[str]) -> str:
    """The same kernel as a phase of a persistent chain (chains.py): `body`, the kernel's
    device function, over `blocks` blocks where `runs`, with the launch's arguments."""
    return f"gml::phase<&{body}>({runs}, {blocks}, {', '.join(args)})"


# Prefill attention splits the keys when its row blocks would not fill the GPU (fewer than
# an H200's 132 SMs): chunks of a multiple of 128 keys (the kernel's key tile is 64 or
# 32), enough of them for about 4 blocks an SM, each chunk at least 128 keys.
PREFILL_SPLIT_BELOW, PREFILL_TARGET_BLOCKS, PREFILL_CHUNK_MIN = 132, 528, 128
PREFILL_ROWS = 64  # gml::ATTN_PREFILL_ROWS


def _prefill_split(batches: int, rows: int, keys: int) -> tuple[int, int]:
    """(keys per chunk, chunks) of gml::attention_prefill for `batches` (batch x kv head)
    of `rows` query rows over `keys` keys; one chunk when the row blocks fill the GPU."""
    blocks = batches * -(-rows // PREFILL_ROWS)
    if blocks <= 0 or blocks >= PREFILL_SPLIT_BELOW or keys <= PREFILL_CHUNK_MIN:
        return max(keys, 1), 1
    want = -(-PREFILL_TARGET_BLOCKS // blocks)
    chunk = -(-keys // want)
    chunk = max(PREFILL_CHUNK_MIN, -(-chunk // PREFILL_CHUNK_MIN) * PREFILL_CHUNK_MIN)
    return chunk, -(-keys // chunk)


def _decode_split(blocks: int, keys: int, target: int) -> tuple[int, int]:
    """(keys per chunk, chunks) for `blocks` (batch x kv head) blocks over `keys` keys,
    about `target` blocks in all."""
    want = max(1, -(-target // max(blocks, 1)))
    chunk = -(-max(keys, 1) // want)
    chunk = min(DECODE_CHUNK_MAX, max(DECODE_CHUNK_MIN, -(-chunk // 32) * 32))
    return chunk, max(1, -(-keys // chunk))


@dataclass(frozen=True)
class Scratch:
    """A temporary buffer one op needs (attention scores), live for that op only."""

    name: str
    nbytes: Callable[[Env], int]


@dataclass
class Weight:
    value: SSAValue
    transposed: bool  # upload the last two dims swapped (a Linear weight as n x k)
    rows: int = (
        0  # upload with this many rows (zeros below the weight's own): 16-byte aligned GEMMs
    )
    # a layer norm folded into the Linear `value` (gml::LnFoldRows): the norm's (weight,
    # bias), either None where absent, and which part this upload is: "scaled" (value's
    # rows along k times the norm's weight, as value's dtype), "c1" (its sums over k) or
    # "c2" (value . bias), each of the two an f32 vector a column
    norm: tuple[SSAValue | None, SSAValue | None] | None = None
    part: str = ""

    @property
    def sources(self) -> list[SSAValue]:
        """The load-time values this upload is computed from."""
        return [self.value, *(v for v in self.norm or () if v is not None)]


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


def index_params(rank: int, dom: Shape, strides: Sequence[Sequence[int]]) -> list[int]:
    """An Index<rank, K>'s slots: dims that every operand walks contiguously coalesced
    (and size-1 dims dropped), right-aligned: [rank', dims.., strides of each operand..]."""
    merged: list[tuple[int, list[int]]] = []  # innermost first
    for d in range(len(dom) - 1, -1, -1):
        if dom[d] == 1:
            continue
        if merged and all(
            s[d] == m * merged[-1][0] for s, m in zip(strides, merged[-1][1], strict=True)
        ):
            merged[-1] = (merged[-1][0] * dom[d], merged[-1][1])
        else:
            merged.append((dom[d], [s[d] for s in strides]))
    if not merged:
        merged = [(1, [0] * len(strides))]
    merged.reverse()
    pad = max(rank, 1) - len(merged)
    dims = [1] * pad + [n for n, _ in merged]
    wide = _numel(dom) >= 2**31  # the kernel's index math then needs 64 bits
    out = [-len(merged) if wide else len(merged), *dims[-rank:]] if rank else [1]
    for k in range(len(strides)):
        st = [0] * pad + [m[1][k] for m in merged]
        out += st[-rank:] if rank else []
    return out


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


class _Lowering:
    def __init__(self, fn: func.FuncOp, more: MoreHandlers | None = None):
        self.more = more  # lowerings kept in other modules (backends/gpu/lower.py)
        self.fn = fn
        self.kernels: list[str] = []
        self.bodies: list[str] = []  # per kernel: its device body (a chain calls it), or ""
        self.kernel_names: dict[str, str] = {}
        self.body: list[str] = []
        self.slots: list[Slot] = []
        self.free = load_time_values(fn)
        self.weights: list[Weight] = []
        self.weight_index: dict[tuple[Any, ...], int] = {}
        self.views: list[tuple[SSAValue, SSAValue, ViewRule]] = []
        self.offset_slot: dict[Any, int] = {}
        self.defined_at: dict[SSAValue, int] = {}  # results written before their op's step
        self.done: set[Operation] = set()  # ops already emitted as another op's epilogue
        self.fold_chain: dict[Operation, gml.SdpaOp] = {}  # views attention reads through
        self.fold_out: dict[gml.SdpaOp, gml.PermuteOp] = {}  # output permutes it writes
        self.step = 0
        self.step_lines: list[tuple[int, int]] = []  # each lowered op's stretch of body
        self.chain_part: chains.Part | None = None  # the op being lowered: its chain phases
        self.chain_parts: list[chains.Part | None] = []  # per step_lines entry
        self.scratch: list[tuple[Scratch, int]] = []
        # decode kernels in program order: (the placeholder of a GEMV's launch for its
        # gml::L2Ahead, or None; the ranges it reads that nothing writes: (pointer, bytes))
        self.ahead: list[tuple[str | None, list[tuple[str, str]]]] = []
        self.pitches: dict[SSAValue, Callable[[Env], int]] = {}  # Lowered.pitches
        # the one bucket of a function without dynamic dims: a branch on a size that
        # bucket never takes is left out of the source (nvcc then never compiles the
        # templates it would instantiate: the GEMV's four row counts in a prefill took
        # three quarters of GPT-2's build)
        self.evaluator = ShapeEvaluator(fn)  # every bucket's shapes (Lowered.bucket)
        args = [shape_of(a.type) for a in fn.body.block.args]
        self.static: Env | None = None
        if all(DYN not in s for s in args):
            self.static = Env(*self.evaluator.evaluate(args))
        # what holds at every bucket: dynamic dims proven equal (symdims.py); the one
        # bucket's sizes where there is one
        known = (self.static.shapes, self.static.ints) if self.static is not None else None
        self.sym = SymbolicShapes(fn, known)
        self.decode_blocks = DECODE_TARGET_BLOCKS  # as lowered (slots evaluate later)

    # ------------------------------------------------------------ helpers
    def slot(self, f: Slot) -> int:
        self.slots.append(f)
        return len(self.slots) - 1

    def slots_of(self, f: Callable[[Env], Sequence[int]], n: int) -> int:
        """n consecutive slots holding f(env)."""
        first = len(self.slots)
        for i in range(n):
            self.slots.append(partial(_nth, f, i))
        return first

    def weight(
        self,
        v: SSAValue,
        transposed: bool = False,
        rows: int = 0,
        norm: tuple[SSAValue | None, SSAValue | None] | None = None,
        part: str = "",
    ) -> int:
        key = (v, transposed, rows, norm, part)
        if key not in self.weight_index:
            self.weight_index[key] = len(self.weights)
            self.weights.append(Weight(v, transposed, rows, norm, part))
        return self.weight_index[key]

    def ptr(self, v: SSAValue | Scratch, ct: str | None = None, const: bool = False) -> str:
        q = "const " if const else ""
        if isinstance(v, SSAValue):
            ct = ct or _ct(v)
            if v in self.free:
                return f"static_cast<const {ct}*>(W[{self.weight(v)}])"
        assert ct is not None
        if v not in self.offset_slot:
            self.offset_slot[v] = self.slot(partial(_offset, v))
        return f"reinterpret_cast<{q}{ct}*>(A + P[{self.offset_slot[v]}])"

    def view(self, v: SSAValue, src: SSAValue, rule: ViewRule) -> int:
        """Make `v` a view of `src` in the buckets where `rule` gives an offset; the
        slot returned holds 1 where the bucket must copy instead."""
        if src in self.free:  # weights are not in the arena: always copy
            return self.slot(lambda env: 1)
        self.views.append((v, src, rule))
        return self.slot(lambda env: 0 if v in env.views else 1)

    def emit(self, line: str) -> None:
        self.body.append("  " + line)

    def never(self, taken: Callable[[Env], bool]) -> bool:
        """Whether no bucket takes a branch (`taken` false at the one static bucket)."""
        return self.static is not None and not taken(self.static)

    @contextmanager
    def dead_if(self, dead: bool) -> Iterator[None]:
        """Code emitted (and kernels defined) inside is dropped when `dead`; its slots,
        weights and scratch stay, so every bucket's parameter table keeps its layout."""
        if not dead:
            yield
            return
        body, kernels, names = self.body, self.kernels, dict(self.kernel_names)
        bodies, part = self.bodies, self.chain_part
        self.body, self.kernels, self.bodies = [], list(kernels), list(bodies)
        try:
            yield
        finally:
            self.body, self.kernels, self.kernel_names = body, kernels, names
            self.bodies, self.chain_part = bodies, part

    def kernel(self, text: str, body: str = "") -> str:
        """A generated kernel's name; identical kernels (every layer's) are emitted once.
        `body`, where given, is its device function (`KERNEL_body`), which the kernel and
        any chain (chains.py) call; it goes before every unit."""
        key = body + text
        if key not in self.kernel_names:
            name = f"k{len(self.kernels)}"
            self.kernel_names[key] = name
            self.kernels.append(text.replace("KERNEL", name))
            self.bodies.append(body.replace("KERNEL", name))
        return self.kernel_names[key]

    def comment(self, ops: Sequence[Operation]) -> None:
        for op in ops:
            self.emit(f"// {op.name} {where(op)}")

    def launch(self, kernel: str, n: int, args: str, per_thread: str = "") -> None:
        """A grid-stride launch over P[n] elements, `per_thread` of them a thread where
        given (a vector loop's: vectorize.py)."""
        count = f"P[{n}] / {per_thread}" if per_thread else f"P[{n}]"
        self.emit(
            f"if (P[{n}] > 0) {kernel}<<<gml::blocks_for({count}, {THREADS}), {THREADS}, 0, stream>>>({args});"
        )

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

    def refuse(self, op: Operation, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{op.name} at {where(op)}: {why}")

    # ------------------------------------------------------------ elementwise
    def _group(self, op: Operation) -> tuple[list[Operation], list[SSAValue], list[SSAValue]]:
        """(members, yielded values, results) of an elementwise op or gml.fusion."""
        if isinstance(op, gml.FusionOp):
            members = [m for m in op.body.block.ops if not isinstance(m, gml.YieldOp)]
            term = op.body.block.last_op
            assert isinstance(term, gml.YieldOp)
            return members, list(term.values), list(op.results)
        return [op], list(op.results), list(op.results)

    def _externals(self, members: Sequence[Operation]) -> list[SSAValue]:
        inside = {r for m in members for r in m.results}
        out: list[SSAValue] = []
        for m in members:
            for v in m.operands:
                if v not in inside and v not in out:
                    out.append(v)
        return out

    def _body(
        self, members: Sequence[Operation], val: dict[SSAValue, str], indent: str, prefix: str = "s"
    ) -> list[str]:
        """Scalar code for the members, given their external operands' values."""
        lines = []
        for j, m in enumerate(members):
            r = m.results[0]
            ct = _vt(m.operands[0]) if m.operands else _vt(r)
            if isinstance(m, gml.WhereOp):
                ct = _vt(m.lhs)
            expr = _scalar_expr(m, [val[v] for v in m.operands], ct)
            if _ct(r) in HALF:  # each member rounds its result, as the ops one by one would
                expr = f"gml::rounded<{_ct(r)}>({expr})"
            lines.append(f"{indent}const {_vt(r)} {prefix}{j} = {expr};  // {m.name}")
            val[r] = f"{prefix}{j}"
        return lines

    def elementwise(self, op: Operation) -> None:
        members, yielded, results = self._group(op)
        for v in [v for m in members for v in (*m.operands, *m.results)]:
            if ctype(v.type.element_type) is None:  # type: ignore[attr-defined]
                raise self.refuse(op, f"unsupported element type {v.type}")
        externals = self._externals(members)
        member_results = [m.results[0] for m in members]
        rank = max((len(shape_of(r.type)) for r in member_results), default=0)
        k = len(externals) + len(results)

        def params(env: Env) -> list[int]:
            dom = _broadcast([env.shapes[r] for r in member_results])
            st = [_strides_in(env.shapes[v], dom) for v in [*externals, *yielded]]
            return index_params(rank, dom, st)

        ix = self.slots_of(params, 1 + rank * (1 + k))
        n = self.slot(lambda env: _numel(_broadcast([env.shapes[r] for r in member_results])))
        # a result smaller than the domain is stored once per element; one that is the
        # domain at every bucket (dynamic dims proven equal: symdims.py) needs no check
        dom = tuple(self.sym.broadcast([self.sym[r] for r in member_results]))
        once = [self.sym[y] != dom for y in yielded]
        # V elements a thread where the bucket's shapes allow it (vectorize.py): a slot
        # holding V or 1, none where no bucket (the one static bucket) would take it
        wide = vectorize.width(_itemsize(x) for x in [*externals, *results])
        width = partial(_vector_width, params, rank, len(externals), len(results), wide)
        vec = rank > 0 and not any(once) and not self.never(lambda env: width(env) > 1)
        per_thread = self.slot(width) if vec else None
        args = [f"const {_ct(v)}* __restrict__ p{i}" for i, v in enumerate(externals)]
        args += [f"{_ct(r)}* __restrict__ q{i}" for i, r in enumerate(results)]
        head = f"int64_t n, {'int64_t width, ' if vec else ''}gml::Index<{rank}, {k}> ix"
        lines = [f"__global__ void KERNEL({head}, {', '.join(args)}) {{"]
        if vec:
            elem = {x: f"x{i}[e]" for i, x in enumerate(externals)}
            body = self._body(members, elem, "        ")
            lines += vectorize.loop(
                wide, rank, [_vt(x) for x in externals], [_vt(y) for y in yielded], body,
                [elem[y] for y in yielded],
            )  # fmt: skip
        lines += [
            "  GML_FOR(i, n) {",
            f"    int64_t off[{max(k, 1)}];",
            "    gml::offsets(ix, i, off);",
        ]
        val: dict[SSAValue, str] = {}
        for i, v in enumerate(externals):
            val[v] = f"x{i}"
            lines.append(f"    const {_vt(v)} x{i} = gml::load(p{i} + off[{i}]);")
        lines += self._body(members, val, "    ")
        for i, y in enumerate(yielded):
            store = f"gml::store(q{i} + off[{len(externals) + i}], {val[y]});"
            if once[i]:
                store = f"if (gml::first_along_broadcast(ix, i, {len(externals) + i})) {store}"
            lines.append(f"    {store}")
        lines += ["  }", "}"]
        name = self.kernel("\n".join(lines))
        self.comment(members)
        ptrs = [self.ptr(v, const=True) for v in externals] + [self.ptr(r) for r in results]
        index = f"gml::index_from<{rank}, {k}>(P + {ix})"
        if per_thread is None:
            self.launch(name, n, f"P[{n}], {index}, {', '.join(ptrs)}")
            return
        each = f"P[{per_thread}]"
        self.launch(name, n, f"P[{n}], {each}, {index}, {', '.join(ptrs)}", per_thread=each)

    # ------------------------------------------------------------ data movement
    def reshape(self, op: gml.ReshapeOp) -> None:
        self.views.append((op.result, op.input, lambda env: 0))  # every arena value is contiguous

    def copy(
        self,
        op: Operation,
        src: SSAValue,
        out: SSAValue,
        params: Callable[[Env], list[int]],
        rank: int,
        base: int | None = None,
        need: int | None = None,
    ) -> None:
        """out (contiguous) = src read through the strides params(env) gives (an Index
        over out's shape: [src strides, out strides]); skipped where `need` is 0."""
        ix = self.slots_of(params, 1 + rank * 3)
        n = self.slot(lambda env: _numel(env.shapes[out]))
        src_ptr = self.ptr(src, const=True) + (f" + P[{base}]" if base is not None else "")
        self.comment([op])
        sdpa = self.fold_chain.get(op)
        if sdpa is not None:  # attention may read (or write) through strides instead
            own = self.slots[need] if need is not None else (lambda env: 1)
            need = self.slot(lambda env: 0 if self.attention_fold(sdpa, env) else own(env))
        cond = f"if (P[{need}]) " if need is not None else ""
        self.emit(
            f"{cond}gml::copy_strided<{_ct(out)}, {rank}><<<gml::blocks_for(P[{n}], {THREADS}), {THREADS}, 0, stream>>>"
            f"(P[{n}], gml::index_from<{rank}, 2>(P + {ix}), {src_ptr}, {self.ptr(out)});"
        )

    def permute(self, op: gml.PermuteOp) -> None:
        perm = list(op.dims.get_values())
        x, y = op.input, op.result

        def params(env: Env) -> list[int]:
            src = _contiguous_strides(env.shapes[x])
            out = env.shapes[y]
            return index_params(len(perm), out, [[src[p] for p in perm], _contiguous_strides(out)])

        def same_bytes(env: Env) -> int | None:  # only size-1 dims move: a view
            moved = [p for p in perm if env.shapes[x][p] != 1]
            return 0 if moved == sorted(moved) else None

        self.copy(op, x, y, params, len(perm), need=self.view(y, x, same_bytes))

    def expand(self, op: gml.ExpandOp) -> None:
        x, y = op.input, op.result
        rank = len(shape_of(y.type))

        def params(env: Env) -> list[int]:
            out = env.shapes[y]
            return index_params(
                rank, out, [_strides_in(env.shapes[x], out), _contiguous_strides(out)]
            )

        def same_bytes(env: Env) -> int | None:
            return 0 if _numel(env.shapes[x]) == _numel(env.shapes[y]) else None

        self.copy(op, x, y, params, rank, need=self.view(y, x, same_bytes))

    def slice(self, op: gml.SliceOp) -> None:
        x, y = op.input, op.result
        rank = len(shape_of(x.type))
        d = op.dim.value.data % rank

        def bounds(env: Env) -> tuple[int, int]:
            start = env.ints[op.dyn_start] if op.dyn_start else op.start.value.data
            end = env.ints[op.dyn_end] if op.dyn_end else op.end.value.data
            first, _, step = slice(start, end, op.step.value.data).indices(env.shapes[x][d])
            return first, step

        def base(env: Env) -> int:
            return bounds(env)[0] * _contiguous_strides(env.shapes[x])[d]

        def params(env: Env) -> list[int]:
            st = _contiguous_strides(env.shapes[x])
            st[d] *= bounds(env)[1]
            out = env.shapes[y]
            return index_params(rank, out, [st, _contiguous_strides(out)])

        def contiguous(env: Env) -> int | None:  # a block of whole rows: a view
            s = env.shapes[x]
            one_block = _numel(s[:d]) == 1 or _numel(s[d + 1 :]) == 0
            return (
                base(env) if one_block and (bounds(env)[1] == 1 or env.shapes[y][d] <= 1) else None
            )

        self.copy(op, x, y, params, rank, self.slot(base), need=self.view(y, x, contiguous))

    def concat(self, op: gml.ConcatOp) -> None:
        """One launch for all inputs: each output element finds its input."""
        y = op.result
        rank = len(shape_of(y.type))
        d = op.dim.value.data % rank
        xs = list(op.inputs)
        if len(xs) > 8:
            raise self.refuse(op, "concatenating more than 8 tensors")

        def params(env: Env) -> list[int]:
            s = env.shapes[y]
            outer, inner = _numel(s[:d]), _numel(s[d + 1 :])
            sizes = [env.shapes[x][d] for x in xs]
            return [outer, s[d], inner, *sizes]

        p = self.slots_of(params, 3 + len(xs))
        n = self.slot(lambda env: _numel(env.shapes[y]))
        user = self._sole_user(y)
        if (
            isinstance(user, gml.SdpaOp)
            and y in (user.key, user.value)
            and self._kv_pieces(user, y) != [y]
        ):
            # the decode attention kernel reads the pieces in place: no copy there
            n = self.slot(partial(self._concat_size, user, y))
        ptrs = ", ".join(self.ptr(x, const=True) for x in xs)
        sizes = ", ".join(f"P[{p + 3 + i}]" for i in range(len(xs)))
        self.comment([op])
        self.launch(
            f"gml::concat_mid<{_ct(y)}, {len(xs)}>",
            n,
            f"P[{p}], P[{p + 1}], P[{p + 2}], gml::Pieces<{_ct(y)}, {len(xs)}>{{{{{ptrs}}}, {{{sizes}}}}}, {self.ptr(y)}",
        )

    def _concat_size(self, sdpa: gml.SdpaOp, y: SSAValue, env: Env) -> int:
        """A concat's element count, 0 where the decode attention reads its pieces."""
        return 0 if self._decode_attention(sdpa, env) else _numel(env.shapes[y])

    def full(self, op: gml.FullOp) -> None:
        self._fill(op, op.value.value.data, 0.0)

    def arange(self, op: gml.ArangeOp) -> None:
        self._fill(op, op.start.value.data, op.step.value.data)

    def _fill(self, op: Operation, start: float, step: float) -> None:
        y = op.results[0]
        n = self.slot(lambda env: _numel(env.shapes[y]))
        self.comment([op])
        self.launch(
            f"gml::arange<{_ct(y)}>", n, f"P[{n}], {float(start)!r}, {float(step)!r}, {self.ptr(y)}"
        )

    def embedding(self, op: gml.EmbeddingOp) -> None:
        w, idx, y = op.weight, op.indices, op.result
        p = self.slots_of(
            lambda env: [_numel(env.shapes[idx]), env.shapes[w][1], env.shapes[w][0]], 3
        )
        total = self.slot(lambda env: _numel(env.shapes[y]))
        self.comment([op])
        self.launch(
            f"gml::embedding<{_ct(y)}, {_ct(idx)}>",
            total,
            f"P[{p}], P[{p + 1}], P[{p + 2}], {self.ptr(w, const=True)}, {self.ptr(idx, const=True)}, {self.ptr(y)}",
            per_thread=f"gml::vec_width<{_ct(y)}>(P[{p + 1}])",  # 16 bytes where rows allow
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

        def params(env: Env) -> list[int]:
            s, dom = env.shapes[x], _broadcast([env.shapes[i] for i in idx])
            xs = _contiguous_strides(s)
            return [
                _numel(env.shapes[y]), _numel(dom), _numel(s[d1:]), _numel(s[d0:]),
                *index_params(rank, dom, [_strides_in(env.shapes[i], dom) for i in idx]),
                *(s[d] for d in dims), *(xs[d] for d in dims),
            ]  # fmt: skip

        p = self.slots_of(params, 4 + 1 + rank * (1 + k) + 2 * k)
        ts = p + 5 + rank * (1 + k)
        ptrs = ", ".join(self.ptr(i, const=True) for i in idx)
        self.comment([op])
        rows = ", ".join(f"P[{ts + j}]" for j in range(k))
        strides = ", ".join(f"P[{ts + k + j}]" for j in range(k))
        self.launch(
            f"gml::gather_nd<{_ct(y)}, {it}, {rank}, {k}>",
            p,
            f"P[{p}], P[{p + 1}], P[{p + 2}], P[{p + 3}], gml::index_from<{rank}, {k}>(P + {p + 4}), "
            f"gml::IndexTensors<{it}, {k}>{{{{{ptrs}}}, {{{rows}}}, {{{strides}}}}}, {self.ptr(x, const=True)}, {self.ptr(y)}",
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
        self.launch(
            f"gml::cumsum_mid<{_ct(x)}, {_ct(y)}>",
            outer,
            f"P[{p}], P[{p + 1}], P[{p + 2}], {self.ptr(x, const=True)}, {self.ptr(y)}",
        )

    # ------------------------------------------------------------ norms (reductions: tensor_ops.py)
    def softmax(self, op: gml.SoftmaxOp | gml.LogSoftmaxOp) -> None:
        x, y = op.input, op.result
        rank = len(shape_of(x.type))
        if rank == 0 or op.dim.value.data % rank != rank - 1:
            raise self.refuse(op, "softmax over a dim other than the last")
        p = self.slots_of(lambda env: [env.shapes[x][-1], _numel(env.shapes[x][:-1])], 2)
        log = "true" if isinstance(op, gml.LogSoftmaxOp) else "false"
        self.comment([op])
        self.emit(
            f"gml::softmax_rows<{_ct(x)}, {_ct(y)}, {log}><<<unsigned(P[{p + 1}]), {THREADS}, 0, stream>>>"
            f"(P[{p}], {self.ptr(x, const=True)}, {self.ptr(y)}, 1.0f, gml::NoBias{{}});"
        )

    def layer_norm(self, op: gml.LayerNormOp) -> None:
        x, y = op.input, op.result
        nd = op.ndim.value.data

        def split(env: Env) -> list[int]:
            s = env.shapes[x]
            return [_numel(s[len(s) - nd :]), _numel(s[: len(s) - nd])]

        p = self.slots_of(split, 2)
        n, rows = f"P[{p}]", f"P[{p + 1}]"
        w = self.ptr(op.weight, const=True) if op.weight else "nullptr"
        b = self.ptr(op.bias, const=True) if op.bias else "nullptr"
        args = f"{self.ptr(x, const=True)}, {w}, {b}, {self.ptr(y)}, {op.eps.value.data!r}f"
        self.comment([op])
        mm = self._normalized_by(op)
        # where the GEMV normalizes its rows itself (decode: up to 4 rows; nd is 1 there, so
        # they are its rows), this kernel is not needed; no launch for no rows either
        cond = f"if ({rows} > {4 if mm else 0})"
        # a row in registers (one read of x) up to LN_ROWS[-1] elements of a static width,
        # the smallest variant that holds it (each is a template instantiation for nvcc)
        ct = _ct(x)
        width = shape_of(x.type)[len(shape_of(x.type)) - nd :]
        row = next(
            (r for r in LN_ROWS if ct in _DTYPE and DYN not in width and _numel(width) <= r), None
        )
        if row is None:
            self.emit(
                f"{cond} gml::layer_norm_rows<{ct}><<<unsigned({rows}), {THREADS}, 0, stream>>>"
                f"({n}, {args});"
            )
            return
        self.emit(
            f"{cond} gml::layer_norm_reg<{ct}, {row}><<<gml::layer_norm_blocks<{row}>({rows}), "
            f"gml::LN_THREADS, 0, stream>>>({rows}, {n}, {args});"
        )

    def _normalized_by(self, ln: gml.LayerNormOp) -> gml.MatmulOp | None:
        """The x @ W that may normalize its rows itself (its GEMV), when `ln` (over the last
        dim, weights known at load) feeds only it, possibly through a reshape."""
        if ln.ndim.value.data != 1 or any(
            v is not None and v not in self.free for v in (ln.weight, ln.bias)
        ):
            return None
        user = self._sole_user(ln.result)
        if isinstance(user, gml.ReshapeOp):
            user = self._sole_user(user.result)
        if not isinstance(user, gml.MatmulOp) or user.rhs not in self.free:
            return None
        a = user.lhs
        if a is not ln.result and not (
            isinstance(a.owner, gml.ReshapeOp) and a.owner.input is ln.result
        ):
            return None
        k = shape_of(ln.input.type)[-1]
        if (
            k < 0
            or shape_of(a.type)[-1] != k
            or len(shape_of(user.rhs.type)) != 2
            or _ct(a) not in _DTYPE
        ):
            return None
        # every warp re-reads the row to normalize it: worth it while that is small next
        # to the weight (not for a vocabulary-sized head)
        return user if shape_of(user.rhs.type)[1] <= 16384 else None

    # ------------------------------------------------------------ products
    def matmul(self, op: gml.MatmulOp) -> None:
        a, b, y = op.lhs, op.rhs, op.result
        ra, rb = len(shape_of(a.type)), len(shape_of(b.type))
        ct = _ct(y)
        if ct not in _DTYPE:
            raise self.refuse(op, f"matmul on {ct} (the GPU backend multiplies f32, f16 and bf16)")
        if ra < 2 or rb < 2:
            raise self.refuse(op, "matmul with a 1-d operand")
        dt = _DTYPE[ct]
        if rb == 2 and b in self.free:  # x @ W: W uploaded as n x k (a Linear's own layout)
            return self.linear(op)
        if ra != rb:
            raise self.refuse(op, "batched matmul with different operand ranks")

        def dims(env: Env) -> list[int]:
            xa, xb = env.shapes[a], env.shapes[b]
            if xa[:-2] != xb[:-2]:
                raise UnsupportedOpError(f"{op.name} at {where(op)}: broadcast batch dims")
            return [xa[-2], xb[-1], xa[-1], _numel(xa[:-2])]

        p = self.slots_of(dims, 4)
        M, N, K, B = (f"P[{p + i}]" for i in range(4))
        self.comment([op])
        self.emit(
            f"if (int e = ctx->gemm(ctx, stream, {dt}, {dt}, false, {M}, {N}, {K}, "
            f"{self.ptr(a, const=True)}, {K}, {M} * {K}, {self.ptr(b, const=True)}, {N}, {K} * {N}, "
            f"{self.ptr(y)}, {N}, {M} * {N}, {B}, 1.0f)) return e;"
        )

    def _sole_user(self, v: SSAValue) -> Operation | None:
        """The one top-level op reading `v` (through a gml.fusion body), if exactly one."""
        users: set[Operation] = set()
        for u in v.uses:
            top = u.operation
            while not isinstance(top.parent_op(), func.FuncOp | None):
                top = top.parent_op()  # type: ignore[assignment]
            users.add(top)
        return users.pop() if len(users) == 1 else None

    def _epilogue(self, mm: gml.MatmulOp) -> list[tuple[Operation, gml.ReshapeOp | None]]:
        """The elementwise ops or fusions that consume the matmul result one after the
        other (each the sole reader of the last, possibly through a reshape), which the
        GEMV or the GEMM's epilogue can apply before it stores, element i of the product
        to element i of the group's one result: each group's domain is, at every bucket,
        the shape of the value it reads from the chain (dynamic dims included: symdims.py
        proves them equal, so a dynamic batch keeps the fusion), which it yields over;
        every other operand defined before the matmul. (group, reshape feeding it) pairs."""
        y = mm.result
        block = mm.parent_block()
        assert block is not None
        before: set[SSAValue] = set(block.args)
        for o in block.ops:
            if o is mm:
                break
            before.update(o.results)
        chain: list[tuple[Operation, gml.ReshapeOp | None]] = []
        v: SSAValue = y
        via: gml.ReshapeOp | None = None
        while True:
            user = self._sole_user(v)
            if isinstance(user, gml.ReshapeOp) and via is None and chain:
                via, v = user, user.result
                continue
            if user is None or not isinstance(user, (gml.FusionOp, *gml.ELEMENTWISE)):
                break
            members, yielded, results = self._group(user)
            dom = self.sym.broadcast([self.sym[m.results[0]] for m in members])
            if len(results) != 1 or not covers(self.sym[v], tuple(dom)):
                break
            if self.sym[yielded[0]] != tuple(dom):
                break
            inside = {r for m in members for r in m.results}
            ext = [e for e in self._externals(members) if e is not v]
            if any(e not in before and e not in self.free and e not in inside for e in ext):
                break
            if any(
                ctype(x.type.element_type) is None
                for m in members
                for x in (*m.operands, *m.results)
            ):  # type: ignore[attr-defined]
                break
            chain.append((user, via))
            v, via = results[0], None
        return chain

    def _gemv_operands(
        self, op: gml.MatmulOp, ldm: int, split: int, gemv_live: bool
    ) -> tuple[str, str, str, str]:
        """(rows type, rows, weight) of x @ W's GEMV, and W as the GEMM branch reads it.
        The rows are x itself; or (decode after a layer norm that feeds only this product) x through
        the norm, folded into the weight (gml::LnFoldRows: W' and the column's c1, c2) or
        computed by each warp (gml::LnRows). The fold takes a warp a column and no chain;
        W itself is uploaded only where a bucket multiplies more rows (cuBLAS after the
        norm's kernel) and the folded parts only where one runs the GEMV, so a decode
        program and a prefill program each upload one copy. A weight padded to an aligned
        width keeps gml::LnRows."""
        a, b = op.lhs, op.rhs
        ct = _ct(op.result)
        ln_src = a.owner.input if isinstance(a.owner, gml.ReshapeOp) else a
        ln = ln_src.owner if isinstance(ln_src.owner, gml.LayerNormOp) else None
        if ln is not None and self._normalized_by(ln) is not op:
            ln = None
        gemm_dead = self.never(lambda env: _numel(env.shapes[a][:-1]) > 4)
        fold = gemv_live and ln is not None and FOLD_NORM and split == 1 and not CHAIN
        fold = fold and not ldm  # an odd width padded for cuBLAS: not run on a GPU folded
        w = (
            "nullptr"  # no bucket takes the GEMM branch, which alone reads it
            if fold and gemm_dead
            else f"static_cast<const {ct}*>(W[{self.weight(b, transposed=True, rows=ldm)}])"
        )
        if ln is None:
            return f"gml::Rows<{ct}>", f"gml::Rows<{ct}>{{{self.ptr(a, const=True)}}}", w, w
        x = self.ptr(ln.input, const=True)
        if fold:
            norm = (ln.weight, ln.bias)

            def part(name: str, t: str) -> str:
                return f"static_cast<const {t}*>(W[{self.weight(b, True, 0, norm, name)}])"

            scaled, c1, c2 = part("scaled", ct), part("c1", "float"), part("c2", "float")
            rows_t = f"gml::LnFoldRows<{ct}>"
            return rows_t, f"{rows_t}{{{x}, {c1}, {c2}, {ln.eps.value.data!r}f}}", scaled, w
        g = self.ptr(ln.weight, const=True) if ln.weight else "nullptr"
        bias = self.ptr(ln.bias, const=True) if ln.bias else "nullptr"
        rows_t = f"gml::LnRows<{ct}>"
        return rows_t, f"{rows_t}{{{x}, {g}, {bias}, {ln.eps.value.data!r}f}}", w, w

    def linear(self, op: gml.MatmulOp) -> None:
        """x @ W with W a weight: up to 4 rows, a generated GEMV with the consumers fused
        in (bias, activation, residual); otherwise cuBLAS, then the consumers' kernels."""
        a, b, y = op.lhs, op.rhs, op.result
        ct, dt = _ct(y), _DTYPE[_ct(y)]
        p = self.slots_of(
            lambda env: [_numel(env.shapes[a][:-1]), env.shapes[a][-1], env.shapes[b][1]], 3
        )
        M, K, N = (f"P[{p + i}]" for i in range(3))
        # cuBLAS's Hopper kernels want every dim 16-byte aligned: a weight with an odd
        # number of outputs (GPT-2's 50257-token head) is uploaded with zero rows up to the
        # next multiple and multiplied at that width (unpadded, cuBLAS picks an sm75
        # kernel: 424 us for that head at T=512 on the H200). The padded product is the
        # function's result itself where only the return reads it (the caller gets a view
        # whose rows are ldm apart, as torch.compile returns it); otherwise it goes to a
        # scratch that the consumers' kernel reads, or that is copied out unpadded
        esize = 2 if ct in HALF else 4
        n_static = shape_of(b.type)[1]
        padded = PAD_WEIGHTS and n_static > 0 and n_static % (16 // esize) != 0
        ldm = -(-n_static // (16 // esize)) * (16 // esize) if padded else 0
        x = self.ptr(a, const=True)
        split = _gemv_split(n_static, shape_of(a.type)[-1], ct)
        # the row counts some bucket has: a multiple of the rows' static factor (GPT's 512
        # tokens of a dynamic batch: none of 1..4, no GEMV instantiated), the one count of
        # a static function
        rows_form = numel(self.sym[a][:-1])
        live = [r for r in (1, 2, 3, 4) if rows_form.can_be(r)]
        rows_t, gemv_x, gemv_w, w = self._gemv_operands(op, ldm, split, bool(live))
        chain = self._epilogue(op)
        args: list[str] = []
        ptrs: list[str] = []
        val: dict[SSAValue, str] = {y: "acc"}
        # the epilogue: in the GEMV (body; its operands, loads, loaded by gemv_nt once x is
        # ready into the fields of a struct) and in a kernel after the GEMM (flat_body)
        body: list[str] = []
        loads: list[str] = []
        fields: list[str] = []
        flat_body: list[str] = []
        last: SSAValue = y
        for g, (group, via) in enumerate(chain):
            if via is not None:
                self.reshape(via)
                val[via.result] = val[last]
            members, yielded, results = self._group(group)
            externals = [e for e in self._externals(members) if e not in val]
            rank = len(_broadcast([shape_of(m.results[0].type) for m in members]))
            member_results = [m.results[0] for m in members]

            def params(
                env: Env,
                externals: list[SSAValue] = externals,
                mr: Sequence[SSAValue] = member_results,
                rank: int = rank,
                out: SSAValue = yielded[0],
            ) -> list[int]:
                dom = _broadcast([env.shapes[r] for r in mr])
                # what _epilogue proved for every bucket, checked at this one (not an
                # assert: `python -O` would drop it, and a wrong fusion writes wrong values)
                if env.shapes[out] != dom or _numel(dom) != _numel(env.shapes[y]):
                    raise RuntimeError(
                        f"internal error: {op.name} at {where(op)} fused consumers over {dom} "
                        f"into a product of {env.shapes[y]}"
                    )
                return index_params(rank, dom, [_strides_in(env.shapes[e], dom) for e in externals])

            ix = self.slots_of(params, 1 + rank * (1 + len(externals)))
            args.append(f"gml::Index<{rank}, {len(externals)}> ix{g}")
            ptrs.append(f"gml::index_from<{rank}, {len(externals)}>(P + {ix})")
            offsets = [
                f"    int64_t off{g}[{max(len(externals), 1)}];",
                f"    gml::offsets(ix{g}, i, off{g});",
            ]
            flat_body += offsets
            if externals:
                loads += offsets
            for e in externals:
                j = len(val)
                args.append(f"const {_ct(e)}* __restrict__ p{j}")
                ptrs.append(self.ptr(e, const=True))
                load = f"gml::load(p{j} + off{g}[{externals.index(e)}])"
                fields.append(f"{_vt(e)} x{j}[M];")
                loads.append(f"    o.x{j}[r] = {load};")
                body.append(f"    const {_vt(e)} x{j} = o.x{j}[r];")
                flat_body.append(f"    const {_vt(e)} x{j} = {load};")
                val[e] = f"x{j}"
            compute = self._body(members, val, "    ", prefix=f"g{g}s")
            body += compute
            flat_body += compute
            last = results[0]
            val[last] = val[yielded[0]]
        args.append(f"{_ct(last)}* __restrict__ out")
        ptrs.append(self.ptr(last))
        signature = (
            f"int64_t n, int64_t k, {rows_t} x, const {ct}* __restrict__ w, {', '.join(args)}"
        )
        in_flight = _gemv_loads(shape_of(a.type)[-1], ct, split)
        flags = ", ".join(str(f).lower() for f in (DECODE_PREFETCH, NORM_EARLY))
        early = "" if DECODE_PREFETCH and NORM_EARLY and split == 1 else f", {flags}, {split}"
        device = [
            "template <int M, class S>",
            f"GML_D void KERNEL_body(S& sync, int64_t block, int64_t stride, int64_t, {signature}) {{",
            f"  struct Operands {{ {' '.join(fields)} }};  // what the epilogue loads",
            f"  gml::gemv_nt<{ct}, M, {in_flight}{early}>(sync, block, stride, n, k, x, w, [&](int64_t col) {{",
            "    Operands o;",
            *(
                ["#pragma unroll", "    for (int r = 0; r < M; ++r) {"]
                + ["      const int64_t i = r * n + col;"]
                + ["  " + line for line in loads]
                + ["    }"]
                if loads
                else []
            ),
            "    return o;",
            "  }, [&](int64_t col, const float (&accs)[M], const Operands& o) {",
            "#pragma unroll",
            "    for (int r = 0; r < M; ++r) {",
            f"      const {_vt(y)} acc = gml::rounded_as<{ct}>(accs[r]);",
            "      const int64_t i = r * n + col;",
            *("  " + line for line in body),
            f"      gml::store(out + i, {val[last]});",
            "    }",
            "  });",
            "}",
        ]
        names = ", ".join(["n", "k", "x", "w", *(a.rsplit(" ", 1)[1] for a in args)])
        lines = [
            "template <int M>",
            f"__global__ void KERNEL({signature}, gml::L2Ahead ahead) {{",
            "  gml::Pdl sync;",
            "  ahead.issue();",
            f"  KERNEL_body<M>(sync, blockIdx.x, gridDim.x, gridDim.x, {names});",
            "}",
        ]
        name = self.kernel("\n".join(lines), body="\n".join(device))
        self.comment([op, *(m for g, _ in chain for m in self._group(g)[0])])

        def rows_of(env: Env) -> int:
            return _numel(env.shapes[a][:-1])

        first = len(self.body)
        self.emit(f"if ({M} <= 4) {{  // decode: a few rows against a weight read once")
        self.emit(
            f"  const unsigned g = unsigned(({N} + gml::GEMV_COLS / {split} - 1) / (gml::GEMV_COLS / {split}));  // {split} warp(s) a column"
        )
        phases = []
        blocks = f"({N} + gml::GEMV_COLS - 1) / gml::GEMV_COLS"
        ahead = f"@ahead{len(self.ahead)}@"  # what the next decode kernel reads
        kw, nw = shape_of(b.type)
        wbytes = min(max(kw, 0) * max(ldm or nw, 0) * esize, L2_AHEAD_BYTES)
        self.ahead.append((ahead, [(gemv_w, str(wbytes))]))
        for i, rows in enumerate(live):
            self.emit(
                f"  {'' if i == 0 else 'else '}if ({M} == {rows}) "
                + _launch(
                    f"{name}<{rows}>",
                    "g",
                    "gml::GEMV_THREADS",
                    [N, K, gemv_x, gemv_w, *ptrs, ahead],
                )
            )
            phases.append(
                _phase(
                    f"{name}_body<{rows}, gml::ChainSync>",
                    f"{M} == {rows}",
                    blocks,
                    [N, K, gemv_x, gemv_w, *ptrs],
                )
            )
        self.emit("} else {")
        with self.dead_if(self.never(lambda env: rows_of(env) > 4)):  # the GEMM path
            fused = None if padded or not VENDOR_EPILOGUE else self._vendor_epilogue(op, chain)
            if fused is not None:  # one cuBLASLt call: bias, GELU and residual in its epilogue
                bias, gelu, resid = fused
                out = chain[-1][0].results[0]
                self.emit(
                    f"  if (int e = ctx->gemm_epilogue(ctx, stream, {dt}, {M}, {N}, {K}, {x}, {w}, "
                    f"{self.ptr(out)}, {N}, {self.ptr(bias, const=True) if bias else 'nullptr'}, "
                    f"{'true' if gelu else 'false'}, "
                    f"{self.ptr(resid, const=True) if resid else 'nullptr'})) return e;"
                )
            elif padded and not chain and self._only_returned(y):
                # one GEMM at the aligned width straight into the result's arena slot,
                # which the plan sizes rows x ldm (Lowered.pitches); no scratch, no copy
                self.pitches[y] = partial(_pitch_above_gemv, a, ldm)
                self.emit(
                    f"  if (int e = ctx->gemm(ctx, stream, {dt}, {dt}, true, {M}, {ldm}, {K}, "
                    f"{x}, {K}, 0, {w}, {K}, 0, {self.ptr(y)}, {ldm}, 0, 1, 1.0f)) return e;"
                )
            else:  # cuBLAS, then the consumers as one kernel over the product (flat index i)
                product = self.ptr(y)
                # a padded product read unpadded by an op that is no elementwise consumer
                # (a softmax or slice of a head's logits) goes CHUNK rows at a time through
                # a scratch of CHUNK x ldm, copied out unpadded after each GEMM: the whole
                # padded product beside the logits would double the arena
                chunk = max(64, PADDED_SCRATCH_BYTES // max(ldm * esize, 1) // 64 * 64)
                if padded:

                    def pad_bytes(env: Env, ldm: int = ldm, whole: bool = bool(chain)) -> int:
                        rows = _numel(env.shapes[a][:-1])
                        return (
                            (rows if whole else min(rows, chunk)) * ldm * esize if rows > 4 else 0
                        )

                    pad = Scratch(f"padded{self.step}", pad_bytes)
                    self.scratch.append((pad, self.step))
                    product = self.ptr(pad, ct)
                if padded and not chain:
                    self.emit(f"  for (int64_t r0 = 0; r0 < {M}; r0 += {chunk}) {{")
                    self.emit(f"    const int64_t mr = {M} - r0 < {chunk} ? {M} - r0 : {chunk};")
                    self.emit(
                        f"    if (int e = ctx->gemm(ctx, stream, {dt}, {dt}, true, mr, {ldm}, {K}, "
                        f"{x} + r0 * {K}, {K}, 0, {w}, {K}, 0, {product}, {ldm}, 0, 1, 1.0f)) return e;"
                    )
                    self.emit(
                        f"    gml::copy_pitched<{ct}><<<gml::copy_pitched_blocks<{ct}>(mr * {N}, {THREADS}), "
                        f"{THREADS}, 0, stream>>>(mr, {N}, {ldm}, {product}, {self.ptr(y)} + r0 * {N});"
                    )
                    self.emit("  }")
                else:
                    self.emit(
                        f"  if (int e = ctx->gemm(ctx, stream, {dt}, {dt}, true, {M}, {ldm or N}, {K}, "
                        f"{x}, {K}, 0, {w}, {K}, 0, {product}, {ldm or N}, 0, 1, 1.0f)) return e;"
                    )
                if chain:
                    # a padded product's rows are `ld` apart
                    read = "mm + i" if not padded else "mm + (i / cols) * ld + i % cols"
                    pitch = "int64_t cols, int64_t ld, " if padded else ""
                    flat = [
                        f"__global__ void KERNEL(int64_t total, {pitch}const {ct}* __restrict__ mm, {', '.join(args)}) {{",
                        "  GML_FOR(i, total) {",
                        f"    const {_vt(y)} acc = gml::load({read});",
                        *flat_body,
                        f"    gml::store(out + i, {val[last]});",
                        "  }",
                        "}",
                    ]
                    total = self.slot(lambda env: _numel(env.shapes[y]))
                    self.emit(
                        f"  if (P[{total}] > 0) {self.kernel(chr(10).join(flat))}<<<gml::blocks_for(P[{total}], {THREADS}), "
                        f"{THREADS}, 0, stream>>>(P[{total}], {f'{N}, {ldm}, ' if padded else ''}{product}, "
                        f"{', '.join(ptrs)});"
                    )
        for group, _ in chain:
            self.done.add(group)
            for r in group.results:
                self.defined_at[r] = self.step
        for _, via in chain:
            if via is not None:
                self.done.add(via)
                self.defined_at[via.result] = self.step
        self.emit("}")
        if phases:  # the decode branch, as a chain's phase (chains.py)
            self.chain_part = chains.Part(phases, 1, first, len(self.body), [(p, "<=", 4)])

    def _only_returned(self, y: SSAValue) -> bool:
        """Whether the function's return is all that reads `y`, itself or through
        reshapes that keep its last dim (each a view of y's rows, wherever they are)."""
        n = shape_of(y.type)[-1]

        def returned(op: Operation) -> bool:
            return isinstance(op, func.ReturnOp) or (
                isinstance(op, gml.ReshapeOp)
                and op.parent_op() is self.fn
                and shape_of(op.result.type)[-1:] == (n,)
                and self._only_returned(op.result)
            )

        return bool(y.uses) and all(returned(u.operation) for u in y.uses)

    def _vendor_epilogue(
        self, mm: gml.MatmulOp, chain: list[tuple[Operation, gml.ReshapeOp | None]]
    ) -> tuple[SSAValue | None, bool, SSAValue | None] | None:
        """(bias, gelu, residual) when the consumers of x @ W^T are exactly what a
        cuBLASLt epilogue computes: + bias (a weight of n elements), then tanh GELU, or
        + a residual of the product's shape (which the vendor adds before an activation,
        so not both); each member the sole step from the last. None otherwise."""
        y = mm.result
        ct, n = _ct(y), shape_of(y.type)[-1]
        cur: SSAValue = y
        bias: SSAValue | None = None
        resid: SSAValue | None = None
        gelu = False
        for group, via in chain:
            if via is not None:
                if via.input is not cur:
                    return None
                cur = via.result
            members, yielded, results = self._group(group)
            for m in members:
                if isinstance(m, gml.AddOp) and cur in (m.lhs, m.rhs):
                    other = m.rhs if m.lhs is cur else m.lhs
                    if _ct(other) != ct or other is cur:
                        return None
                    if bias is None and resid is None and not gelu and other in self.free:
                        if shape_of(other.type) != (n,):
                            return None
                        bias = other
                    elif resid is None and not gelu and self.sym[other] == self.sym[m.result]:
                        resid = other
                    else:
                        return None
                elif isinstance(m, gml.GeluOp) and m.approximate.data == "tanh":
                    if gelu or resid is not None:
                        return None
                    gelu = True
                else:
                    return None
                cur = m.results[0]
            if list(yielded) != [cur]:
                return None
            cur = results[0]
        if not chain:
            return None
        return bias, gelu, resid

    def _decode_attention(self, op: gml.SdpaOp, env: Env) -> bool:
        """Whether this bucket runs `op` as the fused decode kernel (few query rows)."""
        sq, sk = env.shapes[op.query], env.shapes[op.key]
        m = (sq[-3] // sk[-3]) * sq[-2]
        chunks = _decode_split(_numel(sq[:-3]) * sk[-3], sk[-2], self.decode_blocks)[1]
        # head dims are the kernel's template parameters (static, <= 128: its arrays are
        # sized by them); 8 query rows and 512 chunk weights fit its shared memory
        d, dv = shape_of(op.query.type)[-1], shape_of(op.value.type)[-1]
        return m <= 8 and 0 < d <= 128 and 0 < dv <= 128 and chunks <= 512

    def _may_decode(self, op: gml.SdpaOp) -> bool:
        """Whether some bucket with rows runs `op` as the decode kernel: its query rows per
        kv head, (heads / kv heads) x Tq, are a multiple of their static factor, which
        must be at most 8 (GPT's prefill at a dynamic batch: Tq static, never)."""
        q, k = self.sym[op.query], self.sym[op.key]
        groups = q[-3].exact_div(k[-3])
        return groups is None or any((groups * q[-2]).can_be(m) for m in range(1, 9))

    def _flash_prefill(self, op: gml.SdpaOp) -> bool:
        """Whether `op`'s prefill buckets run gml::attention_prefill: f16/bf16, head dims
        static multiples of 16 up to 128 (the kernel's template parameters)."""
        d, dv = shape_of(op.query.type)[-1], shape_of(op.value.type)[-1]
        dims_ok = all(0 < x <= 128 and x % 16 == 0 for x in (d, dv))
        return FLASH_PREFILL and _ct(op.result) in HALF and dims_ok

    def _kv_pieces(self, op: gml.SdpaOp, kv: SSAValue) -> list[SSAValue]:
        """The pieces the fused decode kernel reads `kv` from: a two-piece concat along
        the sequence (a KV cache and the new entry) is read in place, never built."""
        src = kv.owner
        if (
            isinstance(src, gml.ConcatOp)
            and len(src.inputs) == 2
            and src.dim.value.data % len(shape_of(kv.type)) == len(shape_of(kv.type)) - 2
            and self._sole_user(kv) is op
        ):
            return list(src.inputs)
        return [kv]

    def _cache_range(self, op: gml.SdpaOp, kv: SSAValue) -> tuple[str, str]:
        """(pointer, bytes) of K's or V's first piece (the KV cache), for gml::L2Ahead."""
        first = self._kv_pieces(op, kv)[0]
        n = self.slot(lambda env: min(_nbytes(first, env), L2_AHEAD_BYTES))
        return self.ptr(first, const=True), f"P[{n}]"

    def _cache_rows_early(self, op: gml.SdpaOp) -> Slot:
        """1 where decode attention may read K's and V's first pieces before its wait (a
        bucket where each is the segment's input or a weight, or a view of one: no
        kernel of the segment writes it), else 0."""
        if not DECODE_PREFETCH:
            return lambda env: 0
        firsts = [self._kv_pieces(op, kv)[0] for kv in (op.key, op.value)]
        args = set(self.fn.body.block.args)

        def early(env: Env) -> int:
            source = {v: src for v, src, _ in self.views}
            for x in firsts:
                while x in env.views:
                    x = source[x]
                if x not in args and x not in self.free:
                    return 0
            return 1

        return early

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
            return [_numel(sq[:-3]) * kv, (h // kv) * tq, tk, d, dv, tq]

        p = self.slots_of(dims, 6)
        scale = op.scale.value.data if op.scale is not None else None
        sc = self.slot(lambda env: env.shapes[q][-1])
        fused = self.slot(lambda env: int(self._decode_attention(op, env)))
        target = self.decode_blocks
        split = self.slots_of(
            lambda env: list(_decode_split(dims(env)[0], dims(env)[2], target)), 2
        )
        if CHAIN:  # a chain's split: chunks for one round of its blocks (fewer, longer)
            ctarget = CHAIN_TARGET_SMS * CHAIN_BLOCKS
            csplit = self.slots_of(
                lambda env: list(_decode_split(dims(env)[0], dims(env)[2], ctarget)), 2
            )

        flash = self._flash_prefill(op)  # then no bucket materialises scores or probs

        def unfused(nbytes: Callable[[Env], int]) -> Callable[[Env], int]:
            return lambda env: 0 if flash or self._decode_attention(op, env) else nbytes(env)

        def split_bytes(env: Env) -> int:  # [batch, chunk, row, dv + 2] floats
            if not self._decode_attention(op, env):
                return 0
            b, m, n, _, dv, _ = dims(env)
            return b * _decode_split(b, n, target)[1] * m * (dv + 2) * 4

        def prefill_split(env: Env) -> list[int]:
            b, m, n = dims(env)[:3]
            return list(_prefill_split(b, m, n)) if flash else [n, 1]

        def prefill_partials(env: Env) -> int:  # [batch, chunk, row, dv + 2] floats
            if not flash or self._decode_attention(op, env):
                return 0
            b, m, _, _, dv, _ = dims(env)
            chunks = prefill_split(env)[1]
            return 0 if chunks == 1 else b * chunks * m * (dv + 2) * 4

        scores = Scratch(f"scores{self.step}", unfused(lambda env: _prod(dims(env)[:3]) * 4))
        half = 2 if ct in HALF else 4
        probs = Scratch(f"probs{self.step}", unfused(lambda env: _prod(dims(env)[:3]) * half))
        part = Scratch(f"part{self.step}", split_bytes)
        fpart = Scratch(f"fpart{self.step}", prefill_partials)
        self.scratch += [(scores, self.step), (probs, self.step), (part, self.step)]
        self.scratch += [(fpart, self.step)]
        s_ptr, p_ptr = self.ptr(scores, "float"), self.ptr(probs, ct)
        part_ptr = self.ptr(part, "float")
        fsplit = self.slots_of(prefill_split, 2)
        fpart_ptr = self.ptr(fpart, "float")
        alpha = f"{scale!r}f" if scale is not None else f"1.0f / sqrtf(float(P[{sc}]))"
        B, M, N, D, DV, TQ = (f"P[{p + i}]" for i in range(6))
        bias = f"gml::Causal{{{N}, {TQ}}}" if causal == "true" else "gml::NoBias{}"
        if op.mask is not None:
            bias = self.mask_bias(op, causal, N, TQ)
        qp, yp = self.ptr(q, const=True), self.ptr(y)

        def pieces(kv: SSAValue) -> str:
            parts = self._kv_pieces(op, kv)
            sizes = self.slots_of(
                lambda env: [env.shapes[x][-2] for x in parts] + [0] * (2 - len(parts)), 2
            )
            ptrs = [self.ptr(x, const=True) for x in parts] + ["nullptr"] * (2 - len(parts))
            return f"gml::Pieces<{ct}, 2>{{{{{', '.join(ptrs)}}}, {{P[{sizes}], P[{sizes + 1}]}}}}"

        self.comment([op])
        chunk, chunks = f"P[{split}]", f"P[{split + 1}]"
        decode = partial(self._decode_attention, op)
        first = len(self.body)
        self.emit(f"if (P[{fused}]) {{  // decode: a block per (batch, kv head, key chunk)")
        dead = self.never(decode) or not self._may_decode(op)
        with self.dead_if(dead):
            d, dv = max(shape_of(q.type)[-1], 1), max(shape_of(v.type)[-1], 1)
            bias_t = bias.split("{", 1)[0]  # the bias's type is its initializer's name
            kp, vp = pieces(k), pieces(v)
            cached = self.slot(self._cache_rows_early(op))
            self.ahead.append((None, [self._cache_range(op, x) for x in (k, v)]))
            split_args = [M, chunk, qp, kp, vp, part_ptr, alpha, bias]
            combine_args = [chunks, M, DV, part_ptr, yp]
            # every template argument named (a function pointer deduces none)
            self.emit(
                "  "
                + _launch(
                    f"gml::attention_decode_split<{ct}, {d}, {dv}, {bias_t}>",
                    f"dim3(unsigned({B}), unsigned({chunks}))",
                    "gml::ATTN_SPLIT_THREADS",
                    [*split_args, f"P[{cached}] != 0"],
                )
            )
            self.emit(
                "  "
                + _launch(
                    f"gml::attention_combine<{ct}>",
                    f"unsigned({B})",
                    "gml::ATTN_COMBINE_THREADS",
                    combine_args,
                )
            )
            # as a chain's phases: the split with a chain's block of threads (its shared
            # memory beside the combine's fits 48 KB up to head dims of 64)
            cchunk, cchunks = (f"P[{csplit}]", f"P[{csplit + 1}]") if CHAIN else (chunk, chunks)
            phases = [
                _phase(
                    f"gml::attention_decode_split_body<{ct}, {d}, {dv}, {bias_t}, "
                    "gml::CHAIN_THREADS, gml::ChainSync>",
                    "true",
                    f"{B} * {cchunks}",
                    [M, cchunk, qp, kp, vp, part_ptr, alpha, bias],
                ),
                _phase(
                    f"gml::attention_combine_body<{ct}, gml::ChainSync>",
                    "true",
                    B,
                    [cchunks, M, DV, part_ptr, yp],
                ),
            ]
        self.emit("} else {")
        # operands as cuBLAS or the flash kernel read them: in place through strides where
        # this bucket folds their views (attention_fold), else the contiguous copies; the
        # flash kernel walks its batches as (outer batch, head), each with its own stride
        heads = self.slot(lambda env: env.shapes[k][-3]) if flash else -1
        lay: dict[str, tuple[str, str, str, str]] = {}
        for name, val in (("q", q), ("k", k), ("v", v), ("y", y)):
            base_v: SSAValue = (
                self.fold_out[op].result if name == "y" and op in self.fold_out else val
            )
            plain = self.slot(partial(_offset, val))
            width = self.slot(partial(_last_dim, val))
            # one batch's matrix: q and y hold the G query groups of a kv head (G*Tq rows)
            rows = self.slot(partial(_matrix_size, val, q, k, name in "qy"))
            o = self.slot(partial(self._operand, op, name, 0, plain))
            ld = self.slot(partial(self._operand, op, name, 1, width))
            bs = self.slot(partial(self._operand, op, name, 2, rows))
            batch = f"P[{bs}]"
            if flash:  # contiguous: the heads' matrices back to back, then the next batch's
                outer = self.slot(partial(_slot_product, self.slots, (rows, heads)))
                outer = self.slot(partial(self._operand, op, name, 3, outer))
                batch = f"gml::AttnBatch{{P[{bs}], P[{outer}]}}"
            q_ = "" if name == "y" else "const "
            if base_v is not val:
                self.ptr(base_v)  # its offset is needed by the plan
            lay[name] = (f"reinterpret_cast<{q_}{ct}*>(A + P[{o}])", f"P[{ld}]", f"P[{bs}]", batch)
        (qp2, qld, qbs, qb), (kp, kld, kbs, kb), (vp, vld, vbs, vb), (yp2, yld, ybs, yb) = (
            lay[n] for n in "qkvy"
        )
        with self.dead_if(self.never(lambda env: not decode(env))):
            if flash:  # a block per 64 query rows of a (batch, kv head), the keys in tiles
                # (and, where those blocks would not fill the GPU, per chunk of the keys,
                # the chunks' partials then combined: P[fsplit + 1] chunks of P[fsplit])
                per = "gml::ATTN_PREFILL_ROWS"
                kchunk, chunks = f"P[{fsplit}]", f"P[{fsplit + 1}]"
                dq, dv = shape_of(q.type)[-1], shape_of(v.type)[-1]
                self.emit(f"  if ({M} > 0 && {B} > 0) {{")
                self.emit(
                    f"    gml::attention_prefill<{ct}, {dq}, {dv}><<<dim3(unsigned(({M} + {per} - 1) / {per}), "
                    f"unsigned({B}), unsigned({chunks})), gml::ATTN_PREFILL_THREADS, 0, stream>>>({M}, {N}, "
                    f"P[{heads}], {qp2}, {qld}, {qb}, {kp}, {kld}, {kb}, {vp}, {vld}, {vb}, {yp2}, {yld}, "
                    f"{yb}, {alpha}, {bias}, {kchunk}, {chunks} > 1 ? {fpart_ptr} : nullptr);"
                )
                self.emit(
                    f"    if ({chunks} > 1) gml::attention_prefill_combine<{ct}, {dv}><<<dim3(unsigned(({M} + 7) / 8), "
                    f"unsigned({B})), gml::ATTN_PREFILL_COMBINE_THREADS, 0, stream>>>({M}, {chunks}, "
                    f"P[{heads}], {fpart_ptr}, {yp2}, {yld}, {yb});"
                )
                self.emit("  }")
            else:
                self.emit(
                    f"  if (int e = ctx->gemm(ctx, stream, {dt}, gml::DType::F32, true, {M}, {N}, {D}, "
                    f"{qp2}, {qld}, {qbs}, {kp}, {kld}, {kbs}, {s_ptr}, {N}, {M} * {N}, {B}, {alpha})) return e;"
                )
                self.softmax_scores(
                    N, f"{B} * {M}", s_ptr, p_ptr, ct, bias, lambda env: dims(env)[2], k
                )
                self.emit(
                    f"  if (int e = ctx->gemm(ctx, stream, {dt}, {dt}, false, {M}, {DV}, {N}, "
                    f"{p_ptr}, {N}, {M} * {N}, {vp}, {vld}, {vbs}, {yp2}, {yld}, {ybs}, {B}, 1.0f)) return e;"
                )
        self.emit("}")
        if not dead and d <= 64 and dv <= 64:
            self.chain_part = chains.Part(phases, 2, first, len(self.body), [(fused, "!=", 0)])

    def softmax_scores(
        self,
        n: str,
        rows: str,
        s: str,
        p: str,
        ct: str,
        bias: str,
        keys: Callable[[Env], int],
        k: SSAValue,
    ) -> None:
        """Attention's softmax over `rows` rows of `n` f32 scores into `p`: a warp a row,
        in registers, up to 1024 keys; a block a row beyond. Only the variant every bucket
        needs where there is one: the static bucket's, or the one for a static number of
        keys (k's rows: a dynamic batch); each is a template instantiation for nvcc."""
        form = self.sym[k][-2]
        static_n = keys(self.static) if self.static is not None else None
        if static_n is None and form.static:
            static_n = form.coef
        variants = [
            (
                f"{n} <= {32 * r}",
                f"gml::softmax_warp_rows<float, {ct}, {r}>"
                f"<<<unsigned(({rows} + gml::GEMV_COLS - 1) / gml::GEMV_COLS), gml::GEMV_THREADS, 0, stream>>>"
                f"({rows}, {n}, {s}, {p}, 1.0f, {bias});",
                32 * r,
            )
            for r in (4, 8, 16, 32)
        ]
        wide = (
            f"gml::softmax_rows<float, {ct}, false><<<unsigned({rows}), {THREADS}, 0, stream>>>"
            f"({n}, {s}, {p}, 1.0f, {bias});"
        )
        if static_n is not None:  # the one that bucket takes
            fits = [launch for _, launch, most in variants if static_n <= most]
            self.emit(f"  {fits[0] if fits else wide}")
            return
        for i, (cond, launch, _) in enumerate(variants):
            self.emit(f"  {'if' if i == 0 else 'else if'} ({cond}) {launch}")
        self.emit(f"  else {wide}")

    # ------------------------------------------------------------ attention operands in place
    def plan_attention_operands(self) -> None:
        """Before lowering: for each gml.sdpa, the slices, reshapes and permutes that only
        build its q/k/v from a wider tensor (a fused qkv projection), and the permute that
        only reorders its output. Where a bucket runs attention through cuBLAS, those copies
        are skipped: the GEMMs read and write the original buffers through strides."""
        for step, op in enumerate(self.fn.body.block.ops, start=1):
            if not isinstance(op, gml.SdpaOp) or op.mask is not None:
                continue
            for v in (op.query, op.key, op.value):
                while self._sole_user(v) in (op, *self.fold_chain_of(op)) and isinstance(
                    v.owner, gml.PermuteOp | gml.ReshapeOp | gml.SliceOp
                ):
                    if isinstance(v.owner, gml.SliceOp) and (v.owner.dyn_start or v.owner.dyn_end):
                        break
                    self.fold_chain[v.owner] = op
                    v = v.owner.operands[0]
            user = self._sole_user(op.result)
            if isinstance(user, gml.PermuteOp):
                self.fold_chain[user] = op
                self.fold_out[op] = user
                self.defined_at[user.result] = step  # the attention may write it

    def fold_chain_of(self, sdpa: gml.SdpaOp) -> list[Operation]:
        return [o for o, s in self.fold_chain.items() if s is sdpa]

    def _layout(
        self, v: SSAValue, sdpa: gml.SdpaOp, env: Env
    ) -> tuple[SSAValue, int, list[int]] | None:
        """(root value, element offset, strides) of `v` over its root's contiguous buffer,
        walking back through the chain of views `sdpa` folds."""
        op = v.owner
        if (
            isinstance(op, Operation)
            and self.fold_chain.get(op) is sdpa
            and op is not self.fold_out.get(sdpa)
        ):
            inner = self._layout(op.operands[0], sdpa, env)
            if inner is None:
                return None
            root, off, st = inner
            if isinstance(op, gml.PermuteOp):
                return root, off, [st[p] for p in op.dims.get_values()]
            if isinstance(op, gml.ReshapeOp):
                new = _view_strides(env.shapes[op.input], st, env.shapes[v])
                return None if new is None else (root, off, new)
            if isinstance(op, gml.SliceOp):
                d = op.dim.value.data % len(st)
                first, _, step = slice(
                    op.start.value.data, op.end.value.data, op.step.value.data
                ).indices(env.shapes[op.input][d])
                st = list(st)
                off += first * st[d]
                st[d] *= step
                return root, off, st
        if v in self.free:
            return None
        return v, 0, _contiguous_strides(env.shapes[v])

    def attention_fold(
        self, sdpa: gml.SdpaOp, env: Env
    ) -> dict[str, tuple[SSAValue, int, int, int, int]] | None:
        """Per operand (root, byte offset, leading dim, head stride, outer batch stride)
        where this bucket's attention reads q, k, v and writes its output in place; None:
        copy. cuBLAS walks the batches with one stride (then outer = heads x head stride);
        the flash kernel with two, so that it reads a fused qkv projection in place at any
        batch, not only at batch 1."""
        if not FOLD_ATTENTION or self._decode_attention(sdpa, env) or not self.fold_chain_of(sdpa):
            return None
        q, k = env.shapes[sdpa.query], env.shapes[sdpa.key]
        if q[-3] != k[-3]:  # grouped heads: rows (g, t) do not share one stride
            return None
        two = self._flash_prefill(sdpa)
        out: dict[str, tuple[SSAValue, int, int, int, int]] = {}
        for name, v in (("q", sdpa.query), ("k", sdpa.key), ("v", sdpa.value)):
            lay = self._layout(v, sdpa, env)
            if lay is None:
                return None
            root, off, st = lay
            batch = _batch_strides(env.shapes[v][:-2], st[:-2], two)
            if batch is None or st[-1] != 1:
                return None
            out[name] = (root, off * _itemsize(v), st[-2], *batch)
        perm = self.fold_out.get(sdpa)
        y = sdpa.result
        if perm is not None:
            cs = _contiguous_strides(env.shapes[perm.result])
            st = [0] * len(cs)
            for j, p in enumerate(perm.dims.get_values()):
                st[p] = cs[j]
            batch = _batch_strides(env.shapes[y][:-2], st[:-2], two)
            if batch is None or st[-1] != 1:
                return None
            out["y"] = (perm.result, 0, st[-2], *batch)
        else:
            s = env.shapes[y]
            out["y"] = (y, 0, s[-1], s[-1] * s[-2], s[-1] * s[-2] * s[-3])
        return out

    def _operand(self, sdpa: gml.SdpaOp, name: str, i: int, default: int, env: Env) -> int:
        """Where attention finds operand `name`: (byte offset, leading dim, head stride,
        outer batch stride)[i], in place when this bucket folds its views, else slot
        `default`."""
        f = self.attention_fold(sdpa, env)
        if f is None:
            return self.slots[default](env)
        root, off, ld, head, outer = f[name]
        return (env.offsets[root] + off, ld, head, outer)[i]

    def mask_bias(self, op: gml.SdpaOp, causal: str, n: str, tq: str) -> str:
        """A `gml::Masked` reading the mask broadcast over the scores' rows and keys."""
        mask, q = op.mask, op.query
        assert mask is not None
        rank = len(shape_of(q.type)) - 1  # the rows' dims: [batch.., heads, tq]

        def params(env: Env) -> list[int]:
            sq, sk = env.shapes[q], env.shapes[op.key]
            full = (*sq[:-1], sk[-2])  # [batch.., heads, tq, tk]
            st = _strides_in(env.shapes[mask], full)
            return [*index_params(rank, sq[:-1], [st[:-1]]), st[-1]]

        p = self.slots_of(params, 1 + 2 * rank + 1)
        return (
            f"gml::Masked<{_ct(mask)}, {rank}>{{{self.ptr(mask, const=True)}, gml::index_from<{rank}, 1>(P + {p}), "
            f"P[{p + 1 + 2 * rank}], gml::Causal{{{n}, {tq}}}, {causal}}}"
        )

    # ------------------------------------------------------------ output
    def source(self) -> str:
        head = [
            "// Generated by gimlet (backends/gpu/codegen.py): one segment's GPU program.",
            "// Sizes, strides and arena offsets come from the parameter table P (per shape bucket).",
            *(["#define GML_CHAIN_TRACE 1"] if CHAIN and CHAIN_TRACE else []),
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
            if L2_AHEAD and i + 1 < len(self.ahead):
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
        if not CHAIN or not any(self.chain_parts):
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
            out.append(chains.launch(steps[first : last + 1], parts, slot, CHAIN_BLOCKS))
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


def _nth(f: Callable[[Env], Sequence[int]], i: int, env: Env) -> int:
    return int(f(env)[i])


def _vector_width(
    params: Callable[[Env], list[int]], rank: int, operands: int, results: int, v: int, env: Env
) -> int:
    """An elementwise kernel's elements a thread at a bucket (vectorize.per_thread)."""
    return vectorize.per_thread(params(env), rank, operands, results, v)


def _offset(key: Any, env: Env) -> int:
    return env.offsets[key]


def _pitch_above_gemv(a: SSAValue, ldm: int, env: Env) -> int:
    """A padded head's row pitch at a bucket: ldm where its GEMM runs (more than 4 rows
    of `a`), 0 where the GEMV writes it contiguous."""
    return ldm if _numel(env.shapes[a][:-1]) > 4 else 0


def _last_dim(v: SSAValue, env: Env) -> int:
    return env.shapes[v][-1]


def _matrix_size(v: SSAValue, q: SSAValue, k: SSAValue, grouped: bool, env: Env) -> int:
    groups = env.shapes[q][-3] // env.shapes[k][-3] if grouped else 1
    return _numel(env.shapes[v][-2:]) * groups


def _prod(xs: Sequence[int]) -> int:
    return math.prod(xs)


_BYTES = {"float": 4, "double": 8, "gml::f16": 2, "gml::bf16": 2, "bool": 1}


def _itemsize(v: SSAValue) -> int:
    ct = _ct(v)
    return _BYTES.get(ct) or int("".join(c for c in ct if c.isdigit()) or 8) // 8


def _nbytes(v: SSAValue, env: Env, pitch: int = 0) -> int:
    """`v`'s bytes in the arena: its elements, or its rows `pitch` elements apart."""
    s = env.shapes[v]
    return (_numel(s[:-1]) * pitch if pitch else _numel(s)) * _itemsize(v)


def _view_strides(old: Shape, stride: Sequence[int], new: Shape) -> list[int] | None:
    """Strides of `new` viewing a tensor of shape `old` with `stride` without a copy, or
    None when it cannot (PyTorch's computeStride)."""
    if _numel(old) == 0:
        return _contiguous_strides(new)
    out = [0] * len(new)
    view_d = len(new) - 1
    base = stride[-1] if stride else 1
    tensor_numel = view_numel = 1
    for d in range(len(old) - 1, -1, -1):
        tensor_numel *= old[d]
        if d == 0 or (old[d - 1] != 1 and stride[d - 1] != tensor_numel * base):
            while view_d >= 0 and (view_numel < tensor_numel or new[view_d] == 1):
                out[view_d] = view_numel * base
                view_numel *= new[view_d]
                view_d -= 1
            if view_numel != tensor_numel:
                return None
            if d > 0:
                base, tensor_numel, view_numel = stride[d - 1], 1, 1
    return out if view_d == -1 else None


def _batch_stride(dims: Sequence[int], strides: Sequence[int]) -> int | None:
    """One stride walking all batch dims in order (size-1 dims skipped), or None."""
    live = [(n, s) for n, s in zip(dims, strides, strict=True) if n != 1]
    for (_, s0), (n1, s1) in zip(live, live[1:], strict=False):
        if s0 != n1 * s1:
            return None
    return live[-1][1] if live else 0


def _batch_strides(
    dims: Sequence[int], strides: Sequence[int], two: bool
) -> tuple[int, int] | None:
    """(head stride, outer stride) walking attention's batch dims [outer.., heads]: one
    stride for all where there is one (outer = heads x it); else, where `two`, the heads'
    own stride and one walking the outer dims; else None."""
    one = _batch_stride(dims, strides)
    if one is not None:
        return one, one * (dims[-1] if dims else 1)
    if not two or not dims:
        return None
    outer = _batch_stride(dims[:-1], strides[:-1])
    return None if outer is None else (strides[-1], outer)


def _slot_product(slots: list[Slot], which: Sequence[int], env: Env) -> int:
    """The product of these slots' values at a bucket."""
    return math.prod(slots[i](env) for i in which)


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
