"""Static check that a partitioned program's transfers match and cannot deadlock.

Each device runs its own program: the host runs the function body (its own
segments inlined, other devices' segments skipped), every other device runs its
segments in order. The check pairs every send with exactly one receive on the
same channel (peers, types agree), then plays all programs against each other —
sends are buffered (they complete without the receiver, see comm.send), a
receive or a wait blocks until its data has been sent — and reports the first
state where no device can move, naming what each device waits for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Attribute, Operation

from gimlet.dialects import comm, gml
from gimlet.errors import VerificationError, with_location
from gimlet.ir import main_func
from gimlet.placement.target import module_target, resolve

Endpoint = comm.SendOp | comm.RecvOp | comm.ISendOp | comm.IRecvOp


@dataclass
class Event:
    kind: str  # send, recv, isend, irecv, wait
    op: Operation
    device: str
    channel: int = -1
    peer: str = ""
    type: Attribute | None = None


def device_ops(module: ModuleOp, host: str) -> Iterator[tuple[str, Operation]]:
    """(device, op) in execution order: the host runs the function body, each segment's ops
    run on its device."""
    for op in main_func(module).body.block.ops:
        if isinstance(op, gml.SegmentOp):
            for inner in op.body.block.ops:
                yield op.device.data, inner
        else:
            yield host, op


def device_programs(module: ModuleOp, host: str) -> dict[str, list[Event]]:
    programs: dict[str, list[Event]] = {host: []}
    for device, op in device_ops(module, host):
        prog = programs.setdefault(device, [])
        if isinstance(op, comm.SendOp | comm.ISendOp):
            kind = "send" if isinstance(op, comm.SendOp) else "isend"
            prog.append(Event(kind, op, device, op.channel.value.data, op.peer.data, op.value.type))
        elif isinstance(op, comm.RecvOp):
            prog.append(
                Event("recv", op, device, op.channel.value.data, op.peer.data, op.result.type)
            )
        elif isinstance(op, comm.IRecvOp):
            wait = next((u.operation for u in op.token.uses), None)
            t = wait.value.type if isinstance(wait, comm.WaitOp) and wait.value else None
            prog.append(Event("irecv", op, device, op.channel.value.data, op.peer.data, t))
        elif isinstance(op, comm.WaitOp):
            start = op.token.owner
            assert isinstance(start, Operation)
            prog.append(Event("wait", op, device, start.channel.value.data))  # type: ignore[attr-defined]
    return {d: p for d, p in programs.items() if p or d == host}


def _error(op: Operation, message: str) -> VerificationError:
    return VerificationError(with_location(op.location, f"{op.name}: {message}"))


def check_comm(module: ModuleOp, host: str) -> None:
    programs = device_programs(module, host)
    sends: dict[int, Event] = {}
    recvs: dict[int, Event] = {}
    for prog in programs.values():
        for e in prog:
            table = (
                sends
                if e.kind in ("send", "isend")
                else recvs
                if e.kind in ("recv", "irecv")
                else None
            )
            if table is None:
                continue
            if e.channel in table:
                raise _error(
                    e.op, f"channel {e.channel} is used by more than one {e.kind.lstrip('i')}"
                )
            table[e.channel] = e
    for ch, s in sends.items():
        r = recvs.get(ch)
        if r is None:
            raise _error(s.op, f"channel {ch} has no matching receive on {s.peer}")
        if r.device != s.peer or s.device != r.peer:
            raise _error(
                r.op,
                f"channel {ch} pairs {s.device} -> {s.peer} with a receive on {r.device} from {r.peer}",
            )
        if r.type is not None and r.type != s.type:
            raise _error(r.op, f"channel {ch} sends {s.type} but receives {r.type}")
    for ch, r in recvs.items():
        if ch not in sends:
            raise _error(r.op, f"channel {ch} has no matching send from {r.peer}")
    _simulate(programs)


def _simulate(programs: dict[str, list[Event]]) -> None:
    pc = {d: 0 for d in programs}
    sent: set[int] = set()  # channels whose data is on its way
    receives = {e.channel for p in programs.values() for e in p if e.kind == "irecv"}
    while True:
        moved = False
        for d, prog in programs.items():
            while pc[d] < len(prog):
                e = prog[pc[d]]
                if e.kind in ("send", "isend"):
                    sent.add(e.channel)  # buffered: never waits for the receiver
                elif (e.kind == "recv" or (e.kind == "wait" and e.channel in receives)) and (
                    e.channel not in sent
                ):
                    break
                pc[d] += 1
                moved = True
        if all(pc[d] == len(p) for d, p in programs.items()):
            return
        if not moved:
            stuck = [
                f"{d} waits at {programs[d][pc[d]].kind} channel {programs[d][pc[d]].channel}"
                for d in programs
                if pc[d] < len(programs[d])
            ]
            first = next(programs[d][pc[d]] for d in programs if pc[d] < len(programs[d]))
            raise _error(first.op, "transfers deadlock: " + "; ".join(stuck))


def verify_transfers(module: ModuleOp, after: str | None = None) -> None:
    """`check_comm` for a module with comm ops, its host taken from `gml.target` (cpu0
    without one); a no-op otherwise. Errors name the pass that produced the module."""
    if not any(op.dialect_name() == "comm" for op in module.walk()):
        return
    target = module_target(module)
    host = resolve(target).default_host() if target is not None else "cpu0"
    try:
        check_comm(module, host)
    except VerificationError as e:
        suffix = f" after pass '{after}'" if after else ""
        raise VerificationError(f"{e}{suffix}") from e
