"""Where a benchmark's results go: benchmarks/results/STEM.{json,md}, and copies in $OUT
(the device tool's folder that comes back from a GPU machine) when it is set; and the
machine they were measured on."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def save(stem: str, data: Any, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown)
    out = os.environ.get("OUT")
    if out:
        for suffix in (".json", ".md"):
            shutil.copy(RESULTS / f"{stem}{suffix}", Path(out) / f"{stem}{suffix}")


def child_json(
    argv: list[str], what: str, timeout: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run `python argv...` from the repository root (a fresh process: nothing imported or
    cached by this one), and give the JSON object its last line of output printed; a
    RuntimeError naming `what` and the end of its stderr when it fails."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, *argv],
        cwd=RESULTS.parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def machine_info(*packages: str) -> dict[str, Any]:
    """The date, CPU, Python, torch, gimlet and `packages`' versions, and the load average
    at the start (a shared machine's results move with it)."""
    import torch

    from gimlet.backends.cpu.segments import cpu_model

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{p: importlib.metadata.version(p) for p in packages},
        "gimlet": importlib.metadata.version("gimlet"),
        "loadavg_start": os.getloadavg()[0],
    }


def profiled(fn: Any, args: tuple[Any, ...], calls: int, sync_each: bool) -> Any:
    """torch.profiler (CUDA activity) over `calls` calls of fn(*args) after 5 warm-up calls,
    no autograd; `sync_each`: a device sync after every call (so calls do not overlap)."""
    import torch

    with torch.no_grad():
        for _ in range(5):
            fn(*args)
        torch.cuda.synchronize()
        acts = [torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(calls):
                fn(*args)
                if sync_each:
                    torch.cuda.synchronize()
            torch.cuda.synchronize()
    return prof


def print_kernels(title: str, fn: Any, args: tuple[Any, ...], calls: int = 10) -> None:
    """Each CUDA kernel's GPU time over `calls` calls of fn(*args) after 5 warm-up calls
    (torch.profiler; no autograd), printed under `title`."""
    prof = profiled(fn, args, calls, sync_each=False)
    print(f"{title}: kernels over {calls} calls", flush=True)
    table = prof.key_averages().table(
        sort_by="cuda_time_total", row_limit=25, max_name_column_width=70
    )
    print(table, flush=True)


def gpu_events(trace_events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A Chrome trace's kernels, copies and memsets (the GPU's events), in time order."""
    kinds = ("kernel", "gpu_memcpy", "gpu_memset")
    gpu = (e for e in trace_events if e.get("ph") == "X" and e.get("cat") in kinds)
    return sorted(gpu, key=lambda e: e["ts"])


def cut_calls(events: list[dict[str, Any]], calls: int) -> list[list[dict[str, Any]]]:
    """Time-sorted GPU events cut into `calls` runs of equal count (events left over at the
    end are dropped). By count, not by idle time: every call of a CUDA-graph program makes
    the same events, while between two calls one GPU may still run while the other idles."""
    per = len(events) // calls
    return [events[c * per : (c + 1) * per] for c in range(calls)]


def busy_gaps(
    events: list[dict[str, Any]], min_gap: float = 20.0
) -> tuple[float, list[tuple[float, float]]]:
    """Time-sorted events -> the time some event runs (their union) and the idle gaps
    longer than `min_gap`, each as (length, offset from the first event's start)."""
    t0 = events[0]["ts"]
    busy, gaps, reach = 0.0, [], t0
    for e in events:
        s, t = e["ts"], e["ts"] + e["dur"]
        if s - reach > min_gap:
            gaps.append((s - reach, reach - t0))
        busy += max(0.0, t - max(s, reach))
        reach = max(reach, t)
    return busy, gaps


def call_timeline(trace_events: list[dict[str, Any]], calls: int) -> dict[str, Any]:
    """timeline's arithmetic on a Chrome trace's events: the kernels and copies, in time
    order, cut into `calls` equal runs; per call (median) the span, the union of the
    events (busy), the sum of their durations, and how many start before the one before
    them ended; each kernel's mean duration and count per call, and its mean step: how
    far its end comes after the latest end before it (0 for a call's first event). Under
    programmatic dependent launch a duration counts the time a kernel started early and
    waited; the steps add up to the span's tail, each kernel's share of the chain."""
    import collections
    import itertools
    import statistics

    runs = cut_calls(gpu_events(trace_events), calls)
    per = len(runs[0])
    spans, busy, total, early = [], [], [], []
    for evs in runs:
        ends = list(itertools.accumulate((e["ts"] + e["dur"] for e in evs), max))
        spans.append(ends[-1] - evs[0]["ts"])
        busy.append(busy_gaps(evs)[0])
        total.append(sum(e["dur"] for e in evs))
        # ends[i]: the latest end among evs[: i + 1], what evs[i + 1] starts early against
        early.append(sum(e["ts"] < reach for e, reach in zip(evs[1:], ends[:-1], strict=True)))
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    steps: dict[str, list[float]] = collections.defaultdict(list)
    for evs in runs:
        reach = None
        for e in evs:
            end = e["ts"] + e["dur"]
            by_name[e["name"]].append(e["dur"])
            steps[e["name"]].append(0.0 if reach is None else max(0.0, end - reach))
            reach = end if reach is None else max(reach, end)
    return {
        "events_per_call": per,
        "span_us": statistics.median(spans),
        "busy_us": statistics.median(busy),
        "sum_us": statistics.median(total),
        "started_early": statistics.median(early),
        "kernels": {
            n: {
                "count_per_call": len(d) / calls,
                "mean_us": statistics.fmean(d),
                "step_us": statistics.fmean(steps[n]),
            }
            for n, d in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))
        },
    }


