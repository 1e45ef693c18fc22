"""What the runtime costs per call, measured on this host, every figure from one run.

1. Per-call overhead over the bare compiled function. Each case is compiled for
   `--target cpu` (one device: one C++ library) and called through `gimlet.load`: in the
   caller's process (processes="one") and on a worker process (processes="per-device").
   The bare function is that library called directly (`CompiledCpu`, numpy in and out;
   its ctypes marshalling is not counted as overhead). Overhead = a call's wall time
   minus the time the same call spent in the compiled function (`Loaded.last.kernel_s`,
   every rank's), median over a round's calls, best of 5 rounds: the kernels' own
   noise on a shared machine cancels, and the quietest round counts, as for latency. onnxruntime, on the same model in the same run, the same way:
   `InferenceSession.run`'s wall time minus the time its profiler gives that run's
   kernels.
2. Two devices: a GPT split over two CPU devices (the last layer and the head on the
   second) through gimlet.load(processes="per-device"), where the caller runs the host's
   share (cpu0) and one worker runs cpu1; and, for comparison, the same bundle with
   every device on a worker and the caller only supervising (`Session`'s default, what
   `gimletc run` does). A call's wall time minus its kernels' time minus the two
   activation transfers (their one-way time through gimlet's channels, measured in part
   3 at the same sizes) is the runtime's.
3. Point to point between two local processes: gimlet's channels (shared memory, as
   between the workers gimlet.load starts; gloo with static and dynamic shapes, as under
   torchrun) and raw torch.distributed gloo, same sizes, same process pair. One-way time
   = half the median round trip.

Threads: torch, onnxruntime and gimlet's pool all get 2 (the CI box has 2 cores, shared
by both workers in part 2). Writes benchmarks/results/runtime_overhead.{json,md}.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
from p2p import channel_step, raw_step, round_trip  # this script's folder is on sys.path
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

THREADS = 2
ROUNDS = 5
TWO = (
    'cluster "two-cpus"\ndevice cpu0 : cpu\ndevice cpu1 : cpu\n'
    "link cpu0 <-> cpu1 : pcie { bandwidth = 55 GB/s, latency = 12 us }\n"
)
P2P_SIZES = [4, 4096, 256 << 10, 4 << 20]
# before each timing window: the thread pools of whatever ran before (torch's and
# onnxruntime's OpenMP-style pools, gimlet's) stop spinning and go to sleep, so one
# runtime's idle spinning does not slow the next one down on 2 cores
QUIET_S = 0.1


class Tiny(nn.Module):
    """Next to no compute: its call time is the fixed cost."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def gpt() -> nn.Module:
    from gpt import GPT

    torch.manual_seed(0)
    return GPT(vocab=512, ctx=128, d=256, heads=4, layers=3)


def cases() -> list[tuple[str, nn.Module, tuple[torch.Tensor, ...]]]:
    from cpu_backend import SmallCNN

    torch.manual_seed(0)
    return [
        ("tiny linear 16x16", Tiny(), (torch.randn(1, 16),)),
        ("cnn 3x64x64, 3 conv", SmallCNN(), (torch.randn(1, 3, 64, 64),)),
        ("gpt d256 L3 T=32", gpt(), (torch.randint(0, 512, (1, 32)),)),
        ("gpt d256 L3 T=128", gpt(), (torch.randint(0, 512, (1, 128)),)),
    ]


# -- timing ------------------------------------------------------------------------------


