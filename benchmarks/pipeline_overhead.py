"""What micro-batch pipelining costs the runtime per micro-batch, on this host's CPUs.

The model is examples/mlp.py (32 -> 64 -> 10, one row per micro-batch: its kernels take a
few microseconds) over examples/three_cpus.cluster, fc1 on cpu1 and fc2 on cpu2: the
host cpu0 sends each micro-batch to cpu1, cpu1 to cpu2, cpu2 back to cpu0, all through
shared-memory slots, every device on a worker (runtime/pipeline.py). So a request's time
is the runtime's, and how it grows with M is its cost per micro-batch.

1. Requests through `gimlet.load(bundle, micro_batches=M)` for M = 1, 4, 16, 64 (M rows
   in, one row per micro-batch; M = 1 is the plain request path). Wall time: each M's
   median over a round's requests, best of ROUNDS rounds, the Ms taking turns round by
   round (a burst of load on the shared machine hits them alike). Per micro-batch: the
   request over M, and the slope between 16 and 64 (what one more micro-batch costs).
   CPU: each process's user + system time (/proc) over a window of M = 64 requests, per
   micro-batch: on 2 cores with 3 workers the wall time follows the sum.
2. Each worker's Python alone: the same program's `Worker.run` for one device, in this
   process, with every message it receives already in its ring (no other process, no
   wake-up): us per micro-batch at M = 64, and how much of it is the compiled parts
   (their spans, ctypes marshalling included) vs the runtime around them.

`python benchmarks/pipeline_overhead.py` writes benchmarks/results/pipeline_overhead.
{json,md}; GIMLET_CPU_THREADS=1 (one C++ thread per worker: no pool thread spinning
after a kernel on a 2-core machine that already runs three workers). Before and after a
change: run it with `gimlet` importing the older runtime (an export of that commit which
the editable install's module mapping points at, workers included) and `--out old.json
--label "..."`, then on this checkout with `--before old.json`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_io import machine_info, save  # noqa: E402

MICRO = [1, 4, 16, 64]
ROUNDS = 7
ROUND_S = 0.6  # seconds of requests per M per round
QUIET_S = 0.1  # before each timing window: the last one's processes go to sleep
CPU_WINDOW = 3000  # micro-batches in the CPU-time window
PYTHON_M = 64
COMMAND = "python benchmarks/pipeline_overhead.py"


def compile_bundle(out: Path) -> str:
    from gimlet.cli import main as gimletc

    path = out / "mlp3"
    cwd = os.getcwd()
    os.chdir(ROOT)  # the model and cluster paths are the repository's
    try:
        argv = ["compile", "examples/mlp.py:model", "-o", str(path)]
        argv += ["--target", "examples/three_cpus.cluster", "--pin", "fc1=cpu1,fc2=cpu2"]
        if gimletc(argv) != 0:
            raise RuntimeError("compiling the benchmark's bundle failed")
    finally:
        os.chdir(cwd)
    return str(path)


# -- 1. requests through gimlet.load ------------------------------------------------------


def _cpu_s(pid: int) -> float:
    """User + system seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests(bundle: str) -> dict[str, Any]:
    import torch

    import gimlet

    rng = np.random.default_rng(0)
    runs = {m: gimlet.load(bundle, micro_batches=m) for m in MICRO}
    xs = {m: torch.from_numpy(rng.standard_normal((m, 32)).astype("f4")) for m in MICRO}
    try:
        for m, run in runs.items():  # every pipeline computes what the plain request does
            got, want = run(xs[m])[0], runs[1](xs[m])[0]
            assert got.shape == (m, 10)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        best = {m: float("inf") for m in MICRO}
        kernels: dict[int, float] = {}
        for _ in range(ROUNDS):
            for m, run in runs.items():
                time.sleep(QUIET_S)
                for _ in range(3):
                    run(xs[m])
                walls: list[float] = []
                ks: list[float] = []
                start = time.perf_counter()
                while time.perf_counter() - start < ROUND_S or len(walls) < 10:
                    t = time.perf_counter()
                    run(xs[m])
                    walls.append(time.perf_counter() - t)
                    last = run.last
                    assert last is not None
                    ks.append(last.kernel_s)
                if median(walls) < best[m]:
                    best[m], kernels[m] = median(walls), median(ks)
        # CPU time per process over M = 64 requests
        run, m = runs[64], 64
        last = run.last
        assert last is not None
        pids = last.pids
        time.sleep(QUIET_S)
        n = max(CPU_WINDOW // m, 1)
        before = [_cpu_s(p) for p in pids]
        caller = os.times()
        start = time.perf_counter()
        for _ in range(n):
            run(xs[m])
        wall = time.perf_counter() - start
        after = [_cpu_s(p) for p in pids]
        caller_end = os.times()
        devices = run.bundle.devices
        cpu = {d: (a - b) / (n * m) for d, a, b in zip(devices, after, before, strict=True)}
        cpu["caller"] = (caller_end.user + caller_end.system - caller.user - caller.system) / (
            n * m
        )
    finally:
        for run in runs.values():
            run.close()
    return {
        "request_s": {str(m): best[m] for m in MICRO},
        "kernels_s": {str(m): kernels[m] for m in MICRO},
        "cpu_per_micro_batch_s": cpu,
        "cpu_window_wall_per_micro_batch_s": wall / (n * m),
    }


# -- 2. each worker's Python alone ------------------------------------------------------------


def worker_python(bundle_path: str, rank: int, m: int = PYTHON_M) -> dict[str, float]:
    """Device `rank`'s Worker.run in this process, its receives already in their rings:
    the best of ROUNDS medians of (request, compiled parts) seconds per micro-batch."""
    from gimlet.artifacts import load_weights
    from gimlet.runtime.bundle import load_bundle
    from gimlet.runtime.control import LocalSlot
    from gimlet.runtime.inprocess import parse_program
    from gimlet.runtime.worker import Worker

    bundle = load_bundle(bundle_path)
    channels = bundle.manifest["channels"]
    slots = {
        c["id"]: LocalSlot.create(
            f"bench-ch{c['id']}", LocalSlot.capacity_for(c["dtype"], c["shape"]), m
        )
        for c in channels
    }
    saved = os.environ.get("GIMLET_LOCAL_CHANNELS")
    os.environ["GIMLET_LOCAL_CHANNELS"] = LocalSlot.encode(slots)
    try:
        worker = Worker(bundle, rank, None, 60.0)
    finally:
        if saved is None:
            del os.environ["GIMLET_LOCAL_CHANNELS"]
        else:
            os.environ["GIMLET_LOCAL_CHANNELS"] = saved
    worker.want_stats = False  # as gimlet.load asks: no trace, no per-segment stats
    module = parse_program(bundle)
    weights = load_weights(bundle.file(bundle.manifest["weights"][worker.device]))
    # this process writes what the device receives (its peers' ends of those slots)
    feeds = []
    for c in channels:
        if c["to"] == worker.device:
            memfd, eventfd, capacity, entries = slots[c["id"]]
            writer = LocalSlot(os.dup(memfd), os.dup(eventfd), capacity, entries)
            shape = [1 if d == -1 else d for d in c["shape"]]
            feeds.append((writer, np.ones(shape, np.float32)))
    host = worker.device == bundle.host
    inputs = [np.ones((m, 32), np.float32)] if host else []

    def request() -> tuple[float, float]:
        for writer, value in feeds:
            for _ in range(m):
                writer.put(value)
        worker.kernel_s = 0.0
        start = time.perf_counter()
        worker.run(module, weights, inputs, m)
        return time.perf_counter() - start, worker.kernel_s

    for _ in range(20):
        request()
    best = (float("inf"), 0.0)
    for _ in range(ROUNDS):
        time.sleep(QUIET_S)
        got = [request() for _ in range(max(2000 // m, 10))]
        wall = median(g[0] for g in got)
        if wall < best[0]:
            best = (wall, median(g[1] for g in got))
    for writer, _ in feeds:
        writer.close()
    return {"request_s": best[0] / m, "compiled_s": best[1] / m}


# -- report ---------------------------------------------------------------------------------


def _us(s: float) -> str:
    return f"{s * 1e6:.1f}"


def _slope(req: dict[str, Any]) -> float:
    """What one more micro-batch costs: the request's growth from M = 16 to 64, per step."""
    t = req["request_s"]
    return float((t["64"] - t["16"]) / 48)


def report(data: dict[str, Any]) -> str:
    """The markdown; with `data["before"]` (an earlier runtime's run of this script, see
    --before) beside each figure."""
    meta, req, py = data["meta"], data["requests"], data["python"]
    before: dict[str, Any] = data.get("before") or {}
    was = bool(before)
    t = {int(k): v for k, v in req["request_s"].items()}
    k = {int(m): v for m, v in req["kernels_s"].items()}
    lines = [
        "# Micro-batch pipelining: the runtime's cost per micro-batch",
        "",
        f"Host: {meta['nproc']} cores ({meta['cpu']}), load average {meta['loadavg_start']:.1f} "
        f"at the start; {meta['date']}; {data['runtime']}. Command: `{COMMAND}` "
        "(GIMLET_CPU_THREADS=1). Model: examples/mlp.py, one row per micro-batch, fc1 on "
        "cpu1, fc2 on cpu2, the host cpu0 sending the inputs and receiving the outputs, "
        "each device on a worker, every channel a shared-memory ring.",
    ]
    if was:
        lines += [
            "",
            f"Before: {before['runtime']}, the same script run just before this one "
            f"({before['meta']['date']}, load average {before['meta']['loadavg_start']:.1f} at "
            "its start).",
        ]
    lines += [
        "",
        "## Requests through gimlet.load(micro_batches=M)",
        "",
        f"Median request, best of {ROUNDS} rounds (the Ms take turns); compiled parts: "
        "the kernels' spans summed over the devices.",
        "",
    ]
    if was:
        b = {int(m): v for m, v in before["requests"]["request_s"].items()}
        lines += [
            "| M | request us | us per micro-batch | before: us per micro-batch "
            "| compiled parts us per micro-batch |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for m in MICRO:
            lines.append(
                f"| {m} | {_us(t[m])} | {_us(t[m] / m)} | {_us(b[m] / m)} | {_us(k[m] / m)} |"
            )
    else:
        lines += [
            "| M | request us | us per micro-batch | compiled parts us per micro-batch |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for m in MICRO:
            lines.append(f"| {m} | {_us(t[m])} | {_us(t[m] / m)} | {_us(k[m] / m)} |")
    cpu = req["cpu_per_micro_batch_s"]
    slope = f"One more micro-batch (slope from 16 to 64): **{_us(_slope(req))} us**"
    lines += ["", slope + (f" (before: {_us(_slope(before['requests']))} us)." if was else ".")]
    lines += [
        "",
        "CPU time per micro-batch at M = 64 (user + system, /proc, over "
        f"{CPU_WINDOW} micro-batches; wall {_us(req['cpu_window_wall_per_micro_batch_s'])} "
        "us per micro-batch there): "
        + ", ".join(f"{d} {_us(s)} us" for d, s in cpu.items())
        + f"; sum {_us(sum(cpu.values()))} us over {meta['nproc']} cores"
        + (
            f" (before: sum {_us(sum(before['requests']['cpu_per_micro_batch_s'].values()))} us)."
            if was
            else "."
        ),
        "",
        f"## Each worker's Python alone (M = {PYTHON_M})",
        "",
        "The device's `Worker.run` in one process with every message it receives already "
        "in its ring: no other process, no wake-up. What is not the compiled parts is the "
        "runtime's Python (the wavefront loop, the prepared segment walk, the progress "
        "hook, shared-memory puts and takes).",
        "",
        "| device | us per micro-batch | compiled parts (with ctypes) us | the rest us |"
        + (" before: the rest us |" if was else ""),
        "| --- | ---: | ---: | ---: |" + (" ---: |" if was else ""),
    ]
    for dev, r in py.items():
        rest = r["request_s"] - r["compiled_s"]
        row = f"| {dev} | {_us(r['request_s'])} | {_us(r['compiled_s'])} | {_us(rest)} |"
        if was:
            old = before["python"][dev]
            row += f" {_us(old['request_s'] - old['compiled_s'])} |"
        lines.append(row)
    lines += [
        "",
        "Reading it: a micro-batch wakes each of the three processes once (a put's eventfd "
        "write, the receiver's select), and on 2 cores three busy processes also take turns; "
        "the CPU time above the Python alone is those wake-ups, the system calls and cold "
        "caches. The compiled parts' time is mostly the C++ library's ctypes call "
        "(backends/cpu CompiledCpu.__call__: argument arrays, output copies), not the "
        "kernels.",
    ]
    return "\n".join(lines) + "\n"


def _runtime() -> str:
    """Which runtime ran: this checkout's commit, or the folder gimlet.runtime came from."""
    import subprocess

    import gimlet.runtime

    where = Path(gimlet.runtime.__file__).resolve().parents[1]
    if where != ROOT:
        return f"the runtime under {where}"
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "runtime", "backends/parts.py"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"commit {out.stdout.strip()}" + (" (runtime/ modified)" if dirty else "")


def main() -> None:
    import argparse
    import json

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="write the raw figures here (json) instead of the results")
    p.add_argument("--label", help="what runtime this is, for --out (default: where it is)")
    p.add_argument("--before", help="an --out file of an earlier runtime: shown beside these")
    args = p.parse_args()
    os.environ["GIMLET_CPU_THREADS"] = "1"
    meta = machine_info()
    with tempfile.TemporaryDirectory(prefix="gimlet-pipeline-bench-") as d:
        bundle = compile_bundle(Path(d))
        print("[pipeline] requests", flush=True)
        req = requests(bundle)
        print("[pipeline] each worker's Python", flush=True)
        from gimlet.runtime.bundle import load_bundle

        devices = load_bundle(bundle).devices
        py = {dev: worker_python(bundle, rank) for rank, dev in enumerate(devices)}
    data: dict[str, Any] = {
        "meta": meta,
        "runtime": args.label or _runtime(),
        "requests": req,
        "python": py,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=2))
        return
    if args.before:
        data["before"] = json.loads(Path(args.before).read_text())
    text = report(data)
    print(text)
    save("pipeline_overhead", data, text)


if __name__ == "__main__":
    main()
