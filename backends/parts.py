"""Running a segment cut at its comm ops (backends/cpu/segments.py: `split`): the compiled
parts by a backend, the comm ops and the size arithmetic by the worker's host executor.

Every compiled backend runs its segments this way, so the walk, the progress/fault hook and
the trace spans are written once; a backend supplies how one part runs and how a value it
holds goes back to the host (a device tensor to a numpy array).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from xdsl.ir import Operation, SSAValue

from gimlet.backends.base import HostExecutor
from gimlet.dialects import comm, gml


def compiled_parts(segment: gml.SegmentOp) -> tuple[list[Any], list[Any]]:
    """(split(segment): its items in program order, the parts a backend compiles)."""
    from gimlet.backends.cpu.segments import Part, split

    items = split(segment)
    return items, [p for p in items if isinstance(p, Part) and p.compiled]


def part_functions(segment: gml.SegmentOp, index: int, parts: list[Any] | None = None) -> list[Any]:
    """Each compiled part of segment `index` as a standalone func.func (seg<N>.part<K>);
    `parts`: compiled_parts(segment)'s, when the caller already cut the segment."""
    from gimlet.backends.cpu.segments import part_function

    if parts is None:
        _, parts = compiled_parts(segment)
    return [part_function(p, f"seg{index}.part{k}") for k, p in enumerate(parts)]


RunPart = Callable[[int, Any, list[Any]], list[Any]]
"""(part number, the Part, its input values) -> its output values."""


def run_parts(
    segment: gml.SegmentOp,
    inputs: Sequence[Any],
    index: int,
    items: Sequence[Any],
    host: HostExecutor,
    label: str,
    run_part: RunPart,
    to_host: Callable[[Any], Any] = lambda v: v,
) -> list[Any]:
    """Run `items` (split(segment)) in program order; the segment's results, on the host."""
    env: dict[SSAValue, Any] = dict(zip(segment.body.block.args, inputs, strict=True))

    def interpret(op: Operation) -> None:
        # a send hands the comm handler its value as it is: a device tensor stays on the
        # GPU for an NCCL channel or an in-process receiver there (runtime/inprocess.py);
        # the handler copies it to the host when the receiver needs it there
        keep = isinstance(op, comm.SendOp | comm.ISendOp)
        outs = host.run_op(op, [env[v] if keep else to_host(env[v]) for v in op.operands])
        env.update(zip(op.results, outs, strict=True))

    k = 0
    for item in items:
        if isinstance(item, Operation):
            interpret(item)
        elif not item.compiled:
            for op in item.ops:
                interpret(op)
        else:
            host.before_op(item.ops[0], f" (first op of {label} part seg{index}.part{k})")
            start = time.time()
            outs = run_part(k, item, [env[v] for v in item.inputs])
            host.on_span(f"seg{index}.part{k} ({label}, {len(item.ops)} ops)", start, time.time())
            env.update(zip(item.outputs, outs, strict=True))
            k += 1
    term = segment.body.block.last_op
    assert isinstance(term, gml.YieldOp)
    return [to_host(env[v]) for v in term.values]
