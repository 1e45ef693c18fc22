"""The cluster model, device presets and the `.cluster` language (compiler/placement/cluster_lang.py).

Placement trusts these figures blindly, so units, defaults and routes are checked to the
exact float, and every error message is pinned: it is the whole user interface of a
mistake in a `.cluster` file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gimlet.errors import UserError
from gimlet.placement.cluster import DEFAULT_HOST_LINK, Device, Link
from gimlet.placement.cluster_lang import (
    ClusterFileError,
    load_cluster,
    parse_cluster,
    resolve_target,
)
from gimlet.placement.presets import LINK_DEFAULTS, PRESETS, SRAM_OPS, preset, target

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PCIE_BW, PCIE_LAT = DEFAULT_HOST_LINK
MB = 1_000_000


def test_h100_cpu_example_matches_the_preset_target() -> None:
    c = load_cluster(EXAMPLES / "h100_cpu.cluster")
    t = target("h100+cpu")
    assert c.name == "h100-cpu"
    assert c.devices == {n: t.devices[n] for n in ("cpu0", "gpu0")}
    assert c.links == [Link("gpu0", "cpu0", 55e9, 12e-6, "pcie")]
    assert c.transfer_time("gpu0", "cpu0", MB) == t.transfer_time("gpu0", "cpu0", MB)


def test_b200_sram_cpu_example() -> None:
    c = load_cluster(EXAMPLES / "b200_sram_cpu.cluster")
    assert list(c.devices) == ["cpu0", "gpu0", "acc0"]
    acc = c.devices["acc0"]
    assert acc == PRESETS["sram"].__class__(
        **{**PRESETS["sram"].__dict__, "name": "acc0", "host": "cpu0", "price_per_hour": 2.5}
    )
    assert c.devices["gpu0"].model == PRESETS["b200"].model
    route = c.route("gpu0", "acc0")
    assert route.transport == "host_bounce"
    assert [(h.a, h.b) for h in route.hops] == [("gpu0", "cpu0"), ("acc0", "cpu0")]
    assert c.transfer_time("gpu0", "acc0", MB) == 2 * (12e-6 + MB / 55e9)


def test_three_cpus_example() -> None:
    c = resolve_target(str(EXAMPLES / "three_cpus.cluster"))
    assert list(c.devices) == ["cpu0", "cpu1", "cpu2"]
    assert all(d.kind == "cpu" for d in c.devices.values())
    assert c.route("cpu0", "cpu1").transport == "pcie"
    assert c.route("cpu2", "cpu0").transport == "network"
    assert c.transfer_time("cpu1", "cpu2", MB) == 10e-6 + MB / 12.5e9


@pytest.mark.parametrize(
    ("text", "si"),
    [
        ("1.5 PFLOPS", 1.5e15),
        ("300 TFLOPS", 300e12),
        ("300 TFLOP/s", 300e12),
        ("7 GFLOPS", 7e9),
        ("2400 TOPS", 2400e12),
    ],
)
def test_compute_units(text: str, si: float) -> None:
    c = parse_cluster(f"device a : cpu {{ peak_flops = {{ f32: {text} }} }}")
    assert c.devices["a"].peak_flops["f32"] == si


@pytest.mark.parametrize(
    ("field", "text", "attr", "si"),
    [
        ("mem_bandwidth", "3.35 TB/s", "mem_bandwidth", 3.35e12),
        ("mem_bandwidth", "55 GB/s", "mem_bandwidth", 55e9),
        ("mem_bandwidth", "800 MB/s", "mem_bandwidth", 800e6),
        ("mem_bandwidth", "2 GiB/s", "mem_bandwidth", 2 * 2.0**30),
        ("mem_bandwidth", "1 KiB/s", "mem_bandwidth", 1024.0),
        ("mem_bandwidth", "10 B/s", "mem_bandwidth", 10.0),
        ("mem_capacity", "80 GB", "mem_capacity", 80e9),
        ("mem_capacity", "1.5 TB", "mem_capacity", 1.5e12),
        ("mem_capacity", "64 MiB", "mem_capacity", 64 * 2.0**20),
        ("mem_capacity", "2 TiB", "mem_capacity", 2 * 2.0**40),
        ("mem_capacity", "512 KB", "mem_capacity", 512e3),
        ("launch_overhead", "5 us", "launch_overhead", 5e-6),
        ("launch_overhead", "5 \u00b5s", "launch_overhead", 5e-6),
        ("launch_overhead", "0.5 ms", "launch_overhead", 0.5e-3),
        ("launch_overhead", "800 ns", "launch_overhead", 800e-9),
        ("launch_overhead", "1e-3 s", "launch_overhead", 1e-3),
        ("power", "700 W", "power_w", 700.0),
        ("power", "1.2 kW", "power_w", 1200.0),
        ("price", "2.5 $/h", "price_per_hour", 2.5),
    ],
)
def test_units(field: str, text: str, attr: str, si: float) -> None:
    c = parse_cluster(f"device a : cpu {{ {field} = {text} }}")
    assert getattr(c.devices["a"], attr) == si


def test_custom_device_defaults_and_fields() -> None:
    c = parse_cluster(
        """# every required figure, the rest from Device's defaults
