"""What a GPU-to-GPU transfer costs the matrix products running beside it, by how it moves.

Two processes (gpu0, gpu1), each timing a loop of fp16 GEMMs the size of a GPT d=1024
prefill's fc layer (8192 x 1024 x 4096) while 16 MiB messages go from gpu0 to gpu1
every few GEMMs, on a side stream:

* none: no transfer (the baseline);
* nccl: torch.distributed isend/irecv on NCCL, gpu1's receives posted up front (as a
  pipeline posts them, so their kernels wait on gpu1's SMs for the data);
* ipc: a copy-engine copy into a buffer of gpu1's that gpu0 opened through CUDA IPC
  (cudaMemcpyAsync between devices, no kernel, no SM), gpu1 waiting on an
  interprocess event only where it uses the data.

Run on the 2x H200 machine: `python benchmarks/probes/gpu_transfer_interference.py`.
Prints ms per GEMM on each GPU per mode, the IPC copies' GB/s, and first whether CUDA
reports peer access between the GPUs and what a gpu0 -> gpu1 copy moves in one process.
"""

from __future__ import annotations

import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

GEMMS, EVERY, MIB = 240, 8, 16


def _gemms(a: torch.Tensor, b: torch.Tensor, between: object = None) -> float:
    """ms per GEMM over the loop; `between(i)` is called after GEMM i (host side)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(GEMMS):
        torch.mm(a, b)
        if between is not None:
            between(i)  # type: ignore[operator]
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / GEMMS


def _rank(rank: int, q: mp.Queue, back: mp.Queue) -> None:
    torch.cuda.set_device(rank)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    dist.init_process_group("nccl", rank=rank, world_size=2, device_id=torch.device("cuda", rank))
    out: dict[str, float] = {}
    for _ in range(2):  # warm-up round, then the measured one
        _round(rank, q, back, out)
    print(f"gpu{rank}: " + ", ".join(f"{k} {v:.4f}" for k, v in out.items()), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def _round(rank: int, q: mp.Queue, back: mp.Queue, out: dict[str, float]) -> None:
    """One round of the three modes (the first one warms up)."""
    a = torch.randn(8192, 1024, device="cuda", dtype=torch.half)
    b = torch.randn(1024, 4096, device="cuda", dtype=torch.half)
    n = MIB * 2**20 // 2
    msgs = GEMMS // EVERY
    side = torch.cuda.Stream()
    dist.barrier()
    out["none"] = _gemms(a, b)
    # -- NCCL
    dist.barrier()
    if rank == 0:
        payload = torch.ones(n, device="cuda", dtype=torch.half)
        works = []

        def send(i: int) -> None:
            if i % EVERY == EVERY - 1:
                ev = torch.cuda.Event()
                ev.record()
                with torch.cuda.stream(side):
                    side.wait_event(ev)
                    works.append(dist.isend(payload, 1))

        out["nccl"] = _gemms(a, b, send)
    else:
        land = [torch.empty(n, device="cuda", dtype=torch.half) for _ in range(msgs)]
        with torch.cuda.stream(side):
            works = [dist.irecv(t, 0) for t in land]
        out["nccl"] = _gemms(a, b)
    for w in works:
        w.wait()
    torch.cuda.synchronize()
    # -- CUDA IPC, copy engine
    dist.barrier()
    if rank == 1:
        land = [torch.empty(n, device="cuda", dtype=torch.half) for _ in range(2)]
        q.put(land)  # torch shares CUDA tensors through IPC handles
        back.get()
        out["ipc"] = _gemms(a, b)
        back.get()  # gpu0's copies are done
        assert bool((land[0] == 1).all())
        q.put("checked")
    else:
        land = q.get()  # gpu1's buffers, opened in this process
        payload = torch.ones(n, device="cuda", dtype=torch.half)
        back.put("opened")

        def copy(i: int) -> None:
            if i % EVERY == EVERY - 1:
                ev = torch.cuda.Event()
                ev.record()
                with torch.cuda.stream(side):
                    side.wait_event(ev)
                    land[(i // EVERY) % 2].copy_(payload, non_blocking=True)

        out["ipc"] = _gemms(a, b, copy)
        torch.cuda.synchronize()
        back.put("copied")
        t0 = time.perf_counter()
        for _ in range(20):
            land[0].copy_(payload, non_blocking=True)
        torch.cuda.synchronize()
        out["ipc_GBps"] = 20 * n * 2 / (time.perf_counter() - t0) / 1e9
        q.get()
        del land


def one_process_copies() -> None:
    """gpu0 -> gpu1 in this process: whether CUDA reports peer access, and the copy's GB/s
    (a copy-engine transfer over NVLink when peer access is on)."""
    peer = torch.cuda.can_device_access_peer(0, 1)
    n = MIB * 2**20 // 2
    src = torch.ones(n, device="cuda:0", dtype=torch.half)
    dst = torch.empty(n, device="cuda:1", dtype=torch.half)
    for _ in range(3):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize(0)
    torch.cuda.synchronize(1)
    t0 = time.perf_counter()
    for _ in range(20):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize(0)
    torch.cuda.synchronize(1)
    gbps = 20 * n * 2 / (time.perf_counter() - t0) / 1e9
    print(f"one process: peer access {peer}, gpu0 -> gpu1 copies {gbps:.1f} GB/s", flush=True)


def main() -> None:
    if torch.cuda.device_count() < 2:
        sys.exit("needs two CUDA GPUs")
    one_process_copies()
    ctx = mp.get_context("spawn")
    q, back = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, q, back)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    print("ms per 8192x1024x4096 fp16 GEMM; a 16 MiB message every", EVERY, "GEMMs")


if __name__ == "__main__":
    main()
