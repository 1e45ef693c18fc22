"""Run a lowered function on an NVIDIA GPU, in the caller's process.

`CudaFunction(fn, library, weights)` uploads the load-time values once (weights,
constants, transposed Linear weights), and per shape bucket (a distinct tuple of input
shapes) computes the parameter table and memory plan, allocates the arena and lets the
runtime library capture a CUDA graph on the first call. A call is then: allocate the
outputs, one ctypes call (inputs -> arena, graph replay, arena -> outputs, ordered with
the caller's current stream by events). Inputs and outputs at addresses seen before
(the caller's KV cache; an output the allocator hands back at the same place) are read
and written where they are, by a graph captured for those addresses: no copies
(backends/gpu/inplace.py). Tensors in and out are torch tensors on the
device; nothing is synchronised, as with any torch CUDA op. An output the arena holds
padded (a head with an odd vocabulary, written by one GEMM at an aligned width) comes
back as it is there: a strided view whose rows are the padded width apart, as
torch.compile returns such logits; `.contiguous()` (or any copy to the host) unpads it.

Device memory comes from torch's caching allocator (weights, arenas, outputs), so
gimlet and torch share one pool and a caller's tensors go in without copies.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import TensorType
from xdsl.ir import SSAValue

from gimlet.backends.gpu.codegen import Lowered, Weight, load_time_values
from gimlet.backends.gpu.lower import lower
from gimlet.dialects import gml
from gimlet.dtypes import numpy_to_torch, torch_dtype
from gimlet.errors import UserError

from .build import build_runtime

_P = ctypes.c_void_p
# inputs and outputs at the same address as a call before are read and written in place
# by a graph of their own (gml_cuda.cpp); GIMLET_GPU_IN_PLACE=0: always copied
BIND_IN_PLACE = os.environ.get("GIMLET_GPU_IN_PLACE", "1") != "0"
_I64P = ctypes.POINTER(ctypes.c_int64)


class CudaRuntimeError(UserError):
    """A CUDA or cuBLAS call of a segment failed (names what it was doing)."""


@functools.cache
def runtime() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build_runtime()))
    lib.gml_cuda_create.restype = _P
    lib.gml_cuda_create.argtypes = [_P, ctypes.c_int]
    lib.gml_cuda_destroy.argtypes = [_P]
    lib.gml_cuda_bucket.restype = _P
    lib.gml_cuda_bucket.argtypes = [_I64P, ctypes.c_int64, _P, _I64P, ctypes.c_int64]
    lib.gml_cuda_bucket_free.argtypes = [_P]
    lib.gml_cuda_bound_graphs.restype = ctypes.c_int
    lib.gml_cuda_bound_graphs.argtypes = [_P]
    lib.gml_cuda_run.restype = ctypes.c_int
    lib.gml_cuda_run.argtypes = [_P, _P, _P, _P, ctypes.c_int, _P, _P, _P, ctypes.c_int, _P, _P, _P]
    lib.gml_cuda_sync.argtypes = [_P]
    lib.gml_cuda_error.restype = ctypes.c_char_p
    lib.gml_cuda_error.argtypes = [_P]
    return lib


def _int64s(xs: Sequence[int]) -> Any:
    return (ctypes.c_int64 * max(len(xs), 1))(*xs)


def _bind_table(bound: Sequence[Sequence[int] | None]) -> list[int]:
    """gml_cuda_bucket's `bind`: per input and output a count and its slots, -1 if none."""
    flat: list[int] = []
    for slots in bound:
        flat += [-1] if slots is None else [len(slots), *slots]
    return flat


def evaluate_load_time(
    fn: func.FuncOp, weights: Mapping[str, np.ndarray]
) -> dict[SSAValue, np.ndarray]:
    """The load-time values of `fn` (params, constants and what is computed from them)."""
    from gimlet.interpreter import evaluate_op

    free = load_time_values(fn)
    values: dict[SSAValue, np.ndarray] = {}
    for op in fn.body.block.ops:
        if not any(r in free for r in op.results):
            continue
        if isinstance(op, gml.ParamOp):
            name = op.param_name.data
            if name not in weights:
                raise UserError(f"weight '{name}' is missing from the bundle")
            values[op.result] = np.asarray(weights[name])
        else:
            outs = evaluate_op(op, [values[v] for v in op.operands])
            values.update(zip(op.results, (np.asarray(o) for o in outs), strict=True))
    return values