cluster "custom"
device cpu0 : cpu
device acc0 : accelerator {
  peak_flops = { bf16: 1.2 PFLOPS, f16: 1.2 PFLOPS, f32: 300 TFLOPS }
  mem_bandwidth = 150 TB/s
  mem_capacity = 2 GB   # SRAM
  host = cpu0
}
device acc1 : accelerator { peak_flops = {f32: 1 TFLOPS}, mem_bandwidth = 1 TB/s,
  mem_capacity = 1 GB, dtypes = [f32, i8], ops = [matmul, gml.add], power = 250 W,
  price = 3.0 $/h, launch_overhead = 2 us, model = "Acme X1", }
"""
    )
    assert c.name == "custom"
    acc0, acc1 = c.devices["acc0"], c.devices["acc1"]
    assert acc0 == Device(
        name="acc0",
        kind="accelerator",
        peak_flops={"bf16": 1.2e15, "f16": 1.2e15, "f32": 300e12},
        mem_bandwidth=150e12,
        mem_capacity=2e9,
        host="cpu0",
    )
    assert acc1 == Device(
        name="acc1",
        kind="accelerator",
        peak_flops={"f32": 1e12},
        mem_bandwidth=1e12,
        mem_capacity=1e9,
        launch_overhead=2e-6,
        dtypes=frozenset({"f32", "i8"}),
        ops=frozenset({"gml.matmul", "gml.add"}),
        power_w=250.0,
        price_per_hour=3.0,
        model="Acme X1",
    )
    assert acc1.host is None and c.direct_link("acc1", "cpu0") is None
    # a host without a declared link gets the default PCIe link
    assert c.direct_link("acc0", "cpu0") == Link("acc0", "cpu0", PCIE_BW, PCIE_LAT, "pcie")


def test_preset_override_merges_peak_flops() -> None:
    c = parse_cluster(
        "device cpu0 : cpu\n"
        "device gpu0 : H100 { host = cpu0, mem_capacity = 94 GB, peak_flops = { f32: 60 TFLOPS } }\n"
        "device acc0 : corsair { ops = * }\n"
    )
    gpu, h100 = c.devices["gpu0"], PRESETS["h100"]
    assert gpu.mem_capacity == 94e9 and gpu.host == "cpu0" and gpu.name == "gpu0"
    assert gpu.peak_flops == {**h100.peak_flops, "f32": 60e12}
    assert (gpu.kind, gpu.mem_bandwidth, gpu.model) == ("nvidia", h100.mem_bandwidth, h100.model)
    assert c.devices["acc0"].kind == "accelerator" and c.devices["acc0"].ops == frozenset({"*"})
    assert c.devices["cpu0"] == PRESETS["cpu"].__class__(
        **{**PRESETS["cpu"].__dict__, "name": "cpu0"}
    )


def test_crlf_and_layout() -> None:
    c = parse_cluster(
        'cluster "w"\r\n\r\n# note\r\ndevice cpu0 : cpu\r\ndevice gpu0 : h100 {\r\n'
        "  host = cpu0,\r\n  # a comment inside a block\r\n  power = 600 W,\r\n}\r\n"
        "link gpu0<->cpu0:pcie{latency=10us}"
    )
    assert c.name == "w" and c.devices["gpu0"].power_w == 600.0
    assert c.links == [Link("gpu0", "cpu0", PCIE_BW, 10e-6, "pcie")]


def test_link_defaults_and_routes() -> None:
    c = parse_cluster(
        """device cpu0 : cpu
