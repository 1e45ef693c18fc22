"""gimlet's ONNX (the TensorRT backend's lowering) vs torch.onnx.export(dynamo=True) of the
same model: node count, and onnxruntime's CPU latency for both, in the same run.

Models: every family of tests/models.py (the shapes the tests use) and a larger GPT
(`examples/gpt.py`, d=256, 4 layers, T=128) where compute, not per-node overhead, is the
time. gimlet's model is the whole program lowered after the default pipeline, i.e. one
NVIDIA segment holding everything; torch's is its exporter's output (opset 20, its own
optimizer on), with the family's dynamic dims. Both run on onnxruntime's CPU provider
with the same session options (all graph optimizations, 1 intra-op thread: this machine
is a shared 2-core box), on the same inputs, and must agree (rtol 1e-3). Timing: each
case is warmed up, then in each of ROUNDS rounds the two alternate single runs for a short
window and each keeps its fastest run (the one no burst of load hit); a latency is the
median over rounds of those, and gimlet / torch the median of the per-round ratios.

Needs onnxscript (the `bench` extra) for the dynamo exporter. Writes
benchmarks/results/tensorrt_onnx.{json,md}.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples"))

from gpt import GPT  # noqa: E402

from gimlet.backends.tensorrt.lower import OPSET, lower, verify  # noqa: E402
from gimlet.dtypes import torch_to_numpy  # noqa: E402
from gimlet.frontend import import_model  # noqa: E402
from gimlet.ir import main_func  # noqa: E402
from gimlet.pass_manager import DEFAULT_PIPELINE, run_pipeline  # noqa: E402
from models import FAMILIES  # noqa: E402

ROUNDS = 15
WINDOW_S = 0.2


def _big_gpt() -> Any:
    seq = torch.export.Dim("seq", min=2, max=256)
    model = GPT(vocab=512, ctx=256, d=256, heads=4, layers=4)
    return model, (torch.randint(0, 512, (1, 128)),), ({1: seq},)


CASES = {**FAMILIES, "gpt d256 L4 T=128": _big_gpt}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _round(a: Any, b: Any, window_s: float) -> tuple[float, float]:
    """One round: single runs of the two models, alternating, for about `window_s`; each
    model's fastest run of the round (the run a burst of load did not hit)."""
    ta, tb = [], []
    end = time.perf_counter() + window_s
    while time.perf_counter() < end or len(ta) < 3:
        for f, out in ((a, ta), (b, tb)):
            t = time.perf_counter()
            f()
            out.append(time.perf_counter() - t)
    return min(ta), min(tb)


def _torch_onnx(model: torch.nn.Module, inputs: tuple[Any, ...], dyn: Any) -> onnx.ModelProto:
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, inputs, dynamo=True, dynamic_shapes=dyn, verbose=False)
    assert program is not None
    return program.model_proto


def measure(name: str) -> dict[str, Any]:
    torch.manual_seed(0)
    model, inputs, dyn = CASES[name]()
    model.eval()
    module, weights = import_model(model, inputs, dyn)
    run_pipeline(module, DEFAULT_PIPELINE)
    part = lower(main_func(module), weights)
    verify(part)
    theirs = _torch_onnx(model, inputs, dyn)
    arrays = [torch_to_numpy(x) for x in inputs]
    ours_sess, theirs_sess = _session(part.model), _session(theirs)
    ours_feed = {p.name: x for p, x in zip(part.inputs, arrays, strict=True)}
    theirs_feed = {i.name: x for i, x in zip(theirs_sess.get_inputs(), arrays, strict=True)}
    a, b = ours_sess.run(None, ours_feed), theirs_sess.run(None, theirs_feed)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4, err_msg=name)
    for _ in range(20):  # warm-up
        ours_sess.run(None, ours_feed)
        theirs_sess.run(None, theirs_feed)
    rounds = [
        _round(
            lambda: ours_sess.run(None, ours_feed),
            lambda: theirs_sess.run(None, theirs_feed),
            WINDOW_S,
        )
        for _ in range(ROUNDS)
    ]
    ours_t = median(r[0] for r in rounds)
    theirs_t = median(r[1] for r in rounds)
    return {
        "case": name,
        "nodes_gimlet": len(part.model.graph.node),
        "nodes_torch": len(theirs.graph.node),
        "opset_gimlet": OPSET,
        "opset_torch": next(o.version for o in theirs.opset_import if o.domain in ("", "ai.onnx")),
        "ms_gimlet": ours_t * 1e3,
        "ms_torch": theirs_t * 1e3,
        # per round, both timed in the same window: the median of their ratios
        "ratio": median(a / b for a, b in rounds),
    }


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# gimlet's ONNX vs torch.onnx.export (dynamo)",
        "",
        f"onnxruntime {meta['onnxruntime']} (CPU, 1 thread, all graph optimizations), torch "
        f"{meta['torch']}, onnxscript {meta['onnxscript']}. Latency: the median over {ROUNDS} "
        "rounds of each model's fastest run in the round (the two alternate run by run); "
        "gimlet / torch: the median of the per-round ratios. Load average at the end: "
        f"{meta['load']:.1f} "
        "(shared machine). Generated by `benchmarks/tensorrt_onnx.py`.",
        "",
        "| case | nodes gimlet | nodes torch | gimlet (ms) | torch (ms) | gimlet / torch |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['nodes_gimlet']} | {r['nodes_torch']} | {r['ms_gimlet']:.4f} | "
            f"{r['ms_torch']:.4f} | {r['ratio']:.2f}x |"
        )
    slower = [r["case"] for r in rows if r["ratio"] > 1.05]
    lines += [
        "",
        "gimlet / torch above 1 means gimlet's model is slower; the goal is no case above "
        "1.05x (timing noise on this machine). "
        + (f"Above it: {', '.join(slower)}." if slower else "No case is above it."),
        "",
        "Where the node counts differ: gimlet folds what is computed from weights alone at "
        "compile time (transposed weights, a conv's batch norm, a causal mask of static size, "
        "a mask that hides no row needs no safe-softmax guard), runs a linear layer on "
        "[B, T, D] as MatMul without the flatten/unflatten Reshapes of its ATen form when "
        "that saves nodes, and a 2-d one as Gemm; torch's exporter scales q and k separately and guards "
        "every masked softmax with IsNaN/Where. Both use opset 20 (one Gelu node).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    import onnxscript

    rows = []
    for name in CASES:
        row = measure(name)
        print(
            f"{name:20s} nodes {row['nodes_gimlet']:4d} vs {row['nodes_torch']:4d}  "
            f"{row['ms_gimlet']:.4f} ms vs {row['ms_torch']:.4f} ms ({row['ratio']:.2f}x)",
            flush=True,
        )
        rows.append(row)
    meta = {
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "onnxscript": onnxscript.__version__,
        "onnx": onnx.__version__,
        "cpu": platform.processor() or platform.machine(),
        "load": os.getloadavg()[0],
        "rounds": ROUNDS,
        "threads": 1,
    }
    out = ROOT / "benchmarks" / "results"
    (out / "tensorrt_onnx.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    (out / "tensorrt_onnx.md").write_text(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