def upload_layout(values: Mapping[SSAValue, np.ndarray], w: Weight) -> np.ndarray:
    """A weight as the generated code reads it: transposed for the GEMM/GEMV paths, and
    with zero rows up to `w.rows` where an odd output width is padded to an aligned one
    (only 2-D-or-more weights on the GEMM path have rows to pad; biases and norms never);
    or a part of a layer norm folded into a Linear (`folded_norm`)."""
    arr = values[w.value]
    if w.norm is not None:
        gamma, beta = (None if v is None else values[v] for v in w.norm)
        return folded_norm(arr, gamma, beta, w.part)
    if w.transposed:
        arr = np.swapaxes(arr, -1, -2)
    if w.rows and arr.ndim >= 2 and w.rows > arr.shape[-2]:
        pad = [(0, 0)] * arr.ndim
        pad[-2] = (0, w.rows - arr.shape[-2])
        arr = np.pad(arr, pad)
    return np.ascontiguousarray(arr)


def folded_norm(
    weight: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, part: str
) -> np.ndarray:
    """A Linear's weight (k x n) with the layer norm before it folded in, as
    gml::LnFoldRows reads it: "scaled" W' = diag(gamma) W uploaded n x k in W's dtype;
    "c1" the sums of W' (as rounded) over k and "c2" = beta . W, f32 vectors of n."""
    w = np.asarray(weight)
    scaled = (
        w.astype(np.float32) * (1.0 if gamma is None else gamma.astype(np.float32)[:, None])
    ).astype(w.dtype)
    if part == "scaled":
        return np.ascontiguousarray(scaled.T)
    if part == "c1":
        return scaled.astype(np.float64).sum(axis=0).astype(np.float32)
    if part == "c2":
        if beta is None:
            return np.zeros(w.shape[1], np.float32)
        return (beta.astype(np.float64) @ w.astype(np.float64)).astype(np.float32)
    raise ValueError(f"no folded-norm part {part!r}")


@dataclass
class _Bucket:
    handle: int
    arena: Any  # torch.Tensor, kept alive for the graph
    in_offsets: Any
    in_bytes: Any
    out_offsets: Any
    out_bytes: Any
    out_shapes: list[tuple[int, ...]]
    # per output: (elements, strides) of a padded one (a head's logits, rows ldm apart in
    # the arena, copied as they are: the caller gets a strided view), else None
    out_pitched: list[tuple[int, tuple[int, ...]] | None]
    plan_bytes: int
    out_alloc: list[tuple[tuple[int, ...], Any, tuple[int, tuple[int, ...]] | None]] = field(
        default_factory=list
    )  # per output: (shape, dtype, pitched)
    in_ptrs: Any = None  # ctypes arrays a call fills with its tensors' addresses
    out_ptrs: Any = None


