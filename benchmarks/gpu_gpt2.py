"""GPT-2 small on one GPU: gimlet's NVIDIA backend against torch eager, torch.compile and
torch.compile(mode="reduce-overhead"), all in one run, fp16, batch 1.

* decode: one token over a 512-token KV cache (examples/gpt_phases.py's Decode: the
  cache goes in, the step's logits come out);
* prefill: the whole model over T=512 tokens (all logits).

Reports the median of timed calls (CUDA events around each, after warm-up), the
compile time of each (gimlet: export + passes + code generation + nvcc; torch.compile:
its first call), peak GPU memory (torch's allocator: gimlet's weights and arenas come
from it too), gimlet's memory plan, and the max abs difference from torch eager.

Run on a machine with an NVIDIA GPU (the H200, through the device tool):
    python benchmarks/gpu_gpt2.py [--quick]
Writes benchmarks/results/gpu_gpt2.{md,json} (and copies them to $OUT when set).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from gpt import GPT  # noqa: E402
from gpt_phases import Decode  # noqa: E402
from results_io import print_kernels, save, timeline  # noqa: E402

CTX = 512


def gpt2_small(dev: torch.device) -> GPT:
    """GPT-2 small in fp16, its weights drawn after torch.manual_seed(0)."""
    torch.manual_seed(0)
    return GPT(vocab=50257, ctx=1024, d=768, heads=12, layers=12).half().eval().to(dev)


def decode_inputs(dev: torch.device) -> tuple[torch.Tensor, ...]:
    """One decode step's inputs: a token, and the 12 layers' keys and values over CTX."""
    token = torch.randint(0, 50257, (1, 1), device=dev)
    keys = torch.randn(12, 1, 12, CTX, 64, device=dev, dtype=torch.float16)
    values = torch.randn(12, 1, 12, CTX, 64, device=dev, dtype=torch.float16)
    return token, keys, values


def timed(fn: Any, args: tuple[Any, ...], iters: int, warmup: int = 10) -> dict[str, Any]:
    """Per-call times: `ms` on the GPU (CUDA events around each call) and `host_us`, the
    caller's wall time inside the call (its launches are asynchronous: while the GPU is
    idle at the start event, this is time the GPU waits for the host)."""
    for _ in range(warmup):
        fn(*args)
    torch.cuda.synchronize()
    out, host = [], []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t0 = time.perf_counter()
        fn(*args)
        host.append((time.perf_counter() - t0) * 1e6)
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return {"ms": out, "host_us": host}


def first_output(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, list | tuple) else x


# gimlet's code-generation switches compared in one run (backends/gpu/switches.py):
# "gimlet" = the defaults (cuBLASLt epilogues, odd-width weights padded, flash-attention
# prefill, decode's kernels started early); "gimlet-cublas-attn" = prefill attention as
# two cuBLAS GEMMs and a softmax; "gimlet-no-pdl" = decode's kernels launched with <<<>>>;
# "gimlet-chain" = decode's kernels as one persistent chain (opt-in: slower so far);
# "gimlet-u8" = decode GEMVs with 8 loads a lane in flight, not a column's
VARIANTS: dict[str, dict[str, Any]] = {
    "gimlet": {},
    "gimlet-cublas-attn": {"FLASH_PREFILL": False},
    "gimlet-no-pdl": {"PDL": False},
    "gimlet-chain": {"CHAIN": True},
    "gimlet-u8": {"GEMV_LOADS_PER_COLUMN": False},
    # each load where its use is (as before 2026-11-30)
    "gimlet-late": {"DECODE_PREFETCH": False, "NORM_EARLY": False},
    "gimlet-late-no-pdl": {"DECODE_PREFETCH": False, "NORM_EARLY": False, "PDL": False},
    "gimlet-norm-late": {"NORM_EARLY": False},
    "gimlet-attn132": {"DECODE_TARGET_BLOCKS": 132},  # half the split's blocks
    "gimlet-no-split": {"GEMV_SPLIT": False},  # fc2 and proj a warp a column
    "gimlet-no-ahead": {"L2_AHEAD": False},  # no kernel prefetches the next one's weights
    "gimlet-no-fold-norm": {"FOLD_NORM": False},  # qkv and fc normalize x in each warp
    # the KV cache copied into the arena each call, the logits out of it (program.py)
    "gimlet-copy": {"BIND_IN_PLACE": False},
}
RUNTIME_SWITCHES = {"BIND_IN_PLACE"}  # set on backends/nvidia/program.py, not switches.py


def gimlet_fn(
    module: torch.nn.Module, args: tuple[Any, ...], switches: dict[str, Any] | None = None
) -> tuple[Any, float, dict[str, Any]]:
    """Compile with gimlet's NVIDIA backend in this process; (callable, seconds, info)."""
    import copy

    from gimlet import compile as gcompile
    from gimlet.backends.gpu import switches as codegen_switches
    from gimlet.backends.gpu.lower import lower
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction
    from gimlet.ir import main_func

    t0 = time.perf_counter()
    compiled = gcompile(copy.deepcopy(module).cpu(), tuple(a.cpu() for a in args))
    fn = main_func(compiled.module)
    t1 = time.perf_counter()
    from gimlet.backends.nvidia import program

    switched = [
        (program if k in RUNTIME_SWITCHES else codegen_switches, k, v)
        for k, v in (switches or {}).items()
    ]
    saved = [(m, k, getattr(m, k)) for m, k, _ in switched]
    try:
        for m, k, v in switched:
            setattr(m, k, v)
        low = lower(fn)
        t2 = time.perf_counter()
        lib, _ = build_segment(low.source)
        seconds = time.perf_counter() - t0
        f = CudaFunction(fn, lib, compiled.weights, lowered=low)
        bucket = f.bucket(tuple(tuple(a.shape) for a in args))  # its in-place table now
    finally:
        for m, k, v in saved:
            setattr(m, k, v)
    phases = {"export_passes_s": t1 - t0, "lower_s": t2 - t1, "nvcc_s": t0 + seconds - t2}
    info = {
        "kernels": low.source.count("<<<") + low.source.count("gml::launch_pdl("),
        "gemm_calls": low.source.count("ctx->gemm(") + low.source.count("ctx->gemm_epilogue("),
        "plan_bytes": bucket.plan_bytes,
        "weight_bytes": f.weight_bytes(),
        **phases,
    }
    return (lambda *xs: f(*xs)), seconds, info


