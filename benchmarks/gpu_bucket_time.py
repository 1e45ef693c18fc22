"""The host's share of a new shape bucket on the GPU backend: what the first call with new
input shapes costs before its graph is captured (shapes, memory plan, the parameter table
and the in-place table, `Lowered.bucket`), for GPT-2 small's decode over a 512-token cache
and its prefill of 512 tokens, fp16, batch 1. No GPU needed: this is host Python, once per
bucket (a decode loop with a growing cache makes one per length). Median of `--iters`
fresh lowerings' first buckets (a bucket is cached per lowering).

python benchmarks/gpu_bucket_time.py  ->  benchmarks/results/gpu_bucket_time.{md,json}
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

from results_io import machine_info, save  # noqa: E402


def cases() -> dict[str, tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]:
    from gpt import GPT
    from gpt_phases import Decode

    torch.manual_seed(0)
    gpt = GPT(vocab=50257, ctx=1024, d=768, heads=12, layers=12).eval().half()
    cache = torch.randn(12, 1, 12, 512, 64).half()
    return {
        "decode, 512-token cache": (
            Decode(gpt).eval(),
            (torch.randint(0, 50257, (1, 1)), cache, cache),
        ),
        "prefill, 512 tokens": (gpt, (torch.randint(0, 50257, (1, 512)),)),
    }


def measure(module: torch.nn.Module, args: tuple[torch.Tensor, ...], iters: int) -> dict[str, Any]:
    from gimlet.backends.gpu.lower import lower
    from gimlet.frontend import import_model
    from gimlet.ir import main_func
    from gimlet.pass_manager import DEFAULT_PIPELINE, run_pipeline

    imported, _ = import_model(module, args, None)
    run_pipeline(imported, DEFAULT_PIPELINE)
    fn = main_func(imported)
    shapes = [tuple(a.shape) for a in args]
    lowering, bucket = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        low = lower(fn)
        t1 = time.perf_counter()
        b = low.bucket(shapes)
        bucket.append((time.perf_counter() - t1) * 1e3)
        lowering.append((t1 - t0) * 1e3)
    return {
        "lower_ms": statistics.median(lowering),
        "bucket_ms": statistics.median(bucket),
        "bucket_min_ms": min(bucket),
        "slots": len(b.params),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=7)
    args = ap.parse_args()
    rows = {}
    for name, (module, inputs) in cases().items():
        print(f"[bucket] {name} ...", flush=True)
        rows[name] = measure(module, inputs, args.iters)
        print(f"[bucket] {name}: {rows[name]}", flush=True)
    meta = {"command": " ".join(["python benchmarks/gpu_bucket_time.py", *sys.argv[1:]]),
            "machine": machine_info()}  # fmt: skip
    lines = [
        "# A new shape bucket's host cost on the GPU backend",
        "",
        f"Command: `{meta['command']}`. Machine: {meta['machine'].get('cpu', '')} "
        f"({meta['machine']['nproc']} CPUs, load average {meta['machine']['loadavg_start']:.1f} at the start). GPT-2 small, fp16, batch 1; median "
        f"of {args.iters} fresh lowerings' first bucket (`Lowered.bucket`: shapes, memory "
        "plan, parameter table, in-place table).",
        "",
        "| case | slots | lowering ms | bucket ms (median) | bucket ms (min) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['slots']} | {r['lower_ms']:.1f} | {r['bucket_ms']:.1f} | "
            f"{r['bucket_min_ms']:.1f} |"
        )
    save("gpu_bucket_time", {"rows": rows, "meta": meta}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
