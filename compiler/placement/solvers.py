"""Placement as an optimisation problem, and the solvers that share it.

`build_problem` turns a module and a cluster into arrays: per node (a top-level
op that computes) and device, the modelled time (inf where the device cannot
run it); per data edge, its bytes; weight bytes per node; device capacities.
Every solver returns an assignment node -> device, and `evaluate` scores any
assignment with the same exact model, so solvers are compared like for like:

  latency     one request: all compute plus every transfer, in sequence
  throughput  a pipelined stream: the busiest device's compute plus what it receives
  energy      joules per request (device power x busy time)
  cost        dollars per request (device price x busy time)

Transfers are deduplicated: a value goes to each consuming device once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue

from gimlet.dialects import gml
from gimlet.errors import UserError, module_path
from gimlet.ir import main_func
from gimlet.placement.backend_ops import unsupported
from gimlet.placement.cluster import Cluster
from gimlet.placement.cost import is_load_time, op_cost, op_time, value_bytes, weight_bytes

OBJECTIVES = ("latency", "throughput", "energy", "cost")
SOLVERS = ("greedy", "dp", "milp")
INF = math.inf


def is_free(op: Operation) -> bool:
    """Not placed: weights, literals and layout changes of them (a transposed weight) are
    materialised on every device that uses them, so a weight never travels between devices.
    The same rule as the cost model's per-call cost (cost.is_load_time: they cost nothing per
    call), so what the solver leaves out is what every prediction leaves out. Size arithmetic
    runs on the host (is_host_only)."""
    return is_load_time(op)


def params_read(op: Operation) -> set[gml.ParamOp]:
    """The parameters an op reads, directly or through free layout ops."""
    found: set[gml.ParamOp] = set()
    stack = [v.owner for inner in op.walk() for v in inner.operands]
    while stack:
        owner = stack.pop()
        if isinstance(owner, gml.ParamOp):
            found.add(owner)
        elif isinstance(owner, Operation) and is_free(owner):
            stack.extend(v.owner for v in owner.operands)
    return found


def is_host_only(op: Operation) -> bool:
    return isinstance(op, gml.DimOp) or op.dialect_name() == "arith"


@dataclass
class Problem:
    cluster: Cluster
    devices: list[str]
    nodes: list[Operation]  # in program order (a topological order)
    time: np.ndarray  # [n, D] seconds; inf = cannot run there
    weights: np.ndarray  # [n] bytes of parameters the node reads
    edges: list[tuple[int, list[int], float]]  # producer, consumers, bytes
    inputs: list[tuple[list[int], float]]  # func args: consumers, bytes (arrive at host)
    outputs: list[tuple[int, float]]  # producer -> host, bytes
    capacity: np.ndarray  # [D] bytes usable for weights (capacity - activation peak)
    host: int
    lat: np.ndarray  # [D, D] route latency
    inv_bw: np.ndarray  # [D, D] route seconds per byte
    weight_of: np.ndarray  # [D] objective weight per busy second (1, W or $/s)
    objective: str = "latency"
    why: dict[tuple[int, int], str] = field(default_factory=dict)  # (node, device) -> why not
    runs: np.ndarray | None = None  # [n] times each node runs per request (--repeat); None = 1

    def runs_of(self, producer: int, consumers: Sequence[int]) -> float:
        """A value moves as often as both ends run: a prefill->decode KV cache once,
        a decode->decode activation every step."""
        if self.runs is None:
            return 1.0
        out = max(self.runs[c] for c in consumers) if consumers else 1.0
        return float(min(self.runs[producer], out) if producer >= 0 else out)

    def transfer(self, src: int, dst: int, nbytes: float) -> float:
        return 0.0 if src == dst else float(self.lat[src, dst] + nbytes * self.inv_bw[src, dst])


def _top_level(op: Operation, body: Operation) -> Operation:
    while op.parent_op() is not body and op.parent_op() is not None:
        op = op.parent_op()  # type: ignore[assignment]
    return op


def build_problem(
    module: ModuleOp,
    cluster: Cluster,
    objective: str = "latency",
    pins: Sequence[tuple[str, str]] = (),
    dim_hint: int = 1,
    repeat: Sequence[tuple[str, int]] = (),
) -> Problem:
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective '{objective}'; choose from {', '.join(OBJECTIVES)}")
    fn = main_func(module)
    devices = list(cluster.devices)
    dev = [cluster.devices[d] for d in devices]
    nodes = [
        op
        for op in fn.body.block.ops
        if not is_free(op) and not is_host_only(op) and not isinstance(op, func.ReturnOp)
    ]
    index = {op: i for i, op in enumerate(nodes)}
    n, D = len(nodes), len(devices)
    time = np.zeros((n, D))
    weights = np.zeros(n)
    why: dict[tuple[int, int], str] = {}
    for i, op in enumerate(nodes):
        cost = op_cost(op, dim_hint)
        for j, d in enumerate(dev):
            missing = unsupported(d, op)  # an op name, or one a chosen backend cannot run
            if missing:
                time[i, j] = INF
                why[(i, j)] = f"{d.name} does not support {missing}"
            elif cost.dtype not in d.dtypes:
                time[i, j] = INF
                why[(i, j)] = f"{d.name} does not support {cost.dtype}"
            else:
                time[i, j] = op_time(cost, d)
        weights[i] = sum(weight_bytes(param) for param in params_read(op))
    runs = repeat_factors(nodes, repeat)
    time *= runs[:, None]
    _apply_pins(nodes, devices, time, pins, why)
    for i in range(n):
        if not np.isfinite(time[i]).any():
            reasons = "; ".join(why.get((i, j), "") for j in range(D) if (i, j) in why)
            raise UserError(_no_home(nodes[i], reasons or "no device can run it"))

    edges, inputs, outputs = [], [], []
    for arg in fn.args:
        consumers = sorted({index[c] for c in _consumers(arg, fn) if c in index})
        if consumers:
            inputs.append((consumers, float(value_bytes(arg, dim_hint))))
    for i, op in enumerate(nodes):
        for res in op.results:
            consumers = sorted({index[c] for c in _consumers(res, fn) if c in index})
            if consumers:
                edges.append((i, consumers, float(value_bytes(res, dim_hint))))
            if any(isinstance(u.operation, func.ReturnOp) for u in res.uses):
                outputs.append((i, float(value_bytes(res, dim_hint))))

    lat, inv_bw = route_matrices(cluster, devices)
    act_peak = max((value_bytes(r, dim_hint) for op in nodes for r in op.results), default=0)
    capacity = np.array([d.mem_capacity - 2 * act_peak for d in dev], dtype=float)
    weight_of = np.ones(D)
    if objective in ("energy", "cost"):
        attr = "power_w" if objective == "energy" else "price_per_hour"
        values = [getattr(d, attr) for d in dev]
        if any(v is None for v in values):
            lacking = [d.name for d, v in zip(dev, values, strict=True) if v is None]
            raise UserError(
                f"objective '{objective}' needs {attr} for every device; missing on {', '.join(lacking)}"
            )
        weight_of = np.array(
            [v / (3600 if objective == "cost" else 1) for v in values], dtype=float
        )
    host = devices.index(cluster.default_host())
    return Problem(
        cluster,
        devices,
        nodes,
        time,
        weights,
        edges,
        inputs,
        outputs,
        capacity,
        host,
        lat,
        inv_bw,
        weight_of,
        objective,
        why,
        runs,
    )


def route_matrices(cluster: Cluster, devices: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """[D, D] route latency and seconds per byte (a host bounce adds both hops)."""
    D = len(devices)
    lat, inv_bw = np.zeros((D, D)), np.zeros((D, D))
    for a in range(D):
        for b in range(D):
            if a != b:
                route = cluster.route(devices[a], devices[b])
                lat[a, b] = sum(h.latency for h in route.hops)
                inv_bw[a, b] = sum(1 / h.bandwidth for h in route.hops)
    return lat, inv_bw


def _consumers(v: SSAValue, fn: func.FuncOp) -> list[Operation]:
    return [_top_level(u.operation, fn) for u in v.uses]


def _no_home(op: Operation, reason: str) -> str:
    from gimlet.errors import with_location

    return with_location(op.location, f"{op.name} has no device to run on: {reason}")


def parse_pins(spec: str) -> list[tuple[str, str]]:
    """`h.0-5=gpu0,lm_head=cpu0,gml.embedding=cpu0` -> [(pattern, device), ...]."""
    pins = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        pattern, sep, device = item.rpartition("=")
        if not sep or not pattern or not device:
            raise UserError(f"bad --pin '{item}': expected PATTERN=DEVICE (e.g. 'h.0-5=gpu0')")
        pins.append((pattern, device))
    return pins


def parse_repeat(spec: str) -> list[tuple[str, int]]:
    """`decode=128`: ops under module path `decode` run 128 times per request."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        pattern, sep, count = item.rpartition("=")
        if not sep or not pattern or not count.isdigit() or int(count) < 1:
            raise UserError(f"bad --repeat '{item}': expected PATTERN=COUNT (e.g. 'decode=128')")
        out.append((pattern, int(count)))
    return out


