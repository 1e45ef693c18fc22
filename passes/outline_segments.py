"""outline-segments: turn `gml.device` attributes into `gml.segment` regions.

Ops are taken in program order; an op joins the latest segment of its device
when everything it reads is available by the end of that segment, otherwise
it opens a new one. Every edge therefore runs from an earlier segment to a
later one, so the segment graph is acyclic by construction, while independent
ops of one device still share a segment even if another device's work sits
between them in the original order. Weights and literals are copied into each
segment that reads them; segments are isolated from above (inputs are block
arguments), so each is a self-contained program for its device's backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.ir import Block, Operation, Region, SSAValue
from xdsl.passes import ModulePass

from gimlet.dialects import gml
from gimlet.errors import UserError, with_location
from gimlet.ir import main_func
from gimlet.placement.solvers import is_free
from gimlet.placement.target import DEVICE_ATTR


def device_of(op: Operation) -> str:
    attr = op.attributes.get(DEVICE_ATTR)
    if not isinstance(attr, StringAttr):
        raise UserError(
            with_location(op.location, f"{op.name} has no {DEVICE_ATTR}; run 'place' first")
        )
    return attr.data


def _group(body: Block) -> list[tuple[str, list[Operation]]]:
    segments: list[tuple[str, list[Operation]]] = []
    where: dict[Operation, int] = {}
    last_of: dict[str, int] = {}
    for op in body.ops:
        if is_free(op) or isinstance(op, func.ReturnOp):
            continue
        device = device_of(op)
        needs = max(
            (
                where.get(_top(v.owner, body), -1)
                for v in _reads(op)
                if isinstance(v.owner, Operation)
            ),
            default=-1,
        )
        k = last_of.get(device, -1)
        if k < 0 or needs > k:
            segments.append((device, []))
            k = last_of[device] = len(segments) - 1
        segments[k][1].append(op)
        where[op] = k
    return segments


def _top(op: Operation, body: Block) -> Operation:
    while op.parent_block() is not body and op.parent_op() is not None:
        op = op.parent_op()  # type: ignore[assignment]
    return op


def _reads(op: Operation) -> list[SSAValue]:
    return [v for inner in op.walk() for v in inner.operands]


def _collect_free(op: Operation, out: list[Operation]) -> None:
    """`op` and the free ops it reads, in dependency order, each once."""
    if op in out:
        return
    for v in op.operands:
        if isinstance(v.owner, Operation):
            _collect_free(v.owner, out)
    out.append(op)


def _outline(body: Block, device: str, members: list[Operation], anchor: Operation) -> None:
    inside = set(members)

    def is_inside(o: Operation) -> bool:
        return _top(o, body) in inside

    inputs: list[SSAValue] = []
    copies: list[Operation] = []  # free ops to copy in, producers before users
    for v in dict.fromkeys(v for m in members for v in _reads(m)):
        owner = v.owner
        if isinstance(owner, Operation) and (owner in inside or (owner.parent_block() is not body)):
            continue
        if isinstance(owner, Operation) and is_free(owner):
            _collect_free(owner, copies)
        else:
            inputs.append(v)
    outputs = [
        r for m in members for r in m.results if any(not is_inside(u.operation) for u in r.uses)
    ]
    block = Block(arg_types=[v.type for v in inputs])
    for v, arg in zip(inputs, block.args, strict=True):
        arg.name_hint = v.name_hint
        v.replace_uses_with_if(arg, lambda use: is_inside(use.operation))
    cloned: dict[SSAValue, SSAValue] = {}
    for free in copies:
        clone = free.clone(value_mapper=dict(cloned))
        block.add_op(clone)
        cloned[free.results[0]] = clone.results[0]
        free.results[0].replace_uses_with_if(clone.results[0], lambda use: is_inside(use.operation))
    for m in members:
        m.detach()
        del m.attributes[DEVICE_ATTR]
        block.add_op(m)
    block.add_op(gml.YieldOp(outputs))
    seg = gml.SegmentOp(device, inputs, [v.type for v in outputs], Region(block))
    body.insert_op_before(seg, anchor)
    for old, new in zip(outputs, seg.outputs, strict=True):
        new.name_hint = old.name_hint
        old.replace_uses_with_if(
            new,
            lambda use: use.operation.parent_op() is not seg and not _within(use.operation, seg),
        )


def _within(op: Operation, seg: Operation) -> bool:
    p = op.parent_op()
    while p is not None:
        if p is seg:
            return True
        p = p.parent_op()
    return False


@dataclass(frozen=True)
class OutlineSegments(ModulePass):
    """Group placed ops into acyclic per-device gml.segment regions."""

    name = "outline-segments"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        fn = main_func(op)
        body = fn.body.block
        ret = body.last_op
        assert ret is not None
        for device, members in _group(body):
            _outline(body, device, members, ret)
        for free in reversed([o for o in body.ops if is_free(o)]):
            if not any(r.uses for r in free.results):
                free.detach()
                free.erase()
