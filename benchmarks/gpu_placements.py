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
backend really pays (cost.py's MEASURED_LAUNCH_OVERHEAD has the H100's from torch; this is
the H200's from gimlet).

`--predict-only` (any machine): the predictions alone.
Run on the GPU machine: python benchmarks/gpu_placements.py
Writes benchmarks/results/gpu_placements.{md,json} (and copies them to $OUT when set).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from results_io import save  # noqa: E402

TARGET = "h200+cpu"
LAYERS = 8
ALL = ["wte", "wpe", f"h.0-{LAYERS - 1}", "ln_f", "lm_head"]
PLACEMENTS = {
    "gpu0 only": ",".join(f"{p}=gpu0" for p in ALL),
    "cpu0 only": ",".join(f"{p}=cpu0" for p in ALL),
    "split cpu0/gpu0": "wte=cpu0,wpe=cpu0,h.0-3=cpu0,h.4-7=gpu0,ln_f=gpu0,lm_head=gpu0",
    "solver": "",
}


def model_and_inputs() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    from gpt import GPT

    torch.manual_seed(0)
    gpt = GPT(vocab=8192, ctx=256, d=512, heads=8, layers=LAYERS).eval()
    return gpt, (torch.randint(0, 8192, (1, 128)),)


def placed(compiled: Any, pins: str) -> Any:
    """The program as bundle_to places it (Place, outline, comm insertion, overlap)."""
    from gimlet.pass_manager import run_pipeline
    from gimlet.passes.insert_comm import InsertComm
    from gimlet.passes.outline_segments import OutlineSegments
    from gimlet.passes.overlap_comm import OverlapComm
    from gimlet.passes.place import Place

    module = compiled.module.clone()
    passes = [Place(target=TARGET, pins=pins), OutlineSegments(), InsertComm(), OverlapComm()]
    run_pipeline(module, passes)  # type: ignore[arg-type]
    return module


def predict(module: Any) -> dict[str, Any]:
    """Modelled makespan, per-device busy time, and the gpu0 roofline without launches."""
    from xdsl.ir import Operation

    from gimlet.placement.cost import launch_overhead, op_cost, op_time
    from gimlet.placement.schedule import device_programs_with_compute, simulate
    from gimlet.placement.target import resolve

    cluster = resolve(TARGET)
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


def measure(compiled: Any, inputs: tuple[torch.Tensor, ...], iters: int) -> float:
    """Median ms of in-process calls (host tensors in and out), after warm-up."""
    for _ in range(5):
        compiled(*inputs)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        compiled(*inputs)  # outputs come back on the host: the call has synchronised
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


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
    args = ap.parse_args()
    for name in set(PLACEMENTS) - set(args.only or PLACEMENTS) - {"gpu0 only"}:
        del PLACEMENTS[name]
    import gimlet

    model, inputs = model_and_inputs()
    rows: dict[str, Any] = {}
    with torch.no_grad():
        ref = model(*inputs)
        for name, pins in PLACEMENTS.items():
            print(f"[gpu_placements] {name} ...", flush=True)
            compiled = gimlet.compile(model, inputs, target=TARGET, pin=pins)
            row = predict(placed(compiled, pins))
            if not args.predict_only:
                (out,) = compiled(*inputs)
                row["max_abs_err"] = float((out.float() - ref.float()).abs().max())
                row["measured_ms"] = measure(compiled, inputs, args.iters)
                row["ratio"] = row["measured_ms"] / row["predicted_ms"]
                row["how"] = compiled.loaded().reason
            compiled.close()
            rows[name] = row
            print(f"[gpu_placements] {name}: {row}", flush=True)
    gpu = rows["gpu0 only"]
    if "measured_ms" in gpu:
        gpu["fitted_launch_us"] = (
            (gpu["measured_ms"] - gpu["gpu0_roofline_ms"]) / max(gpu["gpu0_ops"], 1) * 1e3
        )
    meta = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "command": "python benchmarks/gpu_placements.py"
        + (" --predict-only" if args.predict_only else ""),
        "model": f"GPT d=512 h=8 L={LAYERS} vocab=8192 f32, batch 1, T=128; target {TARGET}",
    }
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
        measured = "|  |  |" if m is None else f"| {m:.3f} | {r['ratio']:.2f}x |"
        lines.append(
            f"| {name} | {r['predicted_ms']:.3f} {measured} {'' if err is None else f'{err:.1e}'} |"
        )
    gpu = rows["gpu0 only"]
    if "fitted_launch_us" in gpu:
        lines += [
            "",
            f"gpu0 alone: {gpu['gpu0_ops']} ops, calibrated roofline {gpu['gpu0_roofline_ms']:.3f} ms; "
            f"fitted per-op overhead of gimlet's backend {gpu['fitted_launch_us']:.2f} us "
            "(cost.py's H100 figure from torch in graph replay: 3.4 us).",
        ]
    text = "\n".join(lines) + "\n"
    save("gpu_placements", {"meta": meta, "rows": rows}, text)
    print(text)


if __name__ == "__main__":
    main()
