"""overlap-comm: start transfers early and wait late, so they hide behind compute.

Each blocking `comm.send` becomes a `comm.isend` issued right after its value is
produced, with the `comm.wait` at the end of the segment; each `comm.recv`
becomes a `comm.irecv` posted at the start of the segment with the `comm.wait`
just before the value's first use. The modelled time of the program (see
compiler/placement/schedule.py) before and after is recorded on the module as
`gml.modelled_s_before_overlap` / `gml.modelled_s_after_overlap`.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import FloatAttr, ModuleOp, f64
from xdsl.ir import Block, Operation
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from gimlet.dialects import comm


def _overlap_block(block: Block) -> None:
    for op in list(block.ops):
        if isinstance(op, comm.SendOp):
            value = op.value
            isend = comm.ISendOp(value, op.peer.data, op.channel.value.data, op.transport.data)
            isend.location = op.location
            owner = value.owner
            if isinstance(owner, Operation) and owner.parent_block() is block:
                Rewriter.insert_op(isend, InsertPoint.after(owner))
            else:
                Rewriter.insert_op(isend, InsertPoint.at_start(block))
            Rewriter.insert_op(comm.WaitOp(isend.token), InsertPoint.before(_end(block)))
            op.detach()
            op.erase()
        elif isinstance(op, comm.RecvOp):
            irecv = comm.IRecvOp(op.peer.data, op.channel.value.data, op.transport.data)
            irecv.location = op.location
            Rewriter.insert_op(irecv, InsertPoint.at_start(block))
            first_use = min(
                (u.operation for u in op.result.uses),
                key=lambda o: _index_in(block, o),
                default=_end(block),
            )
            wait = comm.WaitOp(irecv.token, op.result.type)
            wait.value.name_hint = op.result.name_hint  # type: ignore[union-attr]
            Rewriter.insert_op(wait, InsertPoint.before(_ancestor_in(block, first_use)))
            op.result.replace_all_uses_with(wait.value)  # type: ignore[arg-type]
            op.detach()
            op.erase()


def _end(block: Block) -> Operation:
    last = block.last_op
    assert last is not None
    return last


def _ancestor_in(block: Block, op: Operation) -> Operation:
    while op.parent_block() is not block:
        parent = op.parent_op()
        assert parent is not None
        op = parent
    return op


def _index_in(block: Block, op: Operation) -> int:
    return list(block.ops).index(_ancestor_in(block, op))


@dataclass(frozen=True)
class OverlapComm(ModulePass):
    """Make transfers asynchronous (isend/irecv + wait) so they overlap with compute."""

    name = "overlap-comm"
    dim_hint: int = 1

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        from gimlet.placement.schedule import simulate
        from gimlet.placement.target import module_cluster

        cluster = module_cluster(op)
        before = simulate(op, cluster, self.dim_hint).makespan
        from gimlet.dialects import gml
        from gimlet.ir import main_func

        body = main_func(op).body.block
        for seg in [o for o in body.ops if isinstance(o, gml.SegmentOp)]:
            _overlap_block(seg.body.block)
        _overlap_block(body)
        after = simulate(op, cluster, self.dim_hint).makespan
        op.attributes["gml.modelled_s_before_overlap"] = FloatAttr(before, f64)
        op.attributes["gml.modelled_s_after_overlap"] = FloatAttr(after, f64)
