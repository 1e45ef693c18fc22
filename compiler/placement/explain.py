"""`--explain`: what went where, what it costs, and why — read back from the final IR.

Everything here is recomputed from the partitioned module and the cluster with
the same cost model placement used, so the report describes the program that
was actually emitted, not the solver's intentions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from xdsl.dialects.builtin import FloatAttr, ModuleOp, StringAttr, TensorType
from xdsl.ir import Operation, SSAValue

from gimlet.dialects import comm, gml
from gimlet.errors import module_path
from gimlet.ir import main_func
from gimlet.placement.backend_ops import unsupported
from gimlet.placement.cluster import Cluster, Device
from gimlet.placement.cost import op_cost, op_time, value_bytes, weight_bytes
from gimlet.placement.solvers import parse_repeat, repeat_factors


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
                _why(dev.name, alternatives, recv),
            )
        )
    for o in fn.body.block.ops:  # host-side receives of the results
        if isinstance(o, comm.RecvOp | comm.IRecvOp):
            nbytes = value_bytes(_transferred(o), dim_hint)
            latency += cluster.transfer_time(o.peer.data, cluster.default_host(), nbytes)
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


def _why(device: str, alternatives: dict[str, float], recv: list[Transfer]) -> str:
    ranked = sorted(alternatives.items(), key=lambda kv: kv[1])
    if len(ranked) < 2:
        return "only device"
    fastest, runner = ranked[0], ranked[1]
    if fastest[0] == device:
        if runner[1] == float("inf"):
            return f"only {device} can run these ops"
        return f"fastest for these ops ({_fmt_s(fastest[1])} vs {_fmt_s(runner[1])} on {runner[0]})"
    moved = sum(t.seconds for t in recv)
    return (
        f"{fastest[0]} would compute it in {_fmt_s(fastest[1])} vs {_fmt_s(alternatives[device])} here, "
        f"but keeping data local (or memory/pins) wins; inbound transfers cost {_fmt_s(moved)}"
    )


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
