"""CPU backend vs torch eager vs onnxruntime, f32, batch 1, same process, same cores.

Models: an MLP, a small CNN and a GPT-2-style decoder stack (`examples/gpt.py`, d=256,
4 layers) for prefill (T=128) and one-token decode (T=1, no KV cache: a forward pass
over one token). Each runtime gets the same thread count (all cores the process may
use); each case is warmed up, then the runtimes take turns in ROUNDS rounds of short
timing windows, and each reports the best of its per-round medians: on a noisy shared
machine a burst of load then hits all three alike instead of whichever ran during it.
The CPU backend is built at -O3 -march=native. Outputs are also checked against torch.

Writes benchmarks/results/cpu_backend.{json,md}. onnxruntime is optional (`pip install
onnxruntime`); without it its column reads "n/a".
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from gpt import GPT  # noqa: E402

from gimlet.backends.cpu import compile_module  # noqa: E402
from gimlet.frontend import import_model  # noqa: E402
from gimlet.pass_manager import DEFAULT_PIPELINE, run_pipeline  # noqa: E402

THREADS = len(os.sched_getaffinity(0))
ROUNDS = 5


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(512, 2048),
            nn.GELU(),
            nn.Linear(2048, 2048),
            nn.GELU(),
            nn.Linear(2048, 512),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def cases() -> list[tuple[str, nn.Module, tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    gpt = GPT(vocab=512, ctx=128, d=256, heads=4, layers=4)
    return [
        ("mlp 512-2048-2048-512", MLP(), (torch.randn(1, 512),)),
        ("cnn 3x64x64, 3 conv", SmallCNN(), (torch.randn(1, 3, 64, 64),)),
        ("gpt d256 L4 prefill T=128", gpt, (torch.randint(0, 512, (1, 128)),)),
        ("gpt d256 L4 decode T=1", gpt, (torch.randint(0, 512, (1, 1)),)),
    ]


def timeit(fn: Any, min_time: float = 1.0, warmup: int = 3) -> float:
    """Median latency of `fn` over at least `min_time` seconds and 10 calls."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 10:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return median(times)


def compare(fns: dict[str, Any], total: float = 1.5) -> dict[str, float]:
    """Each runtime's best per-round median, the runtimes taking turns round by round."""
    best = {name: float("inf") for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            best[name] = min(best[name], timeit(fn, min_time=total / ROUNDS, warmup=2))
    return best


def onnx_session(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    torch.onnx.export(model, inputs, str(path), dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    torch.set_num_threads(THREADS)
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    rows = []
    for name, model, inputs in cases():
        model.eval()
        with torch.no_grad():
            expected = model(*inputs).numpy()
        module, weights = import_model(model, inputs)
        run_pipeline(module, DEFAULT_PIPELINE)
        t0 = time.perf_counter()
        lib = compile_module(module, opt="-O3")
        compile_s = time.perf_counter() - t0
        np_inputs = [x.numpy() for x in inputs]
        (got,) = lib(np_inputs, weights)
        err = float(np.max(np.abs(got - expected)))
        sess = onnx_session(model, inputs)

        def run_torch(model: nn.Module = model, inputs: Any = inputs) -> None:
            with torch.no_grad():
                model(*inputs)

        fns = {"torch": run_torch, "cpu": lambda: lib(np_inputs, weights)}  # noqa: B023
        if sess is not None:
            feed = {i.name: x for i, x in zip(sess.get_inputs(), np_inputs, strict=True)}
            fns["ort"] = lambda: sess.run(None, feed)  # noqa: B023
        times = compare(fns)
        t_torch, t_cpu, t_ort = times["torch"], times["cpu"], times.get("ort")
        row = {
            "case": name,
            "gimlet_cpu_ms": t_cpu * 1e3,
            "torch_eager_ms": t_torch * 1e3,
            "onnxruntime_ms": t_ort * 1e3 if t_ort else None,
            "speedup_vs_torch": t_torch / t_cpu,
            "ratio_vs_ort": t_cpu / t_ort if t_ort else None,
            "max_abs_err_vs_torch": err,
            "compile_s": compile_s,
            "cache_hit": lib.cache_hit,
        }
        rows.append(row)
        print(
            f"{name:28s} gimlet {row['gimlet_cpu_ms']:8.3f} ms  torch {row['torch_eager_ms']:8.3f} ms"
            f"  ort {row['onnxruntime_ms'] or float('nan'):8.3f} ms  "
            f"x{row['speedup_vs_torch']:.2f} vs torch  "
            f"{row['ratio_vs_ort'] or float('nan'):.2f}x of ort  err {err:.1e}",
            flush=True,
        )
    from gimlet.backends.cpu.build import native_flags

    meta = {
        "threads": THREADS,
        "rounds": ROUNDS,
        "flags": lib.flags,
        "native_flags": native_flags(),  # BLAS package, oneDNN (-DGML_DNNL) if used
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "scipy-openblas64": _version("scipy-openblas64"),
        "load_average_at_end": os.getloadavg(),
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_backend.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# CPU backend benchmark",
        "",
        f"{THREADS} threads for every runtime, f32, batch 1; latency is each runtime's best "
        f"median over {ROUNDS} interleaved rounds. "
        f"Load average at the end: {meta['load_average_at_end'][0]:.1f} (shared machine).",
        "",
        "| case | gimlet cpu (ms) | torch eager (ms) | onnxruntime (ms) | vs torch | vs ort |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ort_ms = f"{r['onnxruntime_ms']:.3f}" if r["onnxruntime_ms"] else "n/a"
        ratio = f"{r['ratio_vs_ort']:.2f}x" if r["ratio_vs_ort"] else "n/a"
        lines.append(
            f"| {r['case']} | {r['gimlet_cpu_ms']:.3f} | {r['torch_eager_ms']:.3f} | {ort_ms} | "
            f"{r['speedup_vs_torch']:.2f}x faster | {ratio} |"
        )
    dnnl = "oneDNN" if "-DGML_DNNL" in meta["native_flags"] else "im2col + OpenBLAS"
    lines += [
        "",
        "`vs ort` is gimlet time / onnxruntime time (the goal: at most 1.05x); convolutions: "
        f"{dnnl}; GEMMs: OpenBLAS (scipy-openblas64 {meta['scipy-openblas64']}); "
        f"onnxruntime {meta['onnxruntime']}, torch {meta['torch']}.",
    ]
    (out / "cpu_backend.md").write_text("\n".join(lines) + "\n")


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