class CudaFunction:
    """`fn` compiled to `library`, callable on torch tensors of one CUDA device."""

    def __init__(
        self,
        fn: func.FuncOp,
        library: str | Path,
        weights: Mapping[str, np.ndarray],
        device: Any = None,
        lowered: Lowered | None = None,
    ):
        import torch

        if not torch.cuda.is_available():
            raise UserError("the NVIDIA backend needs a CUDA GPU, and torch sees none")
        self.torch = torch
        dev = torch.device(device if device is not None else "cuda")
        # with its index, so a caller's tensor on this GPU compares equal (no .to() per call)
        self.device = (
            dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
        )
        torch.cuda.init()
        self.index: int = self.device.index
        # the caller's current stream as a raw handle (torch's own fast path, as
        # inductor's generated code uses it); the public API builds a Stream object
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        self._stream = raw or (lambda i: torch.cuda.current_stream(i).cuda_stream)
        self.low = lowered or lower(fn)
        self.fn = fn
        rt = runtime()
        self._run = rt.gml_cuda_run
        self._seg = ctypes.CDLL(str(library))  # kept alive: the graph calls into it
        entry = ctypes.cast(self._seg.gimlet_gpu_main, _P).value
        graphs = os.environ.get("GIMLET_CUDA_GRAPHS", "1") != "0"
        with torch.cuda.device(self.device):
            self.handle = rt.gml_cuda_create(entry, int(graphs))
        if not self.handle:
            raise CudaRuntimeError("could not create the CUDA runtime (stream, cuBLAS handle)")
        values = evaluate_load_time(fn, weights)
        self.weight_tensors = []
        for w in self.low.weights:
            arr = upload_layout(values, w)
            self.weight_tensors.append(numpy_to_torch(arr).to(self.device))
        self.W = (_P * max(len(self.weight_tensors), 1))(
            *[t.data_ptr() for t in self.weight_tensors]
        )
        args = fn.body.block.args
        ret = fn.body.block.last_op
        assert isinstance(ret, func.ReturnOp)
        self.in_dtypes = [torch_dtype(_elt(a)) for a in args]
        self.out_dtypes = [torch_dtype(_elt(v)) for v in ret.arguments]
        self.buckets: dict[tuple[tuple[int, ...], ...], _Bucket] = {}

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.weight_tensors)

    def bucket(self, shapes: tuple[tuple[int, ...], ...]) -> _Bucket:
        b = self.buckets.get(shapes)
        if b is None:
            plan = self.low.bucket(shapes)
            torch = self.torch
            arena = torch.empty(max(plan.arena_bytes, 1), dtype=torch.uint8, device=self.device)
            params = _int64s(plan.params)
            bind = _bind_table(plan.bound if BIND_IN_PLACE else [])
            handle = runtime().gml_cuda_bucket(
                params, len(plan.params), arena.data_ptr(), _int64s(bind), len(bind)
            )
            itemsize = [torch.empty((), dtype=d).element_size() for d in self.in_dtypes]
            out_size = [torch.empty((), dtype=d).element_size() for d in self.out_dtypes]
            b = _Bucket(
                handle=handle,
                arena=arena,
                in_offsets=_int64s(plan.input_offsets),
                in_bytes=_int64s(
                    [int(np.prod(s)) * n for s, n in zip(shapes, itemsize, strict=True)]
                ),
                out_offsets=_int64s(plan.output_offsets),
                out_bytes=_int64s([plan.output_elements(i) * n for i, n in enumerate(out_size)]),
                out_shapes=plan.output_shapes,
                out_pitched=[
                    (plan.output_elements(i), plan.output_strides(i)) if plan.pitch(i) else None
                    for i in range(len(out_size))
                ],
                plan_bytes=plan.plan_bytes,
            )
            b.out_alloc = list(zip(b.out_shapes, self.out_dtypes, b.out_pitched, strict=True))
            b.in_ptrs = (_P * max(len(shapes), 1))()
            b.out_ptrs = (_P * max(len(b.out_shapes), 1))()
            self.buckets[shapes] = b
        return b

    def __call__(self, *inputs: Any) -> list[Any]:
        # the hot path: a decode step's whole host side (tens of microseconds of Python
        # here are as many the GPU waits at the caller's start event), so each step is
        # the cheapest spelling: one type test a tensor, the raw current stream, ctypes
        # arrays kept per bucket
        torch = self.torch
        if len(inputs) != len(self.in_dtypes):
            raise UserError(f"expected {len(self.in_dtypes)} inputs, got {len(inputs)}")
        xs = list(inputs)
        for i, dt in enumerate(self.in_dtypes):
            x = xs[i]
            if not (
                type(x) is torch.Tensor
                and x.is_cuda
                and x.get_device() == self.index
                and x.is_contiguous()
            ):
                x = xs[i] = self._on_device(i, x)
            if x.dtype != dt:
                raise UserError(f"input {i}: expected {dt}, got {x.dtype}")
        b = self.bucket(tuple(tuple(x.shape) for x in xs))  # the cached one after the first
        outs = [
            torch.empty(s, dtype=d, device=self.device)
            if p is None
            else torch.empty(p[0], dtype=d, device=self.device).as_strided(s, p[1])
            for s, d, p in b.out_alloc
        ]
        for i, x in enumerate(xs):
            b.in_ptrs[i] = x.data_ptr()
        for i, o in enumerate(outs):
            b.out_ptrs[i] = o.data_ptr()
        rc = self._run(
            self.handle, b.handle, self.W, self._stream(self.index),
            len(xs), b.in_ptrs, b.in_offsets, b.in_bytes,
            len(outs), b.out_ptrs, b.out_offsets, b.out_bytes,
        )  # fmt: skip
        if rc:
            raise CudaRuntimeError(
                f"GPU segment failed: {runtime().gml_cuda_error(self.handle).decode()}"
            )
        return outs

    def _on_device(self, i: int, x: Any) -> Any:
        """Input `i` as a contiguous tensor on this GPU (a copy where it is not one)."""
        torch = self.torch
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        if x.dtype != self.in_dtypes[i]:
            raise UserError(f"input {i}: expected {self.in_dtypes[i]}, got {x.dtype}")
        return x.to(self.device).contiguous()

    def in_place_graphs(self) -> int:
        """Graphs captured so far that read or write a caller's tensor in place."""
        return sum(runtime().gml_cuda_bound_graphs(b.handle) for b in self.buckets.values())

    def synchronize(self) -> None:
        if runtime().gml_cuda_sync(self.handle):
            raise CudaRuntimeError(
                f"GPU segment failed: {runtime().gml_cuda_error(self.handle).decode()}"
            )

    def __del__(self) -> None:
        handle = getattr(self, "handle", None)
        if handle:
            for b in getattr(self, "buckets", {}).values():  # none if __init__ failed
                runtime().gml_cuda_bucket_free(b.handle)
            runtime().gml_cuda_destroy(handle)
            self.handle = None


def _elt(v: SSAValue) -> Any:
    assert isinstance(v.type, TensorType)
    return v.type.element_type
