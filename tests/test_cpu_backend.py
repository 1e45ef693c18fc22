"""The CPU backend (gimlet.backends.cpu) against the reference interpreter and torch.

Every model family is compiled once (module fixture, two compiles at a time since g++
runs out of process) at -O1 to keep the suite fast; benchmarks use -O3.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch

from conftest import imported
from gimlet.dtypes import torch_to_numpy
from gimlet.errors import UnsupportedOpError
from gimlet.interpreter import run
from gimlet.pass_manager import DEFAULT_PIPELINE, run_pipeline
from models import FAMILIES

OPT = "-O1"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: Any) -> Path:
    path = tmp_path_factory.mktemp("gimlet-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("GIMLET_CACHE_DIR", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def compiled(cache: Path) -> dict[str, Any]:
    from gimlet.backends.cpu import compile_module

    modules = {}
    # g++ runs out of process: compile each family while the next one is imported
    with ThreadPoolExecutor(2) as pool:
        futures = {}
        for name in sorted(FAMILIES):
            module = imported(name).module.clone()  # the shared import stays un-piped
            run_pipeline(module, DEFAULT_PIPELINE)
            modules[name] = module
            futures[name] = pool.submit(compile_module, module, opt=OPT)
        return {n: (modules[n], f.result()) for n, f in futures.items()}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_matches_interpreter_and_torch(name: str, compiled: dict[str, Any]) -> None:
    module, lib = compiled[name]
    imp = imported(name)
    inputs = [torch_to_numpy(x) for x in imp.inputs]
    got = lib(inputs, imp.weights)
    ref = run(module, inputs, imp.weights)
    assert len(got) == len(ref) == len(imp.expected)
    for g, r, t in zip(got, ref, imp.expected, strict=True):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(g, torch_to_numpy(t), rtol=1e-4, atol=1e-5)


def test_dynamic_sizes(compiled: dict[str, Any]) -> None:
    """gpt has a `?` sequence dim: shapes are computed at run time from the input."""
    module, lib = compiled["gpt"]
    imp = imported("gpt")
    for t in (2, 7, 30):
        ids = np.random.default_rng(t).integers(0, 97, (2, t)).astype(np.int64)
        (got,) = lib([ids], imp.weights)
        (ref,) = run(module, [ids], imp.weights)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_cache_hit_on_recompile(compiled: dict[str, Any], cache: Path) -> None:
    from gimlet.backends.cpu import compile_module

    module, first = compiled["mlp"]
    again = compile_module(module, opt=OPT)
    assert again.cache_hit and again.library_path == first.library_path
    assert first.library_path.parent == cache / "cpu"
    assert first.source_path.read_text() == first.source
    assert "-march=native" in first.flags and OPT in first.flags


def test_source_is_readable(compiled: dict[str, Any]) -> None:
    _, lib = compiled["llama_block"]
    src = lib.source
    for needle in ("gml.matmul", "gml.sdpa", "gml.fusion", "#pragma omp simd", "models.py:"):
        assert needle in src
    assert any(
        line.strip().startswith("// gml.") and "models.py:" in line for line in src.splitlines()
    )


def test_generated_code_and_runtime_build_without_warnings(compiled: dict[str, Any]) -> None:
    """Each family's generated C++ and every runtime source compile warning-free with
    -Wall -Wextra (-Werror here; the default build only prints warnings)."""
    import subprocess

    from gimlet.backends.cpu.build import RUNTIME_ROOT, compiler, default_flags, native_flags

    flags = [f for f in default_flags("-O1") if f != "-shared"] + ["-Werror", "-c"]
    assert "-Wall" in flags and "-Wextra" in flags
    sources = [compiled[name][1].source_path for name in sorted(FAMILIES)]
    sources += sorted((RUNTIME_ROOT / "src").glob("*.cpp"))
    native = [f for f in native_flags() if f.startswith(("-I", "-D"))]  # e.g. -DGML_DNNL
    inc = [f"-I{RUNTIME_ROOT / 'include'}", *native]

    def build(path: Path) -> tuple[str, str]:
        cmd = [compiler(), str(path), "-o", "/dev/null", *inc, *flags]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        return path.name, proc.stderr if proc.returncode else ""

    with ThreadPoolExecutor(2) as pool:
        failures = {name: err for name, err in pool.map(build, sources) if err}
    assert failures == {}, "\n".join(f"{n}:\n{e[:2000]}" for n, e in failures.items())


def test_conv_weights_repacked_when_new_or_edited(compiled: dict[str, Any]) -> None:
    """oneDNN keeps convolution weights packed: a new weights dict, and an array edited
    in place, must both reach the result (checked against the interpreter)."""
    module, lib = compiled["cnn"]
    imp = imported("cnn")
    inputs = [torch_to_numpy(x) for x in imp.inputs]
    lib(inputs, imp.weights)  # pack the original weights
    weights = {k: np.array(v, copy=True) for k, v in imp.weights.items()}
    convs = [k for k, v in weights.items() if np.ndim(v) == 4]
    assert convs
    for k in convs:
        weights[k] *= 2.0
    for step in ("new dict", "edited in place"):
        (got,) = lib(inputs, weights)
        (ref,) = run(module, inputs, weights)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=step)
        weights[convs[0]] *= -0.5  # the same arrays, new values


def test_convolution_leaves_the_callers_thread_count(compiled: dict[str, Any]) -> None:
    """oneDNN runs single-threaded inside the runtime's pool; the calling thread's OpenMP
    thread count (which torch reads and uses) is restored after every convolution."""
    _, lib = compiled["cnn"]
    imp = imported("cnn")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        lib([torch_to_numpy(x) for x in imp.inputs], imp.weights)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_cnn_without_onednn(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIMLET_CPU_DNNL=0 (or no oneDNN installed): convolutions are im2col + BLAS."""
    from gimlet.backends.cpu import compile_module
    from gimlet.backends.cpu.build import native_flags

    monkeypatch.setenv("GIMLET_CPU_DNNL", "0")
    assert "-DGML_DNNL" not in native_flags()
    imp = imported("cnn")
    module = imp.module.clone()
    run_pipeline(module, DEFAULT_PIPELINE)
    lib = compile_module(module, opt=OPT)
    inputs = [torch_to_numpy(x) for x in imp.inputs]
    (got,) = lib(inputs, imp.weights)
    np.testing.assert_allclose(got, torch_to_numpy(imp.expected[0]), rtol=1e-4, atol=1e-5)


