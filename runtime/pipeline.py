"""Micro-batch pipelining: one request's batch, cut into micro-batches that flow through
the devices of a placed program the way work flows through a pipeline.

Without it a request visits the devices one after another and each waits while the
others work. With `micro_batches=M` (gimlet.load, `gimletc run --micro-batches`) every
input is cut into M pieces along its first dim (the bundle was compiled for one piece),
and each device runs a *wavefront* schedule: every top-level op of the program (a
segment, or one of the host's ops) has a stage, the number of cross-device hops on the
longest path to it from the inputs, and at step s a device runs each of its ops at stage
d on micro-batch s - d. So while gpu1 runs micro-batch j at stage 2, gpu0 already runs
j + 1 at stage 1. The outputs are joined along their first dim.

Why it cannot deadlock: a receive of micro-batch j waits for a send made at an earlier
step (a receiver's stage is at least its sender's plus one), and a send never waits for
its receiver (NCCL's and gloo's sends are asynchronous until the end of the request; a
shared-memory slot holds a message per micro-batch). Why the messages stay in order:
between two devices every channel has the same lag (receiver's stage minus sender's),
raised to the largest where they differ, so both sides of a pair meet the channels in
program order at matching steps (NCCL matches a pair's transfers by order, not by tag).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gimlet.errors import UserError


class PipelineError(UserError):
    """The program or the request cannot be cut into micro-batches."""


def stages(fn: Any, host: str) -> dict[Any, int]:
    """The stage of every top-level op of `fn` (see the module docstring; the ops outside
    segments run on `host`). A value is received where it is waited for (a blocking
    receive, or the wait of a posted one), and a posted receive at the top level takes
    the stage of its wait: its posts then come in the order of the values. Raises a
    PipelineError when an op waits for a channel before the program sends it."""
    from gimlet.dialects import comm

    ops = list(fn.body.block.ops)
    floor: dict[Any, int] = {}  # an op's stage is at least this (raised to even out lags)
    for _ in range(len(ops) + 1):
        stage: dict[Any, int] = {}
        sent: dict[int, tuple[int, str]] = {}  # channel -> (sender's stage, device)
        recv: dict[int, tuple[Any, str]] = {}  # channel -> (receiving op, device)
        waited: dict[Any, Any] = {}  # a top-level posted receive -> the op that waits
        for op in ops:
            d = floor.get(op, 0)
            for v in op.operands:
                if v.owner in stage:
                    d = max(d, stage[v.owner])
                    if isinstance(v.owner, comm.IRecvOp):
                        waited[v.owner] = op
            received = [ch for o in op.walk() if (ch := received_channel(o)) is not None]
            for ch in received:
                if ch not in sent:
                    raise PipelineError(
                        f"cannot pipeline micro-batches: {_where(op)} waits for channel {ch} "
                        "before the program sends it"
                    )
                d = max(d, sent[ch][0] + 1)
            stage[op] = d
            for ch in received:
                recv[ch] = (op, _device(op, host))
            for o in op.walk():
                if isinstance(o, comm.SendOp | comm.ISendOp):
                    sent[o.channel.value.data] = (d, _device(op, host))
        for post, wait in waited.items():
            stage[post] = stage[wait]
        # every channel from device A to device B gets the largest lag between them
        lag: dict[tuple[str, str], int] = {}
        for ch, (rop, rdev) in recv.items():
            pair = (sent[ch][1], rdev)
            lag[pair] = max(lag.get(pair, 0), stage[rop] - sent[ch][0])
        raised = False
        for ch, (rop, rdev) in recv.items():
            want = sent[ch][0] + lag[(sent[ch][1], rdev)]
            if stage[rop] < want:
                floor[rop] = want
                raised = True
        if not raised:
            return stage
    raise PipelineError("cannot pipeline micro-batches: the stages of this program do not settle")


def received_channel(op: Any) -> int | None:
    """The channel whose value `op` delivers: a blocking receive, or the wait of a posted
    one; else None."""
    from gimlet.dialects import comm

    if isinstance(op, comm.RecvOp):
        return int(op.channel.value.data)
    if isinstance(op, comm.WaitOp) and isinstance(op.token.owner, comm.IRecvOp):
        return int(op.token.owner.channel.value.data)
    return None


def _device(op: Any, host: str) -> str:
    """The device an op runs on: a segment's, else the host (top-level ops)."""
    device = getattr(op, "device", None)
    return device.data if device is not None else host


