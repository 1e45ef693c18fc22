"""Measure this host's CPU as gimlet's C++ backend uses it, and describe it as a `.cluster`
`device` statement (`gimletc measure-cpu`).

The `cpu` preset is a 56-core Xeon 8480+ (7 TFLOP/s f32, 307 GB/s); on any other machine
the cost model then predicts CPU segments 6-20x too fast. Datasheet figures would not fix
that either: what the model needs is what gimlet's backend reaches. So every figure is
measured *through the backend itself*: small gml programs are compiled by
`gimlet.backends.cpu` with its default flags, link its runtime library (its thread pool,
its buffer pool, the scipy-openblas64 OpenBLAS it calls single-threaded per column block)
and are timed in this process. Nothing here calls numpy's BLAS, which is another library
with its own threads.

* **f32 GEMM rate**: `gml.matmul`s of a 256 x 1024 by a 1024 x 1024 matrix (a mid-size
  layer of a transformer's prefill), the backend's `gml::sgemm` splitting the columns over
  its pool (GIMLET_CPU_THREADS, else OMP_NUM_THREADS, else the CPUs this process may use,
  as the pool counts them). Timed as chains of 1 and 9 products, whose difference is 8
  GEMMs with no per-call cost of Python and ctypes in it (~20 us a call: a fifth of one
  such GEMM on a 56-core machine); only one row of the last product comes back. One shape
  stands for all of a model's: on this 2-core box the rate moves little with the shape
  (85-96 GFLOP/s over the GPT benchmark's, M=128, when busy), but on many cores a product
  with few rows splits into narrow column blocks and runs below it.
* **f16 / bf16**: the backend has no half-precision GEMM: it widens both operands to f32,
  runs the f32 kernel and rounds the product (docs/cpu-backend.md, "f16/bf16"). Their rate
  is the f32 rate (the widening is extra traffic the model does not charge).
* **Streaming bandwidth**: one `gml.add` of two arrays each the larger of 32 MiB and twice
  the last-level cache, so the three streams (two reads, one write) come from DRAM; bytes
  counted as the cost model counts them (operands read once, result written once).
* **Fixed cost per op**: what an op costs beyond its data, from chains of 1 and 9
  elementwise adds (as for the GEMMs, their difference cancels the per-call cost). Every
  op pays its bookkeeping (a buffer from the buffer pool, the tensor header, the broadcast
  and shape checks): a 1-element add, ~0.15 us on this 2-core box. An op big enough for
  the pool (PAR_MIN elements in thread_pool.h, so every activation of a real model) also
  pays the hand-off to a worker and the wait for it: at PAR_MIN elements the pool runs two
  chunks of PAR_MIN/2, one on the caller, so the time of that op minus a PAR_MIN/2 add
  (run on the caller alone: the same work per thread) is the fork/join. That is what
  dominates: ~1.8-2.5 us here, where the worker, which yields while it polls, often finds
  its core taken by another process and the caller runs both chunks; the figure is what
  a pooled op costs on the machine as it is, busy or not. Between the ops of one run the
  workers poll, so a futex wake-up is not part of it.

Every figure is the best of several calls (as STREAM reports bandwidth): a capability of
the machine; a busy, shared machine runs slower than it.

The cost model (placement/cost.py) derates every device's peaks by its calibrated
efficiencies (MATMUL_EFFICIENCY for GEMMs, MEMORY_EFFICIENCY for bandwidth), which were
fitted for datasheet figures. A measured rate is already achieved, so the statement writes
rate / efficiency as the peak: the calibrated model then predicts exactly the measured
rates. The comment lines above the statement say both figures.

The probe libraries are compiled once (10 s on 2 cores with a fresh cache, the backend's
runtime library included) and cached like every other CPU kernel ($GIMLET_CACHE_DIR/cpu);
the measurement itself takes 1-2 s.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gimlet.backends.cpu.segments import cpu_model
from gimlet.errors import UserError
from gimlet.placement.cluster import Device
from gimlet.placement.cluster_lang import ClusterFileError, parse_cluster
from gimlet.placement.cost import MATMUL_EFFICIENCY, MEMORY_EFFICIENCY

GEMM_M, GEMM_K, GEMM_N = 256, 1024, 1024  # a mid-size layer of a transformer's prefill
STREAM_MIN_BYTES = 32 * 2**20  # per array; at least twice the last-level cache
CHAIN_OPS = (1, 9)  # the two chain lengths whose difference is 8 ops
DEFAULT_PAR_MIN = 32768  # thread_pool.h's PAR_MIN, if the header cannot be read
DEVICE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CpuMeasurement:
    """What gimlet's C++ backend reaches on this host (SI units), and what it ran on."""

    model: str  # /proc/cpuinfo's model name
    threads: int  # the backend's thread pool
    gemm_flops: float  # f32 GEMM, FLOP/s achieved
    gemm_shape: tuple[int, int, int]  # M, K, N of the GEMM that set it
    bandwidth: float  # bytes/s, a streaming add
    op_overhead: float  # seconds per op beyond its data
    fork_join: float  # seconds of op_overhead that are the pool's hand-off
    mem_capacity: float  # bytes: MemTotal
    blas: str  # the OpenBLAS build the backend links, or why none
    seconds: float  # how long the measurement took (compiling the probes included)