def test_2x2_pooling_fast_path_matches_torch(cache: Path) -> None:
    """2x2 stride-2 max/avg pooling has its own kernel: odd sizes (a dropped last row and
    column), NaN propagation, and ceil mode (which takes the general path)."""
    import torch.nn.functional as F
    from torch import nn

    from gimlet.backends.cpu import compile_module
    from gimlet.frontend import import_model

    class Pools(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return F.max_pool2d(x, 2), F.avg_pool2d(x, 2), F.max_pool2d(x, 2, ceil_mode=True)

    x = torch.randn(2, 3, 9, 11)
    x[1, 2, 4, 5] = float("nan")
    module, weights = import_model(Pools(), (x,))
    run_pipeline(module, DEFAULT_PIPELINE)
    got = compile_module(module, opt=OPT)([x.numpy()], weights)
    for g, t in zip(got, Pools()(x), strict=True):
        np.testing.assert_allclose(g, t.numpy(), rtol=1e-6, atol=1e-6)
    assert np.isnan(got[0][1, 2, 2, 2]) and np.isnan(got[1][1, 2, 2, 2])


def test_compile_error_shows_file_and_line(cache: Path) -> None:
    from gimlet.backends.cpu import CpuCompileError
    from gimlet.backends.cpu.build import build_library, default_flags

    source = '#include "gimlet/cpu_runtime.h"\nint broken() {\n  return undefined_name;\n}\n'
    with pytest.raises(CpuCompileError) as info:
        build_library(source, default_flags("-O0"))
    message = str(info.value)
    assert ".cpp:3:" in message and "undefined_name" in message


def test_unsupported_dtype_names_op() -> None:
    from gimlet.backends.cpu import compile_function
    from gimlet.ir import parse

    t = "tensor<4x4xf64>"
    module = parse(
        f"func.func @main(%x: {t}) -> {t} {{\n"
        f"  %y = gml.matmul %x, %x : ({t}, {t}) -> {t}\n"
        f"  func.return %y : {t}\n"
        "}\n"
    )
    fn = next(op for op in module.walk() if op.name == "func.func")
    with pytest.raises(UnsupportedOpError) as info:
        compile_function(fn)  # type: ignore[arg-type]
    assert "gml.matmul" in str(info.value) and "got f64" in str(info.value)


def test_epilogues_fold_into_matmul_and_conv(compiled: dict[str, Any]) -> None:
    """Bias adds, activations and batch norms run inside the matmul/conv kernel."""
    mlp = compiled["mlp"][1].source
    assert "gml::Act::GeluErf" in mlp and "folded into the matmul/conv above" in mlp
    cnn = compiled["cnn"][1].source
    assert "gml::fold_batch_norm(" in cnn and "gml::Act::Relu" in cnn


def test_profile_env_prints_per_op_times(cache: Path) -> None:
    """GIMLET_CPU_PROFILE=1: the library prints per-op times when the process exits."""
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np\n"
        "from gimlet.backends.cpu import compile_function\n"
        "from gimlet.ir import parse\n"
        "m = parse('func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {\\n'\n"
        "          '  %y = gml.exp %x : tensor<4xf32>\\n'\n"
        "          '  func.return %y : tensor<4xf32>\\n}\\n')\n"
        "fn = next(op for op in m.walk() if op.name == 'func.func')\n"
        "(y,) = compile_function(fn, opt='-O1')([np.zeros(4, np.float32)], {})\n"
        "assert (y == 1).all()\n"
    )
    env = {**os.environ, "GIMLET_CPU_PROFILE": "1", "GIMLET_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "gimlet cpu profile: 1 runs" in out.stderr and "gml.exp" in out.stderr


# ------------------------------------------------------------------ f16 / bf16

# torch's CPU tolerances for a model run in a 16-bit type (as test_frontend.py uses)
LOW = {
    "bf16": (torch.bfloat16, {"rtol": 2e-2, "atol": 1e-2}),
    "f16": (torch.float16, {"rtol": 1e-2, "atol": 1e-3}),
}
# the backend rounds after each op as the interpreter does: at most an ulp apart
LOW_VS_INTERPRETER = {"bf16": {"rtol": 8e-3, "atol": 1e-3}, "f16": {"rtol": 1e-3, "atol": 1e-4}}
LOW_FAMILIES = ["cnn", "gpt", "llama_block", "mlp"]


@pytest.fixture(scope="module")
def compiled_low(cache: Path) -> dict[tuple[str, str], Any]:
    """Each family converted to bf16 and f16 (weights and inputs), imported, compiled."""
    from gimlet.backends.cpu import compile_module
    from gimlet.frontend import import_model
    from models import FAMILIES

    out = {}
    with ThreadPoolExecutor(2) as pool:
        futures = {}
        for name in LOW_FAMILIES:
            for tag, (dtype, _) in LOW.items():
                torch.manual_seed(0)
                model, inputs, dyn = FAMILIES[name]()
                model = model.eval().to(dtype)
                inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)
                with torch.no_grad():
                    want = model(*inputs)
                module, weights = import_model(model, inputs, dyn)
                run_pipeline(module, DEFAULT_PIPELINE)
                out[name, tag] = (module, weights, inputs, want)
                futures[name, tag] = pool.submit(compile_module, module, opt=OPT)
        return {k: (*out[k], f.result()) for k, f in futures.items()}


