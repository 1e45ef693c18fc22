"""Calibrate the roofline cost model (compiler/placement/cost.py) against a real H100.

Two halves, because the GPU machine has torch but neither xdsl nor lark:

* `--measure` runs there, in plain torch (no gimlet import): every case in CASES and HOLDOUT
  is timed with CUDA events, twice (two passes over the whole list, to show run-to-run noise), and written to
  a JSON file. Each case is timed two ways:
  - `graph_s`: N back-to-back calls captured in one CUDA graph and replayed, time / N. This is
    the device time of the op with almost no host overhead: what a compiled runtime achieves,
    and what the cost model predicts.
  - `eager_s`: the same N calls issued from Python (torch eager), time / N; for small ops this
    is bounded by host dispatch, not the GPU, and is reported for reference only.
  Inputs rotate over enough independent copies (>= 160 MB together, the L2 is 50 MB) that a
  repeat does not find its operands in cache, and are random (zeros run faster, METHOD.md).
* default mode runs here: each case becomes the equivalent single gml op, cost.op_time predicts
  it on PRESETS["h100"] (raw datasheet roofline, then with the calibrated factors of
  compiler/placement/cost.py), and the per-case and median/worst relative errors |pred-meas|/meas are
  written to benchmarks/results/h100_calibration.{json,md}, for the CASES, the HOLDOUT cases
  and both. `derive_calibration` recomputes cost.py's constants from the CASES alone.

Run on the GPU:  python3 benchmarks/calibrate_h100.py --measure --out $OUT/h100_measurements.json
Then here:       python benchmarks/calibrate_h100.py [--measurements tests/data/h100_measurements.json]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MEASUREMENTS = ROOT / "tests" / "data" / "h100_measurements.json"
RESULTS = ROOT / "benchmarks" / "results"

Case = dict[str, Any]


# ------------------------------------------------------------------ cases ---


def _mm(m: int, k: int, n: int, dt: str, batch: int = 0) -> Case:
    b = f"{batch}x" if batch else ""
    return {"name": f"matmul {b}{m}x{k}x{n} {dt}", "op": "matmul", "dtype": dt,
            "batch": batch, "m": m, "k": k, "n": n}  # fmt: skip


def _sdpa(b: int, h: int, lq: int, s: int, e: int, causal: bool, dt: str) -> Case:
    c = " causal" if causal else ""
    return {"name": f"sdpa B{b} H{h} L{lq} S{s} E{e}{c} {dt}", "op": "sdpa", "dtype": dt,
            "b": b, "h": h, "l": lq, "s": s, "e": e, "causal": causal}  # fmt: skip


def _ln(rows: int, d: int, dt: str) -> Case:
    return {"name": f"layer_norm {rows}x{d} {dt}", "op": "layer_norm", "dtype": dt,
            "rows": rows, "d": d}  # fmt: skip


def _ew(kind: str, n: int, dt: str) -> Case:
    return {"name": f"{kind} {n // 2**20}M {dt}", "op": kind, "dtype": dt, "n": n}


def _softmax(shape: list[int], dt: str) -> Case:
    return {"name": f"softmax {'x'.join(map(str, shape))} {dt}", "op": "softmax", "dtype": dt,
            "shape": shape}  # fmt: skip


def _emb(vocab: int, d: int, n: int, dt: str) -> Case:
    return {"name": f"embedding {vocab}x{d}[{n}] {dt}", "op": "embedding", "dtype": dt,
            "vocab": vocab, "d": d, "n": n}  # fmt: skip


def _conv(n: int, c: int, hw: int, co: int, k: int, stride: int, pad: int, dt: str) -> Case:
    return {"name": f"conv {n}x{c}x{hw}x{hw} -> {co} k{k} s{stride} {dt}", "op": "conv",
            "dtype": dt, "n": n, "c": c, "hw": hw, "co": co, "kernel": k, "stride": stride,
            "pad": pad}  # fmt: skip


def _pool(n: int, c: int, hw: int, k: int, stride: int, pad: int, dt: str) -> Case:
    return {"name": f"max_pool2d {n}x{c}x{hw}x{hw} k{k} s{stride} {dt}", "op": "max_pool2d",
            "dtype": dt, "n": n, "c": c, "hw": hw, "kernel": k, "stride": stride,
            "pad": pad}  # fmt: skip


def _2d(op: str, r: int, c: int, dt: str) -> Case:
    """permute (transpose copy) or sum over the last dim of an r x c matrix."""
    return {"name": f"{op} {r}x{c} {dt}", "op": op, "dtype": dt, "r": r, "c": c}


def _cast(n: int, dt: str, to: str) -> Case:
    return {"name": f"cast {n // 2**20}M {dt}->{to}", "op": "cast", "dtype": dt, "to": to, "n": n}


M = 2**20
CASES: list[Case] = [
    *[_mm(8192, 8192, 8192, dt) for dt in ("bf16", "f16", "f32")],
    *[_mm(4096, 4096, 4096, dt) for dt in ("bf16", "f16", "f32")],
    *[_mm(1, 4096, 4096, dt) for dt in ("bf16", "f16", "f32")],  # decode GEMV
    *[_mm(8, 4096, 4096, dt) for dt in ("bf16", "f16")],
    *[_mm(128, 768, 3072, dt) for dt in ("bf16", "f16", "f32")],
    *[_mm(512, 768, 768, dt) for dt in ("bf16", "f16", "f32")],
    *[_mm(512, 768, 3072, dt) for dt in ("bf16", "f32")],
    _mm(2048, 4096, 11008, "bf16"),
    *[_mm(512, 64, 512, dt, batch=12) for dt in ("bf16", "f16", "f32")],  # q @ k^T
    _mm(512, 512, 64, "bf16", batch=12),  # p @ v
    *[_sdpa(1, 12, 512, 512, 64, True, dt) for dt in ("bf16", "f16")],
    _sdpa(1, 12, 512, 512, 64, False, "bf16"),
    *[_sdpa(1, 12, 2048, 2048, 64, True, dt) for dt in ("bf16", "f16")],
    *[_sdpa(1, 12, 1, 2048, 64, False, dt) for dt in ("bf16", "f16")],  # decode
    _sdpa(4, 32, 4096, 4096, 128, True, "bf16"),
    *[_ln(512, 768, dt) for dt in ("f32", "bf16")],
    *[_ln(8192, 4096, dt) for dt in ("f32", "bf16")],
    *[
        _ew(op, n, dt)
        for op in ("add", "mul", "gelu")
        for n in (M, 64 * M)
        for dt in ("f32", "bf16")
    ],
    *[_softmax([12, 512, 512], dt) for dt in ("f32", "bf16")],
    _softmax([8192, 4096], "bf16"),
    _emb(50257, 768, 512, "f32"),
    _emb(32000, 4096, 8192, "bf16"),
    *[_conv(32, 64, 56, 64, 3, 1, 1, dt) for dt in ("f16", "f32")],
    _conv(1, 3, 224, 64, 7, 2, 3, "f32"),
    _cast(64 * M, "f32", "bf16"),
    _2d("permute", 8192, 8192, "f32"),
    _2d("sum", 8192, 4096, "f32"),
    _pool(32, 64, 112, 3, 2, 1, "f16"),
]
# Held out: measured in the same run but never used to derive the calibrated constants, so
# their error says how well the calibration carries over to shapes it was not fitted on.
HOLDOUT: list[Case] = [
    _mm(1024, 1024, 1024, "bf16"),
    _mm(256, 4096, 4096, "bf16"),
    _mm(4096, 768, 3072, "f16"),
    _mm(2048, 2048, 2048, "f32"),
    _mm(1, 768, 50257, "f32"),  # GPT-2 LM head, decode
    _mm(1024, 64, 1024, "bf16", batch=16),
    _sdpa(8, 16, 1024, 1024, 64, True, "bf16"),
    _sdpa(2, 16, 4096, 4096, 128, False, "bf16"),
    _sdpa(1, 32, 1, 4096, 128, False, "f16"),
    _ln(2048, 1024, "bf16"),
    _ln(4096, 768, "f32"),
    _ew("add", 4 * M, "f32"),
    _ew("mul", 16 * M, "bf16"),
    _ew("gelu", 16 * M, "f16"),
    _softmax([32, 1024, 1024], "f16"),
    _emb(50257, 768, 2048, "f32"),
    _conv(8, 128, 28, 128, 3, 1, 1, "f16"),
    _cast(16 * M, "bf16", "f32"),
    _2d("permute", 4096, 4096, "bf16"),
    _2d("sum", 4096, 4096, "bf16"),
    _pool(8, 64, 56, 3, 2, 1, "f32"),
]
for _case in HOLDOUT:
    _case["holdout"] = True


def conv_out(hw: int, k: int, stride: int, pad: int) -> int:
    return (hw + 2 * pad - k) // stride + 1


# -------------------------------------------------------- measure (GPU) ---

L2_FLUSH_BYTES = 160e6  # rotate inputs over at least this much memory (H100 L2: 50 MB)
MAX_SETS = 64
TARGET_S = 2e-3  # each timed repeat covers about this much device time
MAX_CALLS = 200
REPEATS = 15


def _builder(case: Case, dev: str) -> tuple[Callable[..., Any], Callable[[], tuple[Any, ...]]]:
    """(call, make_inputs): `call(*make_inputs())` runs the case's op once."""
    import torch
    import torch.nn.functional as F

    dts = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
    dt = dts[case["dtype"]]

    def rnd(*shape: int) -> Any:
        return torch.randn(*shape, device=dev, dtype=dt)

    op = case["op"]
    if op == "matmul":
        b = (case["batch"],) if case["batch"] else ()
        return torch.matmul, lambda: (rnd(*b, case["m"], case["k"]), rnd(*b, case["k"], case["n"]))
    if op == "sdpa":
        q = (case["b"], case["h"], case["l"], case["e"])
        kv = (case["b"], case["h"], case["s"], case["e"])

        def sdpa(q: Any, k: Any, v: Any) -> Any:
            return F.scaled_dot_product_attention(q, k, v, is_causal=case["causal"])

        return sdpa, lambda: (rnd(*q), rnd(*kv), rnd(*kv))
    if op == "layer_norm":
        d = case["d"]

        def ln(x: Any, w: Any, bias: Any) -> Any:
            return F.layer_norm(x, (d,), w, bias)

        return ln, lambda: (rnd(case["rows"], d), rnd(d), rnd(d))
    if op in ("add", "mul"):
        fn = torch.add if op == "add" else torch.mul
        return fn, lambda: (rnd(case["n"]), rnd(case["n"]))
    if op == "gelu":
        return F.gelu, lambda: (rnd(case["n"]),)
    if op == "softmax":
        return (lambda x: torch.softmax(x, -1)), lambda: (rnd(*case["shape"]),)
    if op == "embedding":
        table = rnd(case["vocab"], case["d"])

        def emb(idx: Any) -> Any:
            return F.embedding(idx, table)

        return emb, lambda: (torch.randint(0, case["vocab"], (case["n"],), device=dev),)
    if op == "conv":
        s, p = case["stride"], case["pad"]

        def conv(x: Any, w: Any) -> Any:
            return F.conv2d(x, w, None, s, p)

        k = case["kernel"]
        return conv, lambda: (
            rnd(case["n"], case["c"], case["hw"], case["hw"]),
            rnd(case["co"], case["c"], k, k),
        )
    if op == "cast":
        to = dts[case["to"]]
        return (lambda x: x.to(to)), lambda: (rnd(case["n"]),)
    if op == "permute":
        return (lambda x: x.t().contiguous()), lambda: (rnd(case["r"], case["c"]),)
    if op == "sum":
        return (lambda x: x.sum(-1)), lambda: (rnd(case["r"], case["c"]),)
    if op == "max_pool2d":
        k, s, p = case["kernel"], case["stride"], case["pad"]
        return (lambda x: F.max_pool2d(x, k, s, p)), lambda: (
            rnd(case["n"], case["c"], case["hw"], case["hw"]),
        )
    raise ValueError(f"unknown op {op}")


