"""Modelled execution time of a partitioned program (what `overlap-comm` improves).

Every device runs its program (see comm_check.device_programs) one op at a time,
taking the cost model's time per op. A transfer starts when its send is issued
and its link is free (transfers on one link are serialised) and takes the
route's latency + bytes/bandwidth. A blocking send or receive stalls its device
until the transfer ends; `comm.isend`/`comm.irecv` do not, only `comm.wait` does.
The makespan is when the last device finishes.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import Operation

from gimlet.dialects import comm, gml
from gimlet.placement.cluster import Cluster
from gimlet.placement.comm_check import Event, device_ops, device_programs
from gimlet.placement.cost import op_cost, op_time, value_bytes


@dataclass
class Timeline:
    makespan: float
    busy: dict[str, float]  # compute seconds per device
    stalled: dict[str, float]  # seconds each device spent waiting on transfers


def _bytes(e: Event, dim_hint: int) -> int:
    op = e.op
    value = op.value if isinstance(op, comm.SendOp | comm.ISendOp) else None
    if value is not None and isinstance(value.type, TensorType):
        return value_bytes(value, dim_hint)
    return 8


def simulate(module: ModuleOp, cluster: Cluster, dim_hint: int = 1) -> Timeline:
    programs = device_programs_with_compute(module, cluster.default_host())
    clock = {d: 0.0 for d in programs}
    busy = {d: 0.0 for d in programs}
    stalled = {d: 0.0 for d in programs}
    pc = {d: 0 for d in programs}
    done: dict[int, float] = {}  # channel -> transfer end time
    link_free: dict[tuple[str, str], float] = {}

    def issue(e: Event, now: float) -> float:
        key = tuple(sorted((e.device, e.peer)))
        start = max(now, link_free.get(key, 0.0))  # type: ignore[arg-type]
        end = start + cluster.transfer_time(e.device, e.peer, _bytes(e, dim_hint))
        link_free[key] = end  # type: ignore[index]
        done[e.channel] = end
        return end

    def wait(d: str, until: float) -> None:
        if until > clock[d]:
            stalled[d] += until - clock[d]
            clock[d] = until

    while any(pc[d] < len(p) for d, p in programs.items()):
        progressed = False
        for d, prog in programs.items():
            while pc[d] < len(prog):
                item = prog[pc[d]]
                if isinstance(item, Operation):  # compute
                    t = op_time(op_cost(item, dim_hint), cluster.devices[d])
                    clock[d] += t
                    busy[d] += t
                elif item.kind == "send":
                    wait(d, issue(item, clock[d]))
                elif item.kind == "isend":
                    issue(item, clock[d])
                elif item.kind in ("recv", "wait"):
                    if item.channel not in done:
                        break  # the sender has not got there yet
                    if item.kind == "recv" or _is_recv_wait(item):
                        wait(d, done[item.channel])
                    else:
                        wait(d, done[item.channel])
                pc[d] += 1
                progressed = True
        if not progressed:
            raise RuntimeError("schedule simulation stalled; run the comm check first")
    return Timeline(max(clock.values(), default=0.0), busy, stalled)


def _is_recv_wait(e: Event) -> bool:
    return isinstance(e.op, comm.WaitOp) and e.op.value is not None


def device_programs_with_compute(module: ModuleOp, host: str) -> dict[str, list[Event | Operation]]:
    """device_programs plus the compute ops, in each device's execution order."""
    events = {id(e.op): e for prog in device_programs(module, host).values() for e in prog}
    programs: dict[str, list[Event | Operation]] = {host: []}
    for device, op in device_ops(module, host):
        prog = programs.setdefault(device, [])
        if id(op) in events:
            if events[id(op)].kind != "irecv":  # posting a receive costs nothing
                prog.append(events[id(op)])
        elif op.dialect_name() in ("gml", "arith") and not isinstance(
            op, gml.YieldOp | gml.ParamOp | gml.ConstantOp
        ):
            prog.append(op)
    return programs
