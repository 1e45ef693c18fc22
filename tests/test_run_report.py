"""The run report (backends/report.py): what runs each segment of a bundle here, and why
that is not the backend gimletc compile chose. Machines are simulated: torch's CUDA check
is patched, and a stand-in `tensorrt` module makes TensorRT importable."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import torch

from gimlet.backends.report import SegmentRun, format_report, run_report

NO_TRT = "TensorRT is not installed here (no `tensorrt` module)"


def _manifest(
    *artefacts: dict[str, Any], devices: Any = ("cpu0", "gpu0", "cpu1", "gpu1", "gpu2")
) -> dict[str, Any]:
    return {
        "segments": [
            {"index": i, "device": devices[i], "artefact": a} for i, a in enumerate(artefacts)
        ]
    }


TRT_WITH_CUDA = {"kind": "tensorrt", "cuda": {"kind": "cuda"}}
TRT_ALONE = {"kind": "tensorrt", "cuda": None, "cuda_skipped": "no nvcc"}
MANIFEST = _manifest(
    {"kind": "cpu-cxx"},
    {"kind": "cuda"},
    {
        "kind": "interpreter",
        "fallback": "gml.conv (net.py:7): 1-d convolution",
        "fallback_from": "cpu-cxx",
    },
    TRT_WITH_CUDA,
    TRT_ALONE,
)


def _machine(monkeypatch: pytest.MonkeyPatch, gpu: bool, tensorrt: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    # None in sys.modules makes `import tensorrt` fail, as where it is not installed
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt") if tensorrt else None)


def test_without_gpu_or_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpu=False, tensorrt=False)
    assert format_report(run_report(MANIFEST), "gimletc") == (
        "gimletc: seg0 on cpu0: cpu-cxx\n"
        "gimletc: seg1 on gpu0: interpreter, not cuda: no CUDA GPU on this machine\n"
        "gimletc: seg2 on cpu1: interpreter, not cpu-cxx: the CPU backend could not compile "
        "it: gml.conv (net.py:7): 1-d convolution\n"
        f"gimletc: seg3 on gpu1: interpreter, not tensorrt: {NO_TRT}, and no CUDA GPU here\n"
        f"gimletc: seg4 on gpu2: interpreter, not tensorrt: {NO_TRT}, and the bundle has no "
        "CUDA parts (no nvcc)\n"
    )


def test_gpu_without_tensorrt_runs_the_cuda_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpu=True, tensorrt=False)
    report = run_report(MANIFEST)
    assert [str(r) for r in report[1:]] == [
        "seg1 on gpu0: cuda",
        "seg2 on cpu1: interpreter, not cpu-cxx: the CPU backend could not compile it: "
        "gml.conv (net.py:7): 1-d convolution",
        f"seg3 on gpu1: cuda, not tensorrt: {NO_TRT}: ran its CUDA parts",
        f"seg4 on gpu2: interpreter, not tensorrt: {NO_TRT}, and the bundle has no CUDA parts "
        "(no nvcc)",
    ]
    assert report[3] == SegmentRun(
        3, "gpu1", "tensorrt", "cuda", f"{NO_TRT}: ran its CUDA parts", "load"
    )
    assert [r.when for r in report] == ["", "", "compile", "load", "load"]


def test_tensorrt_with_a_gpu_runs_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpu=True, tensorrt=True)
    report = run_report(_manifest(TRT_WITH_CUDA, TRT_ALONE, devices=("gpu0", "gpu1")))
    assert [str(r) for r in report] == ["seg0 on gpu0: tensorrt", "seg1 on gpu1: tensorrt"]
    assert not any(r.fallback for r in report)


def test_tensorrt_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpu=False, tensorrt=True)
    (run,) = run_report(_manifest(TRT_WITH_CUDA, devices=("gpu0",)))
    assert str(run) == "seg0 on gpu0: interpreter, not tensorrt: no CUDA GPU here"
