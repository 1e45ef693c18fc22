"""benchmarks/gpu_placements.py's BLAS check, without a GPU: which BLAS the C++ CPU
backend's runtime library loads, and the "no BLAS" mark on the rows that use cpu0 (the H200
machine's run 2 compared naive GEMM loops with the model, 100-120x, unmarked in the table)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    saved = list(sys.path)
    sys.path.insert(0, str(ROOT / "benchmarks"))  # its `from results_io import ...`
    try:
        path = ROOT / "benchmarks" / "gpu_placements.py"
        spec = importlib.util.spec_from_file_location("gpu_placements", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


LDD_OPENBLAS = """\
\tlinux-vdso.so.1 (0x00007f495ccc9000)
\tlibscipy_openblas64_.so => /tmp/site/scipy_openblas64/lib/libscipy_openblas64_.so (0x00007f495b400000)
\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f4958a00000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f495cccb000)
"""


def test_blas_in_ldd_takes_the_resolved_path(bench: ModuleType) -> None:
    path = "/tmp/site/scipy_openblas64/lib/libscipy_openblas64_.so"
    assert bench.blas_in_ldd(LDD_OPENBLAS) == path


def test_blas_in_ldd_none_when_absent_or_not_found(bench: ModuleType) -> None:
    no_blas = "\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f4958a00000)\n"
    assert bench.blas_in_ldd(no_blas) is None
    assert bench.blas_in_ldd("\tlibscipy_openblas64_.so => not found\n") is None


def _rows() -> dict[str, Any]:
    """Run 2's rows on the H200 machine (naive loops), trimmed to what the table reads."""
    return {
        "gpu0 only": {
            "predicted_ms": 1.006,
            "busy_ms": {"cpu0": 0.0, "gpu0": 0.918},
            "measured_ms": 1.068,
            "ratio": 1.0617,
            "max_abs_err": 1.46e-6,
        },
        "cpu0 only": {
            "predicted_ms": 3.138,
            "busy_ms": {"cpu0": 3.138},
            "measured_ms": 378.471,
            "ratio": 120.60,
            "max_abs_err": 1.55e-6,
        },
        "split cpu0/gpu0": {"predicted_ms": 1.898, "busy_ms": {"cpu0": 1.408, "gpu0": 0.472}},
    }


def test_rows_using_cpu0_are_marked_without_blas(bench: ModuleType) -> None:
    rows = _rows()
    assert bench.mark_naive_cpu(rows, None) == ["cpu0 only", "split cpu0/gpu0"]
    assert rows["cpu0 only"]["naive_cpu"] == bench.NO_BLAS
    assert "naive_cpu" not in rows["gpu0 only"]


def test_no_row_is_marked_with_blas(bench: ModuleType) -> None:
    rows = _rows()
    assert bench.mark_naive_cpu(rows, "/x/libscipy_openblas64_.so") == []
    assert not any("naive_cpu" in r for r in rows.values())


