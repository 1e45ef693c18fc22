"""CPU+GPU placements on the H200: gimlet's measured time beside the cost model's prediction,
and the H200's launch overhead fitted from what gimlet's own GPU backend measures.

A GPT (examples/gpt.py: d=512, 8 heads, 8 layers, vocab 8192, f32, batch 1, T=128) is
compiled for `h200+cpu` under four placements: everything on gpu0, everything on cpu0 (the
C++ backend), a split (embeddings and layers 0-3 on cpu0, the rest on gpu0) and the
solver's own choice. For each: the modelled makespan (`placement.schedule.simulate` on the
placed program, as the solver sees it) and the measured median of in-process calls through
`gimlet.compile(...)` (host tensors in and out, so host<->GPU copies count).

Calibration: on gpu0 alone, measured = sum over ops of the calibrated roofline + n_ops x
launch, so launch = (measured - roofline) / n_ops is the per-kernel overhead gimlet's
backend really pays. It is reported (rows["gpu0 only"]["fitted_launch_us"] in the json, a
line in the md, beside the figure the model used); nothing writes it into the model: the
H200's entry of cost.py's MEASURED_LAUNCH_OVERHEAD is set by hand from it (the H100's
there is from torch in CUDA-graph replay). The roofline excludes that entry, so the fit
does not depend on it.

Each placement runs in its own Python subprocess (this script with `--child`), so a
crash in one (a segfault in a backend's native code, say) is reported with the
placement's name, its exit signal and the tail of its stderr, which holds faulthandler's
Python traceback of every thread and a native backtrace, and the other placements still
run. `--in-process` runs them all in this process instead, one after another, as a
caller would (the gpu0-only placement's CUDA libraries then stay loaded for the rest).

The C++ CPU backend's figures mean something only with BLAS (scipy-openblas64's OpenBLAS;
without it its GEMMs are naive loops, 100x slower): the BLAS library its runtime library
really loads (`ldd`) and OpenBLAS's build string are printed first and recorded; without
one, every row that runs work on cpu0 is marked "no BLAS", and `--require-blas` stops
before running anything.

The model's cpu0 is the `cpu` preset (a 56-core Xeon 8480+) by default, whatever CPU the
machine has. `--cpu measured` measures this machine's CPU first (gimlet.measure_cpu, what
`gimletc measure-cpu` prints) and places and predicts on `h200` + that CPU instead, the
same devices and links as `h200+cpu` (the GPU hangs off cpu0 by the default PCIe link);
the statement used is recorded in the results, which go to gpu_placements_cpu_measured.*
so the preset's run stays.

`--predict-only` (any machine): the predictions alone.
Run on the GPU machine: python benchmarks/gpu_placements.py
Writes benchmarks/results/gpu_placements.{md,json} (and copies them to $OUT when set).
"""

from __future__ import annotations

import argparse
import ctypes
import faulthandler
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from results_io import machine_info, save  # noqa: E402

TARGET = "h200+cpu"
LAYERS = 8
ALL = ["wte", "wpe", f"h.0-{LAYERS - 1}", "ln_f", "lm_head"]
PLACEMENTS = {
    "gpu0 only": ",".join(f"{p}=gpu0" for p in ALL),
    "cpu0 only": ",".join(f"{p}=cpu0" for p in ALL),
    "split cpu0/gpu0": "wte=cpu0,wpe=cpu0,h.0-3=cpu0,h.4-7=gpu0,ln_f=gpu0,lm_head=gpu0",
    "solver": "",
}
ROW = "[gpu_placements:row] "  # a child's result line on stdout: this prefix, then JSON
TAIL_LINES = 100  # of a failed child's stderr, printed and kept in the row


def model_and_inputs() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    from gpt import GPT

    torch.manual_seed(0)
    gpt = GPT(vocab=8192, ctx=256, d=512, heads=8, layers=LAYERS).eval()
    return gpt, (torch.randint(0, 8192, (1, 128)),)


def measured_cluster(statement: str) -> str:
    """A `.cluster` text for `h200+cpu` with `statement` (a measured `device cpu0 : cpu`)
    as its CPU: the devices, their order and links of presets.target("h200+cpu")."""
    return (
        'cluster "h200+measured-cpu"\n'
        "device gpu0 : h200 { host = cpu0 }  # the default PCIe link, as in h200+cpu\n" + statement
    )