def measure(
    name: str, module: torch.nn.Module, args: tuple[Any, ...], iters: int
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    with torch.no_grad():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ref = first_output(module(*args))
        torch.cuda.synchronize()
        eager_peak = torch.cuda.max_memory_allocated() - base
        rows["torch eager"] = {
            **timed(module, args, iters),
            "compile_s": 0.0,
            "peak_bytes": eager_peak,
        }
        for mode in ("default", "reduce-overhead"):
            torch._dynamo.reset()
            c = torch.compile(module, mode=None if mode == "default" else mode)
            t0 = time.perf_counter()
            out = first_output(c(*args)).clone()  # reduce-overhead reuses its output buffers
            c(*args)
            torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            rows[f"torch.compile {mode}"] = {
                **timed(c, args, iters),
                "compile_s": secs,
                "max_abs_err": float((out.float() - ref.float()).abs().max()),
            }
        torch._dynamo.reset()
        for variant, switches in VARIANTS.items():
            g, secs, info = gimlet_fn(module, args, switches)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            out = first_output(g(*args))
            torch.cuda.synchronize()
            rows[variant] = {
                **timed(g, args, iters),
                "compile_s": secs,
                "max_abs_err": float((out.float() - ref.float()).abs().max()),
                "peak_bytes_after_load": torch.cuda.max_memory_allocated() - base,
                **info,
            }
            del g
    for r in rows.values():
        r["median_ms"] = statistics.median(r["ms"])
        r["min_ms"] = min(r["ms"])
        r["host_us"] = statistics.median(r["host_us"])
        del r["ms"]
    print(
        f"{name} (median ms, host us):",
        {k: (round(v["median_ms"], 4), round(v["host_us"], 1)) for k, v in rows.items()},
        flush=True,
    )
    return rows


def profile(name: str, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
    """gimlet's kernels one by one (graphs off, so the profiler sees each launch), for the
    first variant asked for (the defaults unless --variant says), then torch.compile's
    (default mode: reduce-overhead runs these in a graph) to set beside them."""
    os.environ["GIMLET_CUDA_GRAPHS"] = "0"
    g, _, _ = gimlet_fn(module, args, list(VARIANTS.values())[0])
    print_kernels(f"{name}: gimlet (graphs off)", g, args)
    torch._dynamo.reset()
    print_kernels(f"{name}: torch.compile (default)", torch.compile(module), args)


def timelines(name: str, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
    """What the GPU does in one call, CUDA graphs on (results_io.timeline): each gimlet
    variant asked for, then torch.compile reduce-overhead; saved as gpu_STEM_timeline."""
    rows: dict[str, Any] = {}
    for variant, switches in VARIANTS.items():
        g, _, _ = gimlet_fn(module, args, switches)
        rows[variant] = timeline(f"{name}: {variant}", g, args)
        del g
    torch._dynamo.reset()
    ro = torch.compile(module, mode="reduce-overhead")
    rows["torch.compile reduce-overhead"] = timeline(f"{name}: reduce-overhead", ro, args)
    lines = [
        f"# {name}: the GPU's side of one call (CUDA graphs on, torch.profiler trace)",
        "",
        f"Command: `python benchmarks/gpu_gpt2.py {' '.join(sys.argv[1:])}`; median of 20 calls.",
        "",
        "| runner | kernels+copies | GPU span us | busy us | sum of durations us | started early |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for runner, r in rows.items():
        lines.append(
            f"| {runner} | {r['events_per_call']} | {r['span_us']:.1f} | {r['busy_us']:.1f} | "
            f"{r['sum_us']:.1f} | {r['started_early']} |"
        )
    save(f"gpu_{name}_timeline", rows, "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--only", choices=["decode", "prefill"], help="one case")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="each kernel's GPU time (torch.profiler): gimlet's, then torch.compile's",
    )
    ap.add_argument(
        "--timeline",
        action="store_true",
        help="what the GPU does in one call, graphs on: span, busy time, overlap",
    )
    ap.add_argument(
        "--variant",
        action="append",
        choices=list(VARIANTS),
        help="gimlet's variants to run (repeatable; default all)",
    )
    args = ap.parse_args()
    for v in set(VARIANTS) - set(args.variant or VARIANTS):
        del VARIANTS[v]
    iters = 50 if args.quick else 200
    dev = torch.device("cuda")
    gpt = gpt2_small(dev)
    cases: dict[str, Any] = {}
    if args.only in (None, "decode"):
        step = decode_inputs(dev)
        if args.profile:
            return profile("decode", Decode(gpt).eval(), step)
        if args.timeline:
            return timelines("decode", Decode(gpt).eval(), step)
        cases["decode"] = measure("decode", Decode(gpt).eval(), step, iters)
    if args.only in (None, "prefill"):
        ids = torch.randint(0, 50257, (1, CTX), device=dev)
        if args.profile:
            return profile("prefill", gpt, (ids,))
        if args.timeline:
            return timelines("prefill", gpt, (ids,))
        cases["prefill"] = measure("prefill", gpt, (ids,), iters)
    meta = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join(["python benchmarks/gpu_gpt2.py", *sys.argv[1:]]),
        "iters": iters,
    }
    write(cases, meta)


def write(cases: dict[str, Any], meta: dict[str, Any]) -> None:
    lines = [
        "# GPT-2 small on one GPU: gimlet vs torch (fp16, batch 1)",
        "",
        f"Machine: {meta['gpu']}, torch {meta['torch']}, Python {meta['python']}. "
        f"Command: `{meta['command']}` ({meta['iters']} timed calls each, median; CUDA events).",
        "",
        "| case | runner | median ms | min ms | vs reduce-overhead | host us a call | compile s | max abs err vs eager |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case, rows in cases.items():
        ro = rows["torch.compile reduce-overhead"]["median_ms"]
        for runner, r in rows.items():
            err = r.get("max_abs_err")
            lines.append(
                f"| {case} | {runner} | {r['median_ms']:.4f} | {r['min_ms']:.4f} | "
                f"{r['median_ms'] / ro:.2f}x | {r.get('host_us', float('nan')):.1f} | {r['compile_s']:.1f} | "
                f"{'' if err is None else f'{err:.2e}'} |"
            )
    lines += [
        "",
        "Memory (torch's allocator; gimlet: weights + arena, counted from before its first call):",
        "",
    ]
    for case, rows in cases.items():
        for variant in VARIANTS:
            g = rows[variant]
            lines.append(
                f"- {case}, {variant}: torch eager peak {rows['torch eager']['peak_bytes'] / 2**20:.1f} MiB of activations; "
                f"weights {g['weight_bytes'] / 2**20:.1f} MiB, memory plan (arena) {g['plan_bytes'] / 2**20:.2f} MiB, "
                f"{g['kernels']} kernel launches + {g['gemm_calls']} GEMM calls in the program; "
                f"compile {g['export_passes_s']:.1f} s export + passes (the export cache is warm "
                f"after the first variant), {g['lower_s']:.2f} s lowering, {g['nvcc_s']:.1f} s nvcc."
            )
    text = "\n".join(lines) + "\n"
    save("gpu_gpt2", {"meta": meta, "cases": cases}, text)
    print(text)


if __name__ == "__main__":
    main()
