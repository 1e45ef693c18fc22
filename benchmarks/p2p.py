"""Point-to-point round trips between two ranks, for runtime_overhead.py (gloo, host
memory) and runtime_nccl.py (NCCL, two GPUs): raw torch.distributed, or gimlet's channels
as a worker uses them, each timed by one harness."""

from __future__ import annotations

import time
from statistics import median
from typing import Any


def round_trip(step: Any, reps: int, group: Any = None, cuda: bool = False) -> float:
    """Median seconds of `step()` (rank 0 -> 1 and back) from a synchronised start on both
    ranks, after 3 warm-up steps. `cuda`: the clock stops at a device synchronisation (a
    device wait only orders streams), as raw NCCL's does."""
    import torch
    import torch.distributed as dist

    rts = []
    for _ in range(reps + 3):
        if cuda:
            torch.cuda.synchronize()
        dist.barrier(group=group)
        t = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        rts.append(time.perf_counter() - t)
    return median(rts[3:])


def raw_step(rank: int, buf: Any) -> Any:
    """`buf` from rank 0 to rank 1 and back with torch.distributed's send/recv."""
    import torch.distributed as dist

    def step() -> None:
        if rank == 0:
            dist.send(buf, 1)
            dist.recv(buf, 1)
        else:
            dist.recv(buf, 0)
            dist.send(buf, 0)

    return step


def channel_step(ch: Any, rank: int, x: Any, got: list[Any]) -> Any:
    """gimlet's channels 0 (rank 0 -> 1) and 1 (back), as a worker uses them: send, post,
    wait, finish at the end of the program; rank 0 keeps the last value it got back."""

    def step() -> None:
        got.clear()  # the previous value is dropped, as a worker's program drops it
        if rank == 0:
            ch.send(0, x)
            y = ch.wait_recv(ch.post_recv(1))
        else:
            y = ch.wait_recv(ch.post_recv(0))
            ch.send(1, y)
        ch.finish()
        got.append(y)

    return step
