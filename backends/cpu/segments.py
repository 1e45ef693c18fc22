"""Segments placed on a CPU, cut at their comm ops into separately compiled kernels.

A `gml.segment` interleaves compute with `comm.send/recv/wait`. Communication belongs to
the runtime (torch.distributed), so the segment is cut at every comm op: each maximal
run of compute ops between two comm ops becomes one `func.func` ("part") that
`compile_function` lowers to its own library, and the executor runs parts and comm ops
in program order. The cut is a pure function of the IR, so the compiler (which writes
the libraries into the bundle) and the worker (which loads them) agree on it without
the manifest having to describe values.

`index` values (sizes) cannot cross the C ABI, which passes tensors. They travel as
*carriers*: an empty-valued `tensor<?xi1>` whose length is the size; the part reads
it back with `gml.dim`, and produces one with `gml.full`. Parts made only of size
arithmetic run on the interpreter: a library for `gml.dim` would cost a compile and
save nothing.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xdsl.dialects import func
from xdsl.dialects.builtin import IndexType, IntegerType, TensorType
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue

from gimlet.dialects import comm, gml
from gimlet.dialects.shapes import DYN

from . import CompiledCpu, compile_function

COMM_OPS = (comm.SendOp, comm.ISendOp, comm.RecvOp, comm.IRecvOp, comm.WaitOp)
# operand-free ops every part that reads them clones: passing a weight between parts
# would copy it through the ABI on every run
FREE_OPS = (gml.ParamOp, gml.ConstantOp)
CARRIER = TensorType(IntegerType(1), [DYN])


@dataclass
class Part:
    """A run of compute ops between comm ops; `inputs`/`outputs` in first-use order."""

    ops: list[Operation]
    inputs: list[SSAValue] = field(default_factory=list)
    outputs: list[SSAValue] = field(default_factory=list)
    free: list[Operation] = field(default_factory=list)  # cloned in, not passed

    @property
    def compiled(self) -> bool:
        """False for parts that are only size arithmetic (run on the interpreter)."""
        return any(isinstance(r.type, TensorType) for op in self.ops for r in op.results)


def split(segment: gml.SegmentOp) -> list[Part | Operation]:
    """The segment body as compute parts and comm ops in program order (no gml.yield).

    Free ops (params, constants and what is computed from them alone, e.g. a transposed
    weight) never cut a part: each compiled part clones the ones it reads, where the
    code generator can fold them (a transpose into the BLAS call). The free ops that
    something else reads (a comm op, an interpreted part) come first in the list.
    """
    body = [op for op in segment.body.block.ops if not isinstance(op, gml.YieldOp)]
    free: set[Operation] = set()
    for op in body:
        if isinstance(op, FREE_OPS) or (
            op.operands
            and not isinstance(op, COMM_OPS)
            and not op.regions
            and all(isinstance(v.owner, Operation) and v.owner in free for v in op.operands)
        ):
            free.add(op)
    items: list[Part | Operation] = []
    for op in body:
        if op in free:
            continue
        if isinstance(op, COMM_OPS):
            items.append(op)
        elif items and isinstance(items[-1], Part):
            items[-1].ops.append(op)
        else:
            items.append(Part([op]))
    needed: set[Operation] = set()
    for item in items:
        if isinstance(item, Part):
            _bind(item, free)
            if not item.compiled:
                needed |= set(item.free)
        else:
            needed |= _closure(item.operands, free)
    term = segment.body.block.last_op
    if isinstance(term, gml.YieldOp):  # a result computed from weights alone
        needed |= _closure(term.operands, free)
    return [op for op in body if op in needed] + items


def _closure(values: Sequence[SSAValue], free: set[Operation]) -> set[Operation]:
    """The free ops `values` are computed from."""
    out: set[Operation] = set()
    todo = [v.owner for v in values]
    while todo:
        op = todo.pop()
        if isinstance(op, Operation) and op in free and op not in out:
            out.add(op)
            todo += [v.owner for v in op.operands]
    return out


def _bind(part: Part, free: set[Operation]) -> None:
    own: set[SSAValue] = {r for op in part.ops for inner in op.walk() for r in inner.results}
    own |= {a for op in part.ops for inner in op.walk() for r in inner.regions for a in _args(r)}
    reads: list[SSAValue] = []
    for op in part.ops:
        for inner in op.walk():
            for v in inner.operands:
                if v not in own and v not in reads:
                    reads.append(v)
    part.inputs = [v for v in reads if not (isinstance(v.owner, Operation) and v.owner in free)]
    cloned = _closure(reads, free)
    part.free = [op for op in _segment_ops(part) if op in cloned]
    members = set(part.ops)
    for op in part.ops:
        for r in op.results:
            if any(_top(u.operation, members) is None for u in r.uses):
                part.outputs.append(r)


def _segment_ops(part: Part) -> list[Operation]:
    block = part.ops[0].parent_block()
    assert block is not None
    return list(block.ops)


def _args(region: Region) -> list[SSAValue]:
    return [a for b in region.blocks for a in b.args]


def _top(op: Operation, members: set[Operation]) -> Operation | None:
    """The op of `members` that `op` is (or is nested in), if any."""
    cur: Operation | None = op
    while cur is not None and cur not in members:
        cur = cur.parent_op()
    return cur


def _abi_type(t: Attribute) -> Attribute:
    return CARRIER if isinstance(t, IndexType) else t


def part_function(part: Part, name: str) -> func.FuncOp:
    """`part` as a standalone func.func: cloned ops, index values through carriers."""
    block = Block(arg_types=[_abi_type(v.type) for v in part.inputs])
    mapping: dict[SSAValue, SSAValue] = {}
    for v, arg in zip(part.inputs, block.args, strict=True):
        if isinstance(v.type, IndexType):
            size = gml.DimOp(arg, 0)
            block.add_op(size)
            mapping[v] = size.results[0]
        else:
            mapping[v] = arg
    for op in [*part.free, *part.ops]:
        block.add_op(op.clone(value_mapper=mapping))
    results: list[SSAValue] = []
    for v in part.outputs:
        if isinstance(v.type, IndexType):
            carrier = gml.FullOp(0.0, CARRIER, [mapping[v]])
            block.add_op(carrier)
            results.append(carrier.results[0])
        else:
            results.append(mapping[v])
    block.add_op(func.ReturnOp(*results))
    types = ([a.type for a in block.args], [r.type for r in results])
    return func.FuncOp(name, types, Region(block))


def compile_part(part: Part, title: str, opt: str = "-O3") -> CompiledCpu:
    return compile_function(part_function(part, title), opt=opt)


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's name from /proc/cpuinfo ("model name", or an ARM's "Model"/"Hardware")."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown CPU"
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in cpuinfo.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return " ".join(value.split())
    return "unknown CPU"


def host_cpu() -> str:
    """What a `-march=native` library was built for: loading it elsewhere may SIGILL."""
    name = cpu_model()
    return platform.processor() or platform.machine() if name == "unknown CPU" else name