@pytest.mark.parametrize("tag", sorted(LOW))
@pytest.mark.parametrize("name", LOW_FAMILIES)
def test_low_precision_family(name: str, tag: str, compiled_low: dict[Any, Any]) -> None:
    """A bf16/f16 model: outputs in its dtype, close to torch (same dtype, on CPU) and
    to the interpreter (both round after every op)."""
    module, weights, inputs, want, lib = compiled_low[name, tag]
    dtype, tol = LOW[tag]
    np_dtype = np.dtype(ml_dtypes.bfloat16) if tag == "bf16" else np.dtype(np.float16)
    xs = [torch_to_numpy(x) for x in inputs]
    assert any(w.dtype == np_dtype for w in weights.values())
    assert not any(w.dtype == np.float32 for w in weights.values())
    (got,) = lib(xs, weights)
    (ref,) = run(module, xs, weights)
    assert got.dtype == ref.dtype == np_dtype and got.shape == ref.shape == tuple(want.shape)
    got32 = got.astype(np.float32)
    np.testing.assert_allclose(got32, ref.astype(np.float32), **LOW_VS_INTERPRETER[tag])
    np.testing.assert_allclose(got32, want.float().numpy(), **tol)
    assert f"gml::{tag}" in lib.source


def test_low_precision_dynamic_sizes(compiled_low: dict[Any, Any]) -> None:
    module, weights, _, _, lib = compiled_low["gpt", "bf16"]
    for t in (3, 17):
        ids = np.random.default_rng(t).integers(0, 97, (2, t)).astype(np.int64)
        (got,) = lib([ids], weights)
        (ref,) = run(module, [ids], weights)
        np.testing.assert_allclose(
            got.astype(np.float32), ref.astype(np.float32), **LOW_VS_INTERPRETER["bf16"]
        )


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16) if a.dtype.itemsize == 2 else a


