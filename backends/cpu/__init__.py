"""gimlet's CPU backend: gml programs as generated C++ in a shared library.

`compile_module(module)` (func.func @main) or `compile_function(func_or_segment)` lowers
the ops to one C++ function (`codegen.py`), compiles it with the system compiler
(`build.py`, cached by content hash) and loads it with ctypes. The C ABI is small on
purpose: arrays of input/weight data pointers and shapes in, malloc'd outputs and
their shapes out (outputs are data-dependent in shape, so the library allocates them).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import SSAValue
from xdsl.traits import SymbolTable

from gimlet.dialects import gml
from gimlet.dialects.shapes import DYN, shape_of
from gimlet.errors import UnsupportedOpError, UserError

from .build import CpuCompileError, build_library, cache_dir, default_flags
from .codegen import ENTRY, HALF, ctype, generate

__all__ = [
    "CompiledCpu",
    "CpuCompileError",
    "CpuRuntimeError",
    "cache_dir",
    "compile_function",
    "compile_module",
]

_MAXR = 8
_NUMPY = {
    "float": np.float32,
    "double": np.float64,
    "bool": np.bool_,
    "int8_t": np.int8,
    "int16_t": np.int16,
    "int32_t": np.int32,
    "int64_t": np.int64,
    "uint8_t": np.uint8,
    "uint16_t": np.uint16,
    "uint32_t": np.uint32,
    "uint64_t": np.uint64,
    **HALF,  # f16/bf16: np.float16 and ml_dtypes.bfloat16, the same bits as gml::f16/bf16
}


class CpuRuntimeError(UserError):
    """A generated kernel rejected its inputs (wrong shape, index out of range, ...)."""


def _signature(v: SSAValue) -> tuple[np.dtype[Any], tuple[int, ...]]:
    assert isinstance(v.type, TensorType)
    ct = ctype(v.type.element_type)
    assert ct is not None
    return np.dtype(_NUMPY[ct]), shape_of(v.type)


@dataclass
class CompiledCpu:
    """A loaded library for one function; call it with numpy inputs and weights."""

    source: str
    library_path: Path
    flags: list[str]
    weight_names: list[str]
    cache_hit: bool
    input_sigs: list[tuple[np.dtype[Any], tuple[int, ...]]]
    output_sigs: list[tuple[np.dtype[Any], tuple[int, ...]]]
    _lib: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._lib = ctypes.CDLL(str(self.library_path))
        self._weights: tuple[int, list[np.ndarray], Any] | None = None  # see _weight_table
        fn = getattr(self._lib, ENTRY)
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_char_p, ctypes.c_int64]
        self._fn = fn
        self._free = self._lib.gimlet_free
        self._free.argtypes = [ctypes.c_void_p]

    @property
    def source_path(self) -> Path:
        return self.library_path.with_suffix(".cpp")

    def __call__(
        self, inputs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray]
    ) -> list[np.ndarray]:
        if len(inputs) != len(self.input_sigs):
            raise CpuRuntimeError(f"expected {len(self.input_sigs)} inputs, got {len(inputs)}")
        keep: list[np.ndarray] = []
        shape_bufs: list[Any] = []
        for i, (x, (dtype, shape)) in enumerate(zip(inputs, self.input_sigs, strict=True)):
            a = _contiguous(x)
            ok = a.dtype == dtype and a.ndim == len(shape)
            ok = ok and all(d in (DYN, n) for d, n in zip(shape, a.shape, strict=True))
            if not ok:
                raise CpuRuntimeError(
                    f"input {i}: expected {dtype} {_fmt(shape)}, got {a.dtype} {a.shape}"
                )
            keep.append(a)
            shape_bufs.append((ctypes.c_int64 * max(a.ndim, 1))(*a.shape))
        w_ptrs = self._weight_table(weights)
        n_out = len(self.output_sigs)
        in_ptrs = (ctypes.c_void_p * max(len(inputs), 1))(
            *[a.ctypes.data for a in keep[: len(inputs)]]
        )
        in_shapes = (ctypes.c_void_p * max(len(inputs), 1))(
            *[ctypes.addressof(s) for s in shape_bufs]
        )
        outs = (ctypes.c_void_p * max(n_out, 1))()
        out_shapes = (ctypes.c_int64 * (max(n_out, 1) * _MAXR))()
        err = ctypes.create_string_buffer(1024)
        rc = self._fn(in_ptrs, in_shapes, w_ptrs, outs, out_shapes, err, len(err))
        if rc != 0:
            raise CpuRuntimeError(f"CPU kernel failed: {err.value.decode(errors='replace')}")
        results = []
        for k, (dtype, shape) in enumerate(self.output_sigs):
            dims = tuple(out_shapes[k * _MAXR + i] for i in range(len(shape)))
            n = int(np.prod(dims)) if dims else 1
            ptr = outs[k]
            assert ptr is not None
            if n:  # one copy out of the library's buffer, which it then takes back
                raw = (ctypes.c_char * (n * dtype.itemsize)).from_address(ptr)
                results.append(np.frombuffer(memoryview(raw), dtype=dtype).reshape(dims).copy())
            else:
                results.append(np.empty(dims, dtype))
            self._free(ptr)
        return results

    def _weight_table(self, weights: Mapping[str, np.ndarray]) -> Any:
        """The C array of weight pointers, rebuilt only when `weights` (or one of its
        arrays) changed: a decode step should not pay for 50 lookups and conversions."""
        cached = self._weights
        if (
            cached is not None
            and cached[0] == id(weights)
            and all(weights.get(n) is a for n, a in zip(self.weight_names, cached[1], strict=True))
        ):
            return cached[2]
        arrays = []
        for name in self.weight_names:
            if name not in weights:
                raise CpuRuntimeError(f'missing weight "{name}"')
            arrays.append(weights[name])
        # contiguous copies (if any) must outlive the table: keep them with it
        contiguous = [_contiguous(a) for a in arrays]
        table = (ctypes.c_void_p * max(len(arrays), 1))(*[a.ctypes.data for a in contiguous])
        table._keep = contiguous  # type: ignore[attr-defined]
        self._weights = (id(weights), arrays, table)
        self._lib.gimlet_weights_changed()  # kernels holding packed weights repack them
        return table


def _contiguous(x: Any) -> np.ndarray:
    """A C-contiguous array of `x` with its shape (np.ascontiguousarray makes 0-d 1-d)."""
    return np.require(np.asarray(x), requirements="C")


def _fmt(shape: Sequence[int]) -> str:
    return "x".join("?" if d == DYN else str(d) for d in shape) or "scalar"


def compile_function(
    op: func.FuncOp | gml.SegmentOp, opt: str = "-O3", flags: list[str] | None = None
) -> CompiledCpu:
    """Lower `op` (a func.func, or a gml.segment placed on a CPU) and load the library.

    The weights the `gml.param`s read are passed by name at call time, in the order
    `weight_names` lists. Raises `UnsupportedOpError` naming each op that cannot be
    lowered and `CpuCompileError` if the C++ compiler fails.
    """
    block = op.body.block
    term = block.last_op
    assert term is not None
    outputs = list(term.operands)
    inputs = list(block.args)
    if isinstance(op, func.FuncOp):
        title = f"func.func @{op.sym_name.data}"
    else:
        title = f"gml.segment on {op.device.data}"
    for v in [*inputs, *outputs]:
        if not isinstance(v.type, TensorType) or ctype(v.type.element_type) is None:
            raise UnsupportedOpError(
                f"{title}: the CPU backend cannot compile:\n  cannot pass a value of type {v.type}"
            )
    source, weight_names = generate(block, inputs, outputs, title)
    flags = list(flags) if flags is not None else default_flags(opt)
    lib, hit = build_library(source, flags)
    return CompiledCpu(
        source=source,
        library_path=lib,
        flags=flags,
        weight_names=weight_names,
        cache_hit=hit,
        input_sigs=[_signature(v) for v in inputs],
        output_sigs=[_signature(v) for v in outputs],
    )


def compile_module(module: ModuleOp, entry: str = "main", opt: str = "-O3") -> CompiledCpu:
    """`compile_function` on `func.func @entry` of `module`."""
    fn = SymbolTable.lookup_symbol(module, entry)
    if not isinstance(fn, func.FuncOp):
        raise UserError(f"no func.func @{entry} in the module")
    return compile_function(fn, opt=opt)
