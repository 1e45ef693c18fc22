"""The backend registry (gimlet.backends): lookup by artefact kind, choice per device kind,
and the artefact checks the launcher runs through it."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from gimlet import backends
from gimlet.errors import UserError
from gimlet.runtime.bundle import BundleError, manifest_reader


@pytest.mark.parametrize("kind", backends.kinds())
def test_each_registered_backend_is_named_by_its_kind(kind: str) -> None:
    b = backends.get(kind)
    assert b.name == kind
    assert b.option and b.label
    assert isinstance(b.device_kinds, tuple)


def test_the_interpreter_comes_last_and_serves_every_kind() -> None:
    assert backends.kinds()[-1] == "interpreter"
    assert backends.get("interpreter").device_kinds == ()
    assert [b.name for b in backends.serving("no-such-kind")] == ["interpreter"]


def test_a_device_kind_gets_its_first_backend_unless_told_otherwise() -> None:
    assert backends.select("cpu", {}).name == "cpu-cxx"
    assert backends.select("cpu", {"cpu": "interpreter"}).name == "interpreter"
    assert backends.select("cpu", {"nvidia": "interpreter"}).name == "cpu-cxx"
    with pytest.raises(UserError, match="^no backend 'fast' for cpu devices; expected one of "):
        backends.select("cpu", {"cpu": "fast"})


def test_cpu_artefact_fields_are_checked_with_their_path() -> None:
    art: dict[str, Any] = {
        "kind": "cpu-cxx",
        "file": "model.mlir",
        "flags": [],
        "header": "cpu/runtime/include/gimlet/cpu_runtime.h",
        "runtime_files": ["cpu/runtime/src/a.cpp"],
        "parts": [{"source": "cpu/seg0.part0.cpp", "library": "cpu/seg0.part0.so", "weights": []}],
    }
    read = manifest_reader("B/manifest.json")
    cpu = backends.get("cpu-cxx")
    assert cpu.artefact_files(art, read, "segments[0].artefact") == [
        "cpu/runtime/include/gimlet/cpu_runtime.h",
        "cpu/runtime/src/a.cpp",
        "cpu/seg0.part0.cpp",
        "cpu/seg0.part0.so",
    ]
    del art["parts"][0]["library"]
    with pytest.raises(
        BundleError,
        match=r"^B/manifest.json: malformed manifest: no segments\[0\]\.artefact\.parts\[0\]\.library$",
    ):
        cpu.artefact_files(art, read, "segments[0].artefact")


def test_backend_flags() -> None:
    from gimlet.cli import _backend_choices

    args = argparse.Namespace(backend=["nvidia=interpreter,amd=rocm"], cpu_backend="interpreter")
    assert _backend_choices(args) == {"nvidia": "interpreter", "amd": "rocm", "cpu": "interpreter"}
    with pytest.raises(UserError, match="^--backend 'cpu': expected KIND=OPTION"):
        _backend_choices(argparse.Namespace(backend=["cpu"], cpu_backend=None))