def _timed(fn: Callable[[], object], events: Any, repeats: int, sync: Callable[[], None]) -> float:
    """Median seconds of `fn` over `repeats`, bracketed by device events."""
    samples = []
    for _ in range(repeats):
        if events is None:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            samples.append(time.perf_counter() - t0)
        else:
            start, end = events()
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1e-3)
    return statistics.median(samples)


def measure_case(case: Case, dev: str) -> dict[str, Any]:
    import torch

    cuda = dev == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def ev() -> tuple[Any, Any]:
        return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    events = ev if cuda else None
    if cuda:
        torch.cuda.empty_cache()  # the previous case's inputs and graph outputs are gone by now
    call, make = _builder(case, dev)
    first = make()
    out = call(*first)
    set_bytes = sum(t.numel() * t.element_size() for t in (*first, out))
    n_sets = max(1, min(MAX_SETS, math.ceil(L2_FLUSH_BYTES / set_bytes)))
    sets = [first, *(make() for _ in range(n_sets - 1))]
    for s in sets:  # warm up: library handles, heuristics, autotuning
        call(*s)
    sync()
    probe = _timed(lambda: [call(*s) for s in sets[:3]], events, 3, sync) / min(3, n_sets)
    n = max(1, min(MAX_CALLS, math.ceil(TARGET_S / max(probe, 1e-7))))
    n = math.ceil(n / n_sets) * n_sets  # every input set once per pass over them

    def eager() -> None:
        for i in range(n):
            call(*sets[i % n_sets])

    res: dict[str, Any] = {"calls": n, "input_sets": n_sets, "set_bytes": set_bytes}
    res["eager_s"] = _timed(eager, events, REPEATS, sync) / n
    res["graph_s"] = None
    if cuda:
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                eager()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outs = [call(*sets[i % n_sets]) for i in range(n)]
            graph.replay()
            sync()
            res["graph_s"] = _timed(graph.replay, events, REPEATS, sync) / n
            del graph, outs
        except Exception as e:  # some ops refuse capture; keep the eager number
            res["graph_error"] = f"{type(e).__name__}: {e}"[:200]
    return res