# ------------------------------------------------------------------ host facts ---


def memory_bytes(meminfo: str | None = None) -> float:
    """MemTotal from /proc/meminfo in bytes (the pages' size if there is no such file)."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", meminfo, re.MULTILINE)
    if not match:
        raise UserError("cannot read MemTotal from /proc/meminfo")
    return float(int(match.group(1)) * 1024)


def last_level_cache_bytes() -> int:
    """The largest cache of CPU 0 (sysfs; 0 when unknown)."""
    sizes = [0]
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        match = re.fullmatch(r"(\d+)([KMG]?)", path.read_text().strip())
        if match:
            sizes.append(
                int(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match[2]]
            )
    return max(sizes)


def pool_threads() -> int:
    """The thread count the backend's pool takes (the rule of src/thread_pool.cpp)."""
    for var in ("GIMLET_CPU_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.strip().lstrip("+-").isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0))


def par_min() -> int:
    """thread_pool.h's PAR_MIN: the work below which a loop stays on the calling thread."""
    from gimlet.backends.cpu.build import RUNTIME_ROOT

    header = RUNTIME_ROOT / "include" / "gimlet" / "cpu" / "thread_pool.h"
    try:
        match = re.search(r"PAR_MIN\s*=\s*(\d+)", header.read_text())
    except OSError:
        match = None
    return int(match.group(1)) if match else DEFAULT_PAR_MIN


def openblas_config(path: str) -> str:
    """The build string (version, the CPU kernels it picked) of the scipy-openblas64
    OpenBLAS at `path`, through its prefixed openblas_get_config; OSError or
    AttributeError where the library is not there or not that OpenBLAS."""
    import ctypes

    get_config = ctypes.CDLL(path).scipy_openblas_get_config64_
    get_config.restype = ctypes.c_char_p
    return str(get_config().decode())


def blas_build() -> str:
    """The OpenBLAS the backend's runtime links (the scipy-openblas64 package's), by its
    build string, or why there is none (then GEMMs are naive loops: 100x slower)."""
    try:
        import scipy_openblas64 as blas
    except ImportError:
        return "none: scipy-openblas64 is not installed (the backend's GEMMs are naive loops)"
    try:
        return openblas_config(str(Path(blas.get_lib_dir()) / blas.get_library(True)))
    except (OSError, AttributeError) as err:
        return f"scipy-openblas64 (build string unavailable: {err})"


# ---------------------------------------------------------------- the probes ---


def _chain_ir(op: str, ops: int) -> str:
    """`ops` chained `gml.<op>`s of a value with `%y` (adds of vectors, or products by a
    square matrix); only one element (a row) of the last comes back, so no result is
    copied out."""
    if op == "add":
        v, out = "tensor<?xf32>", "tensor<1xf32>"
    else:
        v, out = "tensor<?x?xf32>", "tensor<1x?xf32>"
    lines = [f"func.func @main(%x: {v}, %y: {v}) -> {out} {{"]
    prev = "%x"
    for i in range(ops):
        lines.append(f"  %z{i} = gml.{op} {prev}, %y : ({v}, {v}) -> {v}")
        prev = f"%z{i}"
    lines.append(f"  %o = gml.slice {prev} dim 0 start 0 end 1 step 1 : {v} to {out}")
    lines.append(f"  func.return %o : {out}\n}}\n")
    return "\n".join(lines)


def compile_probes() -> dict[str, Any]:
    """The probe libraries, `add1`, `add9`, `matmul1`, `matmul9`, compiled by the CPU
    backend (in parallel; cached after)."""
    from gimlet.backends.cpu import compile_module
    from gimlet.ir import parse

    sources = {f"{op}{k}": _chain_ir(op, k) for op in ("add", "matmul") for k in CHAIN_OPS}
    with ThreadPoolExecutor(len(sources)) as pool:
        futures = {name: pool.submit(compile_module, parse(ir)) for name, ir in sources.items()}
        return {name: f.result() for name, f in futures.items()}


def chain_per_op(
    short: Any, long: Any, inputs: list[np.ndarray], min_pairs: int, budget_s: float
) -> float:
    """Seconds per op: the best calls of the two chains (CHAIN_OPS[1] - CHAIN_OPS[0] ops
    apart, so the per-call cost of Python and ctypes cancels), called in turn (a burst of
    load hits both alike) at least `min_pairs` times, more while within `budget_s`."""
    for lib in (short, long):
        lib(inputs, {})  # warm-up: buffers, the pool's threads, OpenBLAS's tables
    best_short = best_long = math.inf
    start, pairs = time.perf_counter(), 0
    while pairs < min_pairs or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        short(inputs, {})
        t1 = time.perf_counter()
        long(inputs, {})
        t2 = time.perf_counter()
        best_short, best_long = min(best_short, t1 - t0), min(best_long, t2 - t1)
        pairs += 1
    return max(best_long - best_short, 0.0) / (CHAIN_OPS[1] - CHAIN_OPS[0])


def measure_gemm(short: Any, long: Any, budget_s: float = 0.8) -> float:
    """FLOP/s of one GEMM_M x GEMM_K x GEMM_N product in a chain of them."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((GEMM_M, GEMM_K), dtype=np.float32)
    # scaled so that products of products stay near 1 (no overflow, no denormals)
    b = rng.standard_normal((GEMM_K, GEMM_N), dtype=np.float32) / np.float32(GEMM_K**0.5)
    per_gemm = chain_per_op(short, long, [a, b], 3, budget_s)
    return 2.0 * GEMM_M * GEMM_K * GEMM_N / max(per_gemm, 1e-9)


def _best(call: Callable[[], object], min_calls: int, budget_s: float, max_calls: int) -> float:
    """The fastest of at least `min_calls` calls, more while within `budget_s`."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_calls and (
        len(times) < min_calls or time.perf_counter() - start < budget_s
    ):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure_bandwidth(lib: Any, budget_s: float = 0.5) -> float:
    """Bytes/s of one add over arrays that do not fit in the last-level cache."""
    n = max(STREAM_MIN_BYTES, 2 * last_level_cache_bytes()) // 4
    x = np.ones(n, np.float32)
    y = np.ones(n, np.float32)
    lib([x, y], {})  # warm-up: the result's buffer is faulted in once, then pooled
    best = _best(lambda: lib([x, y], {}), 5, budget_s, 20)
    return 3.0 * n * 4 / best


