"""The CPU backend as the bundle writer and the runtime see it (artefact kind "cpu-cxx").

Compiling and loading are in bundle.py; this module only adapts them to `base.Backend`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gimlet.backends.base import Executor, FieldReader, HostExecutor
from gimlet.dialects import gml


class CpuBackend:
    name = "cpu-cxx"
    option = "cxx"
    device_kinds = ("cpu",)
    label = "the CPU backend"

    def compile_segment(
        self,
        segment: gml.SegmentOp,
        index: int,
        bundle_dir: str,
        device: Mapping[str, str],
        options: Mapping[str, Any],
    ) -> dict[str, Any]:
        from .bundle import compile_segment  # g++ and the C++ runtime: only when compiling

        return compile_segment(segment, index, bundle_dir)

    def artefact_files(self, artefact: dict[str, Any], read: FieldReader, path: str) -> list[str]:
        read(artefact, "flags", list, path)
        parts = read(artefact, "parts", list, path)
        if not parts:  # nothing compiled: no runtime copied either
            return []
        files = [read(artefact, "header", str, path)]
        # the C++ runtime copied into the bundle (its headers, sources and library)
        runtime = read(artefact, "runtime_files", list, path) if "runtime_files" in artefact else []
        files += [read(runtime, i, str, f"{path}.runtime_files") for i in range(len(runtime))]
        for i in range(len(parts)):
            part = read(parts, i, dict, f"{path}.parts")
            where = f"{path}.parts[{i}]"
            files += [read(part, k, str, where) for k in ("source", "library")]
            read(part, "weights", list, where)
        return files

    def describe(self, artefact: dict[str, Any]) -> str:
        n = len(artefact["parts"])
        if not n:
            return "no compute to compile (comm ops and size arithmetic only)"
        return f"C++, {n} {'library' if n == 1 else 'libraries'} under cpu/ (cut at comm ops)"

    def load(self, host: HostExecutor, weights: Mapping[str, np.ndarray], bundle: Any) -> Executor:
        from .bundle import CpuExecutor

        return CpuExecutor(host, weights, bundle)


BACKEND = CpuBackend()