def measure(out_path: Path, dev: str, only: str | None, passes: int) -> None:
    import platform

    import torch

    torch.manual_seed(0)
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "method": __doc__.split("* default")[0] if __doc__ else "",
    }
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, sms=p.multi_processor_count, memory=p.total_memory)
    cases = [c for c in CASES + HOLDOUT if only is None or re.search(only, c["name"])]
    runs: dict[str, list[dict[str, Any]]] = {c["name"]: [] for c in cases}
    t0 = time.time()
    for pass_ in range(passes):
        for c in cases:
            r = measure_case(c, dev)
            runs[c["name"]].append(r)
            g = r["graph_s"]
            print(
                f"[{time.time() - t0:6.1f}s] pass {pass_} {c['name']:<42} "
                f"graph {g * 1e6 if g else float('nan'):10.2f} us  "
                f"eager {r['eager_s'] * 1e6:10.2f} us",
                flush=True,
            )
    info["seconds"] = time.time() - t0
    doc = {"info": info, "cases": [{**c, "runs": runs[c["name"]]} for c in cases]}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out_path}")


# ------------------------------------------------------- predict (here) ---


def build_op(case: Case) -> Any:
    """The single gml op equivalent to a measured case (operands are block arguments)."""
    from xdsl.dialects.builtin import BFloat16Type, Float16Type, Float32Type, i64
    from xdsl.ir import Block

    from gimlet.dialects import gml
    from gimlet.dialects.shapes import tensor

    elts = {"f32": Float32Type(), "f16": Float16Type(), "bf16": BFloat16Type()}
    elt = elts[case["dtype"]]

    def args(*shapes: tuple[int, ...], elt: Any = elt) -> list[Any]:
        return list(Block(arg_types=[tensor(s, elt) for s in shapes]).args)

    c, op = case, case["op"]
    if op == "matmul":
        b = (c["batch"],) if c["batch"] else ()
        return gml.MatmulOp(*args((*b, c["m"], c["k"]), (*b, c["k"], c["n"])))
    if op == "sdpa":
        kv = (c["b"], c["h"], c["s"], c["e"])
        q, k, v = args((c["b"], c["h"], c["l"], c["e"]), kv, kv)
        return gml.SdpaOp(q, k, v, None, c["causal"], None)
    if op == "layer_norm":
        x, w, bias = args((c["rows"], c["d"]), (c["d"],), (c["d"],))
        return gml.LayerNormOp(x, w, bias, 1, 1e-5)
    if op in ("add", "mul"):
        return (gml.AddOp if op == "add" else gml.MulOp)(*args((c["n"],), (c["n"],)))
    if op == "gelu":
        return gml.GeluOp(*args((c["n"],)))
    if op == "softmax":
        return gml.SoftmaxOp(*args(tuple(c["shape"])), -1)
    if op == "embedding":
        (table,) = args((c["vocab"], c["d"]))
        (idx,) = args((c["n"],), elt=i64)
        return gml.EmbeddingOp(table, idx)
    if op == "conv":
        k, s, p, hw = c["kernel"], c["stride"], c["pad"], c["hw"]
        x, w = args((c["n"], c["c"], hw, hw), (c["co"], c["c"], k, k))
        o = conv_out(hw, k, s, p)
        out = tensor((c["n"], c["co"], o, o), elt)
        return gml.ConvOp(x, w, None, [s, s], [p, p], [1, 1], 1, out)
    if op == "cast":
        return gml.CastOp(*args((c["n"],)), elts[c["to"]])
    if op == "permute":
        return gml.PermuteOp(*args((c["r"], c["c"])), [1, 0])
    if op == "sum":
        return gml.SumOp(*args((c["r"], c["c"])), [-1], False)
    if op == "max_pool2d":
        k, s, p, hw = c["kernel"], c["stride"], c["pad"], c["hw"]
        o = conv_out(hw, k, s, p)
        (x,) = args((c["n"], c["c"], hw, hw))
        return gml.MaxPool2dOp(
            x, [k, k], [s, s], [p, p], False, tensor((c["n"], c["c"], o, o), elt)
        )
    raise ValueError(f"unknown op {op}")


