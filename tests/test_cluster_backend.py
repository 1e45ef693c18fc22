"""Per-device backends in a `.cluster` file (`backend = OPTION` in a device's block): the
grammar and its messages, the choice's precedence (`--backend KIND=OPTION` wins over the
file, the file over the kind's default) and its effect on placement and on the bundle
manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gimlet import backends
from gimlet.cli import main as gimletc
from gimlet.placement.backend_ops import BACKEND_OPTIONS, restrict
from gimlet.placement.cluster import KINDS
from gimlet.placement.cluster_lang import ClusterFileError, parse_cluster

ROOT = Path(__file__).resolve().parents[1]

MIXED = """cluster "mixed"
device cpu0 : cpu
device cpu1 : cpu { backend = interpreter }
device gpu0 : h100 { host = cpu0, backend = tensorrt }
link cpu0 <-> cpu1 : pcie
"""


def test_options_are_the_registry_s() -> None:
    """Placement may not import backends, so it keeps its own table of their options."""
    for kind in KINDS:
        assert BACKEND_OPTIONS[kind] == tuple(b.option for b in backends.serving(kind)), kind


def test_backend_field_sets_the_device_s_backend() -> None:
    c = parse_cluster(MIXED, "m.cluster")
    assert [(d.backend, d.backend_from) for d in c.devices.values()] == [
        ("", ""),
        ("interpreter", "backend = interpreter at m.cluster:3"),
        ("tensorrt", "backend = tensorrt at m.cluster:4"),
    ]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            "device gpu0 : h100 { backend = tensorrtt }",
            "b.cluster:1:32: unknown backend 'tensorrtt' for nvidia devices (did you mean "
            "'tensorrt'?); backends for nvidia: cuda, tensorrt, interpreter",
        ),
        (
            "device cpu0 : cpu { backend = tensorrt }",
            "b.cluster:1:31: unknown backend 'tensorrt' for cpu devices; backends for cpu: "
            "cxx, interpreter",
        ),
        (
            'device gpu0 : h100 {\n  backend = "cuda"\n}',
            "b.cluster:2:13: backend expects a backend name such as cuda",
        ),
        (
            "device gpu0 : h100 { backend = [cuda] }",
            "b.cluster:1:32: backend expects a backend name such as cuda",
        ),
        (
            "device gpu0 : h100 { backend = cuda, backend = tensorrt }",
            "b.cluster:1:38: field 'backend' given twice (first at line 1)",
        ),
        (
            "device gpu0 : h100 { backends = cuda }",
            "b.cluster:1:22: unknown field 'backends' for a device (did you mean 'backend'?); "
            "fields: peak_flops, mem_bandwidth, mem_capacity, launch_overhead, dtypes, ops, "
            "power, price, host, model, backend",
        ),
    ],
)
def test_mistakes_name_file_line_and_column(block: str, message: str) -> None:
    with pytest.raises(ClusterFileError) as e:
        parse_cluster(block, "b.cluster")
    assert str(e.value) == message


def test_backend_flag_wins_over_the_file() -> None:
    c = parse_cluster(MIXED, "m.cluster")
    kept = restrict(c, {})
    assert kept.devices["gpu0"].backend == "tensorrt"
    assert "*" not in kept.devices["gpu0"].ops  # narrowed to what TensorRT runs
    assert "f64" not in kept.devices["gpu0"].dtypes
    flag = restrict(c, {"nvidia": "cuda", "cpu": "cxx"}).devices
    assert [(d.backend, d.backend_from) for d in flag.values()] == [
        ("cxx", "--backend cpu=cxx"),
        ("cxx", "--backend cpu=cxx"),
        ("cuda", "--backend nvidia=cuda"),
    ]
    assert flag["gpu0"].ops == c.devices["gpu0"].ops  # CUDA runs what the device runs


def _compile(tmp_path: Path, name: str, *flags: str) -> dict[str, Any]:
    out = tmp_path / name
    argv = ["compile", str(ROOT / "examples" / "mlp.py") + ":model", "-o", str(out)]
    argv += ["--target", str(tmp_path / "mixed.cluster"), "--pin", "fc1=gpu0,fc2=cpu1"]
    assert gimletc([*argv, *flags]) == 0
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return manifest


def _kinds(manifest: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """device -> (artefact kind, the backend that refused it or "")."""
    return {
        s["device"]: (s["artefact"]["kind"], s["artefact"].get("fallback_from", ""))
        for s in manifest["segments"]
    }


def test_the_manifest_follows_the_file_and_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIMLET_TENSORRT_CUDA", "0")  # TensorRT's CUDA parts: not needed here
    (tmp_path / "mixed.cluster").write_text(MIXED)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        by_file = _kinds(_compile(tmp_path, "a"))
        by_flag = _kinds(_compile(tmp_path, "b", "--backend", "nvidia=cuda,cpu=cxx"))
    finally:
        os.chdir(cwd)
    assert by_file["gpu0"] == ("tensorrt", "")
    assert by_file["cpu1"] == ("interpreter", "")  # chosen, not a fallback
    assert by_file.get("cpu0", ("cpu-cxx", ""))[0] == "cpu-cxx"  # the kind's default
    assert by_flag["cpu1"] == ("cpu-cxx", "")
    # CUDA where nvcc compiled it, else the interpreter with CUDA named as the refuser
    assert by_flag["gpu0"] in (("cuda", ""), ("interpreter", "cuda"))
