"""The NVIDIA GPU backend: generated CUDA for every model family, built with nvcc
(everywhere nvcc is, CI included: no GPU needed), and run on a GPU against the
reference interpreter where torch sees one (the H200 machine; skipped elsewhere).

Tolerances: f32 rtol 1e-4 / atol 1e-5 (FP32 GEMMs, TF32 off); f16 and bf16 compare
with the interpreter, which computes each op in f32 and rounds, at rtol/atol 1e-2
(f16) and 3e-2 (bf16): the GPU accumulates GEMMs in f32 in a different order.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import imported
from gimlet.backends.gpu.codegen import lower
from gimlet.dtypes import torch_to_numpy
from gimlet.errors import UnsupportedOpError
from gimlet.interpreter import run
from gimlet.ir import main_func
from gimlet.pass_manager import DEFAULT_PIPELINE, run_pipeline
from models import FAMILIES

# families whose every op the GPU backend lowers; the others are refused by name
SUPPORTED = ["gpt", "hf_bert", "hf_gpt2", "hf_llama", "llama_block", "mlp"]
REFUSED = {
    "cnn": "gml.conv at conv1 (tests/models.py:41): no GPU lowering for this op yet",
    "hf_vit": "gml.conv at model.embeddings.patch_embeddings.projection (",
}
REFUSED_WHY = "no GPU lowering for this op yet"
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


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_family_is_refused_by_op_and_line(name: str) -> None:
    with pytest.raises(UnsupportedOpError) as e:
        lower(main_func(_piped(name)))
    # where site-packages lies differs between machines: the op, its module and the why
    assert str(e.value).startswith(REFUSED[name].split("(")[0])
    assert str(e.value).endswith(f"): {REFUSED_WHY}")


def test_every_family_is_lowered_or_refused() -> None:
    assert sorted([*SUPPORTED, *REFUSED]) == sorted(FAMILIES)


def test_source_names_ops_and_lines(lowered: dict[str, Any]) -> None:
    src = lowered["gpt"][1].source
    assert "#include <gimlet/gpu/gml_gpu.cuh>" in src
    assert "// gml.layer_norm h.0.ln_1 (examples/gpt.py:27)" in src
    assert "ctx->gemm(" in src and "gml::gemv_nt<float, 1>" in src
    assert "cuda" not in src.replace("gml_gpu.cuh", "")  # HIP compiles it too: no CUDA names


def test_memory_plan_reuses_buffers(lowered: dict[str, Any]) -> None:
    """Liveness-based reuse: the arena is far below the sum of all values' sizes."""
    module, low = lowered["gpt"]
    imp = imported("gpt")
    shapes = tuple(tuple(x.shape) for x in imp.inputs)
    bucket = low.bucket(shapes)
    from gimlet.backends.gpu.codegen import Env

    shapes_all, ints = low.evaluator.evaluate(shapes)
    total = sum(nbytes(Env(shapes_all, ints)) for _, _, _, nbytes in low.buffers)
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
        build_segment("#include <gimlet/gpu/gml_gpu.cuh>\n\nthis is not C++;\n")


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