def _where(op: Any) -> str:
    device = getattr(op, "device", None)
    return f"the segment on {device.data}" if device is not None else f"the host's {op.name}"


def split(inputs: Sequence[Any], m: int) -> list[list[Any]]:
    """Each input cut into m equal pieces along its first dim (views): one list per
    micro-batch. Basic slices, not np.split (which costs 1.3 us a piece through
    array_split's swapaxes)."""
    check_split([np.shape(x) for x in inputs], m)
    pieces = []
    for x in inputs:
        if hasattr(x, "chunk"):
            pieces.append(list(x.chunk(m)))
        else:
            b = len(x) // m
            pieces.append([x[j * b : (j + 1) * b] for j in range(m)])
    return [[p[j] for p in pieces] for j in range(m)]


Place = Callable[[list[tuple[tuple[int, ...], np.dtype[Any]]]], list[np.ndarray]]
"""Where joined outputs go: given each one's (shape, dtype), arrays to fill in place."""


def join(outputs: Sequence[Sequence[Any]]) -> list[Any]:
    """The micro-batches' outputs ([micro][output]) joined along their first dim, as new
    arrays (torch tensors for torch parts); the host worker uses join_micro instead."""
    columns = [list(parts) for parts in zip(*outputs, strict=True)]
    check_joinable([_shape(parts[0]) for parts in columns])
    joined: list[Any] = []
    for parts in columns:
        if hasattr(parts[0], "detach"):
            import torch

            joined.append(torch.cat(parts))
        else:
            joined.append(np.concatenate([np.asarray(p) for p in parts]))
    return joined


def join_micro(
    parts: Sequence[Any], j: int, m: int, into: Place, dsts: list[np.ndarray] | None
) -> list[np.ndarray]:
    """Micro-batch j's outputs copied into its rows of the joined outputs, as soon as it is
    done (the host worker, while later micro-batches still run: no join of everything
    after the last one). The first call (j = 0) asks `into` for the joined arrays: every
    micro-batch has micro-batch 0's shape (the split is even)."""
    arrays = [np.asarray(p) for p in parts]
    if dsts is None:
        check_joinable([a.shape for a in arrays])
        dsts = into([((len(a) * m, *a.shape[1:]), a.dtype) for a in arrays])
    for a, dst in zip(arrays, dsts, strict=True):
        b = len(dst) // m
        dst[j * b : (j + 1) * b] = a
    return dsts


def check_count(m: int) -> None:
    if m < 1:
        raise PipelineError(f"micro-batches must be at least 1, not {m}")


def check_bundle(fn: Any, host: str, manifest: dict[str, Any], m: int) -> dict[Any, int]:
    """Refuse, before anything runs, to pipeline m micro-batches through a program that
    cannot be (`stages`) or a bundle with a scalar input or output (nothing to cut or
    join); the stages of `fn`'s top-level ops. Both runtimes load with it (worker
    processes: runtime/launch.py; this process: runtime/inprocess.py)."""
    check_count(m)
    stage = stages(fn, host)
    check_cuttable([s["shape"] for s in manifest["inputs"]])
    check_joinable([s["shape"] for s in manifest["outputs"]])
    return stage


def check_cuttable(shapes: Sequence[Sequence[int]]) -> None:
    """Every input has a first dim to cut micro-batches along."""
    for i, shape in enumerate(shapes):
        if not shape:
            raise PipelineError(
                f"input {i} is a scalar: micro-batches cut every input along its first dim"
            )


def check_split(shapes: Sequence[Sequence[int]], m: int) -> None:
    """Every input can be cut into m micro-batches along its first dim."""
    check_count(m)
    check_cuttable(shapes)
    for i, shape in enumerate(shapes):
        if shape[0] % m:
            raise PipelineError(
                f"input {i} has {shape[0]} rows in its first dim, which {m} micro-batches "
                "do not divide"
            )


def check_joinable(shapes: Sequence[Sequence[int]]) -> None:
    """Every output can be joined from micro-batches along its first dim."""
    for i, shape in enumerate(shapes):
        if not shape:
            raise PipelineError(
                f"output {i} is a scalar: micro-batches join outputs along their first dim"
            )


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