def add_per_op(short: Any, long: Any, n: int) -> float:
    """Seconds per add of two `n`-element vectors (their chains' difference)."""
    x, y = np.ones(n, np.float32), np.ones(n, np.float32)
    return chain_per_op(short, long, [x, y], 100, 0.05)


def measure_op_overhead(short: Any, long: Any, threads: int) -> tuple[float, float]:
    """(seconds per op beyond its data, of which the pool's fork/join) (module docstring).

    Every op pays its bookkeeping: a 1-element add's time. An op the pool runs also pays
    the fork/join: at PAR_MIN elements the pool cuts the loop into two chunks of PAR_MIN/2,
    one for the caller, one for a worker, so its time minus that of a PAR_MIN/2 add (run
    on the caller alone: the same work per thread) is what the hand-off costs."""
    tiny = add_per_op(short, long, 1)
    if threads <= 1:
        return tiny, 0.0
    threshold = par_min()
    fork_join = max(add_per_op(short, long, threshold) - add_per_op(short, long, threshold // 2), 0)
    return tiny + fork_join, fork_join


def measure(progress: Progress | None = None) -> CpuMeasurement:
    """Measure this host's CPU through the C++ backend (module docstring)."""
    say = progress or (lambda _: None)
    start = time.perf_counter()
    say("compiling the probe kernels (cached after the first run)")
    probes = compile_probes()
    short, long = (f"{k}" for k in CHAIN_OPS)
    say("f32 GEMM")
    gemm = measure_gemm(probes["matmul" + short], probes["matmul" + long])
    say("streaming bandwidth")
    bandwidth = measure_bandwidth(probes["add" + short])
    say("fixed cost per op")
    threads = pool_threads()
    overhead, fork_join = measure_op_overhead(probes["add" + short], probes["add" + long], threads)
    return CpuMeasurement(
        model=cpu_model(),
        threads=threads,
        gemm_flops=gemm,
        gemm_shape=(GEMM_M, GEMM_K, GEMM_N),
        bandwidth=bandwidth,
        op_overhead=overhead,
        fork_join=fork_join,
        mem_capacity=memory_bytes(),
        blas=blas_build(),
        seconds=time.perf_counter() - start,
    )


# ------------------------------------------------------- the device statement ---


def _figure(value: float, units: Sequence[tuple[str, float]]) -> str:
    """`value` in the largest unit it is >= 1 of, to 4 significant digits."""
    unit, scale = next(((u, s) for u, s in units if value >= s), units[-1])
    return f"{value / scale:.4g} {unit}"


_COMPUTE = (("PFLOPS", 1e15), ("TFLOPS", 1e12), ("GFLOPS", 1e9), ("FLOPS", 1.0))
_BANDWIDTH = (("TB/s", 1e12), ("GB/s", 1e9), ("MB/s", 1e6), ("B/s", 1.0))
_SIZE = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("B", 1.0))
_TIME = (("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9))


def check_device_name(name: str) -> None:
    """A UserError unless `name` is a device name the cluster language accepts."""
    if not DEVICE_NAME.match(name) or name in ("device", "link", "cluster"):
        raise UserError(
            f"--name '{name}' is not a device name: letters, digits, '_' and '.', starting "
            "with a letter or '_' (e.g. cpu0)"
        )


def device_statement(m: CpuMeasurement, name: str = "cpu0") -> str:
    """A `.cluster` `device` statement for `m`, with comment lines that say what was
    measured; it parses as is (a one-device cluster file, or a paste into another)."""
    check_device_name(name)
    peak = m.gemm_flops / MATMUL_EFFICIENCY
    bandwidth = m.bandwidth / MEMORY_EFFICIENCY
    rows, k, n = m.gemm_shape
    model = m.model.replace('"', "'")
    flops = _figure(peak, _COMPUTE)
    return (
        f"# {m.model}: measured by `gimletc measure-cpu` through gimlet's C++ backend\n"
        f"# ({m.threads} threads; BLAS: {m.blas}).\n"
        f"# f32 GEMM {m.gemm_flops / 1e9:.4g} GFLOP/s ({rows}x{k}x{n}), streaming add "
        f"{m.bandwidth / 1e9:.4g} GB/s, {m.op_overhead * 1e6:.3g} us per op\n"
        f"# ({m.fork_join * 1e6:.3g} us of it the thread pool's fork/join).\n"
        f"# peak_flops = GEMM rate / {MATMUL_EFFICIENCY} and mem_bandwidth = measured / "
        f"{MEMORY_EFFICIENCY}: the\n"
        "# cost model derates every peak by these efficiencies (placement/cost.py), so it\n"
        "# predicts the measured rates. f16/bf16 GEMMs run in f32 on this backend: same rate.\n"
        "# power and price stay the cpu preset's (not measured).\n"
        f"device {name} : cpu {{\n"
        f"  peak_flops = {{ f32: {flops}, f16: {flops}, bf16: {flops} }}\n"
        f"  mem_bandwidth = {_figure(bandwidth, _BANDWIDTH)}\n"
        f"  mem_capacity = {_figure(m.mem_capacity, _SIZE)}\n"
        f"  launch_overhead = {_figure(m.op_overhead, _TIME)}\n"
        f'  model = "{model}"\n'
        "}\n"
    )


def to_device(m: CpuMeasurement, name: str = "cpu0") -> Device:
    """The Device the statement describes, read back through the cluster language (so it
    has exactly the statement's rounded figures)."""
    text = device_statement(m, name)
    try:
        return parse_cluster(text, "<measure-cpu>").devices[name]
    except ClusterFileError as err:  # a name the checks above let through
        raise UserError(f"--name '{name}': {err.detail}") from None


def summary(m: CpuMeasurement) -> dict[str, Any]:
    """The measurement as plain JSON figures (benchmarks record it)."""
    return {
        "model": m.model,
        "threads": m.threads,
        "gemm_gflops": round(m.gemm_flops / 1e9, 2),
        "gemm_shape": list(m.gemm_shape),
        "bandwidth_gbs": round(m.bandwidth / 1e9, 2),
        "op_overhead_us": round(m.op_overhead * 1e6, 3),
        "fork_join_us": round(m.fork_join * 1e6, 3),
        "mem_capacity_gb": round(m.mem_capacity / 1e9, 2),
        "blas": m.blas,
        "seconds": round(m.seconds, 2),
        "statement": device_statement(m),
    }