def test_table_shows_the_mark(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[str] = []
    monkeypatch.setattr(bench, "save", lambda stem, data, text: saved.append(text))
    rows = _rows()
    bench.mark_naive_cpu(rows, None)
    meta = {"gpu": "NVIDIA H200", "torch": "2.11", "model": "GPT", "command": "c"}
    bench.write(rows, meta)
    lines = saved[0].splitlines()
    assert "| cpu0 only | 3.138 | 378.471 | 120.60x (no BLAS) | 1.5e-06 |" in lines
    assert "| gpu0 only | 1.006 | 1.068 | 1.06x | 1.5e-06 |" in lines
    assert (
        "(no BLAS) cpu0 only, split cpu0/gpu0: no BLAS: naive C++ GEMM loops, not a test of "
        "the model." in lines
    )


def test_runtime_blas_finds_the_packages_openblas(bench: ModuleType) -> None:
    import scipy_openblas64

    blas = bench.runtime_blas()
    assert blas["library"] == str(Path(scipy_openblas64.get_lib_dir(), "libscipy_openblas64_.so"))
    assert blas["config"].startswith("OpenBLAS 0.3.")


def test_without_the_package_the_backend_reports_no_blas(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "scipy_openblas64", None)  # `import` raises ImportError
    monkeypatch.setenv("GIMLET_CACHE_DIR", str(tmp_path))  # the -DGML_NO_BLAS runtime, built
    info = bench.cpu_backend_info()
    assert info["blas_library"] is None
    assert info["blas"].startswith("none: naive C++ loops")


def test_model_launch_is_cost_pys_h200_figure(bench: ModuleType) -> None:
    from gimlet.placement import cost

    expected = cost.MEASURED_LAUNCH_OVERHEAD["NVIDIA H200 SXM 141GB"] * 1e6
    assert bench.model_launch_us() == pytest.approx(expected)


def test_table_reports_the_fit_beside_the_models_figure(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved: list[str] = []
    monkeypatch.setattr(bench, "save", lambda stem, data, text: saved.append(text))
    rows = _rows()
    rows["gpu0 only"].update(
        gpu0_ops=207, gpu0_roofline_ms=0.234, fitted_launch_us=4.03, model_launch_us=3.3
    )
    bench.write(rows, {"gpu": "NVIDIA H200", "torch": "2.11", "model": "GPT", "command": "c"})
    assert saved[0].splitlines()[-1] == (
        "gpu0 alone: 207 ops, calibrated roofline 0.234 ms; fitted per-op overhead of gimlet's "
        "backend 4.03 us; the model predicted with 3.30 us (cost.py's "
        "MEASURED_LAUNCH_OVERHEAD for this GPU, set by hand from this fit)."
    )


STATEMENT = (
    "# measured\n"
    "device cpu0 : cpu {\n"
    "  peak_flops = { f32: 131.6 GFLOPS, f16: 131.6 GFLOPS, bf16: 131.6 GFLOPS }\n"
    "  mem_bandwidth = 30.8 GB/s\n  mem_capacity = 25.28 GB\n  launch_overhead = 1.909 us\n"
    '  model = "AMD EPYC"\n}\n'
)


def test_measured_cluster_is_h200_cpu_with_the_measured_cpu(bench: ModuleType) -> None:
    """--cpu measured: the devices, order and links of h200+cpu; only cpu0's figures differ."""
    from gimlet.placement.cluster_lang import parse_cluster
    from gimlet.placement.presets import target

    measured, preset = parse_cluster(bench.measured_cluster(STATEMENT)), target("h200+cpu")
    assert list(measured.devices) == list(preset.devices) == ["gpu0", "cpu0"]
    assert measured.devices["gpu0"] == preset.devices["gpu0"]
    assert measured.links == preset.links
    cpu0 = measured.devices["cpu0"]
    assert (cpu0.model, cpu0.peak_flops["f32"], cpu0.mem_bandwidth) == ("AMD EPYC", 131.6e9, 30.8e9)


def test_measured_results_record_the_statement_apart(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved: list[tuple[str, Any, str]] = []
    monkeypatch.setattr(bench, "save", lambda stem, data, text: saved.append((stem, data, text)))
    figures = {
        "seconds": 1.4,
        "gemm_gflops": 97.4,
        "bandwidth_gbs": 27.7,
        "op_overhead_us": 1.9,
        "statement": STATEMENT,
    }
    meta = {"gpu": None, "torch": "2.13", "model": "GPT", "command": "c"}
    bench.write(_rows(), {**meta, "cpu0_measured": figures, "stem": "gpu_placements_cpu_measured"})
    stem, data, text = saved[0]
    assert stem == "gpu_placements_cpu_measured"  # the preset's results stay
    assert data["meta"]["cpu0_measured"]["statement"] == STATEMENT
    assert "f32 GEMM 97.4 GFLOP/s, streaming add 27.7 GB/s, 1.9 us per op" in text
    assert "```\n" + STATEMENT + "```\n" in text
    bench.write(_rows(), meta)
    assert saved[1][0] == "gpu_placements"
