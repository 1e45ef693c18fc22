"""insert-comm: make every cross-device edge an explicit comm.send / comm.recv pair.

After outlining, a segment may read values produced on another device (another
segment's result, or a function argument, which arrives at the host). For each
such value and destination device this pass allocates one channel (a tensor
crosses to a device once, however many segments there read it), puts the
`comm.send` at the end of the producing segment (or in the host program, the
function body, for arguments), the `comm.recv` at the start of each consuming
segment, and picks the transport from the cluster's route (nvlink, pcie,
host_bounce, network). Results the host returns from another device are
received in the function body. Segment outputs nobody reads any more are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, BlockArgument, Operation, OpResult, Region, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import Rewriter

from gimlet.dialects import comm, gml
from gimlet.ir import main_func
from gimlet.placement.cluster import Cluster
from gimlet.placement.target import module_cluster


@dataclass
class _Channels:
    cluster: Cluster
    next_id: int = 0

    def transport(self, src: str, dst: str) -> str:
        return self.cluster.route(src, dst).transport

    def allocate(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def _producer_device(v: SSAValue, host: str) -> str:
    if isinstance(v, BlockArgument):
        return host
    owner = v.owner
    assert isinstance(owner, Operation)
    return owner.device.data if isinstance(owner, gml.SegmentOp) else host


def _inner_value(v: SSAValue) -> SSAValue:
    """The value a segment yields for its result `v`."""
    seg = v.owner
    assert isinstance(seg, gml.SegmentOp) and isinstance(seg.body.block.last_op, gml.YieldOp)
    assert isinstance(v, OpResult)
    return seg.body.block.last_op.values[v.index]


def _send_from(v: SSAValue, dst: str, ch: _Channels, host: str, fn_body: Block) -> tuple[int, str]:
    src = _producer_device(v, host)
    channel, transport = ch.allocate(), ch.transport(src, dst)
    if isinstance(v.owner, gml.SegmentOp):
        yield_op = v.owner.body.block.last_op
        assert yield_op is not None
        Rewriter.insert_op(comm.SendOp(_inner_value(v), dst, channel, transport), _before(yield_op))
    else:  # a function argument or host value: the host program sends it
        anchor = v.owner.next_op if isinstance(v.owner, Operation) else fn_body.first_op
        assert anchor is not None
        Rewriter.insert_op(comm.SendOp(v, dst, channel, transport), _before(anchor))
    return channel, transport


def _before(op: Operation):  # type: ignore[no-untyped-def]
    from xdsl.rewriter import InsertPoint

    return InsertPoint.before(op)


def _rebuild(
    seg: gml.SegmentOp,
    keep_inputs: list[int],
    keep_outputs: list[int],
    extra: Sequence[SSAValue] = (),
) -> gml.SegmentOp:
    """A copy of `seg` with only the given inputs (others already replaced) and outputs,
    plus `extra` inner values yielded as new trailing results."""
    block = seg.body.block
    yield_op = block.last_op
    assert isinstance(yield_op, gml.YieldOp)
    new_block = Block(arg_types=[block.args[i].type for i in keep_inputs])
    for i, arg in zip(keep_inputs, new_block.args, strict=True):
        arg.name_hint = block.args[i].name_hint
        block.args[i].replace_all_uses_with(arg)
    values = [yield_op.values[i] for i in keep_outputs] + list(extra)
    for op in list(block.ops):
        if op is yield_op:
            continue
        op.detach()
        new_block.add_op(op)
    new_block.add_op(gml.YieldOp(values))
    new = gml.SegmentOp(
        seg.device.data,
        [seg.inputs[i] for i in keep_inputs],
        [v.type for v in values],
        Region(new_block),
    )
    new.location = seg.location
    Rewriter.insert_op(new, _before(seg))
    for i, res in zip(keep_outputs, new.outputs[: len(keep_outputs)], strict=True):
        res.name_hint = seg.outputs[i].name_hint
        seg.outputs[i].replace_all_uses_with(res)
    seg.detach()
    seg.erase(safe_erase=False)
    return new


def _export(inner: SSAValue) -> SSAValue:
    """Make the segment holding `inner` yield it (once); returns the segment's result."""
    seg = inner.owner.parent_op() if isinstance(inner.owner, Operation) else None
    if not isinstance(seg, gml.SegmentOp):
        return inner  # received in the host program itself: already visible there
    yield_op = seg.body.block.last_op
    assert isinstance(yield_op, gml.YieldOp)
    if inner in yield_op.values:
        return seg.outputs[list(yield_op.values).index(inner)]
    n = len(seg.outputs)
    return _rebuild(seg, list(range(len(seg.inputs))), list(range(n)), [inner]).outputs[n]


@dataclass(frozen=True)
class InsertComm(ModulePass):
    """Put comm.send/comm.recv (one channel per tensor per destination) on cross-device edges."""

    name = "insert-comm"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        cluster = module_cluster(op)
        host = cluster.default_host()
        fn = main_func(op)
        body = fn.body.block
        ch = _Channels(cluster)
        sent: dict[tuple[SSAValue, str], tuple[int, str]] = {}
        received: dict[tuple[SSAValue, str], SSAValue] = {}  # (value, device) -> its recv

        def channel_for(v: SSAValue, dst: str) -> tuple[int, str]:
            if (v, dst) not in sent:
                sent[(v, dst)] = _send_from(v, dst, ch, host, body)
            return sent[(v, dst)]

        for seg in [o for o in body.ops if isinstance(o, gml.SegmentOp)]:
            dst = seg.device.data
            keep: list[int] = []
            for i, v in enumerate(list(seg.inputs)):
                src = _producer_device(v, host)
                if src == dst:
                    keep.append(i)
                    continue
                if (v, dst) in received:  # already on this device: pass it along locally
                    seg.operands[i] = _export(received[(v, dst)])  # type: ignore[index]
                    keep.append(i)
                    continue
                channel, transport = channel_for(v, dst)
                recv = comm.RecvOp(v.type, src, channel, transport)
                recv.result.name_hint = v.name_hint
                first = seg.body.block.first_op
                assert first is not None
                Rewriter.insert_op(recv, _before(first))
                seg.body.block.args[i].replace_all_uses_with(recv.result)
                received[(v, dst)] = recv.result
            if len(keep) != len(seg.inputs):
                _rebuild(seg, keep, list(range(len(seg.outputs))))

        ret = body.last_op
        assert isinstance(ret, func.ReturnOp)
        for i, v in enumerate(list(ret.arguments)):
            src = _producer_device(v, host)
            if src == host:
                continue
            if (v, host) in received:  # a host segment already has it: return that copy
                ret.operands[i] = _export(received[(v, host)])  # type: ignore[index]
                continue
            channel, transport = channel_for(v, host)
            recv = comm.RecvOp(v.type, src, channel, transport)
            recv.result.name_hint = v.name_hint
            Rewriter.insert_op(recv, _before(ret))
            ret.operands[i] = recv.result  # type: ignore[index]
            received[(v, host)] = recv.result

        for seg in [o for o in body.ops if isinstance(o, gml.SegmentOp)]:
            used = [i for i, r in enumerate(seg.outputs) if r.uses]
            if len(used) != len(seg.outputs):
                _rebuild(seg, list(range(len(seg.inputs))), used)