def measured_seconds(case: Case) -> float:
    """The case's device time: the mean over passes of each pass's median graph replay."""
    return statistics.mean(r["graph_s"] or r["eager_s"] for r in case["runs"])


STREAMING = ("add", "mul", "gelu", "cast")


def derive_calibration(doc: dict[str, Any]) -> dict[str, float]:
    """The constants of compiler/placement/cost.py's calibration, from the non-held-out cases:

    - memory_efficiency: median achieved / datasheet bandwidth of streaming elementwise ops
      moving >= 256 MB (large enough that launch and tail effects vanish);
    - matmul_efficiency, attention_efficiency: median achieved / datasheet FLOP/s of matmul,
      sdpa cases doing >= 100 GFLOP (compute bound);
    - launch_overhead: median, over cases under 20 us, of measured time minus the roofline
      with those efficiencies (the fixed cost of a kernel, whatever its size).
    """
    from gimlet.placement.cost import op_cost
    from gimlet.placement.presets import PRESETS

    h100 = PRESETS["h100"]
    cases = [(c, op_cost(build_op(c)), measured_seconds(c)) for c in doc["cases"]]
    cases = [x for x in cases if not x[0].get("holdout")]

    def efficiency(ops: tuple[str, ...], rate: Callable[[Any, float], float]) -> float:
        return statistics.median(rate(cost, t) for c, cost, t in cases if c["op"] in ops)

    mem = statistics.median(
        cost.bytes / t / h100.mem_bandwidth
        for c, cost, t in cases
        if c["op"] in STREAMING and cost.bytes >= 256e6
    )

    def compute_eff(op: str) -> float:
        return statistics.median(
            cost.flops / t / h100.flops_for(cost.dtype)
            for c, cost, t in cases
            if c["op"] == op and cost.flops >= 1e11
        )

    eff = {"matmul": compute_eff("matmul"), "attention": compute_eff("sdpa")}
    residual = [
        t
        - max(
            cost.flops / (h100.flops_for(cost.dtype) * eff.get(cost.kind, 1.0)),
            cost.bytes / (h100.mem_bandwidth * mem),
        )
        for c, cost, t in cases
        if t < 20e-6
    ]
    return {
        "memory_efficiency": mem,
        "matmul_efficiency": eff["matmul"],
        "attention_efficiency": eff["attention"],
        "launch_overhead": statistics.median(residual),
    }