def write_measured_cluster(directory: str) -> tuple[str, dict[str, Any]]:
    """Measure this CPU and write the h200 + measured-CPU cluster file under `directory`:
    its path, and the measurement's figures for the results."""
    from gimlet.measure_cpu import measure, summary

    def progress(what: str) -> None:
        print(f"[gpu_placements] measuring this CPU: {what}", flush=True)

    figures = summary(measure(progress))
    path = Path(directory, "h200_measured_cpu.cluster")
    path.write_text(measured_cluster(figures["statement"]))
    return str(path), figures


def placed(compiled: Any, pins: str, target: str = TARGET) -> Any:
    """The program as bundle_to places it (Place, outline, comm insertion, overlap)."""
    from gimlet.pass_manager import run_pipeline
    from gimlet.passes.insert_comm import InsertComm
    from gimlet.passes.outline_segments import OutlineSegments
    from gimlet.passes.overlap_comm import OverlapComm
    from gimlet.passes.place import Place

    module = compiled.module.clone()
    passes = [Place(target=target, pins=pins), OutlineSegments(), InsertComm(), OverlapComm()]
    run_pipeline(module, passes)  # type: ignore[arg-type]
    return module


def predict(module: Any, target: str = TARGET) -> dict[str, Any]:
    """Modelled makespan, per-device busy time, and the gpu0 roofline without launches."""
    from xdsl.ir import Operation

    from gimlet.placement.cost import launch_overhead, op_cost, op_time
    from gimlet.placement.schedule import device_programs_with_compute, simulate
    from gimlet.placement.target import resolve

    cluster = resolve(target)
    timeline = simulate(module, cluster)
    roofline, n_ops, gpu = 0.0, 0, cluster.devices["gpu0"]
    for item in device_programs_with_compute(module, cluster.default_host()).get("gpu0", []):
        if isinstance(item, Operation):  # not a transfer event
            cost = op_cost(item)
            if not cost.free:  # the calibrated roofline, without the per-op overhead
                roofline += op_time(cost, gpu) - launch_overhead(gpu)
                n_ops += 1
    return {
        "predicted_ms": timeline.makespan * 1e3,
        "busy_ms": {d: t * 1e3 for d, t in timeline.busy.items()},
        "gpu0_roofline_ms": roofline * 1e3,
        "gpu0_ops": n_ops,
    }


def call_ms(compiled: Any, inputs: tuple[torch.Tensor, ...], iters: int) -> list[float]:
    """Each of `iters` in-process calls' ms (host tensors in and out), after 5 warm-up
    calls."""
    for _ in range(5):
        compiled(*inputs)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        compiled(*inputs)  # outputs come back on the host: the call has synchronised
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure(compiled: Any, inputs: tuple[torch.Tensor, ...], iters: int) -> float:
    """Median ms of in-process calls (host tensors in and out), after warm-up."""
    return statistics.median(call_ms(compiled, inputs, iters))


def run_placement(
    name: str,
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    args: Any,
    emit: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Compile `name`'s placement, predict it and (unless --predict-only) call it in this
    process. `emit(row)` gets the row once predicted and again once measured, so a
    crash while measuring still leaves the prediction."""
    import gimlet

    pins = PLACEMENTS[name]
    target = getattr(args, "target", None) or TARGET  # --cpu measured: a .cluster file
    with torch.no_grad():
        ref = model(*inputs)
        compiled = gimlet.compile(model, inputs, target=target, pin=pins)
        row = predict(placed(compiled, pins, target), target)
        emit(row)
        if not args.predict_only:
            (out,) = compiled(*inputs)
            row["max_abs_err"] = float((out.float() - ref.float()).abs().max())
            row["measured_ms"] = measure(compiled, inputs, args.iters)
            row["ratio"] = row["measured_ms"] / row["predicted_ms"]
            row["how"] = compiled.loaded().reason
            emit(row)
        compiled.close()
    return row


def run_child(name: str, args: Any) -> dict[str, Any]:
    """`name`'s placement in a subprocess (this script with --child): its row, or what
    it predicted before it failed plus how it failed and its stderr's tail."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name]
    cmd += ["--iters", str(args.iters)] + (["--predict-only"] if args.predict_only else [])
    cmd += ["--target", args.target] if getattr(args, "target", None) else []
    with tempfile.TemporaryFile("w+") as err:
        try:
            proc = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=err, text=True, timeout=args.timeout
            )
            rc, out = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as e:
            rc = None
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        err.seek(0)
        log = err.read()
    found = [json.loads(line[len(ROW) :]) for line in out.splitlines() if line.startswith(ROW)]
    row: dict[str, Any] = found[-1] if found else {}
    if rc == 0 and found:
        return row
    if rc is None:
        row["error"] = f"ran past --timeout {args.timeout:g} s (killed)"
    elif rc < 0:
        row["error"] = f"crashed: {signal.Signals(-rc).name}"
    else:
        row["error"] = f"exited with status {rc}"
    tail = log.splitlines()[-TAIL_LINES:]
    row["stderr_tail"] = "\n".join(tail)
    print(f"[gpu_placements] {name}: {row['error']}; the child's stderr ends:", file=sys.stderr)
    print("\n".join("    " + line for line in tail), file=sys.stderr, flush=True)
    return row