def best_median(fns: dict[str, Callable[[], Any]], seconds: float = 2.0) -> dict[str, float]:
    """Each function's best per-round median, the functions taking turns round by round:
    a burst of load on a shared machine then hits all of them alike."""
    best = {k: float("inf") for k in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            time.sleep(QUIET_S)
            for _ in range(2):
                fn()
            times: list[float] = []
            start = time.perf_counter()
            while time.perf_counter() - start < seconds / ROUNDS or len(times) < 5:
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            best[name] = min(best[name], median(times))
    return best


def overhead(run: Any, inputs: tuple[Any, ...], seconds: float = 2.0) -> dict[str, float]:
    """(wall time - time in the compiled parts) of `run` (a gimlet.load result): its
    median over each round's calls, the best round (the quietest: as for latency); the
    wall and kernel medians of that round."""
    best: dict[str, float] = {"overhead_s": float("inf")}
    for _ in range(ROUNDS):
        time.sleep(QUIET_S)
        for _ in range(3):
            run(*inputs)
        walls, kernels = [], []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds / ROUNDS or len(walls) < 10:
            t = time.perf_counter()
            run(*inputs)
            walls.append(time.perf_counter() - t)
            kernels.append(run.last.kernel_s)
        over = median(w - k for w, k in zip(walls, kernels, strict=True))
        if over < best["overhead_s"]:
            best = {"overhead_s": over, "wall_s": median(walls), "kernels_s": median(kernels)}
    return best


# -- onnxruntime ------------------------------------------------------------------------


def ort_session(path: str, profile: bool = False) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.enable_profiling = profile
    if profile:
        opts.profile_file_prefix = str(Path(path).with_suffix(""))
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def ort_overhead(path: str, feed: dict[str, np.ndarray], runs: int = 60) -> dict[str, float]:
    """InferenceSession.run wall time minus its kernels' time (ORT's profiler), median per
    round, the best of ROUNDS rounds."""
    sess = ort_session(path, profile=True)
    for _ in range(10):
        sess.run(None, feed)
    walls = []
    for _ in range(ROUNDS):
        time.sleep(QUIET_S)
        for _ in range(runs):
            t = time.perf_counter()
            sess.run(None, feed)
            walls.append(time.perf_counter() - t)
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    model_runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    model_runs = model_runs[-len(walls) :]
    per_run = []
    for r in model_runs:
        lo, hi = r["ts"], r["ts"] + r["dur"]
        per_run.append(sum(k["dur"] for k in kernels if lo <= k["ts"] <= hi) * 1e-6)
    best: dict[str, float] = {"overhead_s": float("inf")}
    for i in range(0, len(walls), runs):
        w, k, m = walls[i : i + runs], per_run[i : i + runs], model_runs[i : i + runs]
        over = median(a - b for a, b in zip(w, k, strict=True))
        if over < best["overhead_s"]:
            best = {
                "overhead_s": over,
                "run_wall_s": median(w),
                "kernels_s": median(k),
                "inside_ort_s": median(r["dur"] * 1e-6 - b for r, b in zip(m, k, strict=True)),
            }
    return best


# -- 1. per-call overhead -----------------------------------------------------------------


def per_call(tmp: Path) -> list[dict[str, Any]]:
    import gimlet

    rows = []
    for name, model, inputs in cases():
        model.eval()
        print(f"[runtime] {name}: compiling", flush=True)
        with torch.no_grad():
            want = model(*inputs)
        path = str(tmp / name.replace(" ", "_").replace(",", "").replace("=", ""))
        gimlet.compile(model, inputs, target="cpu").bundle_to(path)
        one = gimlet.load(path, processes="one")
        workers = gimlet.load(path, processes="per-device")
        got_one, got_workers = one(*inputs)[0], workers(*inputs)[0]
        torch.testing.assert_close(got_one, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_workers, got_one, rtol=1e-6, atol=1e-6)
        ex = one.inprocess.executors[("cpu0", "cpu-cxx")]
        (libs,) = ex.libs.values()
        assert len(libs) == 1, "one library per one-device bundle"
        lib, weights = libs[0], one.inprocess.weights
        np_inputs = [x.numpy() for x in inputs]
        onnx = f"{path}.onnx"
        torch.onnx.export(model, inputs, onnx, dynamo=False)
        sess = ort_session(onnx)
        feed = {i.name: x for i, x in zip(sess.get_inputs(), np_inputs, strict=True)}

        def eager(model: nn.Module = model, inputs: Any = inputs) -> None:
            with torch.no_grad():
                model(*inputs)

        print(f"[runtime] {name}: timing", flush=True)
        fns = {
            "torch eager": eager,
            "bare C++": lambda: lib(np_inputs, weights),  # noqa: B023
            "gimlet.load one process": lambda: one(*inputs),  # noqa: B023
            "gimlet.load 1 worker": lambda: workers(*inputs),  # noqa: B023
            "onnxruntime": lambda: sess.run(None, feed),  # noqa: B023
        }
        latency = best_median(fns)
        over_one = overhead(one, inputs)
        over_worker = overhead(workers, inputs)
        ort = ort_overhead(onnx, feed)
        workers.close()
        rows.append(
            {
                "case": name,
                "latency_s": latency,
                "one_process": over_one,
                "one_worker": over_worker,
                "onnxruntime": ort,
            }
        )
        print(
            f"[runtime] {name}: overhead in-process {over_one['overhead_s'] * 1e6:.1f} us, "
            f"1 worker {over_worker['overhead_s'] * 1e6:.1f} us, onnxruntime "
            f"{ort['overhead_s'] * 1e6:.1f} us",
            flush=True,
        )
    return rows


# -- 2. two worker processes ----------------------------------------------------------------


def two_workers(tmp: Path) -> dict[str, Any]:
    import gimlet

    (tmp / "two.cluster").write_text(TWO)
    model, ids = gpt().eval(), torch.randint(0, 512, (1, 32))
    path = str(tmp / "gpt_two")
    print("[runtime] two workers: compiling", flush=True)
    manifest = gimlet.compile(
        model,
        (ids,),
        target=str(tmp / "two.cluster"),
        pin="wte=cpu0,wpe=cpu0,h.0-1=cpu0,h.2=cpu1,ln_f=cpu1,lm_head=cpu1",
    ).bundle_to(path)
    ops: dict[str, int] = {}
    for seg in manifest["segments"]:
        ops[seg["device"]] = ops.get(seg["device"], 0) + seg["ops"]
    sizes = [int(np.prod(c["shape"])) * np.dtype(c["dtype"]).itemsize for c in manifest["channels"]]
    one = gimlet.load(path, processes="one")
    workers = gimlet.load(path, processes="per-device")
    assert workers.session is not None and workers.session.local is not None
    supervised = Supervised(path)
    torch.testing.assert_close(workers(ids)[0], one(ids)[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(supervised(ids)[0], one(ids)[0], rtol=1e-6, atol=1e-6)
    print("[runtime] two workers: timing", flush=True)
    latency = best_median(
        {
            "one process": lambda: one(ids),
            "caller + 1 worker": lambda: workers(ids),
            "2 workers": lambda: supervised(ids),
        }
    )
    measured = overhead(workers, (ids,), seconds=4.0)
    measured_supervised = overhead(supervised, (ids,), seconds=4.0)
    workers.close()
    supervised.close()
    return {
        "channel_bytes": sizes,
        "ops": ops,
        "latency_s": latency,
        "caller_and_worker": measured,
        "two_workers": measured_supervised,
    }


class Supervised:
    """Every device on a worker, the caller only supervising (Session's default, what
    `gimletc run` does): numpy through the caller's arena, as gimlet.load did before the
    caller ran the host's share itself."""

    def __init__(self, path: str):
        from gimlet.runtime.bundle import load_bundle
        from gimlet.runtime.launch import Session

        self.session = Session(load_bundle(path))
        self.last: Any = None

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        self.last = self.session([x.numpy() for x in inputs])
        return [torch.from_numpy(o) for o in self.last.outputs]

    def close(self) -> None:
        self.session.close()


# -- 3. point to point -------------------------------------------------------------------------


def _p2p_rank(rank: int, port: int, out: str, sizes: list[int]) -> None:
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
    from gimlet.runtime.control import LocalSlot

    slots = LocalSlot.parse(os.environ["GIMLET_LOCAL_CHANNELS"])
    results: dict[str, dict[int, float]] = {"raw": {}, "static": {}, "dynamic": {}, "shm": {}}
    for size in sizes:
        n = max(size // 4, 1)
        reps = 200 if size <= 1 << 16 else 50 if size <= 1 << 20 else 8
        results["raw"][size] = round_trip(raw_step(rank, torch.zeros(n, dtype=torch.float32)), reps)
        for kind, shape in (("static", [n]), ("dynamic", [-1]), ("shm", [-1])):
            specs = {
                0: ChannelSpec(0, 0, 1, "float32", shape),
                1: ChannelSpec(1, 1, 0, "float32", shape),
            }
            if kind == "shm":
                specs[0].local, specs[1].local = slots[0], slots[1]
            ch = Channels(specs, 60.0, ["a", "b"])
            results[kind][size] = round_trip(
                channel_step(ch, rank, np.zeros(n, np.float32), []), reps
            )
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


def point_to_point(tmp: Path, sizes: list[int]) -> dict[str, dict[str, float]]:
    from gimlet.runtime.control import LocalSlot
    from gimlet.runtime.launch import _free_port

    out = tmp / "p2p.json"
    port = _free_port()
    slots = {}
    for ch in (0, 1):  # the shared-memory slots gimlet.load's launcher would make
        slots[ch] = LocalSlot.create(f"p2p{ch}", max(sizes))
    fds = [fd for m, e, *_ in slots.values() for fd in (m, e)]
    env = dict(os.environ, OMP_NUM_THREADS="1", GIMLET_LOCAL_CHANNELS=LocalSlot.encode(slots))
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--p2p-rank", str(r), str(port), str(out)]
            + [",".join(map(str, sizes))],
            env=env,
            pass_fds=fds,
        )
        for r in range(2)
    ]
    for fd in fds:
        os.close(fd)
    if any(p.wait(timeout=600) != 0 for p in procs):
        raise RuntimeError("point-to-point benchmark worker failed")
    return {k: {str(s): v for s, v in d.items()} for k, d in json.loads(out.read_text()).items()}


# -- report ---------------------------------------------------------------------------------


def _fmt_size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def _us(s: float) -> str:
    return f"{s * 1e6:.1f}"


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f}"


def report(rows: list[dict[str, Any]], two: dict[str, Any], p2p: dict[str, Any]) -> str:
    lines = [
        "# Runtime overhead",
        "",
        f"Host: {os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.1f}; "
        f"torch {torch.__version__}, {THREADS} threads for torch, onnxruntime and gimlet; f32, "
        "batch 1. All figures from one run of `benchmarks/runtime_overhead.py` (raw numbers "
        "in runtime_overhead.json).",
        "",
        "## Per-call overhead over the bare compiled function",
        "",
        "`--target cpu` bundles (one device, one C++ library) through `gimlet.load`. "
        "Overhead = a call's wall time minus the time that call spent in the compiled "
        "library (numpy in and out, its ctypes marshalling counted as the library's), "
        "median over a round's calls, best of 5 rounds. onnxruntime, the same way: `InferenceSession.run` wall time minus its "
        "profiler's kernel time for that run, same model, same run (inside ORT: its "
        "`model_run` span minus the kernels, i.e. without the Python binding).",
        "",
        "| case | in-process overhead us (goal < 20) | 1 worker process overhead us "
        "| onnxruntime run overhead us | (inside ORT us) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        o = r["onnxruntime"]
        lines.append(
            f"| {r['case']} | {_us(r['one_process']['overhead_s'])} | "
            f"{_us(r['one_worker']['overhead_s'])} | {_us(o['overhead_s'])} | "
            f"{_us(o['inside_ort_s'])} |"
        )
    lines += [
        "",
        "## Latency per call (best of per-round medians over 5 interleaved rounds)",
        "",
        "| case | torch eager ms | bare C++ ms | gimlet.load in-process ms | gimlet.load "
        "1 worker ms | onnxruntime ms | in-process vs eager |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        t = r["latency_s"]
        lines.append(
            f"| {r['case']} | {_ms(t['torch eager'])} | {_ms(t['bare C++'])} | "
            f"{_ms(t['gimlet.load one process'])} | {_ms(t['gimlet.load 1 worker'])} | "
            f"{_ms(t['onnxruntime'])} | "
            f"{t['torch eager'] / t['gimlet.load one process']:.2f}x faster |"
        )
    sizes = two["channel_bytes"]
    transfers = sum(p2p["shm"][str(s)] / 2 for s in sizes)
    raw = sum(p2p["raw"][str(s)] / 2 for s in sizes)
    cw, w = two["caller_and_worker"], two["two_workers"]
    lat = two["latency_s"]
    lines += [
        "",
        "## Two devices",
        "",
        "GPT d256 L3 T=32 over two CPU devices (embeddings, h.0-1 on cpu0; h.2, ln_f, "
        f"lm_head on cpu1; ops per device {two['ops']}), "
        "`gimlet.load(..., processes='per-device')`: the caller runs the host cpu0's share, "
        "one worker runs cpu1. For comparison the same bundle with both devices on "
        "workers and the caller only supervising (what `gimletc run` does), and in one "
        f"process. Channels: {', '.join(_fmt_size(s) for s in sizes)}; their one-way "
        f"time through gimlet's shared-memory channels (section below) sums to "
        f"{_us(transfers)} us (through raw gloo: {_us(raw)} us).",
        "",
        "| how | latency ms | wall - kernels us | minus the transfers: overhead us (goal < 150) |",
        "| --- | ---: | ---: | ---: |",
        f"| one process | {_ms(lat['one process'])} | | |",
        f"| caller (cpu0) + 1 worker (cpu1) | {_ms(lat['caller + 1 worker'])} | "
        f"{_us(cw['overhead_s'])} | {_us(cw['overhead_s'] - transfers)} |",
        f"| 2 workers, caller supervising | {_ms(lat['2 workers'])} | "
        f"{_us(w['overhead_s'])} | {_us(w['overhead_s'] - transfers)} |",
        "",
        "## Point to point between two local processes",
        "",
        "gimlet's channels through shared memory (what the workers `gimlet.load` starts "
        "use), through gloo over TCP loopback (torchrun; NCCL channels without CUDA), and "
        "raw torch.distributed gloo send/recv. One-way time is half the median round trip.",
        "",
        "| message | gimlet shm us | raw gloo us | gimlet gloo static us "
        "| gimlet gloo dynamic us | shm / raw gloo |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in sorted({int(k) for k in p2p["raw"]}):
        sh, raw, st, dy = (p2p[k][str(s)] / 2 for k in ("shm", "raw", "static", "dynamic"))
        lines.append(
            f"| {_fmt_size(s)} | {_us(sh)} | {_us(raw)} | {_us(st)} | {_us(dy)} | {sh / raw:.2f}x |"
        )
    lines += [
        "",
        "Dynamic-shape channels send a header (the sizes) before the payload: one extra "
        "message per transfer.",
        "",
        "## Reading it",
        "",
        "* In-process, what is left over the compiled function is the Python around it: "
        "the input check, tensor-to-numpy views, a walk over steps worked out at load "
        "(values in a list by position, no dict keyed by IR values), wrapping the outputs. "
        "It grows with the model because that Python runs right after a kernel that "
        "evicted it from the caches: on the tiny model, writing 8 MB between calls takes "
        "it from 5.8 to 8.7 us (measured apart from this run).",
        "* onnxruntime's kernel times come from its profiler, which must be on to give "
        "them and costs something per node: for the models with many nodes its overhead "
        "here overstates what it costs without profiling. The tiny model's figure is its "
        "fixed cost per call.",
        "* 1 worker process: a request is a message to the worker, its wake-up, its run, "
        "its answer and the caller's wake-up: two hops between processes, each 30 to 45 "
        "us on this 2-core machine (the shm rows above), plus the worker's Python and the "
        "copies of inputs and outputs through shared memory.",
        "* Two devices, the caller as host: the chain is the caller's kernel, a channel "
        "to the worker (a wake-up), the worker's kernel, a channel back (a wake-up), which "
        "are the transfers subtracted above; the request message reaches the worker while "
        "the caller computes, and the worker answers just before its last send (the "
        "caller collects the answer when the next call starts). What is left is the "
        "Python of both sides (the caller's in-process path, the worker's request loop, "
        "the shared-memory puts and takes, the output copied out of its slot) and, on 2 "
        "cores, more runnable threads than cores at each hand-off: the C++ pool thread of "
        "the side that just finished a kernel spins for up to 200 us before it sleeps "
        "(backends/cpu/src/thread_pool.cpp) while the other side wakes and starts its own. "
        "With both devices on workers and the caller supervising, a call has four hops "
        "instead of two (to the host worker, to cpu1 and back, the answer).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_num_threads(THREADS)
    os.environ.setdefault("GIMLET_CPU_THREADS", str(THREADS))
    with tempfile.TemporaryDirectory(prefix="gimlet-rt-bench-") as d:
        tmp = Path(d)
        rows = per_call(tmp)
        two = two_workers(tmp)
        print("[runtime] point-to-point", flush=True)
        p2p = point_to_point(tmp, sorted(set(P2P_SIZES) | set(two["channel_bytes"])))
    text = report(rows, two, p2p)
    print(text)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "runtime_overhead.md").write_text(text)
    meta = {
        "cores": os.cpu_count(),
        "threads": THREADS,
        "torch": torch.__version__,
        "load_average_at_end": os.getloadavg(),
    }
    (results / "runtime_overhead.json").write_text(
        json.dumps(
            {"meta": meta, "per_call": rows, "two_workers": two, "p2p_round_trip_s": p2p},
            indent=2,
        )
        + "\n"
    )


def rerender() -> None:
    """Rewrite the .md from the .json (the same figures) after a change to the text."""
    results = ROOT / "benchmarks" / "results"
    data = json.loads((results / "runtime_overhead.json").read_text())
    text = report(data["per_call"], data["two_workers"], data["p2p_round_trip_s"])
    host = f"load average at the end {data['meta']['load_average_at_end'][0]:.1f}"
    text = re.sub(r"load average at the end [0-9.]+", host, text)
    (results / "runtime_overhead.md").write_text(text)


if __name__ == "__main__":
    if sys.argv[1:] == ["--rerender"]:
        rerender()
    elif len(sys.argv) > 1 and sys.argv[1] == "--p2p-rank":
        sizes = [int(s) for s in sys.argv[5].split(",")]
        _p2p_rank(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sizes)
    else:
        main()