def rel_err(pred: float, meas: float) -> float:
    return abs(pred - meas) / meas


def evaluate(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per case: measured seconds (both ways), pass spread, op cost and both predictions."""
    from gimlet.placement.cost import op_cost, op_time
    from gimlet.placement.presets import PRESETS

    h100 = PRESETS["h100"]
    rows = []
    for case in doc["cases"]:
        op = build_op(case)
        op.verify()
        cost = op_cost(op)
        meas = measured_seconds(case)
        passes = [r["graph_s"] or r["eager_s"] for r in case["runs"]]
        raw, cal = op_time(cost, h100, calibrated=False), op_time(cost, h100)
        rows.append(
            {
                "name": case["name"],
                "op": case["op"],
                "holdout": bool(case.get("holdout")),
                "flops": cost.flops,
                "bytes": cost.bytes,
                "measured_s": meas,
                "eager_s": statistics.mean(r["eager_s"] for r in case["runs"]),
                "pass_spread": (max(passes) - min(passes)) / meas,
                "achieved_tflops": cost.flops / meas / 1e12,
                "achieved_tb_s": cost.bytes / meas / 1e12,
                "raw_s": raw,
                "raw_err": rel_err(raw, meas),
                "calibrated_s": cal,
                "calibrated_err": rel_err(cal, meas),
            }
        )
    return rows


def summary(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    errs = [r[key] for r in rows]
    worst = max(rows, key=lambda r: r[key])
    return {"median": statistics.median(errs), "worst": worst[key], "worst_case": worst["name"]}


def report(measurements: Path) -> dict[str, Any]:
    from gimlet.placement import cost

    doc = json.loads(measurements.read_text())
    rows = evaluate(doc)
    groups = {
        "all": rows,
        "calibration": [r for r in rows if not r["holdout"]],
        "holdout": [r for r in rows if r["holdout"]],
    }
    summ: dict[str, dict[str, Any]] = {
        g: {
            "cases": len(rs),
            "raw": summary(rs, "raw_err"),
            "calibrated": summary(rs, "calibrated_err"),
        }
        for g, rs in groups.items()
        if rs
    }
    derived = derive_calibration(doc)
    used = {
        "memory_efficiency": cost.MEMORY_EFFICIENCY,
        "matmul_efficiency": cost.MATMUL_EFFICIENCY,
        "attention_efficiency": cost.ATTENTION_EFFICIENCY,
        "launch_overhead": cost.MEASURED_LAUNCH_OVERHEAD.get("NVIDIA H100 SXM5 80GB"),
    }
    out = {
        "measurements": str(measurements.resolve().relative_to(ROOT)),
        "device_info": doc["info"],
        "calibration": {"derived": derived, "in_cost_py": used},
        "summary": summ,
        "cases": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "h100_calibration.json").write_text(json.dumps(out, indent=1) + "\n")

    info = doc["info"]
    lines = [
        "# Cost model vs a real H100",
        "",
        f"Measured by `benchmarks/calibrate_h100.py --measure` on one {info.get('gpu')} "
        f"(torch {info['torch']}; f32 matmuls without TF32, cuDNN convs with TF32 "
        f"{'on' if info['cudnn_allow_tf32'] else 'off'}), predicted by `gimlet.placement.cost` for "
        "`PRESETS['h100']` (989 TFLOP/s bf16/f16, 67 f32, 3.35 TB/s, 5 us launch). "
        "*Measured* is device time per op in CUDA-graph replay with inputs rotated past the "
        "L2, mean of two passes (*spread*: their difference); *eager* is the same calls issued "
        "from Python, for reference only. Error = |pred - meas| / meas. *Raw* is the bare "
        "roofline on datasheet figures; *calibrated* applies the constants of compiler/placement/cost.py, "
        "derived from the calibration cases only; held-out cases (marked H) test them.",
        "",
        "| calibration constant | derived here | in compiler/placement/cost.py |",
        "|---|---:|---:|",
        *[f"| {k} | {derived[k]:.3g} | {used[k]:.3g} |" for k in derived],
        "",
        "| cases | n | raw median | raw worst | calibrated median | calibrated worst |",
        "|---|---:|---:|---:|---:|---:|",
        *[
            f"| {g} | {s['cases']} | {s['raw']['median']:.0%} | {s['raw']['worst']:.0%} "
            f"| {s['calibrated']['median']:.0%} | {s['calibrated']['worst']:.0%} "
            f"({s['calibrated']['worst_case']}) |"
            for g, s in summ.items()
        ],
        "",
        "| case | GFLOP | MB | measured us | eager us | spread | TFLOP/s | TB/s "
        "| raw us | raw err | calibrated us | cal err |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    us = 1e6
    for r in rows:
        lines.append(
            f"| {r['name']}{' (H)' if r['holdout'] else ''} | {r['flops'] / 1e9:.3g} "
            f"| {r['bytes'] / 1e6:.3g} | {r['measured_s'] * us:.2f} | {r['eager_s'] * us:.2f} "
            f"| {r['pass_spread']:.0%} | {r['achieved_tflops']:.1f} | {r['achieved_tb_s']:.2f} "
            f"| {r['raw_s'] * us:.2f} | {r['raw_err']:.0%} "
            f"| {r['calibrated_s'] * us:.2f} | {r['calibrated_err']:.0%} |"
        )
    (RESULTS / "h100_calibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--measure", action="store_true", help="time the cases (needs torch)")
    ap.add_argument("--out", type=Path, default=Path("h100_measurements.json"))
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test")
    ap.add_argument("--only", help="regex over case names")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--measurements", type=Path, default=DEFAULT_MEASUREMENTS)
    args = ap.parse_args()
    if args.measure:
        measure(args.out, args.device, args.only, args.passes)
    else:
        report(args.measurements)


if __name__ == "__main__":
    main()
