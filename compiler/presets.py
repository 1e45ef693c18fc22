"""Named device presets and `--target a+b+c` clusters built from them.

Figures are vendor datasheet numbers (dense, no sparsity); sources in docs/presets.md.
A target such as `h100+cpu` instantiates one device per name (`gpu0`, `cpu0`, ...),
hangs every non-CPU device off the first CPU, and adds links between them.
"""

from __future__ import annotations

from dataclasses import replace

from gimlet.cluster import Cluster, Device, Link
from gimlet.errors import UserError

T, G = 1e12, 1e9
GB = 1e9

PRESETS: dict[str, Device] = {
    # NVIDIA H100 SXM5 80GB datasheet: 989 TFLOPS bf16/f16 dense, 67 TFLOPS f32,
    # 3.35 TB/s HBM3, 700 W, NVLink 4 900 GB/s.
    "h100": Device(
        name="gpu",
        kind="nvidia",
        peak_flops={"bf16": 989 * T, "f16": 989 * T, "f32": 67 * T, "i8": 1979 * T},
        mem_bandwidth=3.35e12,
        mem_capacity=80 * GB,
        launch_overhead=5e-6,
        power_w=700,
        price_per_hour=2.5,
        model="NVIDIA H100 SXM5 80GB",
    ),
    # A 2-socket-class server CPU (Intel Xeon Platinum 8480+, 56 cores, AMX):
    # ~115 TFLOPS bf16 (AMX), ~7 TFLOPS f32 (AVX-512), 8x DDR5-4800 = 307 GB/s.
    "cpu": Device(
        name="cpu",
        kind="cpu",
        peak_flops={"bf16": 115 * T, "f16": 7 * T, "f32": 7 * T},
        mem_bandwidth=307 * G,
        mem_capacity=1024 * GB,
        launch_overhead=2e-6,
        power_w=350,
        price_per_hour=1.0,
        model="Intel Xeon Platinum 8480+",
    ),
}

_PREFIX = {"nvidia": "gpu", "amd": "gpu", "cpu": "cpu", "accelerator": "acc"}


def preset(name: str) -> Device:
    key = name.lower()
    if key not in PRESETS:
        import difflib

        close = difflib.get_close_matches(key, PRESETS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown device preset '{name}'{hint}; presets: {', '.join(PRESETS)}")
    return PRESETS[key]


def target(spec: str) -> Cluster:
    """`h100+cpu`, `2xh100+cpu`, `b200+sram+cpu` -> a Cluster with one device per part."""
    parts: list[Device] = []
    for item in spec.split("+"):
        item = item.strip()
        count, _, name = (
            item.partition("x") if item[:1].isdigit() and "x" in item else ("1", "", item)
        )
        if not count.isdigit() or not name:
            raise UserError(f"bad --target part '{item}' (expected NAME or Nxname)")
        parts += [preset(name)] * int(count)
    if not any(p.kind == "cpu" for p in parts):
        parts.append(PRESETS["cpu"])
    counters: dict[str, int] = {}
    devices: dict[str, Device] = {}
    for p in parts:
        prefix = _PREFIX[p.kind]
        n = counters.get(prefix, 0)
        counters[prefix] = n + 1
        devices[f"{prefix}{n}"] = replace(p, name=f"{prefix}{n}")
    host = next(n for n, d in devices.items() if d.kind == "cpu")
    for n, d in list(devices.items()):
        if d.kind != "cpu":
            devices[n] = replace(d, host=host)
    # Same-vendor GPUs in one target talk over their fabric; anything else bounces via the host.
    links = []
    names = list(devices)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            da, db = devices[a], devices[b]
            if da.kind == db.kind == "nvidia":
                links.append(
                    Link(a, b, 450 * G, 2e-6, "nvlink")
                )  # NVLink 4: 900 GB/s bidirectional
            elif da.kind == db.kind == "amd":
                links.append(Link(a, b, 64 * G, 2e-6, "xgmi"))
    return Cluster(devices, links, name=spec)
