"""What the distributed runtime costs, measured on this host.

1. Split vs single worker: one GPT-2-style stack (d=256, 4 layers, T=128, f32), compiled
   once for a one-CPU cluster (1 worker) and once for two CPU devices with layers 2-3 and
   the head pinned to the second (2 workers, one activation transfer each way), both
   with the C++ CPU backend. Each bundle runs `ITERATIONS` requests in the same workers
   (a barrier before each), so start-up and steady-state latency are reported apart.
   The floor is the same program compiled as one C++ library and called in-process.
2. Point-to-point: round trips of 4 B .. 64 MiB between two processes on localhost,
   through gimlet's channels (`Channels.send`/`post_recv`/`wait_recv`, static and
   dynamic shapes) and through raw `torch.distributed` gloo `send`/`recv`, same sizes,
   same process pair. Latency = half the median round trip of the smallest message;
   bandwidth = bytes / half the median round trip.

Both processes share the machine's cores; on the 2-core CI box the numbers are for
relative comparison. Writes benchmarks/results/runtime_overhead.{json,md}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

ITERATIONS = 20
SIZES = [4, 4096, 256 << 10, 4 << 20, 64 << 20]
ONE = 'cluster "one-cpu"\ndevice cpu0 : cpu\n'
TWO = (
    'cluster "two-cpus"\ndevice cpu0 : cpu\ndevice cpu1 : cpu\n'
    "link cpu0 <-> cpu1 : pcie { bandwidth = 55 GB/s, latency = 12 us }\n"
)


def model() -> Any:
    """The benchmark model, as a `gimletc compile` factory."""
    from gpt import GPT

    torch.manual_seed(0)
    return GPT(vocab=512, ctx=128, d=256, heads=4, layers=4), (torch.randint(0, 512, (1, 128)),)


def split_vs_single(tmp: Path) -> dict[str, Any]:
    from gimlet.backends.cpu import compile_module
    from gimlet.cli import main as gimletc
    from gimlet.frontend import import_model
    from gimlet.pass_manager import DEFAULT_PIPELINE, run_pipeline
    from gimlet.runtime.launch import launch

    (tmp / "one.cluster").write_text(ONE)
    (tmp / "two.cluster").write_text(TWO)
    me = f"{Path(__file__).resolve()}:model"
    configs = {
        "1 worker": ["--target", str(tmp / "one.cluster")],
        "2 workers": [
            "--target",
            str(tmp / "two.cluster"),
            "--pin",
            "h.2-3=cpu1,ln_f=cpu1,lm_head=cpu1",
        ],
    }
    net, (ids,) = model()
    with torch.no_grad():
        want = net.eval()(ids).numpy()
    rows: dict[str, Any] = {}
    for name, flags in configs.items():
        out = tmp / name.replace(" ", "_")
        print(f"[runtime] compiling the {name} bundle", flush=True)
        assert gimletc(["compile", me, "-o", str(out), *flags]) == 0
        print(f"[runtime] {name}: {ITERATIONS} requests", flush=True)
        result = launch(str(out), [ids.numpy()], iterations=ITERATIONS)
        np.testing.assert_allclose(result.outputs[0], want, rtol=1e-4, atol=1e-4)
        host = result.stats[0]["iterations_s"]
        rows[name] = {
            "wall_s": result.wall_s,
            "first_request_ms": host[0] * 1e3,
            "median_request_ms": median(host[1:]) * 1e3,
            "startup_s": result.wall_s - sum(host),
        }
    module, weights = import_model(net, (ids,))
    run_pipeline(module, DEFAULT_PIPELINE)
    lib = compile_module(module)
    w = {k: np.asarray(v) for k, v in weights.items()}
    x = ids.numpy()
    for _ in range(3):
        lib([x], w)
    times = []
    for _ in range(ITERATIONS):
        t = time.perf_counter()
        lib([x], w)
        times.append(time.perf_counter() - t)
    rows["in-process (no runtime)"] = {"median_request_ms": median(times) * 1e3}
    return rows


# -- point to point -------------------------------------------------------------------


def raw_round_trip(rank: int, buf: torch.Tensor, reps: int, group: Any = None) -> float:
    """Median seconds of rank 0 sending `buf` to rank 1 and back with torch.distributed."""
    import torch.distributed as dist

    peer, sync = 1 - rank, buf.is_cuda
    rts = []
    for _ in range(reps + 3):
        dist.barrier(group=group)
        if sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        if rank == 0:
            dist.send(buf, peer)
            dist.recv(buf, peer)
        else:
            dist.recv(buf, peer)
            dist.send(buf, peer)
        if sync:
            torch.cuda.synchronize()
        rts.append(time.perf_counter() - t)
    return median(rts[3:])


def channel_round_trip(ch: Any, rank: int, x: np.ndarray, reps: int, group: Any = None) -> float:
    """The same through gimlet's channels 0 (rank 0 -> 1) and 1 (back), as a worker uses
    them: send, post, wait, finish at the end of the program, values dropped after it."""
    import torch.distributed as dist

    rts = []
    for _ in range(reps + 3):
        dist.barrier(group=group)
        t = time.perf_counter()
        if rank == 0:
            ch.send(0, x)
            y = ch.wait_recv(ch.post_recv(1))
        else:
            y = ch.wait_recv(ch.post_recv(0))
            ch.send(1, y)
        ch.finish()
        rts.append(time.perf_counter() - t)
        del y  # as a worker's program drops its values: the buffer can be reused
    return median(rts[3:])


def _p2p_rank(rank: int, port: int, out: str) -> None:
    import datetime

    import torch.distributed as dist

    from gimlet.runtime.channels import Channels, ChannelSpec

    dist.init_process_group(
        "gloo",
        rank=rank,
        world_size=2,
        init_method=f"tcp://127.0.0.1:{port}",
        timeout=datetime.timedelta(seconds=60),
    )
    results: dict[str, dict[int, float]] = {"raw": {}, "static": {}, "dynamic": {}}
    for size in SIZES:
        n = size // 4
        reps = 200 if size <= 4096 else 50 if size <= 1 << 20 else 8
        buf = torch.zeros(n, dtype=torch.float32)
        results["raw"][size] = raw_round_trip(rank, buf, reps)
        for kind, shape in (("static", [n]), ("dynamic", [-1])):
            specs = {
                0: ChannelSpec(0, 0, 1, "float32", shape),
                1: ChannelSpec(1, 1, 0, "float32", shape),
            }
            ch = Channels(specs, 60.0, ["a", "b"])
            results[kind][size] = channel_round_trip(ch, rank, np.zeros(n, np.float32), reps)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


def point_to_point(tmp: Path) -> dict[str, dict[str, float]]:
    from gimlet.runtime.launch import _free_port

    out = tmp / "p2p.json"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--p2p-rank", str(r), str(port), str(out)],
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        for r in range(2)
    ]
    if any(p.wait(timeout=600) != 0 for p in procs):
        raise RuntimeError("point-to-point benchmark worker failed")
    return {k: {str(s): v for s, v in d.items()} for k, d in json.loads(out.read_text()).items()}


def _fmt_size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n // scale} {unit}"
    return f"{n} B"


def report(split: dict[str, Any], p2p: dict[str, dict[str, float]]) -> str:
    floor = split["in-process (no runtime)"]["median_request_ms"]
    one = split["1 worker"]["median_request_ms"]
    lines = [
        "# Runtime overhead",
        "",
        f"Host: {os.cpu_count()} cores, load average at the end "
        f"{os.getloadavg()[0]:.1f}. GPT d256 L4, T=128, f32, C++ CPU backend; "
        f"{ITERATIONS} requests per bundle in the same workers.",
        "",
        "| configuration | start-up s | first request ms | median request ms | vs in-process "
        "| vs 1 worker |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in split.items():
        med = r["median_request_ms"]
        if "startup_s" in r:
            head = f"| {name} | {r['startup_s']:.2f} | {r['first_request_ms']:.1f} "
        else:
            head = f"| {name} | - | - "
        lines.append(f"{head}| {med:.2f} | {med / floor:.2f}x | {med / one:.2f}x |")
    lines += [
        "",
        "Point to point between two local processes (gloo over TCP loopback). One-way time "
        "is half the median round trip.",
        "",
        "| message | raw gloo us | gimlet static us | gimlet dynamic us | static / raw "
        "| dynamic / raw | raw GB/s | gimlet GB/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in SIZES:
        raw, st, dy = (p2p[k][str(s)] / 2 for k in ("raw", "static", "dynamic"))
        lines.append(
            f"| {_fmt_size(s)} | {raw * 1e6:.0f} | {st * 1e6:.0f} | {dy * 1e6:.0f} | "
            f"{st / raw:.2f}x | {dy / raw:.2f}x | {s / raw / 1e9:.2f} | {s / st / 1e9:.2f} |"
        )
    lines += [
        "",
        "Dynamic-shape channels send a header (the sizes) before the payload: one extra "
        "message per transfer.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="gimlet-rt-bench-") as d:
        tmp = Path(d)
        split = split_vs_single(tmp)
        print("[runtime] point-to-point", flush=True)
        p2p = point_to_point(tmp)
    text = report(split, p2p)
    print(text)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "runtime_overhead.md").write_text(text)
    (results / "runtime_overhead.json").write_text(
        json.dumps({"split": split, "p2p_round_trip_s": p2p}, indent=2) + "\n"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--p2p-rank":
        _p2p_rank(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        main()
