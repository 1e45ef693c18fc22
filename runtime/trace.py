"""Chrome/Perfetto trace and the per-segment summary of a multi-process run.

Why wall-clock timestamps: workers are separate processes on one host, so time.time()
is the one clock they share; the merge shifts everything to start at 0. One process
(pid) per device, tid 0 for compute spans (segments), tid 1 for transfers (channels);
a GPU device also has tids 2 and 3, its copy streams (host->GPU and GPU->host copies,
runtime/staging.py), and tid 4, its compiled parts as the GPU ran them (in a worker):
in GPU time (CUDA events) converted to the host clock, so a copy overlapping a kernel
shows.
"""

from __future__ import annotations

import json
from typing import Any

COPY_TIDS = {"h2d": 2, "d2h": 3}  # a GPU's copy streams, by direction
GPU_TID = 4  # compiled GPU parts, GPU time
TRACKS = {0: "compute", 1: "transfers", 2: "copy stream H2D", 3: "copy stream D2H", 4: "gpu"}


def event(
    name: str, cat: str, start: float, end: float, tid: int, args: dict[str, Any]
) -> dict[str, Any]:
    """A complete ("X") trace event from host seconds (time.time())."""
    return {
        "name": name,
        "cat": cat,
        "ph": "X",
        "ts": start * 1e6,
        "dur": max(end - start, 1e-7) * 1e6,
        "tid": tid,
        "args": args,
    }


def copy_event(label: str, direction: str, start: float, end: float, nbytes: int) -> dict[str, Any]:
    """A host<->GPU copy on its copy stream's track ("h2d" or "d2h", runtime/staging.py)."""
    args = {"bytes": nbytes, "stream": "copy"}
    return event(f"{label} {direction.upper()}", "copy", start, end, COPY_TIDS[direction], args)


def chrome_trace(stats: list[dict[str, Any]]) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    t0 = min((e["ts"] for s in stats for e in s["events"]), default=0.0)
    for rank, s in enumerate(stats):
        events.append(
            {
                "name": "process_name",
                "ph": "M",
                "pid": rank,
                "tid": 0,
                "args": {"name": s["device"]},
            }
        )
        used = {0, 1} | {e.get("tid", 0) for e in s["events"]}
        for tid, label in TRACKS.items():
            if tid not in used:
                continue
            events.append(
                {"name": "thread_name", "ph": "M", "pid": rank, "tid": tid, "args": {"name": label}}
            )
        for e in s["events"]:
            events.append(dict(e, pid=rank, ts=e["ts"] - t0))
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_trace(path: str, stats: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        json.dump(chrome_trace(stats), f)


def summary_table(stats: list[dict[str, Any]]) -> str:
    rows = []
    for s in stats:
        for index, seg in s["segments"].items():
            rows.append(
                (
                    int(index),
                    s["device"],
                    seg["ops"],
                    seg.get("wall_s", 0.0) * 1e3,
                    seg["bytes_in"],
                    seg["bytes_out"],
                )
            )
    rows.sort()
    lines = [
        f"{'segment':>7}  {'device':<8} {'ops':>5} {'wall ms':>9} {'bytes in':>10} "
        f"{'bytes out':>10}"
    ]
    for i, dev, ops, ms, bin_, bout in rows:
        lines.append(f"{i:>7}  {dev:<8} {ops:>5} {ms:>9.2f} {bin_:>10} {bout:>10}")
    return "\n".join(lines) + "\n"
