"""`--explain`: what went where, what it costs, and why — read back from the final IR.

Everything here is recomputed from the partitioned module and the cluster with
the same cost model placement used, so the report describes the program that
was actually emitted, not the solver's intentions.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from xdsl.dialects.builtin import DictionaryAttr, FloatAttr, ModuleOp, StringAttr, TensorType
from xdsl.ir import Operation, SSAValue

from gimlet.dialects import comm, gml
from gimlet.errors import module_path
from gimlet.ir import main_func
from gimlet.placement.backend_ops import unsupported
from gimlet.placement.cluster import Cluster, Device
from gimlet.placement.cost import op_cost, op_time, value_bytes, weight_bytes
from gimlet.placement.solvers import (
    is_free,
    params_read,
    parse_pins,
    parse_repeat,
    pin_matches,
    repeat_factors,
)


@dataclass
class Transfer:
    channel: int
    peer: str
    transport: str
    bytes: int
    seconds: float


@dataclass
class SegmentReport:
    index: int
    device: str
    ops: int
    op_kinds: dict[str, int]
    modules: list[str]
    compute_s: float
    weight_bytes: int
    bytes_in: int
    bytes_out: int
    recv: list[Transfer] = field(default_factory=list)
    send: list[Transfer] = field(default_factory=list)
    alternatives_s: dict[str, float] = field(default_factory=dict)
    why: str = ""


@dataclass
class Report:
    target: str
    placement: str
    devices: dict[str, str]
    segments: list[SegmentReport]
    modelled_latency_s: float
    single_device_s: dict[str, float]
    best_single_device: str
    gain_over_best_single: float
    overlap_before_s: float | None = None  # modelled makespan with blocking transfers
    overlap_after_s: float | None = None  # and after overlap-comm made them asynchronous


_SKIP = (
    gml.YieldOp,
    gml.ParamOp,
    gml.ConstantOp,
    comm.SendOp,
    comm.RecvOp,
    comm.ISendOp,
    comm.IRecvOp,
    comm.WaitOp,
)


def _compute_ops(seg: gml.SegmentOp) -> list[Operation]:
    return [o for o in seg.body.block.ops if not isinstance(o, _SKIP)]


def build_report(module: ModuleOp, cluster: Cluster, dim_hint: int = 1) -> Report:
    fn = main_func(module)
    segments = [o for o in fn.body.block.ops if isinstance(o, gml.SegmentOp)]
    all_ops = [o for s in segments for o in _compute_ops(s)]
    spec = module.attributes.get("gml.repeat")
    repeat = parse_repeat(spec.data) if isinstance(spec, StringAttr) else []
    runs = dict(zip(all_ops, repeat_factors(all_ops, repeat), strict=True))

    def time_on(o: Operation, dev: Device) -> float:
        c = op_cost(o, dim_hint)
        if unsupported(dev, o) is not None or c.dtype not in dev.dtypes:
            return float("inf")
        return op_time(c, dev) * runs[o]

    single = {name: sum(time_on(o, dev) for o in all_ops) for name, dev in cluster.devices.items()}
    # A transfer happens as often as both its ends run (the KV cache once, decode steps often).
    seg_runs = {
        seg.device.data + str(k): max((runs[o] for o in _compute_ops(seg)), default=1.0)
        for k, seg in enumerate(segments)
    }
    channel_runs: dict[int, float] = {}
    for k, seg in enumerate(segments):
        for o in seg.body.block.ops:
            if isinstance(o, comm.SendOp | comm.ISendOp):
                channel_runs[o.channel.value.data] = seg_runs[seg.device.data + str(k)]
    reports = []
    latency = 0.0
    for k, seg in enumerate(segments):
        dev = cluster.devices[seg.device.data]
        ops = _compute_ops(seg)
        kinds: dict[str, int] = {}
        for o in ops:
            kinds[o.name] = kinds.get(o.name, 0) + 1
        compute = sum(time_on(o, dev) for o in ops)
        recv: list[Transfer] = []
        send: list[Transfer] = []
        for o in seg.body.block.ops:
            if isinstance(o, comm.RecvOp | comm.SendOp | comm.ISendOp | comm.IRecvOp):
                value = _transferred(o)
                nbytes = value_bytes(value, dim_hint) if isinstance(value.type, TensorType) else 8
                factor = seg_runs[dev.name + str(k)]
                if isinstance(o, comm.RecvOp | comm.IRecvOp):
                    factor = min(factor, channel_runs.get(o.channel.value.data, 1.0))
                secs = cluster.transfer_time(o.peer.data, dev.name, nbytes) * factor
                t = Transfer(o.channel.value.data, o.peer.data, o.transport.data, nbytes, secs)
                (recv if isinstance(o, comm.RecvOp | comm.IRecvOp) else send).append(t)
        alternatives = {
            name: sum(time_on(o, other) for o in ops) for name, other in cluster.devices.items()
        }
        modules = sorted({m for o in ops if (m := module_path(o.location))})[:8]
        latency += compute + sum(t.seconds for t in recv)
        reports.append(
            SegmentReport(
                k,
                dev.name,
                len(ops),
                kinds,
                modules,
                compute,
                sum(weight_bytes(o) for o in seg.body.block.ops if isinstance(o, gml.ParamOp)),
                sum(t.bytes for t in recv),
                sum(t.bytes for t in send),
                recv,
                send,
                alternatives,
            )
        )
    for o in fn.body.block.ops:  # host-side receives of the results
        if isinstance(o, comm.RecvOp | comm.IRecvOp):
            nbytes = value_bytes(_transferred(o), dim_hint)
            factor = channel_runs.get(o.channel.value.data, 1.0)
            latency += cluster.transfer_time(o.peer.data, cluster.default_host(), nbytes) * factor
    # the placement's own score and each device alone scored the same way (passes/place.py),
    # so the gain compares like with like; a module placed elsewhere keeps the sums above
    scored = module.attributes.get("gml.modelled_latency_s")
    if isinstance(scored, FloatAttr):
        latency = scored.value.data
    alone = module.attributes.get("gml.single_device_s")
    if isinstance(alone, DictionaryAttr):
        single = {d: _seconds(alone.data.get(d)) for d in cluster.devices}
    _decide(module, cluster, segments, reports, dim_hint)
    best = min(single, key=lambda d: single[d])
    target = module.attributes.get("gml.target")
    placement = module.attributes.get("gml.placement")
    report = Report(
        getattr(target, "data", ""),
        getattr(placement, "data", ""),
        {n: d.model or d.kind for n, d in cluster.devices.items()},
        reports,
        latency,
        single,
        best,
        single[best] / latency if latency > 0 else 1.0,
    )
    for attr, name in (
        ("gml.modelled_s_before_overlap", "overlap_before_s"),
        ("gml.modelled_s_after_overlap", "overlap_after_s"),
    ):
        modelled = module.attributes.get(attr)
        if isinstance(modelled, FloatAttr):
            setattr(report, name, modelled.value.data)
    return report


def _seconds(attr: object) -> float:
    """A recorded single-device latency; inf where place left the device out (it cannot
    run every op)."""
    return attr.value.data if isinstance(attr, FloatAttr) else math.inf


def _transferred(o: Operation) -> SSAValue:
    """The value a send/recv (or its asynchronous form) moves."""
    if isinstance(o, comm.SendOp | comm.ISendOp):
        return o.value
    if isinstance(o, comm.RecvOp):
        return o.result
    assert isinstance(o, comm.IRecvOp)
    wait = next(u.operation for u in o.token.uses)
    assert isinstance(wait, comm.WaitOp) and wait.value is not None
    return wait.value


def _decide(
    module: ModuleOp,
    cluster: Cluster,
    segments: list[gml.SegmentOp],
    reports: list[SegmentReport],
    dim_hint: int,
) -> None:
    """Fill each report's `why`: the constraint or comparison that put the segment where it is.

    In order: pins (module attribute gml.pins, what `--pin` gave place); devices that cannot
    run its ops; then, for every device that would compute its ops faster, why not there:
    memory (that device's weights plus these would not fit in its room, the capacity less
    twice the largest activation, as placement counts it) or the modelled change of the
    objective if the whole segment moved there (its transfers re-routed)."""
    spec = module.attributes.get("gml.pins")
    pins = parse_pins(spec.data) if isinstance(spec, StringAttr) else []
    placement = module.attributes.get("gml.placement")
    objective = placement.data.split("/")[-1] if isinstance(placement, StringAttr) else "latency"
    ops = [[o for o in _compute_ops(seg) if not is_free(o)] for seg in segments]
    weights = [sum(weight_bytes(w) for o in seg_ops for w in params_read(o)) for seg_ops in ops]
    act = max(
        (value_bytes(r, dim_hint) for seg_ops in ops for o in seg_ops for r in o.results),
        default=0,
    )
    used = dict.fromkeys(cluster.devices, 0.0)
    busy = dict.fromkeys(cluster.devices, 0.0)
    for r, w in zip(reports, weights, strict=True):
        used[r.device] += w
        busy[r.device] += r.compute_s + sum(t.seconds for t in r.recv)
    for k, (seg, r) in enumerate(zip(segments, reports, strict=True)):
        r.why = _why(
            cluster, seg, r, ops[k], weights[k], pins, objective, used, busy, act, dim_hint
        )


def _why(
    cluster: Cluster,
    seg: gml.SegmentOp,
    r: SegmentReport,
    ops: list[Operation],
    weights: float,
    pins: list[tuple[str, str]],
    objective: str,
    used: dict[str, float],
    busy: dict[str, float],
    act: float,
    dim_hint: int,
) -> str:
    here = r.device
    pinned: dict[str, int] = {}
    for o in ops:
        last = [f"{pat}={dev}" for pat, dev in pins if pin_matches(pat, o)]
        if last and last[-1].endswith("=" + here):  # the last matching pin is the one applied
            pinned[last[-1]] = pinned.get(last[-1], 0) + 1
    quoted = " and ".join(f"--pin '{spec}'" for spec in pinned)
    if pinned and sum(pinned.values()) == len(ops):
        return f"pinned by {quoted}"
    if pinned:  # the segment cannot move as a whole; its other ops were placed beside them
        rest = sorted({o.name for o in ops if not any(pin_matches(p, o) for p, _ in pins)})
        return (
            f"{sum(pinned.values())} of {len(ops)} ops pinned by {quoted}; "
            f"the others ({', '.join(rest)}) were placed with them"
        )
    alts = r.alternatives_s
    others = [d for d in cluster.devices if d != here]
    if others and all(alts[d] == float("inf") for d in others):
        lacks = "; ".join(_cannot(cluster.devices[d], ops, dim_hint) for d in others)
        return f"only {here} can run these ops ({lacks})"
    faster = sorted((d for d in others if alts[d] < alts[here]), key=lambda d: alts[d])
    if not faster:
        runner = min(others, key=lambda d: alts[d]) if others else here
        if runner == here:
            return "only device"
        return f"fastest for these ops ({_fmt_s(alts[here])} vs {_fmt_s(alts[runner])} on {runner})"
    reasons: list[str] = []
    for f in faster:
        room = cluster.devices[f].mem_capacity - 2 * act
        lead = f"{f} computes them in {_fmt_s(alts[f])} vs {_fmt_s(alts[here])} here"
        if used[f] + weights > room:
            cap = cluster.devices[f].mem_capacity
            note = (
                f" (its {_fmt_b(cap)} less {_fmt_b(2 * act)} kept for activations)" if act else ""
            )
            reasons.append(
                f"{lead}, but memory: {f} would need {_fmt_b(used[f] + weights)} of "
                f"{_fmt_b(room)}{note}"
            )
            continue
        delta = _moved(cluster, seg, r, f, dim_hint)
        compute = alts[f] - alts[here]
        reasons.append(lead + ", " + _verdict(cluster, objective, busy, delta, compute))
    return "; ".join(reasons)


def _cannot(dev: Device, ops: list[Operation], dim_hint: int) -> str:
    for o in ops:
        missing = unsupported(dev, o)
        if missing:
            return f"{dev.name} does not support {missing}"
        dtype = op_cost(o, dim_hint).dtype
        if dtype not in dev.dtypes:
            return f"{dev.name} does not support {dtype}"
    return f"{dev.name} cannot run them"


def _moved(
    cluster: Cluster, seg: gml.SegmentOp, r: SegmentReport, f: str, dim_hint: int
) -> dict[str, float]:
    """Per device, the change in busy seconds (compute plus receiving) if segment r moved
    from its device to f, every transfer it takes part in re-routed (and values it shares
    with segments on its old device now crossing)."""
    here = r.device
    tt = cluster.transfer_time
    delta = dict.fromkeys(cluster.devices, 0.0)
    delta[here] -= r.compute_s
    delta[f] += r.alternatives_s[f]
    for t in r.recv:  # values it receives: now received by f, or already there
        delta[here] -= t.seconds
        delta[f] += tt(t.peer, f, t.bytes) if t.peer != f else 0.0
    for t in r.send:  # values it sends: now from f; f's own copy was a receive
        if t.peer == f:
            delta[f] -= tt(here, f, t.bytes)
        else:
            delta[t.peer] += tt(f, t.peer, t.bytes) - tt(here, t.peer, t.bytes)
    for v in seg.inputs:  # values from segments on its old device: now cross to f
        if isinstance(v.type, TensorType):
            delta[f] += tt(here, f, value_bytes(v, dim_hint))
    for res in seg.results:  # values its old device's other segments read: now cross back
        if res.uses and isinstance(res.type, TensorType):
            delta[here] += tt(f, here, value_bytes(res, dim_hint))
    return delta


def _verdict(
    cluster: Cluster,
    objective: str,
    busy: dict[str, float],
    delta: dict[str, float],
    compute: float,
) -> str:
    """The modelled change of the objective for a move (compute changes by `compute`), in words."""
    if objective == "throughput":
        before = max(busy.values())
        after = max(busy[d] + delta[d] for d in busy)
        change = after - before
        what = f"the busiest device would take {_fmt_s(after)} vs {_fmt_s(before)} now"
    elif objective in ("energy", "cost"):
        attr = "power_w" if objective == "energy" else "price_per_hour"
        scale = 1.0 if objective == "energy" else 1 / 3600
        change = sum(delta[d] * (getattr(cluster.devices[d], attr) or 0.0) * scale for d in delta)
        what = f"{objective} per request {change:+.3g} {'J' if objective == 'energy' else '$'}"
    else:
        change = sum(delta.values())
        moves = change - compute
        what = f"{_fmt_s(abs(moves))} {'more' if moves >= 0 else 'less'} in transfers, latency {_signed(change)}"
    if change >= 0:
        return f"but moving them there costs more: {what}"
    return f"and moving them there would gain ({what}): the solver missed it"


def _signed(s: float) -> str:
    return ("+" if s >= 0 else "-") + _fmt_s(abs(s))


def _fmt_s(s: float) -> str:
    if s == float("inf"):
        return "n/a"
    return f"{s * 1e3:.3f} ms" if s >= 1e-4 else f"{s * 1e6:.1f} us"


def _fmt_b(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{int(b)} B"


def to_text(r: Report) -> str:
    lines = [f"target {r.target}  placement {r.placement}"]
    for s in r.segments:
        lines.append(
            f"segment {s.index} on {s.device} ({r.devices[s.device]}): {s.ops} ops, "
            f"compute {_fmt_s(s.compute_s)}, weights {_fmt_b(s.weight_bytes)}"
        )
        if s.modules:
            lines.append(f"  modules: {', '.join(s.modules)}")
        for t in s.recv:
            lines.append(
                f"  in  {_fmt_b(t.bytes)} from {t.peer} via {t.transport} (ch {t.channel}, {_fmt_s(t.seconds)})"
            )
        for t in s.send:
            lines.append(f"  out {_fmt_b(t.bytes)} to {t.peer} via {t.transport} (ch {t.channel})")
        lines.append(f"  why: {s.why}")
    lines.append(
        f"modelled latency {_fmt_s(r.modelled_latency_s)}; all on one device: "
        + ", ".join(f"{d} {_fmt_s(t)}" for d, t in r.single_device_s.items())
    )
    lines.append(
        f"gain over the best single device ({r.best_single_device}): {r.gain_over_best_single:.2f}x"
    )
    if r.overlap_before_s is not None and r.overlap_after_s is not None:
        lines.append(
            f"overlap-comm: modelled makespan {_fmt_s(r.overlap_before_s)} with blocking "
            f"transfers, {_fmt_s(r.overlap_after_s)} with transfers overlapped"
        )
    return "\n".join(lines) + "\n"


def to_json(r: Report) -> str:
    def clean(x: object) -> object:
        if isinstance(x, float) and x == float("inf"):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(asdict(r)), indent=2) + "\n"


def to_dot(r: Report) -> str:
    """Graphviz: one box per segment, clustered by device; edges are transfers."""
    lines = ["digraph gimlet {", "  rankdir=LR;", "  node [shape=box, fontname=monospace];"]
    by_device: dict[str, list[SegmentReport]] = {}
    for s in r.segments:
        by_device.setdefault(s.device, []).append(s)
    for d, segs in by_device.items():
        lines.append(f'  subgraph "cluster_{d}" {{ label="{d} ({r.devices[d]})";')
        for s in segs:
            lines.append(
                f'    s{s.index} [label="segment {s.index}\\n{s.ops} ops\\n{_fmt_s(s.compute_s)}"];'
            )
        lines.append("  }")
    lines.append('  host [shape=ellipse, label="host I/O"];')
    channel_src: dict[int, str] = {}
    for s in r.segments:
        for t in s.send:
            channel_src[t.channel] = f"s{s.index}"
    for s in r.segments:
        for t in s.recv:
            src = channel_src.get(t.channel, "host")
            lines.append(f'  {src} -> s{s.index} [label="{_fmt_b(t.bytes)} {t.transport}"];')
    for s in r.segments:
        for t in s.send:
            if not any(t.channel == u.channel for x in r.segments for u in x.recv):
                lines.append(f'  s{s.index} -> host [label="{_fmt_b(t.bytes)} {t.transport}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"