NATIVE_TRACE = Path(__file__).parent / "native_trace.c"  # compiled by install_crash_reports


def install_crash_reports() -> None:
    """The native backtrace handler (when a C compiler is here), then faulthandler."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc:
        tmp = tempfile.mkdtemp(prefix="gpu-placements-trace-")
        lib = Path(tmp, "trace.so")
        proc = subprocess.run(
            [cc, "-O1", "-shared", "-fPIC", str(NATIVE_TRACE), "-o", str(lib)], capture_output=True
        )
        if proc.returncode == 0:
            ctypes.CDLL(str(lib)).install()
        shutil.rmtree(tmp, ignore_errors=True)  # the loaded library stays mapped
    faulthandler.enable(all_threads=True)


def machine() -> dict[str, Any]:
    """results_io's machine_info; it reads gimlet's version from its installed metadata,
    which a checkout on PYTHONPATH lacks: then the rest without it."""
    import importlib.metadata

    try:
        return machine_info()
    except importlib.metadata.PackageNotFoundError as e:
        return {"nproc": len(os.sched_getaffinity(0)), "note": f"no metadata: {e}"}


def blas_in_ldd(ldd_output: str) -> str | None:
    """The path `ldd` resolved for a BLAS library (a dependency named *blas*), or None when
    there is none or the loader cannot find it (then nothing but the naive loops can run)."""
    for line in ldd_output.splitlines():
        name, arrow, where = line.strip().partition(" => ")
        if arrow and "blas" in name.lower() and not where.startswith("not found"):
            return where.split(" (0x")[0].strip()
    return None


def runtime_blas() -> dict[str, Any]:
    """The BLAS the C++ CPU backend's runtime library really loads here: its path as the
    dynamic loader resolves it, and OpenBLAS's build string (version, the CPU kernels it
    picked). `library` None: the GEMMs are naive loops. Builds (or finds in the cache) the
    runtime library with the flags the CPU placements compile with, so they reuse it."""
    from gimlet.backends.cpu.build import build_runtime, default_flags

    lib = build_runtime(default_flags())
    if not shutil.which("ldd"):  # cannot tell: report none rather than assume BLAS
        return {"library": None, "config": None, "runtime": str(lib), "note": "no ldd here"}
    ldd = subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    path = blas_in_ldd(ldd)
    config = None
    if path:
        from gimlet.measure_cpu import openblas_config

        try:
            config = openblas_config(path)
        except (OSError, AttributeError):
            config = "unknown build (not scipy-openblas64's OpenBLAS)"
    return {"library": path, "config": config, "runtime": str(lib)}


def cpu_backend_info(target: str = TARGET) -> dict[str, Any]:
    """What the C++ CPU backend builds with here: its figures mean little without BLAS."""
    from gimlet.backends.cpu.build import compiler, compiler_version, native_flags
    from gimlet.placement.target import resolve

    blas = runtime_blas()
    cpu0 = resolve(target).devices["cpu0"]
    return {
        "cxx": compiler_version(compiler()),
        "blas": f"{blas['config']} ({blas['library']})"
        if blas["library"]
        else "none: naive C++ loops (the runtime library links no BLAS; scipy-openblas64 "
        "not importable?)",
        "blas_library": blas["library"],
        "onednn": "-DGML_DNNL" in native_flags(),
        "threads": os.environ.get("GIMLET_CPU_THREADS")
        or os.environ.get("OMP_NUM_THREADS")
        or len(os.sched_getaffinity(0)),
        # what the model predicts cpu0 with: a preset CPU, not necessarily this one
        "model_cpu0": f"{cpu0.model}, {cpu0.flops_for('f32') / 1e12:g} TFLOP/s f32, "
        f"{cpu0.mem_bandwidth / 1e9:g} GB/s",
    }


def model_launch_us() -> float:
    """The per-op overhead the cost model adds on gpu0 (cost.py's measured figure)."""
    from gimlet.placement.cost import launch_overhead
    from gimlet.placement.target import resolve

    return launch_overhead(resolve(TARGET).devices["gpu0"]) * 1e6


NO_BLAS = "no BLAS: naive C++ GEMM loops, not a test of the model"


def mark_naive_cpu(rows: dict[str, Any], blas: str | None) -> list[str]:
    """Give every row whose placement runs work on cpu0 a `naive_cpu` note when the CPU backend links
    no BLAS (`blas` None), so no table compares naive loops with the model unmarked; the
    names of the rows marked."""
    if blas:
        return []
    marked = [n for n, r in rows.items() if r.get("busy_ms", {}).get("cpu0", 0.0) > 0]
    for name in marked:
        rows[name]["naive_cpu"] = NO_BLAS
    return marked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--predict-only", action="store_true", help="no GPU: predictions only")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument(
        "--only",
        action="append",
        choices=list(PLACEMENTS),
        help="placements to run (repeatable; default all; 'gpu0 only' is always run: the "
        "launch-overhead fit needs it)",
    )
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="run every placement in this process, one after another (default: one "
        "subprocess each, so a crash is reported and the others still run)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=300,
        help="seconds a placement's subprocess may take (compile, C++/CUDA builds, calls)",
    )
    ap.add_argument(
        "--require-blas",
        action="store_true",
        help="exit with status 2 before running anything when the C++ CPU backend links no "
        "BLAS (default: run, and mark the rows that use cpu0 as naive loops)",
    )
    ap.add_argument(
        "--cpu",
        choices=["preset", "measured"],
        default="preset",
        help="the model's cpu0: the `cpu` preset (a 56-core Xeon 8480+, the default) or "
        "this machine's CPU as `gimletc measure-cpu` measures it (results then go to "
        "gpu_placements_cpu_measured.*)",
    )
    ap.add_argument("--child", choices=list(PLACEMENTS), help=argparse.SUPPRESS)  # internal
    ap.add_argument("--target", help=argparse.SUPPRESS)  # internal: the child's cluster
    args = ap.parse_args()
    if args.child:  # one placement, its rows on stdout for the parent
        install_crash_reports()

        def emit(row: dict[str, Any]) -> None:
            print(ROW + json.dumps(row), flush=True)

        run_placement(args.child, *model_and_inputs(), args, emit)
        return
    with tempfile.TemporaryDirectory(prefix="gpu-placements-") as tmp:
        cpu_figures = None
        if args.cpu == "measured":
            args.target, cpu_figures = write_measured_cluster(tmp)
        run_all(args, cpu_figures)


