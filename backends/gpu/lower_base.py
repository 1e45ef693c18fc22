"""What every op family's GPU lowering shares: the lowering's state (`_LoweringBase`:
parameter-table slots, weights, views, generated kernels and launches), the helpers that
emit them, and the shape and type helpers the op families call. Split from codegen.py,
which adds the driver and the program's output; lower_attention.py, lower_tensor.py and
lower_matmul.py add the op families on top of this class, one module each."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from xdsl.dialects import func
from xdsl.dialects.builtin import TensorType
from xdsl.ir import Operation, SSAValue

from gimlet.backends.cpu.codegen import ctype, where
from gimlet.dialects import gml
from gimlet.dialects.shapes import DYN, shape_of
from gimlet.errors import UnsupportedOpError

from . import chains, switches
from .shapes import Shape, ShapeEvaluator
from .symdims import SymbolicShapes

THREADS = 256
HALF = ("gml::f16", "gml::bf16")
_DTYPE = {
    "float": "gml::DType::F32",
    "gml::f16": "gml::DType::F16",
    "gml::bf16": "gml::DType::BF16",
}


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
    # what a function behind several slots (slots_of, attention_fold) gave in this
    # evaluation of the table, so it runs once and not once a slot; cleared whenever
    # offsets move
    memo: dict[Any, Any] = field(default_factory=dict)


Slot = Callable[[Env], int]
ViewRule = Callable[[Env], int | None]
"""A value's element offset into its source when it is a view at this bucket, else None."""


def _launch(kernel: str, grid: str, threads: str, args: Sequence[str]) -> str:
    """One launch statement of a decode-chain kernel: through gml::launch_pdl (it may
    start while the kernel before it ends; the kernel calls gml::pdl_wait before it reads
    the arena) when PDL is on, else <<<>>>."""
    if switches.PDL:
        return f"gml::launch_pdl({kernel}, {grid}, {threads}, stream, {', '.join(args)});"
    return f"{kernel}<<<{grid}, {threads}, 0, stream>>>({', '.join(args)});"


def _phase(body: str, runs: str, blocks: str, args: Sequence[str]) -> str:
    """The same kernel as a phase of a persistent chain (chains.py): `body`, the kernel's
    device function, over `blocks` blocks where `runs`, with the launch's arguments."""
    return f"gml::phase<&{body}>({runs}, {blocks}, {', '.join(args)})"


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


class _LoweringBase:
    """One function's lowering as it goes: the parameter table's slots, the weights to
    upload, the views, the generated kernels and the host code launching them."""

    def __init__(self, fn: func.FuncOp):
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
        self.decode_blocks = switches.DECODE_TARGET_BLOCKS  # as lowered (slots evaluate later)

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

    def refuse(self, op: Operation, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{op.name} at {where(op)}: {why}")

    def _sole_user(self, v: SSAValue) -> Operation | None:
        """The one top-level op reading `v` (through a gml.fusion body), if exactly one."""
        users: set[Operation] = set()
        for u in v.uses:
            top = u.operation
            while not isinstance(top.parent_op(), func.FuncOp | None):
                top = top.parent_op()  # type: ignore[assignment]
            users.add(top)
        return users.pop() if len(users) == 1 else None


def _nth(f: Callable[[Env], Sequence[int]], i: int, env: Env) -> int:
    got = env.memo.get(f)
    if got is None:
        got = env.memo[f] = f(env)
    return int(got[i])


def _offset(key: Any, env: Env) -> int:
    return env.offsets[key]


_BYTES = {"float": 4, "double": 8, "gml::f16": 2, "gml::bf16": 2, "bool": 1}


def _itemsize(v: SSAValue) -> int:
    ct = _ct(v)
    return _BYTES.get(ct) or int("".join(c for c in ct if c.isdigit()) or 8) // 8


def _nbytes(v: SSAValue, env: Env, pitch: int = 0) -> int:
    """`v`'s bytes in the arena: its elements, or its rows `pitch` elements apart."""
    s = env.shapes[v]
    return (_numel(s[:-1]) * pitch if pitch else _numel(s)) * _itemsize(v)
