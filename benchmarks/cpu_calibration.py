"""CPU predictions with the `cpu` preset and with this machine's measured CPU, beside what
gimlet's C++ backend really takes here.

The `cpu` preset is a 56-core Xeon 8480+ (7 TFLOP/s f32, 307 GB/s); on any other machine the
cost model predicts CPU segments far too fast (benchmarks/results/gpu_placements.md: 6.6x
on the GPU machine's 16-core VM). `gimletc measure-cpu` (gimlet.measure_cpu) measures the
machine through the backend itself; this script shows what that does to the predictions.

Models, each placed wholly on cpu0 and run by the C++ backend in this process
(`gimlet.compile(...)`, torch tensors in and out, as a caller would):

* `gpt`: benchmarks/gpu_placements.py's GPT (d=512, 8 heads, 8 layers, vocab 8192, f32,
  batch 1, T=128), its "cpu0 only" placement;
* `gpt-small`: the same code at d=256, 4 heads, 4 layers, vocab 4096, T=64;
* `mlp`: examples/mlp.py (32 -> 64 -> 10, batch 4): microseconds of work, so what it
  shows is the fixed cost of a call, which the model does not charge.

For each: the makespan the model predicts on the `cpu` preset and on the measured CPU
(the `device` statement `gimletc measure-cpu` prints; the placed program is the same, only
cpu0's figures differ) and the measured median and best of --iters calls after 5
warm-up calls. The measured CPU's figures are recorded with the results, and the load
average before and after (a shared machine's times move with it).

Run: python benchmarks/cpu_calibration.py [--iters 25]
Writes benchmarks/results/cpu_calibration.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import gpu_placements as gp  # noqa: E402
from results_io import save  # noqa: E402

PRESET = "cpu"  # presets.target("cpu"): one device, cpu0, the Xeon preset

Model = tuple[torch.nn.Module, tuple[torch.Tensor, ...]]


def gpt_small() -> Model:
    from gpt import GPT

    torch.manual_seed(0)
    model = GPT(vocab=4096, ctx=128, d=256, heads=4, layers=4).eval()
    return model, (torch.randint(0, 4096, (1, 64)),)


def mlp() -> Model:
    from mlp import model

    module, inputs, _ = model()
    return module.eval(), inputs


MODELS: dict[str, tuple[str, Callable[[], Model]]] = {
    "gpt": ("GPT d=512 h=8 L=8 vocab=8192 f32, T=128", gp.model_and_inputs),
    "gpt-small": ("GPT d=256 h=4 L=4 vocab=4096 f32, T=64", gpt_small),
    "mlp": ("examples/mlp.py, 32-64-10, batch 4", mlp),
}


def predicted(compiled: Any, target: str) -> dict[str, Any]:
    """The modelled makespan (ms) of `compiled` placed for `target`, its op count and the
    modelled ms per op name (where the prediction goes)."""
    from xdsl.ir import Operation

    from gimlet.placement.cost import op_cost, op_time
    from gimlet.placement.schedule import device_programs_with_compute, simulate
    from gimlet.placement.target import resolve

    module = gp.placed(compiled, "", target)
    cluster = resolve(target)
    timeline = simulate(module, cluster)
    by_op: dict[str, float] = {}
    ops = 0
    for item in device_programs_with_compute(module, cluster.default_host()).get("cpu0", []):
        if isinstance(item, Operation) and not op_cost(item).free:
            ms = op_time(op_cost(item), cluster.devices["cpu0"]) * 1e3
            by_op[item.name] = by_op.get(item.name, 0.0) + ms
            ops += 1
    by_op = dict(sorted(by_op.items(), key=lambda kv: -kv[1]))
    return {"ms": timeline.makespan * 1e3, "ops": ops, "by_op_ms": by_op}


def timed(compiled: Any, inputs: tuple[torch.Tensor, ...], iters: int) -> dict[str, float]:
    """Median and best ms of `iters` calls after 5 warm-up calls."""
    times = gp.call_ms(compiled, inputs, iters)
    return {"median": statistics.median(times), "best": min(times)}


def run_model(name: str, measured_target: str, iters: int) -> dict[str, Any]:
    import gimlet

    title, make = MODELS[name]
    model, inputs = make()
    with torch.no_grad():
        ref = model(*inputs)
        compiled = gimlet.compile(model, inputs, target=PRESET)
        try:
            (out,) = compiled(*inputs)
            preset, measured_cpu = predicted(compiled, PRESET), predicted(compiled, measured_target)
            times = timed(compiled, inputs, iters)
            how = compiled.loaded().reason
        finally:
            compiled.close()
    row = {
        "model": title,
        "ops": preset["ops"],
        "predicted_preset_ms": preset["ms"],
        "predicted_measured_cpu_ms": measured_cpu["ms"],
        "predicted_measured_cpu_by_op_ms": measured_cpu["by_op_ms"],
        "measured_median_ms": times["median"],
        "measured_best_ms": times["best"],
        "max_abs_err": float((out.float() - ref.float()).abs().max()),
        "how": how,
    }
    row["ratio_preset"] = row["measured_median_ms"] / row["predicted_preset_ms"]
    row["ratio_measured_cpu"] = row["measured_median_ms"] / row["predicted_measured_cpu_ms"]
    row["ratio_best_measured_cpu"] = row["measured_best_ms"] / row["predicted_measured_cpu_ms"]
    return row


def main() -> None:
    from gimlet.measure_cpu import measure, summary

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=25, help="timed calls per model (default 25)")
    ap.add_argument("--only", action="append", choices=list(MODELS), help="models (default all)")
    ap.add_argument(
        "--stem",
        default="cpu_calibration",
        help="results file names, benchmarks/results/STEM.{md,json} (default cpu_calibration)",
    )
    args = ap.parse_args()
    load_start = os.getloadavg()[0]
    started = time.perf_counter()

    def progress(what: str) -> None:
        print(f"[cpu_calibration] measuring this CPU: {what}", flush=True)

    figures = summary(measure(progress))
    print(f"[cpu_calibration] {figures['statement']}", flush=True)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cpu-calibration-") as tmp:
        measured_target = str(Path(tmp, "measured_cpu.cluster"))
        Path(measured_target).write_text(figures["statement"])
        for name in args.only or MODELS:
            print(f"[cpu_calibration] {name} ...", flush=True)
            rows[name] = run_model(name, measured_target, args.iters)
            print(f"[cpu_calibration] {name}: {rows[name]}", flush=True)
    meta = {
        "command": f"python benchmarks/cpu_calibration.py {shlex.join(sys.argv[1:])}".rstrip(),
        "machine": gp.machine(),
        "cpu_backend": gp.cpu_backend_info(PRESET),
        "cpu0_measured": figures,
        "iters": args.iters,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg()[0],
        "seconds": round(time.perf_counter() - started, 1),
    }
    write(rows, meta, args.stem)


def write(rows: dict[str, Any], meta: dict[str, Any], stem: str = "cpu_calibration") -> None:
    m, cpu = meta["cpu0_measured"], meta["cpu_backend"]
    machine = meta["machine"]
    lines = [
        "# CPU predictions: the `cpu` preset vs this machine's measured CPU",
        "",
        f"Machine: {machine.get('cpu', m['model'])}, {machine.get('nproc', '?')} CPUs, "
        f"{m['mem_capacity_gb']:g} GB; {cpu['cxx']}; BLAS {cpu['blas']}; {cpu['threads']} "
        f"threads. Date {machine.get('date', '?')}; load average {meta['loadavg_start']:.2f} "
        f"at the start, {meta['loadavg_end']:.2f} at the end. Command: `{meta['command']}` "
        f"({meta['seconds']:g} s). Each model wholly on cpu0, run by the C++ backend in this "
        f"process (`gimlet.compile`, torch tensors in and out), {meta['iters']} calls after "
        "5 warm-up calls.",
        "",
        "| model | ops | predicted, preset ms | predicted, measured CPU ms | measured median ms "
        "| measured best ms | median / preset | median / measured CPU | best / measured CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name}: {r['model']} | {r['ops']} | {r['predicted_preset_ms']:.3f} | "
            f"{r['predicted_measured_cpu_ms']:.3f} | {r['measured_median_ms']:.3f} | "
            f"{r['measured_best_ms']:.3f} | {r['ratio_preset']:.2f}x | "
            f"{r['ratio_measured_cpu']:.2f}x | {r['ratio_best_measured_cpu']:.2f}x |"
        )
    lines.append("")
    for name, r in rows.items():
        top = list(r["predicted_measured_cpu_by_op_ms"].items())[:4]
        lines.append(
            f"- {name}, where the measured-CPU prediction goes: "
            + ", ".join(f"{op} {ms:.3f} ms" for op, ms in top)
        )
    lines += [
        "",
        f"The preset: {cpu['model_cpu0']}. The measured CPU (gimlet.measure_cpu, "
        f"{m['seconds']:g} s): f32 GEMM {m['gemm_gflops']:g} GFLOP/s "
        f"({'x'.join(map(str, m['gemm_shape']))}), streaming add {m['bandwidth_gbs']:g} GB/s, "
        f"{m['op_overhead_us']:g} us per op ({m['fork_join_us']:g} of it the thread pool's "
        "fork/join); the statement the model used (`gimletc measure-cpu` prints the same):",
        "",
        "```",
        *m["statement"].rstrip("\n").splitlines(),
        "```",
    ]
    text = "\n".join(lines) + "\n"
    save(stem, {"meta": meta, "rows": rows}, text)
    print(text)


if __name__ == "__main__":
    main()