def run_all(args: Any, cpu_figures: dict[str, Any] | None) -> None:
    """Every placement (main's part once the cluster is known), then the results."""
    target = args.target or TARGET
    cpu_backend = cpu_backend_info(target)  # before any placement: a missing BLAS shows at once
    print(f"[gpu_placements] C++ CPU backend BLAS: {cpu_backend['blas']}", flush=True)
    if not cpu_backend["blas_library"]:
        print(
            f"[gpu_placements] WARNING: {NO_BLAS}: rows that use cpu0 are marked", file=sys.stderr
        )
        if args.require_blas:
            print("[gpu_placements] --require-blas: no BLAS, nothing run", file=sys.stderr)
            sys.exit(2)
    names = [n for n in PLACEMENTS if n == "gpu0 only" or n in (args.only or PLACEMENTS)]
    model_inputs = model_and_inputs() if args.in_process else None
    rows: dict[str, Any] = {}
    for name in names:
        print(f"[gpu_placements] {name} ...", flush=True)
        if model_inputs is not None:
            rows[name] = run_placement(name, *model_inputs, args, lambda row: None)
        else:
            rows[name] = run_child(name, args)
        shown = {k: v for k, v in rows[name].items() if k != "stderr_tail"}
        print(f"[gpu_placements] {name}: {shown}", flush=True)
    mark_naive_cpu(rows, cpu_backend["blas_library"])
    gpu = rows["gpu0 only"]
    if "measured_ms" in gpu:
        gpu["fitted_launch_us"] = (
            (gpu["measured_ms"] - gpu["gpu0_roofline_ms"]) / max(gpu["gpu0_ops"], 1) * 1e3
        )
        gpu["model_launch_us"] = model_launch_us()
    command = f"python benchmarks/gpu_placements.py {shlex.join(sys.argv[1:])}".rstrip()
    meta = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "command": command,
        "model": f"GPT d=512 h=8 L={LAYERS} vocab=8192 f32, batch 1, T=128; target "
        + (TARGET if cpu_figures is None else "h200 + this machine's measured CPU"),
        "how": "in one process" if args.in_process else "one subprocess per placement",
        "machine": machine(),
        "cpu_backend": cpu_backend,
    }
    if cpu_figures is not None:
        meta["cpu0_measured"] = cpu_figures
        meta["stem"] = "gpu_placements_cpu_measured"
    write(rows, meta)