def timeline(title: str, fn: Any, args: tuple[Any, ...], calls: int = 20) -> dict[str, Any]:
    """What the GPU does during one call of fn(*args), CUDA graphs included: the kernels
    and copies of `calls` calls (each followed by a device sync) from torch.profiler's
    trace, cut into calls by count. Per call (median): the span from the first start to
    the last end, the time some kernel or copy runs (their union), the sum of their
    durations (above the union when they overlap: programmatic dependent launch), and how
    many start before the one before them ended. Printed under `title` with each kernel's
    mean duration; returned as a dict."""
    import tempfile

    prof = profiled(fn, args, calls, sync_each=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    result = call_timeline(trace["traceEvents"], calls)
    per = result["events_per_call"]
    print(
        f"{title}: {per} kernels/copies a call; GPU span {result['span_us']:.1f} us, busy "
        f"{result['busy_us']:.1f} us, sum of durations {result['sum_us']:.1f} us, "
        f"{result['started_early']} started before the one before ended",
        flush=True,
    )
    print("    duration   step  count", flush=True)
    for n, k in list(result["kernels"].items())[:14]:
        print(
            f"    {k['mean_us']:8.2f} {k['step_us']:6.2f} x {k['count_per_call']:5.1f}  {n[:110]}",
            flush=True,
        )
    return result


SMI_QUERY = "index,clocks.sm,power.draw,temperature.gpu"


class GpuClocks:
    """What the GPUs' clocks, power and temperature were while a block ran: `nvidia-smi`
    sampling every `every_ms` in the background (no CUDA call, nothing in the measured
    process). Why: a GPU that heats up or hits its power limit lowers its clock, and a
    row measured late in a run on a hot GPU would be compared with one measured cool.
    `summary()` gives per GPU the median SM MHz, power W and temperature C of the samples
    (empty where nvidia-smi is missing)."""

    def __init__(self, every_ms: int = 50):
        self.every_ms = every_ms
        self.proc: Any = None
        self.lines: list[str] = []

    def __enter__(self) -> GpuClocks:
        import subprocess

        smi = shutil.which("nvidia-smi")
        if smi:
            cmd = [smi, f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"]
            self.proc = subprocess.Popen(
                [*cmd, f"-lms={self.every_ms}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=10)
            self.lines = out.splitlines()

    def summary(self) -> dict[str, dict[str, float]]:
        return clock_summary(self.lines)


def clock_summary(lines: list[str]) -> dict[str, dict[str, float]]:
    """nvidia-smi csv lines (index, SM MHz, W, C) -> per GPU index the medians and the
    sample count; lines that do not parse (a header, '[N/A]') are skipped."""
    import statistics

    by_gpu: dict[str, list[tuple[float, float, float]]] = {}
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        try:
            gpu, mhz, watts, temp = parts[0], *map(float, parts[1:4])
        except (ValueError, TypeError):
            continue
        by_gpu.setdefault(gpu, []).append((mhz, watts, temp))
    return {
        gpu: {
            "sm_mhz": statistics.median(s[0] for s in samples),
            "min_sm_mhz": min(s[0] for s in samples),
            "power_w": statistics.median(s[1] for s in samples),
            "temp_c": statistics.median(s[2] for s in samples),
            "samples": len(samples),
        }
        for gpu, samples in by_gpu.items()
    }