device gpu0 : h100 { host = cpu0 }
device gpu1 : h100 { host = cpu0 }
device gpu2 : mi300x { host = cpu0 }
device acc0 : sram { host = cpu0 }
link gpu0 <-> gpu1 : nvlink
link acc0 <-> gpu1 : pcie { bandwidth = 64 GB/s, latency = 5 us }
"""
    )
    nv_bw, nv_lat = LINK_DEFAULTS["nvlink"]
    assert c.route("gpu1", "gpu0").transport == "nvlink"
    assert c.transfer_time("gpu0", "gpu1", MB) == nv_lat + MB / nv_bw
    # a declared link wins over the host bounce
    assert c.route("gpu1", "acc0").hops == (Link("acc0", "gpu1", 64e9, 5e-6, "pcie"),)
    assert c.transfer_time("gpu1", "acc0", MB) == 5e-6 + MB / 64e9
    # nvidia <-> amd and gpu <-> accelerator without a link: through cpu0
    for src, dst in (("gpu0", "gpu2"), ("gpu2", "gpu1"), ("gpu0", "acc0")):
        route = c.route(src, dst)
        assert route.transport == "host_bounce"
        assert [h.kind for h in route.hops] == ["pcie", "pcie"]
        assert c.transfer_time(src, dst, MB) == 2 * (PCIE_LAT + MB / PCIE_BW)
    assert c.transfer_time("gpu0", "gpu0", MB) == 0.0
    assert c.transfer_time("gpu0", "cpu0", MB) == PCIE_LAT + MB / PCIE_BW


def test_target_b200_mi300x_cpu_bounces_through_the_host() -> None:
    c = target("b200+mi300x+cpu")
    assert {n: d.model for n, d in c.devices.items()} == {
        "gpu0": PRESETS["b200"].model,
        "gpu1": PRESETS["mi300x"].model,
        "cpu0": PRESETS["cpu"].model,
    }
    assert c.devices["gpu1"].kind == "amd"
    assert c.direct_link("gpu0", "gpu1") is None
    route = c.route("gpu0", "gpu1")
    assert route.transport == "host_bounce"
    assert [(h.a, h.b) for h in route.hops] == [("gpu0", "cpu0"), ("gpu1", "cpu0")]
    assert c.transfer_time("gpu1", "gpu0", MB) == 2 * (PCIE_LAT + MB / PCIE_BW)


def test_target_same_vendor_fabrics() -> None:
    c = target("2xmi300x+2xh200+sram")
    assert list(c.devices) == ["gpu0", "gpu1", "gpu2", "gpu3", "acc0", "cpu0"]
    assert c.route("gpu0", "gpu1").transport == "xgmi"
    assert c.route("gpu2", "gpu3").transport == "nvlink"
    assert c.route("gpu1", "gpu2").transport == "host_bounce"
    assert c.route("acc0", "gpu3").transport == "host_bounce"


def test_presets() -> None:
    assert {"h100", "h200", "b200", "mi300x", "sram", "cpu"} <= set(PRESETS)
    assert preset("Corsair") is PRESETS["sram"] and preset("MI300X") is PRESETS["mi300x"]
    sram, gpus = PRESETS["sram"], [PRESETS[n] for n in ("h100", "h200", "b200", "mi300x")]
    assert sram.mem_capacity == 2e9 and sram.mem_bandwidth == 150e12
    assert all(sram.mem_bandwidth >= 18 * g.mem_bandwidth for g in gpus)
    assert all(g.peak_flops["bf16"] > sram.peak_flops["bf16"] for g in gpus)
    from gimlet.dialects.gml import GML

    assert {op.name for op in GML.operations} >= SRAM_OPS
    for d in PRESETS.values():
        assert d.power_w and d.price_per_hour and d.model
    with pytest.raises(UserError, match=r"^unknown device preset 'h300' \(did you mean 'h200'\?\)"):
        target("h300+cpu")


def test_resolve_target(tmp_path: Path) -> None:
    assert resolve_target("h100+cpu").name == "h100+cpu"
    path = tmp_path / "mine.cluster"
    path.write_text("device cpu0 : cpu\n")
    assert resolve_target(str(path)).name == "mine"
    with pytest.raises(UserError, match=r"^cannot read cluster file 'nope\.cluster': "):
        resolve_target("nope.cluster")


DEVS = "device cpu0 : cpu\ndevice gpu0 : h100 { host = cpu0 }\n"
FLOPS = "FLOPS, GFLOPS, TFLOPS, PFLOPS, FLOP/s, GFLOP/s, TFLOP/s, PFLOP/s, TOPS, POPS"
SIZES = "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"
KINDS_AND_PRESETS = (
    "kinds: nvidia, amd, cpu, accelerator; presets: h100, h200, b200, mi300x, sram, cpu"
)
FIELDS = (
    "peak_flops, mem_bandwidth, mem_capacity, launch_overhead, dtypes, ops, power, price, "
    "host, model, backend"
)
DTYPES = "dtypes: f64, f32, f16, bf16, i64, i32, i16, i8, u8, i1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # syntax
        ("device gpu0 h100\n", "1:13: unexpected 'h100'; expected ':'"),
        (
            "device gpu0 : h100 {\n  host = cpu0\n",
            "3:1: unexpected end of file; expected '}' or a name",
        ),
        (
            "device gpu0 : h100 { host = cpu0 ! }",
            "1:34: unexpected character '!'; expected ',' or '}' or end of line",
        ),
        ("device a : cpu\nlink a <- b : pcie", "2:8: unexpected character '<'; expected '<->'"),
        ("cluster h100", "1:9: unexpected 'h100'; expected a \"string\""),
        ("device a : cpu\n}", "2:1: unexpected '}'; expected 'cluster' or 'device' or 'link'"),
        ("device a :\n", "1:11: unexpected end of line; expected a name"),
        (
            "device a : cpu { mem_capacity = 2 GB3 }",
            "1:35: unexpected 'GB3'; expected ',' or '}' or a unit or end of line",
        ),
        # unknown preset or kind, field, link kind
        (
            "device gpu0 : h10",
            f"1:15: unknown device kind or preset 'h10' (did you mean 'h100'?); {KINDS_AND_PRESETS}",
        ),
        (
            "device gpu0 : nvidai",
            "1:15: unknown device kind or preset 'nvidai' (did you mean 'nvidia'?); "
            + KINDS_AND_PRESETS,
        ),
        (
            "device gpu0 : h100 { mem_bw = 5 TB/s }",
            "1:22: unknown field 'mem_bw' for a device (did you mean 'mem_bandwidth'?); "
            f"fields: {FIELDS}",
        ),
        (
            DEVS + "link gpu0 <-> cpu0 : pcie { bandwith = 5 GB/s }",
            "3:29: unknown field 'bandwith' for a link (did you mean 'bandwidth'?); "
            "fields: bandwidth, latency",
        ),
        (
            DEVS + "link gpu0 <-> cpu0 : pci",
            "3:22: unknown link kind 'pci' (did you mean 'pcie'?); "
            "link kinds: nvlink, pcie, network, xgmi, cxl",
        ),
        (
            "device a : cpu {\n  power = 5 W\n  power = 6 W\n}",
            "3:3: field 'power' given twice (first at line 2)",
        ),
        # missing figures
        (
            "device acc0 : accelerator {\n  mem_capacity = 2 GB\n}",
            "1:8: device 'acc0' is missing peak_flops, mem_bandwidth "
            "(required for kind 'accelerator' without a preset)",
        ),
        (
            DEVS + "link gpu0 <-> cpu0 : network { latency = 10 us }",
            "3:22: network link gpu0 <-> cpu0 needs bandwidth (network links have no default)",
        ),
        # units and values
        (
            "device a : cpu { mem_capacity = 80 GB/s }",
            f"1:36: bad unit 'GB/s' for mem_capacity (did you mean 'GB'?); accepted: {SIZES}",
        ),
        (
            "device a : cpu { launch_overhead = 5 usec }",
            "1:38: bad unit 'usec' for launch_overhead (did you mean 'us'?); "
            "accepted: s, ms, us, \u00b5s, ns",
        ),
        (
            "device a : cpu { peak_flops = { bf16: 2 TB/s } }",
            f"1:41: bad unit 'TB/s' for peak_flops.bf16; accepted: {FLOPS}",
        ),
        ("device a : cpu { power = 700 }", "1:26: power needs a unit; accepted: W, kW"),
        ("device a : cpu { power = big }", "1:26: power expects a power such as 700 W"),
        (
            "device a : cpu { peak_flops = 3 TFLOPS }",
            "1:31: peak_flops expects a map such as { bf16: 989 TFLOPS }",
        ),
        ("device a : cpu { dtypes = f32 }", "1:27: dtypes expects a list such as [f32, bf16]"),
        ('device a : cpu { host = "cpu0" }', "1:25: host expects a device name such as cpu0"),
        ("device a : cpu { model = h100 }", '1:26: model expects a "string"'),
        # dtypes and ops
        (
            "device a : cpu { dtypes = [f32, fp16] }",
            f"1:33: unknown dtype 'fp16' (did you mean 'f16'?); {DTYPES}",
        ),
        (
            "device a : cpu { peak_flops = { float32: 1 TFLOPS } }",
            f"1:33: unknown dtype 'float32' (did you mean 'f32'?); {DTYPES}",
        ),
        (
            "device a : cpu { ops = [gml.matmul, gml.matmull] }",
            "1:37: unknown op 'gml.matmull' (did you mean 'gml.matmul'?); "
            "ops are gml op names or *",
        ),
        (
            "device a : cpu { ops = [softmaks] }",
            "1:25: unknown op 'softmaks' (did you mean 'gml.softmax'?); ops are gml op names or *",
        ),
        # device names
        (
            DEVS + "device gpu0 : h200",
            "3:8: duplicate device 'gpu0' (first declared at line 2)",
        ),
        (
            DEVS + "link gpu0 <-> gpu1 : nvlink",
            "3:15: unknown device 'gpu1' (did you mean 'gpu0'?); devices: cpu0, gpu0",
        ),
        (
            "device gpu0 : h100 { host = cpu1 }\ndevice cpu0 : cpu",
            "1:29: unknown device 'cpu1' (did you mean 'cpu0'?); devices: gpu0, cpu0",
        ),
        ("device cpu0 : cpu { host = cpu0 }", "1:28: device 'cpu0' cannot be its own host"),
        (
            DEVS + "device acc0 : sram { host = gpu0 }",
            "3:29: host 'gpu0' is not a cpu (its kind is nvidia)",
        ),
        (DEVS + "link gpu0 <-> gpu0 : pcie", "3:15: link from 'gpu0' to itself"),
        (
            DEVS + "link gpu0 <-> cpu0 : pcie\nlink cpu0 <-> gpu0 : pcie",
            "4:6: second link between 'cpu0' and 'gpu0'",
        ),
        ('cluster "a"\ncluster "b"', "2:9: cluster named twice (first at line 1)"),
        ("# nothing here\n", "1:1: no devices declared"),
        ("device a : cpu { peak_flops = {} }", "1:31: peak_flops needs at least one dtype"),
        # figures must be positive
        (
            "device a : cpu { mem_capacity = -1 GB }",
            "1:33: mem_capacity must be positive, got -1 GB",
        ),
        (
            "device a : cpu { peak_flops = { f32: 0 TFLOPS } }",
            "1:38: peak_flops.f32 must be positive, got 0 TFLOPS",
        ),
        (
            DEVS + "link gpu0 <-> cpu0 : pcie { latency = 0 us }",
            "3:39: latency must be positive, got 0 us",
        ),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(ClusterFileError) as info:
        parse_cluster(text, "bad.cluster")
    assert str(info.value) == f"bad.cluster:{message}"
    assert isinstance(info.value, UserError)
    line, col = message.split(":")[:2]
    assert (info.value.line, info.value.column) == (int(line), int(col))


def test_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.cluster"
    path.write_text("device gpu0 : h100\ndevice gpu0 : h100\n")
    with pytest.raises(UserError) as info:
        load_cluster(path)
    assert str(info.value) == f"{path}:2:8: duplicate device 'gpu0' (first declared at line 1)"