def repeat_factors(ops: Sequence[Operation], repeat: Sequence[tuple[str, int]]) -> np.ndarray:
    """How many times each op runs per request (decode steps per prefill, say)."""
    factors = np.ones(len(ops))
    for pattern, count in repeat:
        rx = _pin_regex(pattern)
        for i, op in enumerate(ops):
            if rx.fullmatch(module_path(op.location) or "") or op.name == pattern:
                factors[i] = count
    return factors


def _pin_regex(pattern: str) -> re.Pattern[str]:
    """`h.0-5` matches module paths h.0 ... h.5 and everything under them."""
    parts = []
    for part in pattern.split("."):
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            lo, hi = int(m[1]), int(m[2])
            parts.append("(?:" + "|".join(str(k) for k in range(lo, hi + 1)) + ")")
        else:
            parts.append(re.escape(part).replace(r"\*", "[^.]*"))
    return re.compile(r"\.".join(parts) + r"(?:\..*)?")


def pin_matches(pattern: str, op: Operation) -> bool:
    """Does `--pin PATTERN=...` select op (by module path or op name)?"""
    return bool(_pin_regex(pattern).fullmatch(module_path(op.location) or "")) or op.name == pattern


def _apply_pins(
    nodes: list[Operation],
    devices: list[str],
    time: np.ndarray,
    pins: Sequence[tuple[str, str]],
    why: dict[tuple[int, int], str],
) -> None:
    for pattern, device in pins:
        if device not in devices:
            raise UserError(
                f"--pin {pattern}={device}: unknown device; devices: {', '.join(devices)}"
            )
        j = devices.index(device)
        hit = False
        for i, op in enumerate(nodes):
            if pin_matches(pattern, op):
                if not math.isfinite(time[i, j]):
                    reason = why.get((i, j), f"{device} cannot run it")
                    raise UserError(_no_home(op, f"pinned to {device}, but {reason}"))
                keep = time[i, j]
                time[i, :] = INF
                time[i, j] = keep
                hit = True
        if not hit:
            raise UserError(
                f"--pin {pattern}={device} matches no op (patterns match module paths like 'h.0-5' or op names like 'gml.embedding')"
            )


