"""overlap-comm: start transfers early and wait late, so they hide behind compute.

Each blocking `comm.send` becomes a `comm.isend` issued right after its value is
produced, with the `comm.wait` at the end of the segment; each `comm.recv`
becomes a `comm.irecv` posted at the start of the segment with the `comm.wait`
just before the value's first use. A segment posts its irecvs in the order the
program sends them (NCCL matches a pair's transfers in order). The modelled time
of the program (see compiler/placement/schedule.py) before and after is recorded
on the module as `gml.modelled_s_before_overlap` / `gml.modelled_s_after_overlap`.
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


def _follow_send_order(fn: Operation, blocks: list[Block]) -> None:
    """Post each block's leading irecvs in the order the program issues their isends.

    NCCL matches a pair's transfers by the order they are posted, not by tag, so a
    receiver that posts channel 1 before channel 2 while its sender sends 2 first (its
    value was ready first) cannot use NCCL for them (compiler/bundle.py falls back to
    gloo through host memory). Posting in the send order costs nothing: every irecv
    is posted at the block's start either way."""
    sent = [o.channel.value.data for o in fn.walk() if isinstance(o, comm.ISendOp)]
    order = {ch: i for i, ch in enumerate(sent)}
    for block in blocks:
        lead: list[comm.IRecvOp] = []
        for op in block.ops:
            if not isinstance(op, comm.IRecvOp):
                break
            lead.append(op)
        ordered = sorted(lead, key=lambda o: order.get(o.channel.value.data, -1))
        if ordered == lead:
            continue
        anchor = lead[-1].next_op
        assert anchor is not None  # a block ends in its terminator
        for op in ordered:
            op.detach()
            Rewriter.insert_op(op, InsertPoint.before(anchor))


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

        fn = main_func(op)
        body = fn.body.block
        blocks = [o.body.block for o in body.ops if isinstance(o, gml.SegmentOp)] + [body]
        for block in blocks:
            _overlap_block(block)
        _follow_send_order(fn, blocks)
        after = simulate(op, cluster, self.dim_hint).makespan
        op.attributes["gml.modelled_s_before_overlap"] = FloatAttr(before, f64)
        op.attributes["gml.modelled_s_after_overlap"] = FloatAttr(after, f64)
