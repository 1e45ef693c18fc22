"""place: choose a device for every op of the program (`gml.device` attributes).

Builds the placement problem for the target cluster (compiler/placement/solvers.py),
runs the chosen solver, and records the decision on each op plus, on the
module, the target and a summary the `--explain` report reads back. Weights and
literals get no device: outlining copies them into each segment that uses them.
Size arithmetic (`gml.dim`, `arith`) runs on the host, where inputs arrive.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import DictionaryAttr, FloatAttr, ModuleOp, StringAttr, f64
from xdsl.passes import ModulePass

from gimlet.placement.backend_ops import parse_choices, restrict
from gimlet.placement.solve import solve
from gimlet.placement.solvers import (
    build_problem,
    evaluate,
    is_host_only,
    parse_pins,
    parse_repeat,
    single_device_latency,
)
from gimlet.placement.target import DEVICE_ATTR, TARGET_ATTR, resolve


@dataclass(frozen=True)
class Place(ModulePass):
    """Assign each op a device of the target cluster (greedy, dp or milp solver)."""

    name = "place"
    target: str = "h100+cpu"
    solver: str = "dp"
    objective: str = "latency"
    pins: str = ""
    dim_hint: int = 1
    repeat: str = ""
    backends: str = ""  # `--backend KIND=OPTION,...`: a narrower backend narrows its devices

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        cluster = restrict(resolve(self.target), parse_choices(self.backends))
        problem = build_problem(
            op,
            cluster,
            self.objective,
            parse_pins(self.pins),
            self.dim_hint,
            parse_repeat(self.repeat),
        )
        # each device alone, scored as the placement is (unpinned: what --explain compares)
        alone = single_device_latency(
            build_problem(op, cluster, self.objective, (), self.dim_hint, parse_repeat(self.repeat))
            if self.pins
            else problem
        )
        assign = solve(problem, self.solver)
        for node, d in zip(problem.nodes, assign, strict=True):
            node.attributes[DEVICE_ATTR] = StringAttr(problem.devices[d])
        host = StringAttr(cluster.default_host())
        for inner in op.walk():
            if is_host_only(inner) and isinstance(inner.parent_op(), func.FuncOp):
                inner.attributes.setdefault(DEVICE_ATTR, host)
        score = evaluate(problem, assign)
        op.attributes[TARGET_ATTR] = StringAttr(self.target)
        op.attributes["gml.placement"] = StringAttr(f"{self.solver}/{self.objective}")
        if self.repeat:
            op.attributes["gml.repeat"] = StringAttr(self.repeat)
        op.attributes["gml.modelled_latency_s"] = FloatAttr(score.latency, f64)
        op.attributes["gml.single_device_s"] = DictionaryAttr(
            {d: FloatAttr(t, f64) for d, t in alone.items()}
        )
        if self.pins:  # --explain names the pin that decided a segment's device
            op.attributes["gml.pins"] = StringAttr(self.pins)