# ----------------------------------------------------------------- scoring ---


@dataclass
class Score:
    objective: float
    latency: float
    compute: np.ndarray  # [D] busy seconds
    received: np.ndarray  # [D] seconds spent receiving
    memory: np.ndarray  # [D] weight bytes
    transfers: list[tuple[int, int, int, float]]  # value producer, src, dst, bytes


def evaluate(p: Problem, assign: Sequence[int]) -> Score:
    D = len(p.devices)
    compute, received, memory = np.zeros(D), np.zeros(D), np.zeros(D)
    transfers: list[tuple[int, int, int, float]] = []
    for i, d in enumerate(assign):
        compute[d] += p.time[i, d]
        memory[d] += p.weights[i]

    def send(src_node: int, src: int, dst: int, nbytes: float, runs: float = 1.0) -> None:
        if src != dst:
            received[dst] += p.transfer(src, dst, nbytes) * runs
            transfers.append((src_node, src, dst, nbytes))

    for consumers, nbytes in p.inputs:
        for d in sorted({assign[c] for c in consumers}):
            send(-1, p.host, d, nbytes, p.runs_of(-1, consumers))
    for u, consumers, nbytes in p.edges:
        for d in sorted({assign[c] for c in consumers}):
            on_d = [c for c in consumers if assign[c] == d]
            send(u, assign[u], d, nbytes, p.runs_of(u, on_d))
    for u, nbytes in p.outputs:
        send(u, assign[u], p.host, nbytes, p.runs_of(u, [u]))
    latency = float(compute.sum() + received.sum())
    if p.objective == "latency":
        obj = latency
    elif p.objective == "throughput":
        obj = float((compute + received).max())
    else:
        obj = float((compute * p.weight_of).sum() + (received * p.weight_of).sum())
    return Score(obj, latency, compute, received, memory, transfers)


