"""The CPU backend (gimlet.backends.cpu) against the reference interpreter and torch.

Every model family is compiled once (module fixture, two compiles at a time since g++
runs out of process) at -O1 to keep the suite fast; benchmarks use -O3.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import imported
from gimlet.dtypes import torch_to_numpy
from gimlet.errors import UnsupportedOpError, UserError
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


def test_compile_error_shows_file_and_line(cache: Path) -> None:
    from gimlet.backends.cpu import CpuCompileError
    from gimlet.backends.cpu.build import build_library, default_flags

    source = '#include "gimlet_cpu_runtime.h"\nint broken() {\n  return undefined_name;\n}\n'
    with pytest.raises(CpuCompileError) as info:
        build_library(source, default_flags("-O0"))
    message = str(info.value)
    assert ".cpp:3:" in message and "undefined_name" in message


def test_unsupported_dtype_names_op() -> None:
    from gimlet.backends.cpu import compile_function
    from gimlet.ir import parse

    module = parse(
        "func.func @main(%x: tensor<4xf16>) -> tensor<4xf16> {\n"
        "  %y = gml.exp %x : tensor<4xf16>\n"
        "  func.return %y : tensor<4xf16>\n"
        "}\n"
    )
    fn = next(op for op in module.walk() if op.name == "func.func")
    with pytest.raises(UserError) as info:
        compile_function(fn)  # type: ignore[arg-type]
    assert "f16" in str(info.value)
    assert isinstance(info.value, UnsupportedOpError | UserError)


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
