"""`gimletc measure-cpu` (compiler/measure_cpu.py): the statement it writes parses as is and
gives back a Device with the measured figures, the measurement itself gives sane positive
figures (no timing thresholds: a shared 2-core CI box may be slow at any moment), and the
command's help, output and errors."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from gimlet import cli
from gimlet.errors import UserError
from gimlet.measure_cpu import (
    CpuMeasurement,
    check_device_name,
    cpu_model,
    device_statement,
    measure,
    memory_bytes,
    to_device,
)
from gimlet.placement.cluster_lang import load_cluster, parse_cluster
from gimlet.placement.cost import MATMUL_EFFICIENCY, MEMORY_EFFICIENCY, OpCost, op_time

ROOT = Path(__file__).resolve().parents[1]
GIMLETC = str(Path(sys.executable).parent / "gimletc")

FIXED = CpuMeasurement(
    model='AMD EPYC 9654 96-Core "Genoa"',
    threads=16,
    gemm_flops=123.456e9,
    gemm_shape=(256, 1024, 1024),
    bandwidth=17.89e9,
    op_overhead=2.345e-6,
    fork_join=1.5e-6,
    mem_capacity=25.276e9,
    blas="OpenBLAS 0.3.27 DYNAMIC_ARCH",
    seconds=1.2,
)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-3)  # the statement keeps 4 significant digits


def test_statement_parses_to_a_device_with_the_figures() -> None:
    text = device_statement(FIXED, "cpu0")
    dev = parse_cluster(text).devices["cpu0"]
    assert dev.kind == "cpu" and dev.name == "cpu0"
    for dtype in ("f32", "f16", "bf16"):  # the backend runs half GEMMs in f32
        assert close(dev.peak_flops[dtype], FIXED.gemm_flops / MATMUL_EFFICIENCY)
    assert close(dev.mem_bandwidth, FIXED.bandwidth / MEMORY_EFFICIENCY)
    assert close(dev.mem_capacity, FIXED.mem_capacity)
    assert close(dev.launch_overhead, FIXED.op_overhead)
    assert dev.model == "AMD EPYC 9654 96-Core 'Genoa'"  # a string cannot hold a "
    assert to_device(FIXED) == dev


def test_calibrated_model_predicts_the_measured_rates() -> None:
    """The peaks are measured / efficiency, so the derated model gives the measured rates
    back (plus the measured per-op cost)."""
    dev = to_device(FIXED)
    gemm = OpCost(flops=1e12, bytes=1.0, dtype="f32", kind="matmul")
    assert close(op_time(gemm, dev) - dev.launch_overhead, 1e12 / FIXED.gemm_flops)
    stream = OpCost(flops=1.0, bytes=1e10, dtype="f32")
    assert close(op_time(stream, dev) - dev.launch_overhead, 1e10 / FIXED.bandwidth)


def test_statement_pastes_into_a_cluster_with_a_gpu() -> None:
    text = device_statement(FIXED, "host") + "device gpu0 : h200 { host = host }\n"
    cluster = parse_cluster(text)
    assert list(cluster.devices) == ["host", "gpu0"]
    assert cluster.route("gpu0", "host").transport == "pcie"


@pytest.mark.parametrize("name", ["cpu1", "_host", "node.cpu_0"])
def test_other_names(name: str) -> None:
    assert to_device(FIXED, name).name == name


@pytest.mark.parametrize("name", ["0cpu", "cpu-0", "cpu 0", "", "device", 'a"b'])
def test_bad_names_are_refused_clearly(name: str) -> None:
    with pytest.raises(UserError, match=r"is not a device name: letters, digits"):
        check_device_name(name)
    with pytest.raises(UserError, match=r"is not a device name"):
        device_statement(FIXED, name)


def test_cpu_model_and_memory_from_proc_text() -> None:
    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD  EPYC   7B13\n"
    assert cpu_model(x86) == "AMD EPYC 7B13"
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\n\nHardware\t: BCM2835\nModel\t: Raspberry Pi 4\n"
    assert cpu_model(arm) == "Raspberry Pi 4"
    assert cpu_model("processor : 0\n") == "unknown CPU"
    assert memory_bytes("MemTotal:       24684084 kB\nMemFree: 1 kB\n") == 24684084 * 1024
    with pytest.raises(UserError, match="MemTotal"):
        memory_bytes("MemFree: 1 kB\n")


@pytest.fixture(scope="module")
def measured() -> CpuMeasurement:
    """One real measurement (compiles the probes into this session's cache)."""
    return measure()


def test_measurement_gives_sane_positive_figures(measured: CpuMeasurement) -> None:
    m = measured
    finite = [m.gemm_flops, m.bandwidth, m.op_overhead, m.fork_join, m.mem_capacity]
    assert all(math.isfinite(v) for v in finite)
    # wide bounds: a phone core to a whole rack; only nonsense (units, a 0) fails
    assert 1e8 < m.gemm_flops < 1e15
    assert 1e8 < m.bandwidth < 1e13
    assert 0.0 <= m.fork_join <= m.op_overhead < 1e-3
    assert 1e8 < m.mem_capacity < 1e14
    assert m.threads >= 1 and m.model and m.seconds > 0
    assert m.gemm_shape == (256, 1024, 1024)
    assert to_device(m).peak_flops["f32"] > 0


def test_cli_help_explains() -> None:
    r = subprocess.run([GIMLETC, "measure-cpu", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for words in ("GEMM", "bandwidth", "--name", "-o", "--target", "GIMLET_CPU_THREADS"):
        assert words in r.stdout
    top = subprocess.run([GIMLETC, "--help"], capture_output=True, text=True).stdout
    assert "gimletc measure-cpu" in top


def test_cli_prints_the_statement(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("gimlet.measure_cpu.measure", lambda progress=None: FIXED)
    assert cli.main(["measure-cpu", "--name", "cpu3"]) == 0
    out = capsys.readouterr().out
    assert out == device_statement(FIXED, "cpu3")
    assert "device cpu3 : cpu {\n  peak_flops = { f32: 166.8 GFLOPS" in out
    assert "  mem_bandwidth = 19.88 GB/s\n" in out and "  launch_overhead = 2.345 us\n" in out


def test_cli_bad_name_fails_before_measuring(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(progress: object = None) -> CpuMeasurement:
        raise AssertionError("measured with a bad name")

    monkeypatch.setattr("gimlet.measure_cpu.measure", fail)
    assert cli.main(["measure-cpu", "--name", "cpu-0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gimletc: error: --name 'cpu-0' is not a device name")


def test_cli_writes_a_cluster_file(measured: CpuMeasurement, tmp_path: Path) -> None:
    """End to end: the file it writes is a cluster a target can name (the probes are
    already in this session's cache: the fixture compiled them)."""
    out = tmp_path / "here.cluster"
    r = subprocess.run(
        [GIMLETC, "measure-cpu", "-o", str(out)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and f"wrote device cpu0 to {out}" in r.stderr
    cluster = load_cluster(out)
    assert list(cluster.devices) == ["cpu0"]
    assert cluster.devices["cpu0"].model == cpu_model()
