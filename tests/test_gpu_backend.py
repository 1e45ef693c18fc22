"""The NVIDIA GPU backend: generated CUDA for every model family, built with nvcc
(everywhere nvcc is, CI included: no GPU needed), and run on a GPU against the
reference interpreter where torch sees one (the H200 machine; skipped elsewhere).

Tolerances: f32 rtol 1e-4 / atol 1e-5 (FP32 GEMMs, TF32 off); f16 and bf16 compare
with the interpreter, which computes each op in f32 and rounds, at rtol/atol 1e-2
(f16) and 3e-2 (bf16): the GPU accumulates GEMMs in f32 in a different order.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch

from conftest import imported
from gimlet.backends.gpu import switches
from gimlet.backends.gpu.lower import families, lower
from gimlet.dialects import gml as gml_ops
from gimlet.dtypes import numpy_to_torch, torch_to_numpy
from gimlet.errors import UnsupportedOpError
from gimlet.interpreter import run
from gimlet.ir import main_func, parse
from gimlet.pass_manager import DEFAULT_PIPELINE, run_pipeline
from models import FAMILIES

# every family: the GPU backend lowers all their ops (a refusal: test_refusal_names_op_and_line)
SUPPORTED = ["cnn", "gpt", "hf_bert", "hf_gpt2", "hf_llama", "hf_vit", "llama_block", "mlp"]
HAS_NVCC = shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()
HAS_GPU = torch.cuda.is_available()
needs_nvcc = pytest.mark.skipif(not HAS_NVCC, reason="nvcc (the CUDA toolkit) is not installed")
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU (runs on the H200 machine)")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: Any) -> Any:
    path = tmp_path_factory.mktemp("gimlet-cuda-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("GIMLET_CACHE_DIR", str(path))
    yield path
    mp.undo()


def _piped(name: str) -> Any:
    module = imported(name).module.clone()
    run_pipeline(module, DEFAULT_PIPELINE)
    return module


@pytest.fixture(scope="module")
def lowered() -> dict[str, Any]:
    return {name: (m := _piped(name), lower(main_func(m))) for name in SUPPORTED}


@pytest.fixture(scope="module")
def built(lowered: dict[str, Any], cache: Any) -> dict[str, Path]:
    from gimlet.backends.nvidia.build import build_segment

    with ThreadPoolExecutor(2) as pool:  # nvcc runs out of process
        futures = {n: pool.submit(build_segment, low.source) for n, (_, low) in lowered.items()}
        return {n: f.result()[0] for n, f in futures.items()}


def test_every_family_is_lowered() -> None:
    assert sorted(SUPPORTED) == sorted(FAMILIES)


@pytest.mark.parametrize(
    ("op", "types", "message"),
    [
        (
            "gml.conv %x, %w stride [1, 1, 1] padding [0, 0, 0] dilation [1, 1, 1] groups 1",
            "(tensor<1x2x3x3x3xf32>, tensor<4x2x1x1x1xf32>) -> tensor<1x4x3x3x3xf32>",
            "gml.conv at stem (model.py:7): 3-d convolution (the GPU backend lowers 1-d and 2-d)",
        ),
        (
            "gml.matmul %x, %w",
            "(tensor<4x4xf64>, tensor<4x4xf64>) -> tensor<4x4xf64>",
            "gml.matmul at stem (model.py:7): matmul on double",
        ),
    ],
)
def test_refusal_names_op_and_line(op: str, types: str, message: str) -> None:
    """An op the backend cannot lower is refused with its module path, file:line and why."""
    args, result = types[1:].split(") -> ")
    x, w = args.split(", ")
    module = parse(
        f"func.func @main(%x: {x}, %w: {w}) -> {result} {{\n"
        f'  %y = {op} : {types} loc("stem"("model.py":7:0))\n'
        f"  func.return %y : {result}\n"
        "}\n"
    )
    with pytest.raises(UnsupportedOpError) as e:
        lower(main_func(module))
    assert str(e.value).startswith(message)


def test_source_names_ops_and_lines(lowered: dict[str, Any]) -> None:
    src = lowered["gpt"][1].source
    assert '#include "gimlet/gpu/gml_gpu.cuh"' in src
    assert "// gml.layer_norm h.0.ln_1 (examples/gpt.py:27)" in src
    assert "ctx->gemm(" in src and "gml::gemv_nt<float, M, " in src
    assert "cuda" not in src.replace("gml_gpu.cuh", "")  # HIP compiles it too: no CUDA names


def test_memory_plan_reuses_buffers(lowered: dict[str, Any]) -> None:
    """Liveness-based reuse: the arena is far below the sum of all values' sizes."""
    module, low = lowered["gpt"]
    imp = imported("gpt")
    shapes = tuple(tuple(x.shape) for x in imp.inputs)
    bucket = low.bucket(shapes)
    shapes_all, _ = low.evaluator.evaluate(shapes)
    itemsize = {"f32": 4, "i64": 8, "i1": 1}
    total = sum(
        int(np.prod(shapes_all[v])) * itemsize[str(v.type.element_type)]  # type: ignore[attr-defined]
        for v, _, _ in low.values
    )
    assert 0 < bucket.arena_bytes < total / 3


@needs_nvcc
def test_every_supported_family_builds_for_sm90(built: dict[str, Path]) -> None:
    assert sorted(built) == sorted(SUPPORTED)
    for path in built.values():
        assert path.stat().st_size > 0


@needs_nvcc
def test_build_error_shows_generated_line(cache: Any) -> None:
    from gimlet.backends.nvidia.build import CudaBuildError, build_segment

    with pytest.raises(CudaBuildError, match=r"\.cu:3: .*\n  3 \| this is not C\+\+"):
        build_segment('#include "gimlet/gpu/gml_gpu.cuh"\n\nthis is not C++;\n')


# ------------------------------------------------------------------ on a GPU


def _run_gpu(name: str, lowered: dict[str, Any], built: dict[str, Path], inputs: list[Any]) -> Any:
    from gimlet.backends.nvidia.program import CudaFunction

    module, low = lowered[name]
    f = CudaFunction(main_func(module), built[name], imported(name).weights, lowered=low)
    return f, [o.cpu() for o in f(*[torch.as_tensor(x).cuda() for x in inputs])]


@needs_gpu
@pytest.mark.parametrize("name", SUPPORTED)
def test_family_on_gpu_matches_interpreter(
    name: str, lowered: dict[str, Any], built: dict[str, Path]
) -> None:
    imp = imported(name)
    inputs = [torch_to_numpy(x) for x in imp.inputs]
    f, got = _run_gpu(name, lowered, built, inputs)
    ref = run(lowered[name][0], inputs, imp.weights)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g.numpy(), np.asarray(r), rtol=1e-4, atol=1e-5)
    again = [o.cpu() for o in f(*[torch.as_tensor(x).cuda() for x in inputs])]  # graph replay
    for g, a in zip(got, again, strict=True):
        assert torch.equal(g, a)


def test_static_sizes_leave_out_the_branches_no_bucket_takes(lowered: dict[str, Any]) -> None:
    """A function without dynamic dims has one bucket: its Linear layers get either the
    GEMV for its row count or the GEMM path, never both (nvcc compiled all four GEMV row
    counts for a prefill otherwise: three quarters of GPT-2's build). The gpt family's
    sequence is dynamic over a batch of 2, so it keeps the GEMM and the GEMV for the row
    counts 2 x seq can be (2 and 4, never 1 or 3)."""
    src = lowered["gpt"][1].source
    assert all(f"<{r}>, g, gml::GEMV_THREADS" in src for r in (2, 4))
    assert not any(f"<{r}>, g, gml::GEMV_THREADS" in src for r in (1, 3))
    assert "ctx->gemm" in src
    many = lower(main_func(_odd_width_linear(True, torch.float16, rows=8)[0])).source
    assert "GEMV_THREADS" not in many and "ctx->gemm(" in many
    one = lower(main_func(_odd_width_linear(True, torch.float16, rows=1)[0])).source
    assert "if (P[0] == 1) gml::launch_pdl(k0<1>, g, gml::GEMV_THREADS, stream," in one
    assert "<2><<<" not in one and "ctx->gemm" not in one and "copy_pitched" not in one
    # attention at T=100 (static): the prefill path with the one softmax for 100 keys
    (attn,) = _sdpa_sections(lower(main_func(_flash_case("mask", torch.float32)[0])).source)
    assert "attention_decode_split" not in attn and attn.count("ctx->gemm(") == 2
    assert attn.count("softmax") == 1 and "gml::softmax_warp_rows<float, float, 4><<<" in attn
    # and one query row (static): flash-decoding only
    x, mask = torch.randn(2, 1, 64), torch.ones(1, 1, dtype=torch.bool)
    from gimlet.frontend import import_model

    step, _ = import_model(_MaskedAttention().eval(), (x, mask), None)
    run_pipeline(step, DEFAULT_PIPELINE)
    (attn,) = _sdpa_sections(lower(main_func(step)).source)
    assert "attention_decode_split" in attn and "ctx->gemm" not in attn and "softmax" not in attn


@needs_gpu
def test_dynamic_sizes_get_one_bucket_each(lowered: dict[str, Any], built: dict[str, Path]) -> None:
    from gimlet.backends.nvidia.program import CudaFunction

    module, low = lowered["gpt"]
    imp = imported("gpt")
    f = CudaFunction(main_func(module), built["gpt"], imp.weights, lowered=low)
    for seq in (5, 12, 33, 12):
        ids = np.random.default_rng(seq).integers(0, 97, (2, seq))
        (got,) = f(torch.as_tensor(ids).cuda())
        (ref,) = run(module, [ids], imp.weights)
        np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=1e-4, atol=1e-5)
    assert len(f.buckets) == 3


# ------------------------------------------------------------------ one op at a time
# Small hand-written functions for the ops of backends/gpu/conv.py and tensor_ops.py,
# each option of an op in a result of its own: every case builds with nvcc (CI), and
# runs on a GPU against the interpreter, once per list of inputs (several shape
# buckets where a size is dynamic). Tolerances by result type, as for the families.

_rng = np.random.default_rng(0)


