"""The CPU backend in bundles: compile a CPU segment's parts at `gimletc compile` time,
load them in the worker (artefact kind "cpu-cxx").

A bundle keeps, per compiled part, the generated `.cpp` (for users to read) and the
`.so`, under `cpu/seg<N>.part<K>.{cpp,so}`, and the runtime they include and link under
`cpu/runtime/` (its headers and sources, and its library, which the parts find through
`$ORIGIN/runtime`); the manifest entry records the flags, the weights each part reads
and the CPU it was built for. A worker on another CPU model
does not load a `-march=native` library built elsewhere (it could die on an illegal
instruction): it rebuilds the bundled source into its own cache instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from xdsl.dialects.builtin import IndexType
from xdsl.ir import Operation, SSAValue

from gimlet.artifacts import IR_FILE
from gimlet.dialects import gml
from gimlet.errors import UserError

from . import CompiledCpu, _signature
from .build import RUNTIME_DIR, build_library, build_runtime, copy_runtime
from .segments import Part, compile_part, host_cpu, part_function, split

KIND = "cpu-cxx"


def compile_segment(segment: gml.SegmentOp, index: int, out_dir: str) -> dict[str, Any]:
    """Compile every compiled part of `segment` into `out_dir/cpu/`; the artefact entry.

    Raises UnsupportedOpError (naming the ops) when some part cannot be lowered."""
    parts = [p for p in split(segment) if isinstance(p, Part) and p.compiled]
    os.makedirs(os.path.join(out_dir, "cpu"), exist_ok=True)
    workers = min(len(parts), os.cpu_count() or 1) or 1
    with ThreadPoolExecutor(workers) as pool:  # g++ runs outside the GIL
        libs = list(
            pool.map(lambda kp: compile_part(kp[1], f"seg{index}.part{kp[0]}"), enumerate(parts))
        )
    entries = []
    runtime = Path(out_dir, "cpu", RUNTIME_DIR)
    files: list[str] = []
    if libs:  # the runtime the sources include and link, so the bundle's C++ builds alone
        copied = copy_runtime(runtime)
        runtime_lib = build_runtime(libs[0].flags)
        shutil.copyfile(runtime_lib, runtime / runtime_lib.name)
        files = [p.relative_to(out_dir).as_posix() for p in [*copied, runtime / runtime_lib.name]]
    for k, lib in enumerate(libs):
        stem = f"cpu/seg{index}.part{k}"
        shutil.copyfile(lib.source_path, os.path.join(out_dir, stem + ".cpp"))
        shutil.copyfile(lib.library_path, os.path.join(out_dir, stem + ".so"))
        entries.append(
            {
                "source": stem + ".cpp",
                "library": stem + ".so",
                "ops": len(parts[k].ops),
                "weights": lib.weight_names,
            }
        )
    flags = libs[0].flags if libs else []
    return {
        "kind": KIND,
        "file": IR_FILE,  # the IR the parts are cut from
        "parts": entries,
        "header": f"cpu/{RUNTIME_DIR}/include/gimlet/cpu_runtime.h",
        "runtime": f"cpu/{RUNTIME_DIR}",
        "runtime_files": files,
        "flags": flags,
        "built_for": host_cpu(),
    }


class CpuExecutor:
    """Runs a CPU segment: compiled parts through ctypes, comm ops and size arithmetic
    through the worker's interpreter executor (which owns the comm handler)."""

    def __init__(self, interpreter: Any, weights: Mapping[str, np.ndarray], bundle: Any):
        self.interp = interpreter
        self.weights = weights
        self.bundle = bundle
        self.plans: dict[int, list[Part | Operation]] = {}
        self.libs: dict[int, list[CompiledCpu]] = {}
        self.runtime = ""  # the bundle's runtime sources, for rebuilding on another CPU

    def _plan(self, segment: gml.SegmentOp, index: int, artefact: dict[str, Any]) -> list[Any]:
        if index not in self.plans:
            items = split(segment)
            parts = [p for p in items if isinstance(p, Part) and p.compiled]
            if len(parts) != len(artefact["parts"]):
                raise UserError(
                    f"bundle segment {index}: {len(artefact['parts'])} compiled parts in the "
                    f"manifest, {len(parts)} in the IR; rebuild the bundle with gimletc compile"
                )
            same_cpu = artefact.get("built_for") == host_cpu()
            self.runtime = artefact["runtime"]
            self.libs[index] = [
                self._load(p, e, artefact["flags"], same_cpu, f"seg{index}.part{k}")
                for k, (p, e) in enumerate(zip(parts, artefact["parts"], strict=True))
            ]
            self.plans[index] = items
        return self.plans[index]

    def _load(
        self, part: Part, entry: dict[str, Any], flags: list[str], same_cpu: bool, name: str
    ) -> CompiledCpu:
        fn = part_function(part, name)
        block = fn.body.block
        term = block.last_op
        assert term is not None
        source_path = Path(self.bundle.file(entry["source"]))
        library = Path(self.bundle.file(entry["library"]))
        if not same_cpu:  # rebuild for this CPU (cached by content hash), with its own runtime
            root = Path(self.bundle.file(self.runtime))
            library, _ = build_library(source_path.read_text(), flags, root)
        return CompiledCpu(
            source=source_path.read_text(),
            library_path=library,
            flags=flags,
            weight_names=list(entry["weights"]),
            cache_hit=True,
            input_sigs=[_signature(v) for v in block.args],
            output_sigs=[_signature(v) for v in term.operands],
        )

    def run_segment(
        self, segment: gml.SegmentOp, inputs: Sequence[Any], index: int, artefact: dict[str, Any]
    ) -> list[Any]:
        from gimlet.backends.parts import run_parts

        items = self._plan(segment, index, artefact)
        libs = self.libs[index]

        def run_part(k: int, part: Part, values: list[Any]) -> list[Any]:
            args = [_to_abi(x, v) for x, v in zip(values, part.inputs, strict=True)]
            outs = libs[k](args, self.weights)
            return [_from_abi(o, v) for o, v in zip(outs, part.outputs, strict=True)]

        return run_parts(segment, inputs, index, items, self.interp, "C++", run_part)

    def prepare(
        self, segment: gml.SegmentOp, index: int, artefact: dict[str, Any]
    ) -> Callable[[Sequence[Any]], list[Any]]:
        """run_segment for a request path: the walk and the ABI conversions decided once."""
        from gimlet.backends.parts import prepare_parts

        items = self._plan(segment, index, artefact)
        libs = self.libs[index]
        parts = [p for p in items if isinstance(p, Part) and p.compiled]
        # which values are sizes (carriers across the ABI), per part
        sizes_in = [[isinstance(v.type, IndexType) for v in p.inputs] for p in parts]
        sizes_out = [any(isinstance(v.type, IndexType) for v in p.outputs) for p in parts]

        def run_part(k: int, part: Part, values: list[Any]) -> list[Any]:
            args = [
                np.empty(int(x), np.bool_) if c else np.asarray(x)
                for x, c in zip(values, sizes_in[k], strict=True)
            ]
            outs = libs[k](args, self.weights)  # read per call: the caller may swap them
            if not sizes_out[k]:
                return outs
            return [_from_abi(o, v) for o, v in zip(outs, part.outputs, strict=True)]

        return prepare_parts(segment, index, items, self.interp, "C++", run_part)

    def run_op(self, op: Operation, inputs: Sequence[Any]) -> list[Any]:
        return list(self.interp.run_op(op, inputs))


def _to_abi(value: Any, v: SSAValue) -> np.ndarray:
    if isinstance(v.type, IndexType):
        return np.empty(int(value), np.bool_)  # a carrier: its length is the size
    return np.asarray(value)


def _from_abi(array: np.ndarray, v: SSAValue) -> Any:
    return int(array.shape[0]) if isinstance(v.type, IndexType) else array
