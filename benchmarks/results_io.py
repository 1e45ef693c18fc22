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


def machine_info(*packages: str) -> dict[str, Any]:
    """The date, CPU, Python, torch, gimlet and `packages`' versions, and the load average
    at the start (a shared machine's results move with it)."""
    import torch

    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{p: importlib.metadata.version(p) for p in packages},
        "gimlet": importlib.metadata.version("gimlet"),
        "loadavg_start": os.getloadavg()[0],
    }


def print_kernels(title: str, fn: Any, args: tuple[Any, ...], calls: int = 10) -> None:
    """Each CUDA kernel's GPU time over `calls` calls of fn(*args) after 5 warm-up calls
    (torch.profiler; no autograd), printed under `title`."""
    import torch

    with torch.no_grad():
        for _ in range(5):
            fn(*args)
        torch.cuda.synchronize()
        acts = [torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(calls):
                fn(*args)
            torch.cuda.synchronize()
    print(f"{title}: kernels over {calls} calls", flush=True)
    table = prof.key_averages().table(
        sort_by="cuda_time_total", row_limit=25, max_name_column_width=70
    )
    print(table, flush=True)