def test_low_precision_casts_round_to_nearest_even(cache: Path) -> None:
    """gml.cast between f32, f16, bf16 and integers, bit for bit as numpy/ml_dtypes
    (ties to even, overflow to inf, subnormals, nan), and ops computed in f32."""
    from gimlet.backends.cpu import compile_function
    from gimlet.ir import parse

    bf, f16 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, 1.0, np.inf, -np.inf, np.nan, 65504.0, 65520.0, 3e38, 1e-40, 6e-8]
    ties = []  # halfway between neighbouring 16-bit values: ties go to the even one
    for dt in (bf, f16):
        grid = (np.arange(0x3C00, 0x3C40, dtype=np.uint16).view(dt)).astype(np.float64)
        ties += list((grid[:-1] + grid[1:]) / 2)
    wide = rng.standard_normal(4000) * np.exp(rng.uniform(-20, 12, 4000))
    x = np.concatenate([special, ties, wide]).astype(np.float32)
    n = x.size
    t32, tbf, tf16 = (f"tensor<{n}x{e}>" for e in ("f32", "bf16", "f16"))
    ti32, ti64 = f"tensor<{n}xi32>", f"tensor<{n}xi64>"
    results = [tbf, tf16, t32, tbf, tf16, tbf, tbf]
    module = parse(
        f"func.func @main(%x: {t32}, %i: {ti64}) -> ({', '.join(results)}) {{\n"
        f"  %b = gml.cast %x : {t32} to {tbf}\n"
        f"  %h = gml.cast %x : {t32} to {tf16}\n"
        f"  %bx = gml.cast %b : {tbf} to {t32}\n"
        f"  %hb = gml.cast %h : {tf16} to {tbf}\n"
        f"  %ih = gml.cast %i : {ti64} to {tf16}\n"
        f"  %hi = gml.cast %ih : {tf16} to {ti32}\n"
        f"  %ib = gml.cast %hi : {ti32} to {tbf}\n"
        f"  %e = gml.exp %b : {tbf}\n"
        f"  %m = gml.mul %e, %b : ({tbf}, {tbf}) -> {tbf}\n"
        f"  func.return %b, %h, %bx, %hb, %ih, %ib, %m : {', '.join(results)}\n"
        "}\n"
    )
    fn = next(op for op in module.walk() if op.name == "func.func")
    lib = compile_function(fn, opt=OPT)  # type: ignore[arg-type]
    ints = rng.integers(-60000, 60000, n)  # f16 holds them (inf -> int is UB).astype(np.int64)
    got = lib([x, ints], {})
    ref = run(module, [x, ints], {})
    with np.errstate(over="ignore"):
        b, h = x.astype(bf), x.astype(f16)
        ih = ints.astype(np.float32).astype(f16)
    want = [b, h, b.astype(np.float32), h.astype(np.float32).astype(bf), ih]
    for g, w in zip(got[:5], want, strict=True):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(_bits(g), _bits(w))
    for g, r in zip(got[5:], ref[5:], strict=True):  # through ints, and exp/mul in f32
        assert g.dtype == r.dtype == bf
        np.testing.assert_array_equal(g.astype(np.float32), r.astype(np.float32))


SEGMENT = """builtin.module attributes {gml.target = "h100+cpu"} {
  func.func @main(%x: tensor<4xf32>) -> (tensor<4xf32>, tensor<2x3xf32>) {
    comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32>
    gml.segment "gpu0" () : () -> () {
      %a = comm.recv from "cpu0" channel 0 via "pcie" : tensor<4xf32>
      comm.send %a to "cpu0" channel 1 via "pcie" : tensor<4xf32>
      gml.yield
    }
    %r, %w = gml.segment "cpu0" (%x) : (tensor<4xf32>) -> (tensor<4xf32>, tensor<2x3xf32>) {
    ^bb0(%a: tensor<4xf32>):
      %p = gml.param "w" : tensor<3x2xf32>
      %t = gml.permute %p [1, 0] : tensor<3x2xf32> to tensor<2x3xf32>
      %b = gml.neg %a : tensor<4xf32>
      %n = gml.dim %b[0] : tensor<4xf32>
      %c = comm.recv from "gpu0" channel 1 via "pcie" : tensor<4xf32>
      %d = gml.add %b, %c : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
      gml.yield %d, %t : tensor<4xf32>, tensor<2x3xf32>
    }
    func.return %r, %w : tensor<4xf32>, tensor<2x3xf32>
  }
}
"""


def test_split_cuts_a_segment_at_its_comm_ops() -> None:
    from gimlet.backends.cpu.segments import Part, split
    from gimlet.dialects import gml
    from gimlet.ir import parse

    module = parse(SEGMENT)
    seg = [op for op in module.walk() if isinstance(op, gml.SegmentOp)][1]
    items = split(seg)
    # the weight-only result is computed up front (free ops); the recv cuts the rest
    assert [i.name if not isinstance(i, Part) else "part" for i in items] == [
        "gml.param",
        "gml.permute",
        "part",
        "comm.recv",
        "part",
    ]
    first, second = items[2], items[4]
    assert isinstance(first, Part) and isinstance(second, Part)
    assert [op.name for op in first.ops] == ["gml.neg", "gml.dim"]
    assert first.inputs == [seg.body.block.args[0]]
    assert [str(v.type) for v in first.outputs] == ["tensor<4xf32>"]  # %n is unused
    assert [op.name for op in second.ops] == ["gml.add"]
    assert second.inputs == [first.outputs[0], items[3].results[0]]
