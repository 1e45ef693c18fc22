"""Two GPUs as a pipeline: a model split over gpu0 and gpu1, a request's batch cut into
micro-batches (runtime/pipeline.py), against one GPU, all in one run (issue 11's goal:
>= 1.8x one GPU's throughput at batch >= 8).

The model is a GPT prefill in fp16 that returns the last position's logits (the next
token): `--d`, `--layers`, `--heads`, T=`--seq`, vocab 50257. It is compiled twice for a
host CPU and two H200s (NVLink between them) with a dynamic batch dim: everything on gpu0,
and layers split in half between gpu0 and gpu1 (the activations cross through NCCL,
device to device). Each runner is called through `gimlet.load` with host tensors in and
out (so the host<->GPU copies count), and the median wall time of a whole request gives
the throughput in sequences per second:

* one GPU, the whole batch in one call (in the caller's process: the strongest baseline);
* one GPU, the same micro-batches (no second GPU to overlap with);
* two GPUs, the whole batch in one call (split, no pipeline: each GPU waits for the other);
* two GPUs, micro-batches pipelined (`processes="per-device"`: one worker per GPU, NCCL
  between them);
* the same in one process (`processes="auto"` picks it: the caller drives both GPUs,
  copy-engine copies between them).

Each row also records the GPUs' SM clock and power while its requests ran (nvidia-smi,
results_io.GpuClocks: one GPU on the whole batch runs at its power limit, at a lower
clock than two pipelined GPUs), and a multi-process row prints where the caller's time
went (RunResult.phases). `--interleave` adds the goal's two runners measured a request of
each in turn.

`--chunks 1,2` also compiles an interleaved placement (the layers cut into 2 x K runs on
gpu0 and gpu1 in turn: two stages a GPU halve the pipeline's fill and drain; measured
slower here, results run 18). `--prepare DIR` compiles the bundles (nvcc must be there) and
saves the inputs and torch's outputs; `--run DIR` measures (on the 2x H200 machine). Writes
benchmarks/results/gpu_pipeline.{md,json} (and copies them to $OUT when set).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from results_io import (  # noqa: E402
    RESULTS,
    GpuClocks,
    busy_gaps,
    cut_calls,
    gpu_events,
    machine_info,
    print_kernels,
    profiled,
    save,
)

CLUSTER = ROOT / "examples" / "two_h200.cluster"
CONFIG = {"d": 1024, "heads": 16, "layers": 24, "seq": 512, "vocab": 50257}
CONFIG_ENV = "GIMLET_PIPELINE_CONFIG"  # the json model() reads: prepare sets it per bundle


class NextToken(torch.nn.Module):
    """GPT prefill, the last position's logits only (what generation needs)."""

    def __init__(self, gpt: Any):
        super().__init__()
        self.wte, self.wpe, self.h, self.ln_f, self.lm_head = (
            gpt.wte,
            gpt.wpe,
            gpt.h,
            gpt.ln_f,
            gpt.lm_head,
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x[:, -1]))


def model() -> Any:
    """`gimletc compile` factory: the configured model in fp16, the batch dim dynamic unless
    the configuration says static."""
    from gpt import GPT

    c = json.loads(Path(os.environ[CONFIG_ENV]).read_text())
    torch.manual_seed(0)
    gpt = GPT(vocab=c["vocab"], ctx=c["seq"], d=c["d"], heads=c["heads"], layers=c["layers"])
    net = NextToken(gpt).half().eval()
    ids = torch.randint(0, c["vocab"], (c.get("compile_batch", 2), c["seq"]))
    if c.get("static"):  # one bundle per batch shape: the static buckets' code
        return net, (ids,)
    batch = torch.export.Dim("batch", min=1, max=256)
    return net, (ids,), ({0: batch},)


def bundle_name(placement: str, c: dict[str, Any], batch: int) -> str:
    """A bundle's directory: per placement, and per batch when compiled static."""
    return f"{placement}_b{batch}" if c.get("static") else placement


