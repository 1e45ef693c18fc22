"""Named device presets and `--target a+b+c` clusters built from them.

Presets let a user name real hardware instead of typing its datasheet: `--target h100+cpu`
or `device gpu0 : h100` in a `.cluster` file. Figures are vendor datasheet numbers (dense,
no sparsity) so the cost model compares parts on equal terms; sources and the measured H100
figures are in docs/presets.md. Prices are indicative on-demand cloud rates, only good for
ranking plans by cost.

A target such as `h100+cpu` instantiates one device per name (`gpu0`, `cpu0`, ...), hangs
every non-CPU device off the first CPU, and links same-vendor GPUs by their fabric; anything
else (NVIDIA <-> AMD, GPU <-> accelerator) reaches the other side by a host bounce.
"""

from __future__ import annotations

import difflib
from dataclasses import replace

from gimlet.errors import UserError
from gimlet.placement.cluster import DEFAULT_HOST_LINK, Cluster, Device, Link

T, G = 1e12, 1e9
GB = 1e9

# Ops an SRAM decode accelerator runs: transformer blocks (matmul, attention, norms,
# activations, elementwise, reductions, layout). No convolutions, pooling, batch norm or
# cumsum: those stay on the GPU or CPU.
SRAM_OPS = frozenset(
    f"gml.{op}"
    for op in (
        *("matmul", "sdpa", "softmax", "log_softmax", "layer_norm", "embedding", "gather"),
        *("add", "sub", "mul", "div", "neg", "abs", "pow", "sqrt", "rsqrt", "reciprocal"),
        *("exp", "log", "erf", "tanh", "sigmoid", "relu", "gelu", "silu", "sin", "cos"),
        *("clamp", "maximum", "minimum", "where", "eq", "ne", "lt", "le", "gt", "ge"),
        *("and", "or", "not", "any", "sum", "mean", "amax", "amin", "cast", "index"),
        *("reshape", "permute", "expand", "slice", "concat", "full", "arange", "dim"),
        *("constant", "param", "fusion", "yield"),
    )
)

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
    # NVIDIA H200 SXM datasheet: same Hopper die as H100 (989 TFLOPS bf16 dense, 67 f32),
    # 141 GB HBM3e at 4.8 TB/s, up to 700 W.
    "h200": Device(
        name="gpu",
        kind="nvidia",
        peak_flops={"bf16": 989 * T, "f16": 989 * T, "f32": 67 * T, "i8": 1979 * T},
        mem_bandwidth=4.8e12,
        mem_capacity=141 * GB,
        launch_overhead=5e-6,
        power_w=700,
        price_per_hour=3.5,
        model="NVIDIA H200 SXM 141GB",
    ),
    # NVIDIA B200 as in HGX/DGX B200 (1000 W): 2.25 PFLOPS bf16/f16 dense (4.5 sparse),
    # 75 TFLOPS f32, 4.5 POPS i8 dense, 180 GB HBM3e at 8 TB/s (DGX B200: 1,440 GB, 64 TB/s
    # for 8 GPUs).
    "b200": Device(
        name="gpu",
        kind="nvidia",
        peak_flops={"bf16": 2250 * T, "f16": 2250 * T, "f32": 75 * T, "i8": 4500 * T},
        mem_bandwidth=8e12,
        mem_capacity=180 * GB,
        launch_overhead=5e-6,
        power_w=1000,
        price_per_hour=6.0,
        model="NVIDIA B200 (HGX, 180GB)",
    ),
    # AMD Instinct MI300X data sheet: 1307.4 TFLOPS bf16/f16 dense, 163.4 TFLOPS f32
    # (matrix), 2614.9 TOPS i8 dense, 192 GB HBM3 at 5.3 TB/s, 750 W.
    "mi300x": Device(
        name="gpu",
        kind="amd",
        peak_flops={"bf16": 1307.4 * T, "f16": 1307.4 * T, "f32": 163.4 * T, "i8": 2614.9 * T},
        mem_bandwidth=5.3e12,
        mem_capacity=192 * GB,
        launch_overhead=5e-6,
        power_w=750,
        price_per_hour=2.5,
        model="AMD Instinct MI300X 192GB",
    ),
    # An SRAM-heavy decode accelerator modelled on d-Matrix Corsair (one PCIe card): 2 GB
    # of on-chip SRAM at 150 TB/s, 2400 TFLOPS at 8-bit (MXINT8). Only the SRAM tier is
    # modelled (not the 256 GB LPDDR5X). bf16/f16/f32 peaks are not published: assumed
    # 1/4 and 1/16 of the 8-bit peak. Power and price are assumptions too.
    "sram": Device(
        name="acc",
        kind="accelerator",
        peak_flops={"bf16": 600 * T, "f16": 600 * T, "f32": 150 * T, "i8": 2400 * T},
        mem_bandwidth=150e12,
        mem_capacity=2 * GB,
        launch_overhead=2e-6,
        dtypes=frozenset({"f32", "f16", "bf16", "i64", "i32", "i8", "i1"}),
        ops=SRAM_OPS,
        power_w=600,
        price_per_hour=3.0,
        model="SRAM decode accelerator (d-Matrix Corsair-class)",
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

ALIASES: dict[str, str] = {"corsair": "sram", "dmatrix": "sram", "d-matrix": "sram"}

# Bandwidth (bytes/s, each direction) and latency (s) of the links gimlet knows figures for.
LINK_DEFAULTS: dict[str, tuple[float, float]] = {
    "pcie": DEFAULT_HOST_LINK,  # measured on the lent H100 machine
    "nvlink": (450 * G, 2e-6),  # NVLink 4: 900 GB/s bidirectional
    "xgmi": (64 * G, 2e-6),  # one Infinity Fabric link: 128 GB/s bidirectional
}

_PREFIX = {"nvidia": "gpu", "amd": "gpu", "cpu": "cpu", "accelerator": "acc"}


def lookup(name: str) -> Device | None:
    """The preset called `name` (any case, aliases accepted), or None."""
    key = name.lower()
    return PRESETS.get(ALIASES.get(key, key))


def preset(name: str) -> Device:
    found = lookup(name)
    if found is None:
        close = difflib.get_close_matches(name.lower(), [*PRESETS, *ALIASES], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown device preset '{name}'{hint}; presets: {', '.join(PRESETS)}")
    return found


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
    for dev_name, d in list(devices.items()):
        if d.kind != "cpu":
            devices[dev_name] = replace(d, host=host)
    # Same-vendor GPUs in one target talk over their fabric; anything else bounces via the host.
    fabric = {"nvidia": "nvlink", "amd": "xgmi"}
    links = []
    names = list(devices)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            kind = devices[a].kind
            if kind == devices[b].kind and kind in fabric:
                bandwidth, latency = LINK_DEFAULTS[fabric[kind]]
                links.append(Link(a, b, bandwidth, latency, fabric[kind]))
    return Cluster(devices, links, name=spec)