def single_device_latency(p: Problem) -> dict[str, float]:
    """Each device's latency with every op on it, scored as `evaluate` scores a placement
    (the program's inputs from the host and its outputs back included, so it compares
    with a placement's); devices that cannot run every op are left out."""
    n = len(p.nodes)
    return {
        d: evaluate(p, [j] * n).latency
        for j, d in enumerate(p.devices)
        if np.isfinite(p.time[:, j]).all()
    }


def check_memory(p: Problem, assign: Sequence[int]) -> None:
    mem = evaluate(p, assign).memory
    for j, d in enumerate(p.devices):
        if mem[j] > p.capacity[j]:
            cap = p.cluster.devices[d].mem_capacity
            raise UserError(
                f"model does not fit: {d} needs {fmt_bytes(mem[j])} of weights plus activations "
                f"but holds {fmt_bytes(cap)} (over by {fmt_bytes(mem[j] - p.capacity[j])})"
            )


# ----------------------------------------------------------------- solvers ---


def _unit_cost(p: Problem) -> np.ndarray:
    return p.time * (p.weight_of[None, :] if p.objective in ("energy", "cost") else 1.0)


def greedy(p: Problem) -> list[int]:
    """Each node, in order, to the device where it plus its incoming transfers are cheapest."""
    n, D = p.time.shape
    unit = _unit_cost(p)
    producers: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for u, consumers, nbytes in p.edges:
        for c in consumers:
            producers[c].append((u, nbytes))
    from_host = np.zeros(n)
    for consumers, nbytes in p.inputs:
        for c in consumers:
            from_host[c] += nbytes
    assign: list[int] = []
    used = np.zeros(D)
    load = np.zeros(D)
    for i in range(n):
        best, best_cost = -1, INF
        for d in range(D):
            if not math.isfinite(unit[i, d]) or used[d] + p.weights[i] > p.capacity[d]:
                continue
            incoming = sum(p.transfer(assign[u], d, b) * p.runs_of(u, [i]) for u, b in producers[i])
            incoming += p.transfer(p.host, d, from_host[i]) if from_host[i] else 0.0
            if p.objective == "throughput":
                trial = load.copy()
                trial[d] += unit[i, d] + incoming
                cost = trial.max() + 1e-9 * (unit[i, d] + incoming)
            else:
                cost = unit[i, d] + incoming * (
                    p.weight_of[d] if p.objective in ("energy", "cost") else 1
                )
            if cost < best_cost:
                best, best_cost = d, cost
        if best < 0:
            raise UserError(_no_home(p.nodes[i], "every device that can run it is full"))
        assign.append(best)
        used[best] += p.weights[i]
        load[best] += unit[i, best]
    return assign


def fits(p: Problem, assign: Sequence[int]) -> bool:
    """Every device's weights within its room (capacity less activations)."""
    used = np.zeros(len(p.devices))
    np.add.at(used, np.asarray(assign), p.weights)
    return bool((used <= p.capacity).all())


def fmt_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(b) >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{int(b)} B"


def overflow_hint(p: Problem) -> str:
    """Name the device that must overflow when pins/capabilities force weights onto it."""
    forced = np.zeros(len(p.devices))
    for i in range(len(p.nodes)):
        homes = np.flatnonzero(np.isfinite(p.time[i]))
        if len(homes) == 1:
            forced[homes[0]] += p.weights[i]
    for j, d in enumerate(p.devices):
        if forced[j] > p.capacity[j]:
            return (
                f"{d} must hold {fmt_bytes(forced[j])} of weights for the ops only it may run "
                f"(pins, capabilities) but has room for {fmt_bytes(p.capacity[j])} "
                f"(over by {fmt_bytes(forced[j] - p.capacity[j])})"
            )
    total = p.weights.sum()
    return f"the model's weights total {fmt_bytes(total)}; room after activations: " + ", ".join(
        f"{d} {fmt_bytes(p.capacity[j])}" for j, d in enumerate(p.devices)
    )