def write(rows: dict[str, Any], meta: dict[str, Any]) -> None:
    lines = [
        "# CPU+GPU placements: measured vs the cost model",
        "",
        f"Machine: {meta['gpu'] or 'no GPU (predictions only)'}, torch {meta['torch']}. "
        f"Model: {meta['model']}. Command: `{meta['command']}`.",
        "",
        "| placement | predicted ms | measured ms | measured / predicted | max abs err |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        m, err = r.get("measured_ms"), r.get("max_abs_err")
        pred = f"{r['predicted_ms']:.3f}" if "predicted_ms" in r else ""
        if "error" in r:  # the child failed: say how where the measurement would be
            measured = f"| {r['error']} |  |"
        else:
            mark = " (no BLAS)" if "naive_cpu" in r else ""
            measured = "|  |  |" if m is None else f"| {m:.3f} | {r['ratio']:.2f}x{mark} |"
        lines.append(f"| {name} | {pred} {measured} {'' if err is None else f'{err:.1e}'} |")
    failed = [n for n, r in rows.items() if "error" in r]
    if failed:
        lines += [
            "",
            f"Failed: {', '.join(failed)}; each row's stderr_tail in the json has the child's "
            "last stderr lines (faulthandler's tracebacks, the native backtrace).",
        ]
    naive = [n for n, r in rows.items() if "naive_cpu" in r]
    if naive:
        lines += ["", f"(no BLAS) {', '.join(naive)}: {NO_BLAS}."]
    cpu = meta.get("cpu_backend")
    if cpu:
        lines += [
            "",
            f"C++ CPU backend here: {cpu['cxx']}; BLAS {cpu['blas']}; {cpu['threads']} threads. "
            f"The model's cpu0: {cpu.get('model_cpu0', '?')}.",
        ]
    measured = meta.get("cpu0_measured")
    if measured:
        lines += [
            "",
            f"cpu0 measured here by gimlet.measure_cpu (`gimletc measure-cpu`, "
            f"{measured['seconds']:g} s): f32 GEMM {measured['gemm_gflops']:g} GFLOP/s, "
            f"streaming add {measured['bandwidth_gbs']:g} GB/s, {measured['op_overhead_us']:g} "
            "us per op; the statement the model used:",
            "",
            "```",
            *measured["statement"].rstrip("\n").splitlines(),
            "```",
        ]
    gpu = rows["gpu0 only"]
    if "fitted_launch_us" in gpu:
        lines += [
            "",
            f"gpu0 alone: {gpu['gpu0_ops']} ops, calibrated roofline {gpu['gpu0_roofline_ms']:.3f} ms; "
            f"fitted per-op overhead of gimlet's backend {gpu['fitted_launch_us']:.2f} us; "
            f"the model predicted with {gpu.get('model_launch_us', float('nan')):.2f} us "
            "(cost.py's MEASURED_LAUNCH_OVERHEAD for this GPU, set by hand from this fit).",
        ]
    text = "\n".join(lines) + "\n"
    save(meta.get("stem", "gpu_placements"), {"meta": meta, "rows": rows}, text)
    print(text)


if __name__ == "__main__":
    main()
