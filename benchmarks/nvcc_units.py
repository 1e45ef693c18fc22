"""nvcc's share of `gimletc compile` for GPT-2 small on the NVIDIA backend: the wall time
of `build_segment` for gpu_gpt2.py's decode and prefill programs (fp16, batch 1, T=512),
as one translation unit (`--jobs 1`, how every segment was built before) and as one unit
per core (backends/gpu/units.py), each with an empty cache.

Also each unit alone, compiled one after another (one core each, nothing else of the
build running): the longest plus the link is the build's wall time on a machine with a
core per unit (the H200 machine's 16 cores hold GPT-2's 12 decode units), which this
script may not be run on.

The machine may be shared: load averages are recorded at the start and the end, and the
CPU time of the nvcc processes (user + sys) is given next to wall time.

Run: `python benchmarks/nvcc_units.py [--repeats N]`; needs nvcc, no GPU. Results go to
benchmarks/results/nvcc_units.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import results_io  # benchmarks/results_io.py: this script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

CTX = 512  # gpu_gpt2.py's


def sources() -> dict[str, str]:
    """The generated CUDA of GPT-2 decode (one token over a CTX-token KV cache) and
    prefill (CTX tokens), as benchmarks/gpu_gpt2.py compiles them."""
    import torch
    from gpt import GPT
    from gpt_phases import Decode

    from gimlet import compile as gcompile
    from gimlet.backends.gpu.lower import lower
    from gimlet.ir import main_func

    torch.manual_seed(0)
    gpt = GPT(vocab=50257, ctx=1024, d=768, heads=12, layers=12).half().eval()
    token = torch.randint(0, 50257, (1, 1))
    keys = torch.randn(12, 1, 12, CTX, 64, dtype=torch.float16)
    values = torch.randn(12, 1, 12, CTX, 64, dtype=torch.float16)
    ids = torch.randint(0, 50257, (1, CTX))
    cases = {"decode": (Decode(gpt).eval(), (token, keys, values)), "prefill": (gpt, (ids,))}
    out = {}
    for name, (module, args) in cases.items():
        compiled = gcompile(copy.deepcopy(module), args)
        out[name] = lower(main_func(compiled.module)).source
    return out


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed_build(source: str, jobs: int) -> tuple[float, float]:
    """(wall, CPU) seconds of build_segment(source, jobs) with an empty cache."""
    from gimlet.backends.nvidia.build import build_segment

    with tempfile.TemporaryDirectory() as cache:
        os.environ["GIMLET_CACHE_DIR"] = cache
        cpu, t = _children_cpu(), time.perf_counter()
        _, cached = build_segment(source, jobs)
        wall = time.perf_counter() - t
        assert not cached
    return wall, _children_cpu() - cpu


def each_unit(source: str) -> dict[str, Any]:
    """Every unit compiled alone, one after another, and their link: seconds each."""
    from gimlet.backends.gpu import units
    from gimlet.backends.nvidia import build

    _, sections = units.cut(source)
    tus = build.segment_units(source, len(sections))
    times = []
    with tempfile.TemporaryDirectory() as work:
        objs = []
        for i, text in enumerate(tus):
            cu = Path(work, f"unit{i}.cu")
            cu.write_text(text.replace("@GIMLET_SOURCE@", str(Path(work, "all.cu"))))
            objs.append(str(cu.with_suffix(".o")))
            cmd = [build.nvcc(), "-x", "cu", str(cu), "-o", objs[-1], f"-I{build.GPU_INCLUDE}"]
            t = time.perf_counter()
            subprocess.run(
                [*cmd, *build.segment_flags(link=False)], check=True, capture_output=True
            )
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        link = [build.nvcc(), *objs, "-o", str(Path(work, "seg.so")), *build.LINK_FLAGS]
        subprocess.run(link, check=True, capture_output=True)
        link_s = time.perf_counter() - t
    return {"units": times, "link_s": link_s, "one_core_per_unit_s": max(times) + link_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from gimlet.backends.nvidia.build import nvcc_jobs, nvcc_version, segment_units

    info = results_io.machine_info()
    cores = nvcc_jobs()
    results: dict[str, Any] = {}
    for name, src in sources().items():
        runs: dict[int, list[tuple[float, float]]] = {1: [], cores: []}
        for _ in range(args.repeats):  # interleaved, so a change in load hits both
            for jobs in runs:
                runs[jobs].append(timed_build(src, jobs))
        results[name] = {
            "lines": len(src.splitlines()),
            "units": len(segment_units(src, 10**6)),
            "builds": {
                str(j): {
                    "wall_s": statistics.median(w for w, _ in r),
                    "cpu_s": statistics.median(c for _, c in r),
                    "walls": [w for w, _ in r],
                }
                for j, r in runs.items()
            },
            "each_unit": each_unit(src),
        }
    info["load_end"] = os.getloadavg()[0]
    info["nvcc"] = nvcc_version()
    info["command"] = " ".join(["python benchmarks/nvcc_units.py", *sys.argv[1:]])
    results_io.save("nvcc_units", {"machine": info, "cases": results}, markdown(info, results))


def markdown(info: dict[str, Any], results: dict[str, Any]) -> str:
    cores = info["nproc"]
    lines = [
        "# nvcc for GPT-2 small's generated CUDA: one translation unit vs one a core",
        "",
        f"{info['date']} · {info['cpu']} · {cores} CPUs · {info['nvcc']} · "
        f"load average {info['loadavg_start']:.1f} at start, {info['load_end']:.1f} at end",
        "",
        f"Command: `{info['command']}` (medians of the repeats, each build with an empty cache)",
        "",
        f"| case | lines | units | 1 TU wall (CPU) | {cores} TUs wall (CPU) | "
        "slowest unit alone + link |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        one, many = r["builds"]["1"], r["builds"].get(str(cores), r["builds"]["1"])
        e = r["each_unit"]
        lines.append(
            f"| {name} | {r['lines']} | {r['units']} | {one['wall_s']:.2f} s ({one['cpu_s']:.2f}) "
            f"| {many['wall_s']:.2f} s ({many['cpu_s']:.2f}) "
            f"| {max(e['units']):.2f} + {e['link_s']:.2f} = {e['one_core_per_unit_s']:.2f} s |"
        )
    lines += [
        "",
        "Each unit alone (seconds, file order, the entry last): "
        + "; ".join(
            f"{n}: " + ", ".join(f"{t:.2f}" for t in r["each_unit"]["units"])
            for n, r in results.items()
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