def milp(p: Problem, time_limit: float = 60.0) -> list[int]:
    """Exact placement with scipy's HiGHS MILP (the yardstick; small graphs)."""
    from scipy.optimize import Bounds, LinearConstraint
    from scipy.optimize import milp as scipy_milp
    from scipy.sparse import lil_matrix

    n, D = p.time.shape
    unit = _unit_cost(p)
    wt = p.weight_of if p.objective in ("energy", "cost") else np.ones(D)
    # Variables: x[i,d] (n*D), then per (edge, consumer-device d, source-device s != d): y,
    # meaning "the value moves s -> d"; then T for throughput.
    xs = n * D
    pairs = [(s, d) for s in range(D) for d in range(D) if s != d]
    flows = [(k, s, d) for k in range(len(p.edges)) for s, d in pairs]
    in_flows = [(k, d) for k in range(len(p.inputs)) for d in range(D) if d != p.host]
    out_flows = [(k, s) for k in range(len(p.outputs)) for s in range(D) if s != p.host]
    ny, nin, nout = len(flows), len(in_flows), len(out_flows)
    nvar = xs + ny + nin + nout + 1
    T = nvar - 1
    c = np.zeros(nvar)
    ub = np.ones(nvar)
    big = np.where(np.isfinite(unit), unit, 0.0)
    x = lambda i, d: i * D + d  # noqa: E731
    ub[:xs] = np.isfinite(unit).ravel().astype(float)
    ub[T] = INF
    rows: list[tuple[dict[int, float], float, float]] = []
    for i in range(n):
        rows.append(({x(i, d): 1.0 for d in range(D)}, 1.0, 1.0))
    for q, (k, s, d) in enumerate(flows):
        u, consumers, nbytes = p.edges[k]
        for cons in consumers:  # y >= x[u,s] + x[cons,d] - 1
            rows.append(({xs + q: 1.0, x(u, s): -1.0, x(cons, d): -1.0}, -1.0, INF))
    for q, (k, d) in enumerate(in_flows):
        consumers, _ = p.inputs[k]
        for cons in consumers:
            rows.append(({xs + ny + q: 1.0, x(cons, d): -1.0}, 0.0, INF))
    for q, (k, s) in enumerate(out_flows):
        u, _ = p.outputs[k]
        rows.append(({xs + ny + nin + q: 1.0, x(u, s): -1.0}, 0.0, INF))
    for d in range(D):
        rows.append(
            ({x(i, d): p.weights[i] for i in range(n) if p.weights[i]}, -INF, p.capacity[d])
        )

    def flow_cost(q: int) -> tuple[int, float]:
        if q < ny:
            k, s, d = flows[q]
            u, consumers, nbytes = p.edges[k]
            return d, p.transfer(s, d, nbytes) * p.runs_of(u, consumers)
        if q < ny + nin:
            k, d = in_flows[q - ny]
            consumers, nbytes = p.inputs[k]
            return d, p.transfer(p.host, d, nbytes) * p.runs_of(-1, consumers)
        k, s = out_flows[q - ny - nin]
        u, nbytes = p.outputs[k]
        return p.host, p.transfer(s, p.host, nbytes) * p.runs_of(u, [u])

    if p.objective == "throughput":
        c[T] = 1.0
        for d in range(D):
            row = {x(i, d): big[i, d] for i in range(n)}
            for q in range(ny + nin + nout):
                dst, t = flow_cost(q)
                if dst == d:
                    row[xs + q] = row.get(xs + q, 0.0) + t
            row[T] = -1.0
            rows.append((row, -INF, 0.0))
    else:
        c[:xs] = big.ravel()
        for q in range(ny + nin + nout):
            dst, t = flow_cost(q)
            c[xs + q] = t * wt[dst]
    A = lil_matrix((len(rows), nvar))
    lb_r, ub_r = np.zeros(len(rows)), np.zeros(len(rows))
    for r, (coef, lo_v, hi_v) in enumerate(rows):
        for col, v in coef.items():
            A[r, col] = v
        lb_r[r], ub_r[r] = lo_v, hi_v
    integrality = np.zeros(nvar)
    integrality[:xs] = 1
    res = scipy_milp(
        c,
        constraints=LinearConstraint(A.tocsr(), lb_r, ub_r),
        integrality=integrality,
        bounds=Bounds(np.zeros(nvar), ub),
        options={"time_limit": time_limit, "disp": False},
    )
    if res.x is None:
        raise UserError("no placement fits: " + overflow_hint(p))
    sol = res.x[:xs].reshape(n, D)
    return [int(np.argmax(sol[i])) for i in range(n)]