def _normal(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    return _rng.standard_normal(shape).astype(np.float32).astype(dtype)


def _ties(*shape: int, nan_at: tuple[int, ...] | None = None) -> np.ndarray:
    """Small integers as f32 (many ties, first index must win), a NaN if asked."""
    x = _rng.integers(-3, 4, shape).astype(np.float32)
    if nan_at is not None:
        x[nan_at] = np.nan
    return x


def _with_nan(x: np.ndarray, at: tuple[int, ...]) -> np.ndarray:
    x = x.copy()
    x[at] = np.nan
    return x


@dataclass
class OpCase:
    ir: str  # func.func @main
    calls: list[list[np.ndarray]]  # the inputs of each call
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def _func(args: str, body: str, results: str) -> str:
    names = ", ".join(f"%r{i}" for i in range(results.count("tensor<")))  # %r0, %r1, ..
    return f"func.func @main({args}) -> ({results}) {{\n{body}\n  func.return {names} : {results}\n}}\n"


OP_CASES: dict[str, OpCase] = {
    # groups, stride, padding, dilation and a bias; a depthwise conv; a runtime weight on
    # one image without a bias (the GEMM writes the output); a 1-d conv
    "conv": OpCase(
        _func(
            "%x: tensor<2x4x9x8xf32>, %x1: tensor<1x3x7x7xf32>, %w1: tensor<5x3x3x3xf32>, %s: tensor<2x3x10xf32>",
            """
  %w = gml.param "w" : tensor<6x2x3x3xf32>
  %b = gml.param "b" : tensor<6xf32>
  %wd = gml.param "wd" : tensor<4x1x3x3xf32>
  %ws = gml.param "ws" : tensor<4x3x3xf32>
  %r0 = gml.conv %x, %w bias %b stride [2, 1] padding [1, 2] dilation [1, 2] groups 2 : (tensor<2x4x9x8xf32>, tensor<6x2x3x3xf32>, tensor<6xf32>) -> tensor<2x6x5x8xf32>
  %r1 = gml.conv %x, %wd stride [1, 1] padding [1, 1] dilation [1, 1] groups 4 : (tensor<2x4x9x8xf32>, tensor<4x1x3x3xf32>) -> tensor<2x4x9x8xf32>
  %r2 = gml.conv %x1, %w1 stride [1, 1] padding [1, 1] dilation [1, 1] groups 1 : (tensor<1x3x7x7xf32>, tensor<5x3x3x3xf32>) -> tensor<1x5x7x7xf32>
  %r3 = gml.conv %s, %ws stride [2] padding [1] dilation [1] groups 1 : (tensor<2x3x10xf32>, tensor<4x3x3xf32>) -> tensor<2x4x5xf32>""",
            "tensor<2x6x5x8xf32>, tensor<2x4x9x8xf32>, tensor<1x5x7x7xf32>, tensor<2x4x5xf32>",
        ),
        [[_normal(2, 4, 9, 8), _normal(1, 3, 7, 7), _normal(5, 3, 3, 3), _normal(2, 3, 10)]],
        {
            "w": _normal(6, 2, 3, 3),
            "b": _normal(6),
            "wd": _normal(4, 1, 3, 3),
            "ws": _normal(4, 3, 3),
        },
    ),
    # a 1x1 conv over a dynamic batch: one image reads the input as the im2col matrix
    "conv_pointwise": OpCase(
        _func(
            "%x: tensor<?x8x5x5xf32>",
            """
  %w = gml.param "w" : tensor<4x8x1x1xf32>
  %b = gml.param "b" : tensor<4xf32>
  %r0 = gml.conv %x, %w bias %b stride [1, 1] padding [0, 0] dilation [1, 1] groups 1 : (tensor<?x8x5x5xf32>, tensor<4x8x1x1xf32>, tensor<4xf32>) -> tensor<?x4x5x5xf32>""",
            "tensor<?x4x5x5xf32>",
        ),
        [[_normal(1, 8, 5, 5)], [_normal(3, 8, 5, 5)]],
        {"w": _normal(4, 8, 1, 1), "b": _normal(4)},
    ),
    # 16-bit convolutions: f16 with a bias and groups, bf16 with a stride
    "conv_half": OpCase(
        _func(
            "%h: tensor<2x4x6x6xf16>, %g: tensor<1x4x6x6xbf16>",
            """
  %wh = gml.param "wh" : tensor<4x2x3x3xf16>
  %bh = gml.param "bh" : tensor<4xf16>
  %wg = gml.param "wg" : tensor<3x4x3x3xbf16>
  %r0 = gml.conv %h, %wh bias %bh stride [1, 1] padding [1, 1] dilation [1, 1] groups 2 : (tensor<2x4x6x6xf16>, tensor<4x2x3x3xf16>, tensor<4xf16>) -> tensor<2x4x6x6xf16>
  %r1 = gml.conv %g, %wg stride [2, 2] padding [1, 1] dilation [1, 1] groups 1 : (tensor<1x4x6x6xbf16>, tensor<3x4x3x3xbf16>) -> tensor<1x3x3x3xbf16>""",
            "tensor<2x4x6x6xf16>, tensor<1x3x3x3xbf16>",
        ),
        [[_normal(2, 4, 6, 6, dtype=np.float16), _normal(1, 4, 6, 6, dtype=ml_dtypes.bfloat16)]],
        {
            "wh": _normal(4, 2, 3, 3, dtype=np.float16),
            "bh": _normal(4, dtype=np.float16),
            "wg": _normal(3, 4, 3, 3, dtype=ml_dtypes.bfloat16),
        },
    ),
    "batch_norm": OpCase(
        _func(
            "%x: tensor<2x3x4x5xf32>, %h: tensor<3x2xf16>",
            """
  %g = gml.param "g" : tensor<3xf32>
  %b = gml.param "b" : tensor<3xf32>
  %m = gml.param "m" : tensor<3xf32>
  %v = gml.param "v" : tensor<3xf32>
  %gh = gml.param "gh" : tensor<2xf16>
  %bh = gml.param "bh" : tensor<2xf16>
  %mh = gml.param "mh" : tensor<2xf16>
  %vh = gml.param "vh" : tensor<2xf16>
  %r0 = gml.batch_norm %x, %g, %b, %m, %v eps 1.000000e-05 : (tensor<2x3x4x5xf32>, tensor<3xf32>, tensor<3xf32>, tensor<3xf32>, tensor<3xf32>) -> tensor<2x3x4x5xf32>
  %r1 = gml.batch_norm %h, %gh, %bh, %mh, %vh eps 1.000000e-03 : (tensor<3x2xf16>, tensor<2xf16>, tensor<2xf16>, tensor<2xf16>, tensor<2xf16>) -> tensor<3x2xf16>""",
            "tensor<2x3x4x5xf32>, tensor<3x2xf16>",
        ),
        [[_normal(2, 3, 4, 5), _normal(3, 2, dtype=np.float16)]],
        {
            "g": _normal(3),
            "b": _normal(3),
            "m": _normal(3),
            "v": _rng.uniform(0.5, 1.5, 3).astype(np.float32),
            "gh": _normal(2, dtype=np.float16),
            "bh": _normal(2, dtype=np.float16),
            "mh": _normal(2, dtype=np.float16),
            "vh": _rng.uniform(0.5, 1.5, 2).astype(np.float16),
        },
    ),
    # dilation with ceil_mode; a NaN wins its window; integers pad with their minimum
    "max_pool2d": OpCase(
        _func(
            "%x: tensor<2x3x9x9xf32>, %q: tensor<1x2x6x6xf32>, %i: tensor<1x1x5x5xi32>",
            """
  %r0 = gml.max_pool2d %x kernel [3, 3] stride [2, 2] padding [1, 1] dilation [2, 2] ceil_mode true : tensor<2x3x9x9xf32> to tensor<2x3x4x4xf32>
  %r1 = gml.max_pool2d %q kernel [2, 2] stride [2, 2] padding [0, 0] : tensor<1x2x6x6xf32> to tensor<1x2x3x3xf32>
  %r2 = gml.max_pool2d %i kernel [2, 2] stride [2, 2] padding [1, 1] : tensor<1x1x5x5xi32> to tensor<1x1x3x3xi32>""",
            "tensor<2x3x4x4xf32>, tensor<1x2x3x3xf32>, tensor<1x1x3x3xi32>",
        ),
        [
            [
                _normal(2, 3, 9, 9),
                _with_nan(_normal(1, 2, 6, 6), (0, 1, 2, 3)),
                -_rng.integers(1, 100, (1, 1, 5, 5)).astype(np.int32),
            ]
        ],
    ),
    # padding not counted with ceil_mode; a ceil_mode window past the input; a divisor
    "avg_pool2d": OpCase(
        _func(
            "%x: tensor<2x3x9x9xf32>",
            """
  %r0 = gml.avg_pool2d %x kernel [3, 3] stride [2, 2] padding [1, 1] ceil_mode true count_include_pad false : tensor<2x3x9x9xf32> to tensor<2x3x5x5xf32>
  %r1 = gml.avg_pool2d %x kernel [2, 2] stride [2, 2] padding [0, 0] ceil_mode true : tensor<2x3x9x9xf32> to tensor<2x3x5x5xf32>
  %r2 = gml.avg_pool2d %x kernel [2, 2] stride [1, 1] padding [1, 1] divisor 3 : tensor<2x3x9x9xf32> to tensor<2x3x10x10xf32>
  %r3 = gml.adaptive_avg_pool2d %x : tensor<2x3x9x9xf32> to tensor<2x3x4x2xf32>""",
            "tensor<2x3x5x5xf32>, tensor<2x3x5x5xf32>, tensor<2x3x10x10xf32>, tensor<2x3x4x2xf32>",
        ),
        [[_normal(2, 3, 9, 9)]],
    ),
    # gather with an index smaller than the input and negative entries; padding that crops
    "gather_pad": OpCase(
        _func(
            "%x: tensor<3x5x4xf32>, %i: tensor<2x3x3xi64>, %p: tensor<3x4xi32>",
            """
  %r0 = gml.gather %x, %i dim 1 : (tensor<3x5x4xf32>, tensor<2x3x3xi64>) -> tensor<2x3x3xf32>
  %r1 = gml.pad %x low [1, -1, 0] high [0, 2, 1] value 5.000000e-01 : tensor<3x5x4xf32> to tensor<4x6x5xf32>
  %r2 = gml.pad %p low [1, 1] high [1, 0] value 7.000000e+00 : tensor<3x4xi32> to tensor<5x5xi32>""",
            "tensor<2x3x3xf32>, tensor<4x6x5xf32>, tensor<5x5xi32>",
        ),
        [
            [
                _normal(3, 5, 4),
                _rng.integers(-5, 5, (2, 3, 3)),
                _rng.integers(-9, 9, (3, 4)).astype(np.int32),
            ]
        ],
    ),
    # ties (first index wins) and NaN (it wins); along the last dim, a middle dim, all
    # dims; integers; a long row reduced by a whole block
    "argmax_argmin": OpCase(
        _func(
            "%x: tensor<4x7xf32>, %k: tensor<2x5x3xi32>, %v: tensor<2x3000xf32>",
            """
  %r0 = gml.argmax %x dim 1 : tensor<4x7xf32> to tensor<4xi64>
  %r1 = gml.argmin %x dim 0 keepdim true : tensor<4x7xf32> to tensor<1x7xi64>
  %r2 = gml.argmax %x : tensor<4x7xf32> to tensor<i64>
  %r3 = gml.argmax %k dim 1 : tensor<2x5x3xi32> to tensor<2x3xi64>
  %r4 = gml.argmin %k dim -1 : tensor<2x5x3xi32> to tensor<2x5xi64>
  %r5 = gml.argmax %v dim 1 : tensor<2x3000xf32> to tensor<2xi64>
  %r6 = gml.argmin %v dim 1 : tensor<2x3000xf32> to tensor<2xi64>""",
            "tensor<4xi64>, tensor<1x7xi64>, tensor<i64>, tensor<2x3xi64>, tensor<2x5xi64>, tensor<2xi64>, tensor<2xi64>",
        ),
        [
            [
                _ties(4, 7, nan_at=(2, 4)),
                _rng.integers(-3, 4, (2, 5, 3)).astype(np.int32),
                _ties(2, 3000, nan_at=(1, 2222)),
            ]
        ],
    ),
    # var in the middle, along rows, over non-adjacent dims and all dims, f16; sums,
    # maxima, means and minima over dims that are not adjacent (a permuted copy first);
    # any along rows
    "var_reductions": OpCase(
        _func(
            "%x: tensor<3x4x5xf32>, %h: tensor<4x6xf16>, %y: tensor<2x3x4x5xf32>, %b: tensor<3x4xi1>",
            """
  %r0 = gml.var %x [1] : tensor<3x4x5xf32> to tensor<3x5xf32>
  %r1 = gml.var %x [2] correction 0.0 : tensor<3x4x5xf32> to tensor<3x4xf32>
  %r2 = gml.var %x [0, 2] keepdim true : tensor<3x4x5xf32> to tensor<1x4x1xf32>
  %r3 = gml.var %x [] : tensor<3x4x5xf32> to tensor<f32>
  %r4 = gml.var %h [1] : tensor<4x6xf16> to tensor<4xf16>
  %r5 = gml.sum %x [0, 2] : tensor<3x4x5xf32> to tensor<4xf32>
  %r6 = gml.amax %x [2, 0] keepdim true : tensor<3x4x5xf32> to tensor<1x4x1xf32>
  %r7 = gml.mean %y [1, 3] : tensor<2x3x4x5xf32> to tensor<2x4xf32>
  %r8 = gml.amin %y [0, 2] : tensor<2x3x4x5xf32> to tensor<3x5xf32>
  %r9 = gml.any %b [1] : tensor<3x4xi1> to tensor<3xi1>""",
            "tensor<3x5xf32>, tensor<3x4xf32>, tensor<1x4x1xf32>, tensor<f32>, tensor<4xf16>, tensor<4xf32>, tensor<1x4x1xf32>, tensor<2x4xf32>, tensor<3x5xf32>, tensor<3xi1>",
        ),
        [
            [
                _normal(3, 4, 5),
                _normal(4, 6, dtype=np.float16),
                _normal(2, 3, 4, 5),
                np.array([[0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=bool),
            ]
        ],
    ),
    # x @ W1 + x @ W2 over dynamic rows: both products have x's rows at every bucket, so
    # the add is W1's epilogue (the GEMV's for 3 rows, cuBLASLt's residual for 7)
    "linear_dyn_residual": OpCase(
        _func(
            "%x: tensor<?x16xf32>",
            """
  %w1 = gml.param "w1" : tensor<16x32xf32>
  %w2 = gml.param "w2" : tensor<16x32xf32>
  %r = gml.matmul %x, %w2 : (tensor<?x16xf32>, tensor<16x32xf32>) -> tensor<?x32xf32>
  %m = gml.matmul %x, %w1 : (tensor<?x16xf32>, tensor<16x32xf32>) -> tensor<?x32xf32>
  %r0 = gml.add %m, %r : (tensor<?x32xf32>, tensor<?x32xf32>) -> tensor<?x32xf32>""",
            "tensor<?x32xf32>",
        ),
        [[_normal(3, 16)], [_normal(7, 16)]],
        {"w1": _normal(16, 32), "w2": _normal(16, 32)},
    ),
    # x @ W + b with b's rows another dynamic dim: either may be 1 and broadcast (5 rows
    # + 1, 1 row + 4), so the add stays a kernel of its own over the broadcast
    "linear_dyn_broadcast": OpCase(
        _func(
            "%x: tensor<?x16xf32>, %b: tensor<?x32xf32>",
            """
  %w = gml.param "w" : tensor<16x32xf32>
  %m = gml.matmul %x, %w : (tensor<?x16xf32>, tensor<16x32xf32>) -> tensor<?x32xf32>
  %r0 = gml.add %m, %b : (tensor<?x32xf32>, tensor<?x32xf32>) -> tensor<?x32xf32>""",
            "tensor<?x32xf32>",
        ),
        [
            [_normal(5, 16), _normal(1, 32)],
            [_normal(3, 16), _normal(3, 32)],
            [_normal(1, 16), _normal(4, 32)],
            [_normal(2, 16), _normal(1, 32)],
        ],
        {"w": _normal(16, 32)},
    ),
}


@pytest.fixture(scope="module")
def op_lowered() -> dict[str, Any]:
    return {name: (m := parse(c.ir), lower(main_func(m))) for name, c in OP_CASES.items()}


@pytest.fixture(scope="module")
def op_built(op_lowered: dict[str, Any], cache: Any) -> dict[str, Path]:
    from gimlet.backends.nvidia.build import build_segment

    with ThreadPoolExecutor(2) as pool:
        futures = {n: pool.submit(build_segment, low.source) for n, (_, low) in op_lowered.items()}
        return {n: f.result()[0] for n, f in futures.items()}


def test_op_cases_lower_to_their_kernels(op_lowered: dict[str, Any]) -> None:
    """Each op is one launch of its kernel (a conv: im2col, a GEMM over groups, the bias
    pass), named in a comment; reductions over non-adjacent dims copy first."""
    src = {name: low.source for name, (_, low) in op_lowered.items()}
    assert src["conv"].count("gml::im2col<float>") == 4 and src["conv"].count("ctx->gemm(") == 4
    assert ", 2, 1.0f)) return e;" in src["conv"]  # groups 2: a batch of 2 GEMMs
    assert "P[0] == 1 ? reinterpret_cast<const float*>(A + P[" in src["conv_pointwise"]
    assert "gml::DType::F16, gml::DType::F32" in src["conv_half"]
    assert src["avg_pool2d"].count("gml::avg_pool2d<float>") == 3
    assert "true, int64_t(0)" in src["avg_pool2d"] and "false, int64_t(0)" in src["avg_pool2d"]
    assert "true, int64_t(3)" in src["avg_pool2d"]
    assert src["var_reductions"].count("gml::permute_copy<") == 5
    assert "gml::arg_rows<float, true>" in src["argmax_argmin"]
    assert "gml::arg_mid<int32_t, true>" in src["argmax_argmin"]
    # dynamic rows: the residual add proven to walk W1's product is in its epilogue, the
    # add of an unrelated dynamic dim is not
    assert src["linear_dyn_residual"].count("ctx->gemm_epilogue(") == 1
    assert (
        "  // gml.matmul (no location)\n  // gml.add (no location)\n  if (P[5] <= 4)"
        in (src["linear_dyn_residual"])
    )
    assert "ctx->gemm_epilogue(" not in src["linear_dyn_broadcast"]
    assert "  // gml.add (no location)\n  if (P[14] > 0) k1<<<" in src["linear_dyn_broadcast"]
    for name, text in src.items():
        assert "// gml." in text, name
        assert "cuda" not in text.replace("gml_gpu.cuh", ""), name


@needs_nvcc
def test_every_op_case_builds_for_sm90(op_built: dict[str, Path]) -> None:
    assert sorted(op_built) == sorted(OP_CASES)
    for path in op_built.values():
        assert path.stat().st_size > 0


def _tolerance(dtype: np.dtype[Any]) -> dict[str, float]:
    if dtype == np.float16:
        return {"rtol": 1e-2, "atol": 1e-2}
    if dtype == np.dtype(ml_dtypes.bfloat16):
        return {"rtol": 3e-2, "atol": 3e-2}
    if dtype.kind == "f":
        return {"rtol": 1e-4, "atol": 1e-5}
    return {"rtol": 0, "atol": 0}


@needs_gpu
@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_op_on_gpu_matches_interpreter(
    name: str, op_lowered: dict[str, Any], op_built: dict[str, Path]
) -> None:
    from gimlet.backends.nvidia.program import CudaFunction

    case = OP_CASES[name]
    module, low = op_lowered[name]
    f = CudaFunction(main_func(module), op_built[name], case.weights, lowered=low)
    for inputs in case.calls:
        got = [torch_to_numpy(o.cpu()) for o in f(*[numpy_to_torch(x).cuda() for x in inputs])]
        ref = run(module, inputs, case.weights)
        for i, (g, r) in enumerate(zip(got, ref, strict=True)):
            assert g.dtype == r.dtype and g.shape == r.shape, (name, i)
            np.testing.assert_allclose(
                g.astype(np.float64),
                r.astype(np.float64),
                err_msg=f"{name} result {i}",
                **_tolerance(r.dtype),
            )


# ------------------------------------------------------------------ in bundles


@pytest.fixture(scope="module")
def gpu_bundles(tmp_path_factory: Any, cache: Any) -> dict[str, Path]:
    """GPT split CPU+GPU (embeddings on the host, the blocks on gpu0) and all on gpu0."""
    from gimlet.cli import main as gimletc

    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("gpu-bundles")
    specs = {
        "split": "h.0=gpu0,h.1=gpu0,ln_f=gpu0,lm_head=gpu0",
        "gpu": "wte=gpu0,wpe=gpu0,h.0=gpu0,h.1=gpu0,ln_f=gpu0,lm_head=gpu0",
    }
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    for name, pins in specs.items():
        argv = ["compile", "examples/gpt.py:model", "-o", str(out / name), "--target", "h100+cpu"]
        assert gimletc([*argv, "--pin", pins]) == 0
    mp.undo()
    return {n: out / n for n in specs}


@needs_nvcc
def test_bundle_carries_cuda_for_gpu_segments(gpu_bundles: dict[str, Path]) -> None:
    import json

    manifest = json.loads((gpu_bundles["split"] / "manifest.json").read_text())
    kinds = {s["device"]: s["artefact"]["kind"] for s in manifest["segments"]}
    assert kinds == {"cpu0": "cpu-cxx", "gpu0": "cuda"}
    gpu = next(s["artefact"] for s in manifest["segments"] if s["device"] == "gpu0")
    assert gpu["arch"] == ["sm_90"] and gpu["parts"]
    for part in gpu["parts"]:
        assert (
            (gpu_bundles["split"] / part["source"]).read_text().startswith("// Generated by gimlet")
        )
        assert (gpu_bundles["split"] / part["library"]).stat().st_size > 0
    header = gpu_bundles["split"] / "cuda/include/gimlet/gpu/gml_gpu.cuh"
    # and the pieces it includes: the bundle's sources build against its own headers
    pieces = re.findall(r'#include "(gimlet/gpu/\w+\.cuh)"', header.read_text())
    assert "gimlet/gpu/gemv.cuh" in pieces
    for piece in pieces:
        assert (gpu_bundles["split"] / "cuda/include" / piece).exists(), piece


@needs_nvcc
@pytest.mark.parametrize("name", ["split", "gpu"])
def test_bundle_with_gpu_segments_matches_interpreter(
    name: str, gpu_bundles: dict[str, Path]
) -> None:
    """On the H200 the GPU segments run as CUDA; without a GPU, on the interpreter."""
    import gimlet

    ids = np.load(Path(__file__).resolve().parents[1] / "examples/gpt_inputs.npz")["ids"]
    compiled = gimlet.compile("examples/gpt.py:model")
    (ref,) = compiled(torch.as_tensor(ids))
    with gimlet.load(str(gpu_bundles[name])) as f:
        (got,) = f(torch.as_tensor(ids))
    np.testing.assert_allclose(np.asarray(got), ref.numpy(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ f16 / bf16

LOW = {"f16": torch.float16, "bf16": torch.bfloat16}
# against the interpreter (each op in f32, rounded): the GPU's GEMMs and reductions sum
# in another order, and a 1-ulp difference in a 16-bit intermediate propagates
LOW_TOL = {"f16": {"rtol": 1e-2, "atol": 1e-2}, "bf16": {"rtol": 3e-2, "atol": 3e-2}}


@needs_gpu
@pytest.mark.parametrize("tag", sorted(LOW))
@pytest.mark.parametrize("name", ["gpt", "hf_gpt2", "hf_llama", "llama_block", "mlp"])
def test_low_precision_family_on_gpu(name: str, tag: str, cache: Any) -> None:
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction
    from gimlet.frontend import import_model

    dtype = LOW[tag]
    torch.manual_seed(0)
    model, inputs, dyn = FAMILIES[name]()
    model = model.eval().to(dtype)
    inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)
    module, weights = import_model(model, inputs, dyn)
    run_pipeline(module, DEFAULT_PIPELINE)
    low = lower(main_func(module))
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    got = f(*[x.cuda() for x in inputs])
    ref = run(module, [torch_to_numpy(x) for x in inputs], weights)
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == dtype
        np.testing.assert_allclose(
            g.float().cpu().numpy(), np.asarray(r).astype(np.float32), **LOW_TOL[tag]
        )


# ------------------------------------------------------------------ layer norm

# row widths -> the kernel that normalizes them: a warp a row in registers up to 1024
# elements, a block a row in registers up to 8192, the three-pass block kernel beyond;
# 777 is no multiple of 16 bytes (element loads), 10001 takes the long-row kernel
LN_WIDTHS = {
    64: "layer_norm_reg<{t}, 128>",
    768: "layer_norm_reg<{t}, 1024>",
    777: "layer_norm_reg<{t}, 1024>",
    1000: "layer_norm_reg<{t}, 1024>",
    4096: "layer_norm_reg<{t}, 4096>",
    5000: "layer_norm_reg<{t}, 8192>",
    10001: "layer_norm_rows<{t}>",
}
LN_ROWS = 37  # not a whole number of 4-row blocks


class _Norms(torch.nn.Module):
    """One nn.LayerNorm per width (random weight and bias; the 768-wide one has none)."""

    def __init__(self) -> None:
        super().__init__()
        self.norms = torch.nn.ModuleList(
            torch.nn.LayerNorm(n, elementwise_affine=n != 768) for n in LN_WIDTHS
        )
        for norm in self.norms:
            if norm.weight is not None:
                torch.nn.init.normal_(norm.weight)
                torch.nn.init.normal_(norm.bias)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(norm(x) for norm, x in zip(self.norms, xs, strict=True))


def _norms(dtype: torch.dtype) -> tuple[Any, Any, Any, tuple[torch.Tensor, ...]]:
    from gimlet.frontend import import_model

    torch.manual_seed(0)
    model = _Norms().eval().to(dtype)
    gen = torch.Generator().manual_seed(1)
    xs = tuple(3 + 2 * torch.randn(LN_ROWS, n, generator=gen).to(dtype) for n in LN_WIDTHS)
    module, weights = import_model(model, xs, None)
    run_pipeline(module, DEFAULT_PIPELINE)
    return module, weights, model, xs


_CT = {torch.float32: "float", torch.float16: "gml::f16", torch.bfloat16: "gml::bf16"}


def test_layer_norm_keeps_rows_in_registers_up_to_8192() -> None:
    module, _, _, _ = _norms(torch.float16)
    src = lower(main_func(module)).source
    launches = [ln for ln in src.splitlines() if "gml::layer_norm_" in ln]
    assert len(launches) == len(LN_WIDTHS)
    for line, kernel in zip(launches, LN_WIDTHS.values(), strict=True):
        assert kernel.format(t="gml::f16") + "<<<" in line, line
    assert "layer_norm_reg<gml::f16, 1024><<<gml::layer_norm_blocks<1024>(P[" in src
    assert "nullptr, nullptr" in launches[1]  # no weight, no bias


@needs_nvcc
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_layer_norm_variants_build_for_sm90(dtype: torch.dtype, cache: Any) -> None:
    from gimlet.backends.nvidia.build import build_segment

    src = lower(main_func(_norms(dtype)[0])).source
    assert f"layer_norm_reg<{_CT[dtype]}, 8192>" in src
    assert build_segment(src)[0].stat().st_size > 0


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_layer_norm_rows_match_torch(dtype: torch.dtype, cache: Any) -> None:
    """Every width against torch's layer norm in f32 over the same inputs, rounded to the
    dtype (the kernels sum in f32 too): f32 at 1e-4 / 1e-5, f16 and bf16 as LOW_TOL."""
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction

    module, weights, model, xs = _norms(dtype)
    low = lower(main_func(module))
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    got = f(*[x.cuda() for x in xs])
    tag = {torch.float16: "f16", torch.bfloat16: "bf16"}.get(dtype)
    tol = LOW_TOL[tag] if tag else {"rtol": 1e-4, "atol": 1e-5}
    for g, x, norm in zip(got, xs, model.norms, strict=True):
        w, b = (
            (None, None)
            if norm.weight is None
            else (norm.weight.detach().float(), norm.bias.detach().float())
        )
        want = torch.nn.functional.layer_norm(x.float(), x.shape[-1:], w, b, norm.eps)
        assert g.dtype == dtype and g.shape == x.shape
        np.testing.assert_allclose(
            g.float().cpu().numpy(), want.to(dtype).float().numpy(), err_msg=str(x.shape), **tol
        )


# ------------------------------------------------------------------ attention in place


def _demo_gpt() -> Any:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from gpt import model

    m, ex, dyn = model()  # batch 1, dynamic sequence
    module, weights = __import__("gimlet.frontend", fromlist=["import_model"]).import_model(
        m, ex, dyn
    )
    run_pipeline(module, DEFAULT_PIPELINE)
    return module, weights


def test_attention_reads_qkv_in_place_in_prefill(monkeypatch: Any) -> None:
    """Batch 1, 16 tokens: cuBLAS reads q/k/v straight out of the fused qkv projection
    (leading dim 3*d, head stride d) and writes the heads interleaved, so the slice,
    permute and output-permute copies are skipped; at 4 tokens (decode kernel) they are not."""
    from gimlet.backends.gpu import codegen as cg

    monkeypatch.setattr(switches, "FOLD_ATTENTION", True)  # off by default until verified on a GPU
    module, _ = _demo_gpt()
    fn = main_func(module)
    low = cg._Lowering(fn, families)
    low.run()
    sdpa = next(op for op in fn.body.block.ops if type(op).__name__ == "SdpaOp")
    for seq, folded in ((16, True), (4, False)):
        shapes, ints = cg.ShapeEvaluator(fn).evaluate([(1, seq)])
        env = cg.Env(shapes, ints, offsets=dict.fromkeys(shapes, 0))
        assert (low.attention_fold(sdpa, env) is not None) == folded
    shapes, ints = cg.ShapeEvaluator(fn).evaluate([(1, 16)])
    fold = low.attention_fold(sdpa, cg.Env(shapes, ints, offsets=dict.fromkeys(shapes, 0)))
    assert fold is not None
    # (byte offset, leading dim, head stride, outer batch stride = 4 heads x 16)
    assert {k: v[1:] for k, v in fold.items()} == {
        "q": (0, 192, 16, 64), "k": (256, 192, 16, 64), "v": (512, 192, 16, 64),
        "y": (0, 64, 16, 64),
    }  # fmt: skip


@needs_gpu
@pytest.mark.parametrize("fold", [False, True])
def test_attention_in_place_matches_interpreter(fold: bool, cache: Any, monkeypatch: Any) -> None:
    from gimlet.backends.nvidia.build import build_segment

    monkeypatch.setattr(switches, "FOLD_ATTENTION", fold)
    from gimlet.backends.nvidia.program import CudaFunction

    module, weights = _demo_gpt()
    low = lower(main_func(module))
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    for seq in (4, 16, 100):  # the decode kernel, then cuBLAS reading q/k/v in place
        ids = np.random.default_rng(seq).integers(0, 512, (1, seq))
        (got,) = f(torch.as_tensor(ids).cuda())
        (ref,) = run(module, [ids], weights)
        np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=1e-4, atol=1e-5)


def _decode_case(cache_len: int) -> tuple[Any, Any, tuple[torch.Tensor, ...]]:
    """GPT (d 64, 4 heads of 16) decoding one token per batch of 2 over a KV cache."""
    import sys

    from gimlet.frontend import import_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from gpt import GPT
    from gpt_phases import Decode

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(cache_len)
    model = Decode(GPT(vocab=512, ctx=1024, d=64, heads=4, layers=2)).eval()
    inputs = (
        torch.randint(0, 512, (2, 1), generator=gen),
        torch.randn(2, 2, 4, cache_len, 16, generator=gen),
        torch.randn(2, 2, 4, cache_len, 16, generator=gen),
    )
    module, weights = import_model(model, inputs, None)
    run_pipeline(module, DEFAULT_PIPELINE)
    return module, weights, inputs


def test_decode_keeps_the_kv_pieces_alive_through_the_attention() -> None:
    """The decode kernel reads the KV concat's pieces (cache, new entry) in place at the
    attention's step: the memory plan must not hand their bytes to anything before then
    (the H200 showed wrong batch-2 decode when it gave them to the attention's scratch)."""
    module, _, _ = _decode_case(5)
    fn = main_func(module)
    low = lower(fn)
    steps = {op: i for i, op in enumerate(fn.body.block.ops, start=1)}
    life = {v: last for v, _, last in low.values}
    sdpas = [op for op in fn.body.block.ops if isinstance(op, gml_ops.SdpaOp)]
    assert len(sdpas) == 2
    for sdpa in sdpas:
        for kv in (sdpa.key, sdpa.value):
            cat = kv.owner
            assert isinstance(cat, gml_ops.ConcatOp)
            for piece in cat.inputs:
                assert life[piece] >= steps[sdpa]


@needs_gpu
@pytest.mark.parametrize("cache_len", [5, 700])
def test_decode_attention_splits_the_cache_and_matches_interpreter(
    cache_len: int, cache: Any
) -> None:
    """Flash-decoding: a 700-token cache over 2 batches x 4 heads is 22 chunks (the last
    one partial), 5 tokens is one; both equal the interpreter at f32 tolerance."""
    from gimlet.backends.gpu.lower_attention import _decode_split
    from gimlet.backends.gpu.switches import DECODE_TARGET_BLOCKS
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction

    target = DECODE_TARGET_BLOCKS
    assert _decode_split(8, 700, target) == (32, 22) and _decode_split(8, 5, target) == (32, 1)
    module, weights, inputs = _decode_case(cache_len)
    low = lower(main_func(module))
    assert "attention_decode_split" in low.source
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    (got,) = f(*[x.cuda() for x in inputs])
    (ref,) = run(module, [x.numpy() for x in inputs], weights)
    np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=1e-4, atol=1e-5)


def test_kernels_started_early_wait_for_the_one_before(monkeypatch: Any) -> None:
    """Decode's chain (GEMVs, split-KV attention, its combine) goes through
    gml::launch_pdl, which lets a kernel start while the one before it still runs: each
    kernel launched so must pass gml::pdl_wait before it reads the arena. Each of them runs
    its body (one block's work) with the gml::Pdl sync policy (whose wait() is pdl_wait),
    and the body calls sync.wait(): a generated GEMV through gemv_nt (which waits once its
    first weight loads are issued), a header kernel itself. With PDL off they are plain
    <<<>>> launches."""
    from gimlet.backends.nvidia.build import GPU_INCLUDE

    module = _decode_case(40)[0]
    src = lower(main_func(module)).source
    gpu = GPU_INCLUDE / "gimlet" / "gpu"  # gml_gpu.cuh is the pieces it includes
    pieces = re.findall(r'#include "gimlet/gpu/(\w+\.cuh)"', (gpu / "gml_gpu.cuh").read_text())
    header = "".join((gpu / piece).read_text() for piece in pieces)

    def body(text: str, signature: str) -> str:
        at = text.index(signature)
        return text[at : text.index("\n}\n", at)]

    launched = re.findall(r"gml::launch_pdl\(((?:gml::)?\w+)", src)
    header_kernels = sorted({n for n in launched if n.startswith("gml::")})
    assert header_kernels == ["gml::attention_combine", "gml::attention_decode_split"]
    # the GEMVs: qkv, proj, fc, fc2 (proj and fc2 apart: their loads in flight differ), head
    assert len({n for n in launched if not n.startswith("gml::")}) == 5, launched
    assert "GML_D void pdl_wait()" in header
    assert "void wait() const { pdl_wait(); }" in body(header, "struct Pdl {")
    assert "sync.wait();" in body(header, "GML_D void gemv_nt(")
    for name in set(launched):
        if name.startswith("gml::"):
            kernel = name.removeprefix("gml::")
            wrapper = body(header, f"    {kernel}(")
            assert "Pdl sync;" in wrapper and f"{kernel}_block<" in wrapper, name
            assert "sync.wait();" in body(header, f"GML_D void {kernel}_block("), name
        else:
            wrapper = body(src, f"__global__ void {name}(")
            assert "gml::Pdl sync;" in wrapper and f"{name}_body<M>(sync, blockIdx.x" in wrapper
            assert "gml::gemv_nt<" in body(src, f"GML_D void {name}_body("), name
    monkeypatch.setattr(switches, "PDL", False)
    plain = lower(main_func(module)).source
    assert "launch_pdl" not in plain
    assert plain.count("gml::GEMV_THREADS, 0, stream>>>(") == len(launched) - 2 * src.count(
        "gml::launch_pdl(gml::attention_combine"
    )


def test_a_gemv_lane_keeps_a_columns_loads_in_flight(monkeypatch: Any) -> None:
    """gml::gemv_nt's U (16-byte loads a lane in flight before any arithmetic) is a
    column's where k is static, up to 16: GPT-2's fc2 (k 3072, f16) one batch of 12, its
    k 768 GEMVs 3; 8 where k is dynamic or GIMLET_GPU_GEMV_LOADS=0; a warp's share where
    S warps take a column (fc2 over 4 warps: 3). The split itself: test_gpu_decode_early."""
    from gimlet.backends.gpu import codegen as cg

    monkeypatch.setattr(switches, "GEMV_SPLIT", False)
    assert cg._gemv_loads(3072, "gml::f16") == 12 and cg._gemv_loads(768, "gml::bf16") == 3
    assert cg._gemv_loads(3072, "gml::f16", 4) == 3
    assert cg._gemv_loads(16384, "gml::f16") == 16  # at most 16
    assert cg._gemv_loads(16, "float") == 1 and cg._gemv_loads(-1, "gml::f16") == 8
    src = lower(main_func(_decode_case(40)[0])).source  # f32, d 64, fc 256
    assert sorted(set(re.findall(r"gml::gemv_nt<float, M, (\d+)>", src))) == ["1", "2"]
    monkeypatch.setattr(switches, "GEMV_LOADS_PER_COLUMN", False)
    src = lower(main_func(_decode_case(40)[0])).source
    assert set(re.findall(r"gml::gemv_nt<float, M, (\d+)>", src)) == {"8"}


@pytest.fixture
def vendor_paths(monkeypatch: Any) -> None:
    """cuBLASLt epilogues and padded weights on, whatever GIMLET_GPU_CUBLASLT and
    GIMLET_GPU_PAD_WEIGHTS say (both default on)."""

    monkeypatch.setattr(switches, "VENDOR_EPILOGUE", True)
    monkeypatch.setattr(switches, "PAD_WEIGHTS", True)


class _LogSoftmaxHead(torch.nn.Module):
    """A head whose logits only a log_softmax reads (no elementwise consumer, no return)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(16, 37, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.head(x), dim=-1)


def _odd_width_linear(
    bias: bool, dtype: torch.dtype, rows: int = 8, log_softmax: bool = False
) -> tuple[Any, Any, Any]:
    """x [rows, 16] @ W^T with 37 columns: rows of 37 halves are not 16-byte aligned (with
    `log_softmax`, the product feeds one instead of being the result)."""
    from gimlet.frontend import import_model

    torch.manual_seed(0)
    model = _LogSoftmaxHead() if log_softmax else torch.nn.Linear(16, 37, bias=bias)
    x = torch.randn(rows, 16).to(dtype)
    module, weights = import_model(model.eval().to(dtype), (x,), None)
    run_pipeline(module, DEFAULT_PIPELINE)
    return module, weights, x


@pytest.mark.parametrize("bias", [False, True])
def test_odd_width_product_goes_through_a_padded_buffer(bias: bool, vendor_paths: None) -> None:
    """n and ldc 37 -> 40 halves (80 bytes). Without a bias the product is the result and
    the GEMM writes it in place, padded; with one the bias kernel reads a padded scratch."""
    module, _, _ = _odd_width_linear(bias, torch.float16)
    low = lower(main_func(module))
    src = low.source
    assert [w.rows for w in low.weights if w.transposed] == [40]  # zero rows 37..39
    assert src.count(", 40, 0, 1, 1.0f)) return e;") == 1
    assert "gml::copy_pitched" not in src
    assert bool(low.scratch) == bias and bool(low.pitches) == (not bias)


def test_weights_upload_transposed_and_padded_only_where_the_gemm_wants_rows() -> None:
    """The host side of the upload, checked here because only a GPU run reaches it
    otherwise (a 1-D bias once indexed shape[-2] there and failed every GPU test)."""
    from gimlet.backends.gpu.codegen import Weight
    from gimlet.backends.nvidia.program import upload_layout

    module, _, _ = _odd_width_linear(True, torch.float32)
    arg = main_func(module).body.block.args[0]
    bias, wt = np.arange(37.0), np.arange(16.0 * 37).reshape(16, 37)  # x @ wt: k=16, n=37
    assert np.array_equal(upload_layout({arg: bias}, Weight(arg, False, 0)), bias)
    assert np.array_equal(upload_layout({arg: bias}, Weight(arg, False, 40)), bias)
    padded = upload_layout({arg: wt}, Weight(arg, True, 40))  # n x k, zero rows 37..39
    assert padded.shape == (40, 16) and padded.flags.c_contiguous
    assert np.array_equal(padded[:37], wt.T)
    assert not padded[37:].any()


@needs_gpu
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_odd_width_product_matches_interpreter(
    bias: bool, dtype: torch.dtype, cache: Any, vendor_paths: None
) -> None:
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction

    module, weights, x = _odd_width_linear(bias, dtype)
    low = lower(main_func(module))
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    (got,) = f(x.cuda())
    (ref,) = run(module, [torch_to_numpy(x)], weights)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else LOW_TOL["f16"]
    np.testing.assert_allclose(got.float().cpu().numpy(), np.asarray(ref, np.float32), **tol)


@pytest.fixture
def small_padded_scratch(monkeypatch: Any) -> None:
    """64-row chunks for a padded head's product (the least the lowering takes)."""

    monkeypatch.setattr(switches, "PADDED_SCRATCH_BYTES", 1)


def _up(n: int) -> int:
    return -(-n // 256) * 256  # the memory plan's alignment


def test_padded_head_goes_through_a_scratch_of_a_few_rows(
    vendor_paths: None, small_padded_scratch: None
) -> None:
    """A head read unpadded by an op that is no elementwise consumer (a log_softmax)
    multiplies 64 rows at a time into a 64 x 40 scratch (not 150 x 40 beside the 150 x 37
    logits), each chunk copied out unpadded."""
    module, _, _ = _odd_width_linear(False, torch.float16, rows=150, log_softmax=True)
    low = lower(main_func(module))
    assert "for (int64_t r0 = 0; r0 < P[0]; r0 += 64) {" in low.source
    assert low.source.count("gml::copy_pitched<gml::f16>") == 1 and not low.pitches
    from gimlet.backends.gpu.codegen import Env

    (pad,) = [s for s, _ in low.scratch]
    assert pad.nbytes(Env(*low.evaluator.evaluate([(150, 16)]))) == 64 * 40 * 2
    plan = low.bucket(((150, 16),))
    # the peak is at the log_softmax, logits and its result (x and the scratch before it)
    assert plan.plan_bytes == 2 * _up(150 * 37 * 2) and plan.output_pitches == [0]


def test_padded_head_result_is_written_in_place_with_its_pitch(vendor_paths: None) -> None:
    """A head only the return reads: ONE GEMM of n = ldc = 40 into the result's own arena
    slot (no scratch, no chunks, no copy_pitched); the plan sizes that slot 150 x 40 and
    records the pitch, so the caller gets a [150, 37] view with strides (40, 1)."""
    module, _, _ = _odd_width_linear(False, torch.float16, rows=150)
    low = lower(main_func(module))
    src = low.source
    (call,) = [ln.strip() for ln in src.splitlines() if "ctx->gemm(" in ln]
    assert call.endswith(
        "true, P[0], 40, P[1], reinterpret_cast<const gml::f16*>(A + P[3]), P[1], 0, "
        "static_cast<const gml::f16*>(W[0]), P[1], 0, reinterpret_cast<gml::f16*>(A + P[4]), "
        "40, 0, 1, 1.0f)) return e;"
    )
    assert "copy_pitched" not in src and "r0 +=" not in src and not low.scratch
    plan = low.bucket(((150, 16),))
    assert plan.params[4] == plan.output_offsets[0]  # the GEMM writes the result's slot
    assert plan.output_pitches == [40] and plan.output_shapes == [(150, 37)]
    assert plan.output_strides(0) == (40, 1) and plan.output_elements(0) == 150 * 40
    # the logits padded, and x: live together at the head's step
    assert plan.plan_bytes == _up(150 * 40 * 2) + _up(150 * 16 * 2)


def _odd_vocab_gpt(dtype: torch.dtype) -> tuple[Any, Any, Any]:
    """examples/gpt.py's GPT with a 1001-token vocabulary (rows of 1001 are 16-byte
    aligned in neither f16 nor f32) and a dynamic sequence."""
    import sys

    from gimlet.frontend import import_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from gpt import GPT

    torch.manual_seed(0)
    model = GPT(vocab=1001, ctx=128, d=128, heads=2, layers=2).eval().to(dtype)
    seq = torch.export.Dim("seq", min=2, max=128)
    module, weights = import_model(model, (torch.randint(0, 1001, (1, 16)),), ({1: seq},))
    run_pipeline(module, DEFAULT_PIPELINE)
    return module, weights, model


@pytest.mark.parametrize(("dtype", "ldm"), [(torch.float32, 1004), (torch.float16, 1008)])
def test_gpt_head_writes_its_logits_padded_through_the_reshape(
    dtype: torch.dtype, ldm: int, vendor_paths: None
) -> None:
    """GPT's head is x[T, d] @ W reshaped to [1, T, 1001] and returned: its GEMM (ldc =
    ldm) writes the result's slot in place; buckets of more than 4 tokens return the
    logits with rows ldm apart, decode buckets (the GEMV) contiguous ones."""
    module, _, _ = _odd_vocab_gpt(dtype)
    low = lower(main_func(module))
    head = low.source.split("// gml.matmul lm_head")[1].split("\n  // gml.")[0]
    assert head.count("ctx->gemm(") == 1 and f", {ldm}, 0, 1, 1.0f)) return e;" in head
    assert "copy_pitched" not in low.source
    assert not [s for s, _ in low.scratch if s.name.startswith("padded")]
    for seq, pitch in ((64, ldm), (3, 0)):
        plan = low.bucket(((1, seq),))
        assert plan.output_shapes == [(1, seq, 1001)] and plan.output_pitches == [pitch]
        strides = (seq * ldm, ldm, 1) if pitch else (seq * 1001, 1001, 1)
        assert plan.output_strides(0) == strides
        assert plan.output_elements(0) == seq * (pitch or 1001)


@needs_nvcc
def test_padded_heads_build_for_sm90(vendor_paths: None, cache: Any) -> None:
    """The in-place head (GPT, f16) and the chunked one (a log_softmax reads it) build."""
    from gimlet.backends.nvidia.build import build_segment

    for module in (
        _odd_vocab_gpt(torch.float16)[0],
        _odd_width_linear(False, torch.bfloat16, rows=150, log_softmax=True)[0],
    ):
        assert build_segment(lower(main_func(module)).source)[0].stat().st_size > 0


def test_runtime_takes_strided_outputs() -> None:
    """What the runtime does with a padded head's output (a strided view) when a host or a
    channel takes it: each gives the logical values, contiguous (here on CPU tensors, which
    take the same paths as the GPU's after their copy out)."""
    from gimlet.dtypes import torch_to_numpy
    from gimlet.runtime.channels import _to_tensor
    from gimlet.runtime.inprocess import to_host

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        base = torch.arange(5 * 8, dtype=torch.float32).to(dtype)
        view = base.as_strided((1, 5, 7), (40, 8, 1))
        want = view.float().numpy().copy()
        for got in (to_host(view), torch_to_numpy(view), _to_tensor(view)):
            arr = got.float().numpy() if isinstance(got, torch.Tensor) else got
            assert np.array_equal(np.asarray(arr, np.float32), want)
        assert _to_tensor(view).is_contiguous()


@needs_gpu
@pytest.mark.parametrize("tag", ["f32", "f16"])
def test_gpt_head_returns_padded_logits_matching_torch(
    tag: str, cache: Any, vendor_paths: None
) -> None:
    """GPT with a 1001-token vocabulary against torch (the same model in the same dtype
    on the GPU): prefill buckets return [1, T, 1001] views with rows ldm apart, a decode
    bucket a contiguous tensor; both match torch, and the host copy (the in-process
    runtime's to_host) is contiguous and equal."""
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction
    from gimlet.runtime.inprocess import to_host

    dtype = {"f32": torch.float32, "f16": torch.float16}[tag]
    ldm = {"f32": 1004, "f16": 1008}[tag]
    tol = {"rtol": 1e-4, "atol": 1e-5} if tag == "f32" else LOW_TOL["f16"]
    module, weights, model = _odd_vocab_gpt(dtype)
    low = lower(main_func(module))
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    model = model.cuda()
    for seq in (64, 100, 3, 64):  # the GEMM, another bucket, the GEMV, a graph replay
        ids = torch.randint(0, 1001, (1, seq), generator=torch.Generator().manual_seed(seq))
        (got,) = f(ids.cuda())
        with torch.no_grad():
            want = model(ids.cuda()).float().cpu().numpy()
        assert got.shape == (1, seq, 1001) and got.dtype == dtype
        assert got.stride() == ((seq * ldm, ldm, 1) if seq > 4 else (seq * 1001, 1001, 1))
        np.testing.assert_allclose(got.float().cpu().numpy(), want, **tol)
        host = to_host(got)
        assert host.flags.c_contiguous and host.shape == (1, seq, 1001)
        assert np.array_equal(host, got.cpu().numpy())
        assert torch.equal(got.contiguous(), got)


@needs_gpu
def test_padded_head_in_chunks_matches_interpreter(
    cache: Any, vendor_paths: None, small_padded_scratch: None
) -> None:
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction

    module, weights, x = _odd_width_linear(False, torch.float16, rows=150, log_softmax=True)
    low = lower(main_func(module))
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    (got,) = f(x.cuda())
    (ref,) = run(module, [torch_to_numpy(x)], weights)
    np.testing.assert_allclose(
        got.float().cpu().numpy(), np.asarray(ref, np.float32), **LOW_TOL["f16"]
    )


class _Mlp(torch.nn.Module):
    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.fc, self.out, self.approximate = (
            torch.nn.Linear(16, 64),
            torch.nn.Linear(64, 16),
            approximate,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(torch.nn.functional.gelu(self.fc(x), approximate=self.approximate))


def _mlp(approximate: str) -> tuple[Any, Any, Any]:
    from gimlet.frontend import import_model

    torch.manual_seed(0)
    x = torch.randn(8, 16)
    module, weights = import_model(_Mlp(approximate).eval(), (x,), None)
    run_pipeline(module, DEFAULT_PIPELINE)
    return module, weights, x


def test_bias_gelu_and_residual_go_into_the_gemm_epilogue(vendor_paths: None) -> None:
    """fc: bias + tanh GELU; out: bias + residual: two cuBLASLt calls, no kernel between;
    exact (erf) GELU is not what cuBLASLt computes, so it stays a kernel."""
    src = lower(main_func(_mlp("tanh")[0])).source
    calls = [ln.strip() for ln in src.splitlines() if "ctx->gemm_epilogue(" in ln]
    assert len(calls) == 2 and "ctx->gemm(" not in src
    assert calls[0].endswith("true, nullptr)) return e;")  # gelu, no residual
    assert calls[1].endswith(", false, reinterpret_cast<const float*>(A + P[3]))) return e;")
    erf = lower(main_func(_mlp("none")[0])).source
    assert erf.count("ctx->gemm_epilogue(") == 1 and erf.count("ctx->gemm(") == 1


@needs_gpu
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gemm_epilogue_matches_interpreter(
    approximate: str, cache: Any, vendor_paths: None
) -> None:
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction

    module, weights, x = _mlp(approximate)
    low = lower(main_func(module))
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    (got,) = f(x.cuda())
    (ref,) = run(module, [x.numpy()], weights)
    np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=1e-4, atol=1e-5)


def test_runtime_links_libraries_as_options_never_as_inputs(tmp_path: Path) -> None:
    """nvcc compiles every bare input after `-x cu` as CUDA source: a library path there
    made the runtime's build run for ever on the H200."""
    from gimlet.backends.nvidia.build import runtime_flags

    for name in ("libcublas.so.13", "libcublasLt.so.13", "libcublasLt.so.13.1.0.3"):
        (tmp_path / name).touch()
    flags = runtime_flags(tmp_path / "include", tmp_path)
    assert all(f.startswith("-") for f in flags)
    assert "-Xlinker=-l:libcublasLt.so.13" in flags


@pytest.mark.skipif(
    shutil.which("hipcc") is None, reason="hipcc (ROCm's HIP compiler) is not installed"
)
def test_generated_code_compiles_for_rocm(
    lowered: dict[str, Any], tmp_path: Path, monkeypatch: Any
) -> None:
    """The generated files stay in the part of CUDA that HIP compiles: every family's
    segment, GPT in f16 and bf16 (cuBLAS attention: flash attention's fragments need
    rocWMMA, which ROCm 5.2 lacks), every layer norm width, a padded head copied out in
    chunks and a decode chain build for an MI200 (gfx90a) with hipcc -DGML_HIP."""
    from gimlet.backends.nvidia.build import GPU_INCLUDE

    monkeypatch.setattr(switches, "FLASH_PREFILL", False)
    sources = {name: low.source for name, (_, low) in lowered.items()}
    for tag in ("f16", "bf16"):
        module, _, _ = _flash_case("gpt", LOW[tag])
        sources[f"gpt-{tag}"] = lower(main_func(module)).source
    # every layer norm kernel (a warp a row is 64 lanes there), and a chunked padded head
    sources["norms-f16"] = lower(main_func(_norms(torch.float16)[0])).source
    head = _odd_width_linear(False, torch.bfloat16, rows=150, log_softmax=True)[0]
    sources["head-bf16"] = lower(main_func(head)).source
    # a persistent chain's launch (under HIP it compiles to "no chain": gml::chained)
    monkeypatch.setattr(switches, "CHAIN", True)
    sources["decode-chain"] = lower(main_func(_decode_case(40)[0])).source
    assert "gml::launch_chain<" in sources["decode-chain"]
    env = {**os.environ, "HIP_PLATFORM": "amd"}
    for name, src in sources.items():
        cu = tmp_path / f"{name}.cu"
        cu.write_text(src)
        cmd = ["hipcc", "-DGML_HIP", "--offload-arch=gfx90a", "-std=c++17", "-O1"]
        cmd += [f"-I{GPU_INCLUDE}", "-x", "hip", "-c", str(cu), "-o", str(cu.with_suffix(".o"))]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"


def test_missing_nvcc_says_what_to_install(monkeypatch: Any) -> None:
    from gimlet.backends.nvidia import build

    build.nvcc.cache_clear()
    monkeypatch.setattr(build.os, "access", lambda *a: False)
    try:
        with pytest.raises(build.CudaBuildError) as e:
            build.nvcc()
    finally:
        build.nvcc.cache_clear()
    assert str(e.value) == (
        "the NVIDIA backend needs nvcc (the CUDA toolkit, 12.4 or newer) to build GPU "
        "segments, and none was found: install the CUDA toolkit (e.g. apt-get install "
        "nvidia-cuda-toolkit, or NVIDIA's cuda-toolkit package) or set CUDA_HOME; or compile "
        "with --backend nvidia=interpreter"
    )


# ------------------------------------------------------------------ flash attention (prefill)


@pytest.fixture
def flash(monkeypatch: Any) -> None:
    """The flash-attention prefill kernel (gml::attention_prefill) on, whatever
    GIMLET_GPU_FLASH says (default on)."""

    monkeypatch.setattr(switches, "FLASH_PREFILL", True)


class _MaskedAttention(torch.nn.Module):
    """Self-attention under a boolean mask [T, T]: 4 heads of 16."""

    def __init__(self, d: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.qkv, self.heads = torch.nn.Linear(d, 3 * d), heads

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
            for z in self.qkv(x).split(d, dim=2)
        )
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return y.transpose(1, 2).reshape(b, t, d)


def _flash_case(
    name: str, dtype: torch.dtype, t: int = 100
) -> tuple[Any, Any, tuple[torch.Tensor, ...]]:
    """Prefill at T=100 (a partial 64-row block and key tile): "gpt" (causal, head dim 64,
    q/k/v read in place from the fused projection), "llama" (grouped-query: 4 heads over
    2 kv heads of 32, batch 2), "mask" (a boolean mask, every row seeing some key). At
    T=300 the keys are split into chunks (few blocks: _prefill_split)."""
    import sys

    from gimlet.frontend import import_model
    from models import LlamaBlock

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from gpt import GPT

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model: torch.nn.Module
    if name == "gpt":
        model = GPT(vocab=97, ctx=max(128, t), d=128, heads=2, layers=2)
        inputs: tuple[torch.Tensor, ...] = (torch.randint(0, 97, (1, t), generator=gen),)
    elif name == "llama":
        model = LlamaBlock(d=128, heads=4, kv_heads=2)
        inputs = (torch.randn(2, t, 128, generator=gen).to(dtype),)
    else:
        model = _MaskedAttention()
        mask = (torch.rand(t, t, generator=gen) < 0.7) | torch.eye(t, dtype=torch.bool)
        inputs = (torch.randn(2, t, 64, generator=gen).to(dtype), mask)
    module, weights = import_model(model.eval().to(dtype), inputs, None)
    run_pipeline(module, DEFAULT_PIPELINE)
    return module, weights, inputs


def _sdpa_sections(src: str) -> list[str]:
    """The generated lines of each attention: from its comment to the next op's."""
    return [s.split("\n  // gml.")[0] for s in src.split("// gml.sdpa")[1:]]


def test_flash_prefill_replaces_the_attention_gemms(flash: None) -> None:
    """With the switch on, f16 prefill attention is one gml::attention_prefill launch per
    layer (no cuBLAS call, no scores or probabilities scratch); f32 keeps cuBLAS."""
    from gimlet.backends.gpu.codegen import Env

    module, _, _ = _flash_case("gpt", torch.float16)
    low = lower(main_func(module))
    sections = _sdpa_sections(low.source)
    assert len(sections) == 2
    for s in sections:
        assert "gml::attention_prefill<gml::f16, 64, 64><<<" in s
        assert "gml::Causal{" in s and "ctx->gemm(" not in s
    env = Env(*low.evaluator.evaluate([(1, 100)]))
    scratch = [s for s, _ in low.scratch if s.name.startswith(("scores", "probs"))]
    assert len(scratch) == 4 and all(s.nbytes(env) == 0 for s in scratch)
    f32, _, _ = _flash_case("gpt", torch.float32)
    for s in _sdpa_sections(lower(main_func(f32)).source):
        assert "attention_prefill" not in s and s.count("ctx->gemm(") == 2


@needs_nvcc
def test_flash_prefill_builds_for_sm90(flash: None, cache: Any) -> None:
    """f16 causal over strided q/k/v, bf16 under a mask, bf16 grouped-query: all build."""
    from gimlet.backends.nvidia.build import build_segment

    for name, dtype, bias in (
        ("gpt", torch.float16, "gml::Causal{"),
        ("mask", torch.bfloat16, "gml::Masked<bool, 3>{"),
        ("llama", torch.bfloat16, "gml::Causal{"),
    ):
        low = lower(main_func(_flash_case(name, dtype)[0]))
        (s,) = _sdpa_sections(low.source)[:1]
        assert "gml::attention_prefill<" in s and bias in s, s
        assert build_segment(low.source)[0].stat().st_size > 0


def test_prefill_attention_splits_the_keys_where_its_blocks_do_not_fill_the_gpu(
    flash: None,
) -> None:
    """(keys per chunk, chunks): GPT-2's prefill (12 heads x 8 row blocks of 64 for 132
    SMs) in 4 chunks of 128 keys; a batch that fills the GPU, or 128 keys or fewer, in
    one. Where a bucket splits, the chunks' partials are combined into y."""
    from gimlet.backends.gpu import codegen as cg

    assert cg._prefill_split(12, 512, 512) == (128, 4)
    assert cg._prefill_split(256 * 16, 512, 512) == (512, 1)
    assert cg._prefill_split(2, 100, 100) == (100, 1)
    assert cg._prefill_split(2, 300, 300) == (128, 3)  # 10 blocks: 53 wanted, 128 at least
    low = lower(main_func(_flash_case("gpt", torch.float16, 300)[0]))
    (attn, _) = _sdpa_sections(low.source)
    assert "gml::attention_prefill_combine<gml::f16, 64><<<" in attn
    bucket = low.bucket([(1, 300)])
    assert (
        bucket.arena_bytes
        > lower(main_func(_flash_case("gpt", torch.float16)[0])).bucket([(1, 100)]).arena_bytes
        + 2 * 3 * 300 * (64 + 2) * 4
    )  # room for 2 heads x 3 chunks of partials


@needs_gpu
@pytest.mark.parametrize("t", [100, 300])
@pytest.mark.parametrize("tag", sorted(LOW))
@pytest.mark.parametrize("name", ["gpt", "llama", "mask"])
def test_flash_prefill_matches_interpreter(
    name: str, tag: str, t: int, flash: None, cache: Any
) -> None:
    """At T=100 one kernel per attention; at T=300 the keys in chunks, then combined."""
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction

    module, weights, inputs = _flash_case(name, LOW[tag], t)
    low = lower(main_func(module))
    assert "gml::attention_prefill<" in low.source
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    got = f(*[x.cuda() for x in inputs])
    ref = run(module, [torch_to_numpy(x) for x in inputs], weights)
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == LOW[tag]
        np.testing.assert_allclose(
            g.float().cpu().numpy(), np.asarray(r).astype(np.float32), **LOW_TOL[tag]
        )


# ------------------------------------------------------------------ dynamic batch
# A dynamic dim (torch.export Dim) keeps what the static path fuses: symdims.py proves
# that the consumers of x @ W walk the product's elements at every bucket (bias, GELU and
# residual in cuBLASLt's epilogue or the GEMV), and the flash kernel reads q/k/v in place
# from the fused qkv projection at any batch (a head stride and an outer batch stride).


def _dyn_gpt(dtype: torch.dtype, dims: str) -> tuple[Any, Any]:
    """GPT (d 64, 4 heads of 16, 2 layers) over 2 x 64 tokens: "static", a dynamic
    "batch", or "both" batch and sequence dynamic."""
    import sys

    from gimlet.frontend import import_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from gpt import GPT

    torch.manual_seed(0)
    model = GPT(vocab=97, ctx=64, d=64, heads=4, layers=2).eval().to(dtype)
    batch = torch.export.Dim("batch", min=1, max=16)
    dyn = {
        "static": None,
        "batch": ({0: batch},),
        "both": ({0: batch, 1: torch.export.Dim("seq", min=2, max=64)},),
    }[dims]
    module, weights = import_model(model, (torch.randint(0, 97, (2, 64)),), dyn)
    run_pipeline(module, DEFAULT_PIPELINE)
    return module, weights


def _copy_flags(low: Any, shape: tuple[int, ...]) -> list[int]:
    """Per copy_strided launch: 1 where the bucket runs it, 0 where it is skipped."""

    params = low.bucket([shape]).params
    return [params[int(i)] for i in re.findall(r"if \(P\[(\d+)\]\) gml::copy_strided", low.source)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_dynamic_batch_gpt_is_the_static_program(
    dtype: torch.dtype, vendor_paths: None, flash: None
) -> None:
    """At T=64 over a dynamic batch the program is the static batch's, line for line: per
    layer bias into the qkv GEMM's epilogue, bias + residual into proj's and out's, bias +
    tanh GELU into fc's; no GEMV (64 x batch rows are never 1..4), no decode attention, no
    elementwise kernel between the GEMMs. The attention copies (slice, permute) run in no
    f16 bucket (the flash kernel reads q/k/v in place); f32's cuBLAS walks its batches
    with one stride, so it reads them in place at batch 1 only."""
    static = lower(main_func(_dyn_gpt(dtype, "static")[0])).source
    low = lower(main_func(_dyn_gpt(dtype, "batch")[0]))
    src = low.source
    assert src == static
    assert src.count("ctx->gemm_epilogue(") == 8
    assert src.count("true, nullptr)) return e;") == 2  # fc: + bias, GELU
    assert src.count("ctx->gemm(") == (1 if dtype == torch.float16 else 5)  # head (+ attention)
    assert "g, gml::GEMV_THREADS" not in src and "attention_decode_split" not in src
    assert "first_along_broadcast(ix" not in src
    # arange, 2 embeddings and their add; a layer: 2 layer norms, 7 copies (3 slices, 4
    # permutes: each skipped where attention reads in place), the flash kernel or the
    # softmax between cuBLAS's two GEMMs; the final layer norm
    # (and f16's combine of the flash kernel's key chunks, launched where a bucket splits)
    assert sum("<<<" in ln for ln in src.splitlines()) == 4 + 2 * 10 + 1 + (
        2 if dtype == torch.float16 else 0
    )
    for batch in (1, 3):  # every bucket checks what _epilogue proved (no assertion fires)
        flags = _copy_flags(low, (batch, 64))
        assert len(flags) == 14
        folded = dtype == torch.float16 or batch == 1
        assert flags == [0 if folded else 1] * 14


def test_flash_reads_qkv_in_place_at_any_batch(flash: None) -> None:
    """f16 GPT at batch 3: attention_prefill's block b (= batch x 4 heads + head) finds row
    t of its q/k/v at offset + (b % 4) x head stride + (b / 4) x outer stride + t x ld in
    the qkv projection's [3 x 64, 192] product, and writes its output rows straight into
    the [3, 64, 4, 16] tensor the proj layer reads: checked element by element against
    numpy's slice/view/transpose."""
    from gimlet.backends.gpu import codegen as cg

    module, _ = _dyn_gpt(torch.float16, "batch")
    fn = main_func(module)
    low = cg._Lowering(fn, families)
    low.run()
    sdpa = next(op for op in fn.body.block.ops if isinstance(op, gml_ops.SdpaOp))
    b, t, h, d = 3, 64, 4, 16
    shapes, ints = low.evaluator.evaluate([(b, t)])
    fold = low.attention_fold(sdpa, cg.Env(shapes, ints, offsets=dict.fromkeys(shapes, 0)))
    assert fold is not None
    qkv = np.arange(b * t * 3 * h * d).reshape(b, t, 3, h, d)
    want = {n: qkv[:, :, i].transpose(0, 2, 1, 3) for i, n in enumerate("qkv")}
    # y [b, h, t, d] lands in the output permute's [b, t, h, d]
    want["y"] = np.arange(b * t * h * d).reshape(b, t, h, d).transpose(0, 2, 1, 3)
    blocks, rows, cols = np.ix_(np.arange(b * h), np.arange(t), np.arange(d))
    for name, (_, off, ld, head, outer) in fold.items():
        at = off // 2 + blocks % h * head + blocks // h * outer + rows * ld + cols
        np.testing.assert_array_equal(at, want[name].reshape(b * h, t, d), err_msg=name)


@needs_nvcc
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_dynamic_gpt_builds_for_sm90(
    dtype: torch.dtype, vendor_paths: None, flash: None, cache: Any
) -> None:
    """Batch and sequence dynamic: the fused GEMVs for 1..4 rows beside the cuBLASLt
    epilogues, and the flash kernel over two batch strides (f16), build."""
    from gimlet.backends.nvidia.build import build_segment

    src = lower(main_func(_dyn_gpt(dtype, "both")[0])).source
    assert src.count("ctx->gemm_epilogue(") == 8
    assert all(f"<{r}>, g, gml::GEMV_THREADS" in src for r in (1, 2, 3, 4))
    assert ("gml::AttnBatch{" in src) == (dtype == torch.float16)
    assert build_segment(src)[0].stat().st_size > 0


@needs_gpu
@pytest.mark.parametrize("tag", ["f32", "f16"])
@pytest.mark.parametrize("dims", ["batch", "both"])
def test_dynamic_gpt_on_gpu_matches_interpreter(
    dims: str, tag: str, vendor_paths: None, flash: None, cache: Any
) -> None:
    """A dynamic batch at T=64 (batch 1, 2, 5: the epilogues, attention in place), and
    batch and sequence dynamic at 1 x 3 and 2 x 2 tokens (the fused GEMV for 3 and 4
    rows) and 3 x 40 (the GEMM, a partial attention block): f32 at 1e-4 / 1e-5, f16 as
    LOW_TOL, against the interpreter; a repeated bucket replays its graph."""
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction

    dtype = torch.float32 if tag == "f32" else LOW[tag]
    tol = {"rtol": 1e-4, "atol": 1e-5} if tag == "f32" else LOW_TOL[tag]
    module, weights = _dyn_gpt(dtype, dims)
    low = lower(main_func(module))
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    shapes = [(1, 64), (2, 64), (5, 64)] if dims == "batch" else [(1, 3), (2, 2), (3, 40)]
    for shape in [*shapes, shapes[0]]:
        ids = np.random.default_rng(sum(shape)).integers(0, 97, shape)
        (got,) = f(torch.as_tensor(ids).cuda())
        (ref,) = run(module, [ids], weights)
        assert got.dtype == dtype and tuple(got.shape) == (*shape, 97)
        np.testing.assert_allclose(
            got.float().cpu().numpy(), np.asarray(ref).astype(np.float32), **tol
        )
    assert len(f.buckets) == 3