def two_gpus(chunks: int) -> str:
    """The two-GPU placement's name: its layers cut into 2 x `chunks` pieces."""
    return "two_gpus" if chunks == 1 else f"two_gpus_c{chunks}"


def two_gpu_pins(layers: int, chunks: int) -> str:
    """The layers cut into 2 x `chunks` runs of equal length, on gpu0 and gpu1 in turn.

    chunks = 1 is the plain split (the first half on gpu0). With more, each GPU holds
    several stages (an interleaved pipeline): a micro-batch crosses between the GPUs
    2 x chunks - 1 times, and the pipeline's fill and drain, where one GPU waits for the
    other, shrink from one half of the model's time to 1 / (2 x chunks) of it."""
    n = 2 * chunks
    if layers % n:
        raise SystemExit(f"--chunks {chunks}: {layers} layers do not cut into {n} equal runs")
    size = layers // n
    runs = [f"h.{i * size}-{(i + 1) * size - 1}=gpu{i % 2}" for i in range(n)]
    return ",".join(["wte=gpu0", "wpe=gpu0", *runs, "ln_f=gpu1", "lm_head=gpu1"])


def prepare(
    out: Path,
    c: dict[str, Any],
    batch: int,
    micro: list[int],
    only: str | None = None,
    quick: bool = False,
) -> None:
    from gimlet.cli import main as gimletc

    out.mkdir(parents=True, exist_ok=True)
    (out / "gpus.cluster").write_text(CLUSTER.read_text())
    pins = {"one_gpu": f"wte=gpu0,wpe=gpu0,h.0-{c['layers'] - 1}=gpu0,ln_f=gpu0,lm_head=gpu0"}
    pins |= {two_gpus(k): two_gpu_pins(c["layers"], k) for k in c["chunks"]}
    batches = [batch] + [batch // m for m in micro] if c.get("static") else [2]
    for placement, pin in pins.items():
        if only and not placement.startswith(only):
            continue
        for b in dict.fromkeys(batches):
            if quick and (b == batch) != (placement == "one_gpu"):
                continue  # --quick: one GPU's whole batch and two GPUs' micro-batches only
            name = bundle_name(placement, c, b)
            config = dict(c, compile_batch=b)
            (out / f"{name}.json").write_text(json.dumps(config))
            os.environ[CONFIG_ENV] = str(out / f"{name}.json")  # what model() builds
            t0 = time.perf_counter()
            argv = ["compile", f"{Path(__file__).resolve()}:model", "-o", str(out / name)]
            argv += ["--target", str(out / "gpus.cluster"), "--pin", pin, "--no-cache"]
            assert gimletc(argv) == 0
            manifest = json.loads((out / name / "manifest.json").read_text())
            kinds = [(s["device"], s["artefact"]["kind"]) for s in manifest["segments"]]
            print(f"[pipeline] {name}: {time.perf_counter() - t0:.1f} s, {kinds}", flush=True)
    net = model()[0]
    ids = torch.randint(
        0, c["vocab"], (batch, c["seq"]), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        want = net.cuda()(ids.cuda()).float().cpu().numpy() if torch.cuda.is_available() else None
    np.savez(out / "io.npz", ids=ids.numpy(), **({"want": want} if want is not None else {}))
    (out / "config.json").write_text(json.dumps(dict(c, batch=batch)))


def timed(run: Any, ids: torch.Tensor, iters: int) -> tuple[float, np.ndarray, dict[str, Any]]:
    """Median ms of whole requests (host tensors in and out), after warm-up; the output;
    the GPUs' clocks while the timed requests ran."""
    (ms,), (out,), clocks = alternating([run], ids, iters)
    return ms, out, clocks


def alternating(
    runs: list[Any], ids: torch.Tensor, iters: int
) -> tuple[list[float], list[np.ndarray], dict[str, Any]]:
    """`timed` for several runners, one request of each in turn, so that every runner
    meets the GPUs in the same state (warm, clocked alike): the median ms of each, its
    last output, and the clocks. A multi-process runner's request phases (where the
    caller's time went, RunResult.phases) are printed as medians."""
    for run in runs:
        for _ in range(3):
            run(ids)
    times: list[list[float]] = [[] for _ in runs]
    phases: list[dict[str, list[float]]] = [{} for _ in runs]
    outs: list[Any] = [None] * len(runs)
    with GpuClocks() as clocks:
        for _ in range(iters):
            for k, run in enumerate(runs):
                t0 = time.perf_counter()
                (outs[k],) = run(ids)
                times[k].append((time.perf_counter() - t0) * 1e3)
                for name, v in getattr(getattr(run, "last", None), "phases", {}).items():
                    phases[k].setdefault(name, []).append(v * 1e3)
    for ph in phases:
        if ph:
            spent = ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in ph.items())
            print(f"[pipeline]   request phases (ms): {spent}", flush=True)
    arrays = [out.float().numpy() for out in outs]
    return [statistics.median(t) for t in times], arrays, clocks.summary()


def measure(
    d: Path, micro: list[int], iters: int, quick: bool = False, interleave: bool = False
) -> dict[str, Any]:
    from gimlet.runtime import load

    c = json.loads((d / "config.json").read_text())
    c.setdefault("chunks", [1])  # (prepared before --chunks)
    os.environ[CONFIG_ENV] = str(d / "config.json")  # the model for torch eager's row
    io = np.load(d / "io.npz")
    ids = torch.from_numpy(io["ids"])
    rows: dict[str, Any] = {}

    def record(
        name: str, ms: float, out: np.ndarray, how: str, clocks: dict[str, Any], **kw: Any
    ) -> None:
        err = float(np.max(np.abs(out - io["want"]))) if "want" in io else None
        rows[name] = {"ms": ms, "seq_per_s": c["batch"] / ms * 1e3, "max_abs_err": err}
        rows[name].update(how=how, clocks=clocks, **kw)
        mhz = ", ".join(f"gpu{g} {v['sm_mhz']:.0f} MHz" for g, v in clocks.items())
        print(f"[pipeline] {name}: {ms:.2f} ms, err {err} ({mhz})", flush=True)

    def row(name: str, placement: str, **kw: Any) -> None:
        print(f"[pipeline] {name} ...", flush=True)
        bundle = bundle_name(placement, c, c["batch"] // kw.get("micro_batches", 1))
        with load(str(d / bundle), **kw) as run:
            ms, out, clocks = timed(run, ids, iters)
            how = run.reason
        record(name, ms, out, how, clocks, **kw)

    if interleave:  # the goal's two runners, a request of each in turn
        m = micro[0]
        one = bundle_name("one_gpu", c, c["batch"])
        two = bundle_name(two_gpus(c["chunks"][0]), c, c["batch"] // m)
        print(f"[pipeline] one GPU's whole batch and two GPUs' {m} micro-batches, "
              "alternating ...", flush=True)  # fmt: skip
        with load(str(d / one)) as a, load(str(d / two), micro_batches=m) as b:
            (ms_a, ms_b), (out_a, out_b), clocks = alternating([a, b], ids, iters)
            how_a, how_b = a.reason, b.reason
        record("one GPU, whole batch (alternating)", ms_a, out_a, how_a, clocks)
        record(f"two GPUs, {m} micro-batches pipelined (alternating)", ms_b, out_b, how_b,
               clocks, micro_batches=m)  # fmt: skip

    if not quick:  # (--quick: the goal's two rows only, one GPU's whole batch and the pipeline)
        # torch eager on one GPU, the whole batch: what the model costs without gimlet
        eager = model()[0].cuda()
        with torch.no_grad():
            ms, out, clocks = timed(lambda x: (eager(x.cuda()).cpu(),), ids, iters)
        record("torch eager, one GPU, whole batch", ms, out, "torch eager in this process",
               clocks)  # fmt: skip
        eager.cpu()  # its GPU memory back for the runners
        torch.cuda.empty_cache()
    row("one GPU, whole batch", "one_gpu")
    if not quick:
        row("two GPUs, whole batch (split, no pipeline)", two_gpus(c["chunks"][0]))
    for m in micro:
        if c.get("static") and not quick:  # the micro-batches one after another in this
            # process: what a micro-batch costs the GPU without the workers
            print(f"[pipeline] one GPU, {m} micro-batches in one process ...", flush=True)
            with load(str(d / bundle_name("one_gpu", c, c["batch"] // m))) as run:

                def one_by_one(x: torch.Tensor, run: Any = run, m: int = m) -> tuple[Any]:
                    return (torch.cat([run(p)[0] for p in torch.chunk(x, m)]),)

                ms, out, clocks = timed(one_by_one, ids, iters)
                record(
                    f"one GPU, {m} micro-batches in one process",
                    ms,
                    out,
                    f"{m} calls of {run.reason}",
                    clocks,
                )
        if not quick:
            row(f"one GPU, {m} micro-batches", "one_gpu", micro_batches=m)
        for k in c["chunks"]:
            stages = "" if k == 1 else f" ({k} stages each)"
            row(f"two GPUs{stages}, {m} micro-batches pipelined", two_gpus(k), micro_batches=m,
                processes="per-device")  # fmt: skip
        # the same bundle driven from this process (processes="auto" picks it): copy-engine
        # copies between the GPUs instead of NCCL's kernels, no workers in between
        row(f"two GPUs, {m} micro-batches pipelined in one process", two_gpus(1),
            micro_batches=m)  # fmt: skip
    base = rows["one GPU, whole batch"]["seq_per_s"]
    for name, r in rows.items():
        # the alternating pair is compared with each other (same GPU state)
        alt = rows.get("one GPU, whole batch (alternating)") if "alternating" in name else None
        r["vs_one_gpu"] = r["seq_per_s"] / (alt["seq_per_s"] if alt else base)
        same = rows.get(f"one GPU, {r.get('micro_batches')} micro-batches")
        if name.startswith("two") and same is not None:
            r["vs_one_gpu_same_micro"] = r["seq_per_s"] / same["seq_per_s"]
    return {"config": c, "rows": rows}


def profile(d: Path, micro: list[int]) -> None:
    """gimlet's kernels on one GPU (graphs off, so the profiler sees each launch): the whole
    batch, then (static bundles) one micro-batch of each count asked for, then torch
    eager's whole batch, each over 3 calls: where a micro-batch loses to the whole batch."""
    from gimlet.runtime import load

    os.environ["GIMLET_CUDA_GRAPHS"] = "0"
    os.environ[CONFIG_ENV] = str(d / "config.json")
    ids = torch.from_numpy(np.load(d / "io.npz")["ids"])
    net = model()[0]
    net = net.cuda()
    c = json.loads((d / "config.json").read_text())
    print_kernels(
        "[pipeline] gimlet, whole batch",
        load(str(d / bundle_name("one_gpu", c, c["batch"]))),
        (ids,),
        calls=3,
    )
    for m in micro if c.get("static") else []:
        one = load(str(d / bundle_name("one_gpu", c, c["batch"] // m)))
        print_kernels(
            f"[pipeline] gimlet, one micro-batch of {m}", one, (ids[: c["batch"] // m],), calls=3
        )
    print_kernels("[pipeline] torch eager, whole batch", lambda x: net(x.cuda()), (ids,), calls=3)


def trace(d: Path, micro: int) -> None:
    """Two requests of the two-GPU pipeline with `micro` micro-batches, every worker's
    trace events kept (runtime/trace.py: compute, transfers, copy streams, the GPU parts
    in GPU time): written as gpu_pipeline_trace.json (Chrome/Perfetto), with each
    device's track totals printed."""
    from gimlet.runtime.launch import launch
    from gimlet.runtime.trace import TRACKS, chrome_trace

    c = json.loads((d / "config.json").read_text())
    c.setdefault("chunks", [1])
    ids = np.load(d / "io.npz")["ids"]
    bundle = d / bundle_name(two_gpus(c["chunks"][-1]), c, c["batch"] // micro)
    result = launch(str(bundle), [ids], iterations=2, micro_batches=micro)
    for s in result.stats:
        by_tid: dict[int, list[float]] = {}
        for e in s["events"]:
            if e.get("ph", "X") == "X":
                by_tid.setdefault(e.get("tid", 0), []).append(e.get("dur", 0.0))
        tracks = ", ".join(
            f"{TRACKS.get(t, t)}: {len(v)} spans, {sum(v) / 1e3:.2f} ms"
            for t, v in sorted(by_tid.items())
        )
        print(f"[pipeline] trace {s['device']}: {tracks}", flush=True)
    out = RESULTS / "gpu_pipeline_trace.json"
    out.write_text(json.dumps(chrome_trace(result.stats)))
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / out.name).write_text(out.read_text())
    print(f"[pipeline] trace of 2 requests: {out}", flush=True)


def gpu_timeline(d: Path, micro: int, calls: int = 3) -> None:
    """The one-process pipeline's GPU side (torch.profiler, CUDA graphs on): per GPU, over
    `calls` requests after warm-up, the median span from its first kernel or copy to its
    last, the time something runs on it (union), and its idle gaps over 20 us (count, sum,
    the largest three with their offset from the request's first event). Where a GPU
    waits for the other, the gaps say when and how long."""
    import tempfile

    from gimlet.runtime import load

    c = json.loads((d / "config.json").read_text())
    ids = torch.from_numpy(np.load(d / "io.npz")["ids"])
    bundle = d / bundle_name(two_gpus(1), c, c["batch"] // micro)
    with load(str(bundle), micro_batches=micro, processes="one") as run:
        prof = profiled(run, (ids,), calls, sync_each=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    # cut by count (results_io.cut_calls), not where all GPUs idle: between two requests
    # gpu1 still runs its last stage while gpu0 idles, and the host turns around in well
    # under 1 ms, so an idle rule merged two requests on the H200
    for k, req in enumerate(cut_calls(gpu_events(events), calls)):
        t0 = req[0]["ts"]
        by_dev: dict[Any, list[dict[str, Any]]] = {}
        for e in req:
            by_dev.setdefault(e["args"].get("device"), []).append(e)
        for dev, evs in sorted(by_dev.items(), key=lambda kv: str(kv[0])):
            start = evs[0]["ts"] - t0
            busy, gaps = busy_gaps(evs, min_gap=20.0)
            gaps = [(g, start + at) for g, at in gaps]  # offsets from the request's start
            span = max(e["ts"] + e["dur"] for e in evs) - evs[0]["ts"]
            top = ", ".join(
                f"{g / 1e3:.2f} ms at {at / 1e3:.1f}" for g, at in sorted(gaps)[::-1][:3]
            )
            print(
                f"[pipeline] timeline request {k} gpu{dev}: starts {start / 1e3:.2f} "
                f"ms, span {span / 1e3:.2f} ms, busy {busy / 1e3:.2f} ms, "
                f"{len(gaps)} gaps > 20 us ({sum(g for g, _ in gaps) / 1e3:.2f} ms; {top}); "
                f"{len(evs)} events, {sum(e['cat'] == 'gpu_memset' for e in evs)} memsets",
                flush=True,
            )


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    c = result["config"]
    lines = [
        "# Two GPUs as a pipeline: micro-batches vs one GPU",
        "",
        f"Machine: {meta['gpu']} x2, torch {meta['torch']}. Command: `{meta['command']}`. "
        f"Model: GPT d={c['d']} heads={c['heads']} layers={c['layers']}, T={c['seq']}, "
        f"fp16, last position's logits (vocab {c['vocab']}); batch {c['batch']}. Median of "
        f"{meta['iters']} whole requests through `gimlet.load`, host tensors in and out. "
        + (
            "Bundles: one per placement and batch shape (static shapes)."
            if c.get("static")
            else "Bundles: one per placement, the batch dim dynamic (one bucket per shape)."
        ),
        "",
        "| runner | ms per request | sequences/s | vs one GPU (whole batch) | vs one GPU (same "
        "micro-batches) | max abs err vs torch | SM clock, MHz (median per GPU) | how it ran |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, r in result["rows"].items():
        same = r.get("vs_one_gpu_same_micro")
        err = r["max_abs_err"]
        lines.append(
            f"| {name} | {r['ms']:.2f} | {r['seq_per_s']:.0f} | {r['vs_one_gpu']:.2f}x | "
            f"{f'{same:.2f}x' if same else ''} | {f'{err:.1e}' if err is not None else ''} | "
            f"{_clocks(r.get('clocks') or {})} | {r['how']} |"
        )
    return "\n".join(lines) + "\n"


def _clocks(clocks: dict[str, Any]) -> str:
    return ", ".join(
        f"gpu{g} {v['sm_mhz']:.0f} (min {v['min_sm_mhz']:.0f}, {v['power_w']:.0f} W)"
        for g, v in clocks.items()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prepare", metavar="DIR", help="compile the bundles into DIR")
    ap.add_argument("--run", metavar="DIR", help="measure the bundles in DIR (2 GPUs)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per request")
    ap.add_argument("--micro", default="8,16", help="micro-batch counts to try")
    ap.add_argument(
        "--chunks",
        default="1",
        help="with --prepare: two-GPU placements to compile, each cutting the layers into "
        "2 x K runs on gpu0 and gpu1 in turn (1: halves; 2: an interleaved pipeline)",
    )
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--profile", metavar="DIR", help="per-kernel GPU time, gimlet and eager")
    ap.add_argument(
        "--trace",
        metavar="M",
        type=int,
        help="after --run: the two-GPU pipeline's trace with M micro-batches (2 requests)",
    )
    ap.add_argument(
        "--gpu-timeline",
        metavar="M",
        type=int,
        help="after --run: each GPU's busy time and idle gaps in the one-process pipeline "
        "with M micro-batches (torch.profiler, 3 requests)",
    )
    ap.add_argument(
        "--placement", choices=["one_gpu", "two_gpus"], help="--prepare only this placement"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="only one GPU's whole batch and two GPUs pipelined (prepare and run)",
    )
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="with --run: also one GPU's whole batch and two GPUs' first --micro count, "
        "a request of each in turn (the same GPU state for both)",
    )
    ap.add_argument(
        "--static",
        action="store_true",
        help="compile a bundle per batch shape (default: one bundle, the batch dim dynamic)",
    )
    for k, v in CONFIG.items():
        ap.add_argument(f"--{k}", type=int, default=v)
    args = ap.parse_args()
    if args.prepare:
        chunks = [int(k) for k in args.chunks.split(",")]
        config = dict({k: getattr(args, k) for k in CONFIG}, static=args.static, chunks=chunks)
        micro = [int(m) for m in args.micro.split(",")]
        prepare(Path(args.prepare), config, args.batch, micro, args.placement, args.quick)
    if args.profile:
        profile(Path(args.profile), [int(m) for m in args.micro.split(",")])
    if args.run:
        micro = [int(m) for m in args.micro.split(",")]
        result = measure(Path(args.run), micro, args.iters, args.quick, args.interleave)
        meta = {
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "command": " ".join(["python benchmarks/gpu_pipeline.py", *sys.argv[1:]]),
            "iters": args.iters,
            "machine": machine_info(),
        }
        save("gpu_pipeline", dict(result, meta=meta), markdown(result, meta))
        print(markdown(result, meta))
        if args.trace:
            trace(Path(args.run), args.trace)
        if args.gpu_timeline:
            gpu_timeline(Path(args.run), args.gpu_timeline)


if __name__ == "__main__":
    main()
