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


Prepared = Callable[[Sequence[Any]], list[Any]]
"""A segment's inputs -> its results: `run_parts` with the walk worked out once."""


def prepare_parts(
    segment: gml.SegmentOp,
    index: int,
    items: Sequence[Any],
    host: HostExecutor,
    label: str,
    run_part: RunPart,
    to_host: Callable[[Any], Any] | None = None,
) -> Prepared:
    """`run_parts` for a segment run many times (a request path): the walk over `items`
    is decided once, values live in a list by position instead of a dict keyed by SSA
    values (xdsl hashes those in Python), span names are formatted once, and comm ops
    go straight to the host's comm handler (`host.handler`, when it has one) rather
    than through the interpreter's dispatch. The progress hook still runs before every
    op and part, and spans are still reported, exactly as `run_parts` does."""
    block = segment.body.block
    slots: dict[SSAValue, int] = {v: i for i, v in enumerate(block.args)}

    def slot(v: SSAValue) -> int:
        if v not in slots:
            slots[v] = len(slots)
        return slots[v]

    handler = getattr(host, "handler", None)
    before_op, on_span = host.before_op, host.on_span
    conv = to_host
    # each step: (fn(values) -> outputs, input slots, output slots)
    steps: list[tuple[Callable[[list[Any]], Sequence[Any]], list[int], list[int]]] = []

    def interpreted(op: Operation) -> None:
        fn = comm_step(op, handler, before_op) if handler is not None else None
        if fn is None:
            fn = _op_step(op, host)
        if conv is not None and not isinstance(op, comm.SendOp | comm.ISendOp):
            fn = _converted(fn, conv)  # as run_parts: a send keeps the executor's value
        steps.append((fn, [slots[v] for v in op.operands], [slot(r) for r in op.results]))

    k = 0
    for item in items:
        if isinstance(item, Operation):
            interpreted(item)
        elif not item.compiled:
            for op in item.ops:
                interpreted(op)
        else:

            def part(
                args: list[Any],
                k: int = k,
                item: Any = item,
                first: Operation = item.ops[0],
                what: str = f" (first op of {label} part seg{index}.part{k})",
                name: str = f"seg{index}.part{k} ({label}, {len(item.ops)} ops)",
            ) -> Sequence[Any]:
                before_op(first, what)
                start = time.time()
                outs = run_part(k, item, args)
                on_span(name, start, time.time())
                return outs

            steps.append((part, [slots[v] for v in item.inputs], [slot(v) for v in item.outputs]))
            k += 1
    term = block.last_op
    assert isinstance(term, gml.YieldOp)
    results = [slots[v] for v in term.values]
    n_in, size = len(block.args), len(slots)

    def run(inputs: Sequence[Any]) -> list[Any]:
        if len(inputs) != n_in:
            raise ValueError(f"segment {index} takes {n_in} inputs, got {len(inputs)}")
        values: list[Any] = [*inputs, *([None] * (size - n_in))]
        for fn, ins, outs in steps:
            got = fn([values[i] for i in ins])
            for i, v in zip(outs, got, strict=True):
                values[i] = v
        if conv is None:
            return [values[i] for i in results]
        return [conv(values[i]) for i in results]

    return run


def comm_step(
    op: Operation, handler: Any, before_op: Callable[..., None]
) -> Callable[[list[Any]], Sequence[Any]] | None:
    """A comm op as a direct call on the comm handler (what backends/interpreter.py's
    `_DistComm` does, with the same tokens), or None for any other op."""
    if isinstance(op, comm.SendOp):

        def send(args: list[Any]) -> Sequence[Any]:
            before_op(op)
            handler.send(op, args[0])
            return ()

        return send
    if isinstance(op, comm.ISendOp):

        def isend(args: list[Any]) -> Sequence[Any]:
            before_op(op)
            handler.send(op, args[0])
            return (("send", op),)

        return isend
    if isinstance(op, comm.RecvOp):

        def recv(args: list[Any]) -> Sequence[Any]:
            before_op(op)
            return (handler.wait_recv(handler.post_recv(op), op),)

        return recv
    if isinstance(op, comm.IRecvOp):

        def irecv(args: list[Any]) -> Sequence[Any]:
            before_op(op)
            return (("recv", handler.post_recv(op)),)

        return irecv
    if isinstance(op, comm.WaitOp):

        def wait(args: list[Any]) -> Sequence[Any]:
            before_op(op)
            kind, payload = args[0]
            return (handler.wait_recv(payload, op),) if kind == "recv" else ()

        return wait
    return None


def _op_step(op: Operation, host: HostExecutor) -> Callable[[list[Any]], Sequence[Any]]:
    def step(args: list[Any]) -> Sequence[Any]:
        return host.run_op(op, args)

    return step


def _converted(
    fn: Callable[[list[Any]], Sequence[Any]], conv: Callable[[Any], Any]
) -> Callable[[list[Any]], Sequence[Any]]:
    def step(args: list[Any]) -> Sequence[Any]:
        return fn([conv(a) for a in args])

    return step
