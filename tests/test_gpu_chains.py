"""Persistent chains (backends/gpu/chains.py, opt-in): which steps a chain takes, the
condition each bucket decides it by, the code around it; on a GPU, the same numbers as
the interpreter with the chain run."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from test_gpu_backend import OP_CASES, _decode_case, needs_gpu, needs_nvcc

from gimlet.backends.gpu import chains, switches
from gimlet.backends.gpu.lower import lower
from gimlet.dtypes import numpy_to_torch
from gimlet.interpreter import run
from gimlet.ir import main_func, parse


@pytest.fixture
def chained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(switches, "CHAIN", True)


def _part(n: int, first: int = 0, last: int = 0) -> chains.Part:
    return chains.Part(
        [f"gml::phase<&k{i}_body<1, gml::ChainSync>>(true, 1)" for i in range(n)],
        n,
        first,
        last,
        [(0, "<=", 4)],
    )


def test_a_guarded_launch_is_what_makes_it_do_nothing() -> None:
    assert chains.guard("  if (P[12] > 0) k0<<<g, 256, 0, stream>>>(P[12]);") == (12, "<=", 0)
    assert chains.guard("  if (P[29] > 4) gml::layer_norm_reg<gml::f16, 1024><<<1, 2>>>(x);") == (
        29,
        "<=",
        4,
    )
    assert chains.guard(
        "  if (P[55]) gml::copy_strided<gml::f16, 3><<<1, 2>>>(x, {{a}, {b}});"
    ) == (
        55,
        "==",
        0,
    )
    assert chains.guard("  if (P[5] <= 4) {") is None  # a block, not one statement
    assert chains.guard("  k0<<<1, 256, 0, stream>>>(P[3]);") is None


def test_runs_of_steps_with_phases_become_chains() -> None:
    """Guarded steps join a run but do not start or end one; a step of other code ends
    it; a run of one phase stays as it is; the static bucket's taken guards end runs."""
    guarded = ["  // gml.slice", "  if (P[7]) k9<<<1, 256, 0, stream>>>(P[7]);"]
    phase = ["  // gml.matmul", "  if (P[0] <= 4) {", "  } else {", "  }"]
    other = ["  if (int e = ctx->gemm(ctx, stream)) return e;"]
    steps = [guarded, phase, ["  // gml.reshape"], guarded, phase, other, phase, guarded]
    offsets = [0, 2, 6, 7, 9, 13, 14, 18]
    parts: list[chains.Part | None] = [None] * len(steps)
    for i in (1, 4, 6):
        parts[i] = _part(1, offsets[i] + 1, offsets[i] + 4)
    runs = chains.find(steps, offsets, parts, None)
    assert runs == [(1, 4, [(0, "<=", 4), (7, "==", 0), (0, "<=", 4)])]
    # where the one bucket copies (P[7] = 1), the chain ends at that step: no run is left
    # with two phases
    assert chains.find(steps, offsets, parts, [1] * 8) == []
    assert chains.find(steps, offsets, parts, [1] + [0] * 7) == [
        (1, 4, [(0, "<=", 4), (7, "==", 0), (0, "<=", 4)])
    ]


def test_a_long_run_is_cut_where_the_parameters_would_not_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chains, "MAX_PHASES", 4)
    steps = [["  // gml.matmul", "  if (P[0] <= 4) {", "  }"]] * 5
    offsets = [3 * i for i in range(5)]
    parts: list[chains.Part | None] = [_part(2, 3 * i + 1, 3 * i + 3) for i in range(5)]
    # (the last step alone: its two phases are worth a chain)
    assert [(a, b) for a, b, _ in chains.find(steps, offsets, parts, None)] == [
        (0, 1),
        (2, 3),
        (4, 4),
    ]


def test_decode_chains_run_between_the_copies_the_bucket_makes(chained: None) -> None:
    """Two layers of decode at batch 2 (f32): the bucket copies q, k and v out of the qkv
    product, so each layer's copies end a chain. The chains are the kernels between:
    split attention, its combine, proj, fc, fc2, then the next layer's qkv GEMV or the
    head's (its layer norm computed in the GEMV); the first layer's qkv GEMV, alone,
    stays a kernel. Every chained step's own code runs
    only where the bucket does not take the chain; this bucket takes both."""
    module, _, inputs = _decode_case(40)
    low = lower(main_func(module))
    src = low.source
    assert src.count("gml::launch_chain<1>(ctx, stream,") == 2
    assert src.count("// chain: the 6 kernels below as phases of one persistent kernel") == 2
    attention = ["gml::attention_decode_split_body", "gml::attention_combine_body"]
    phases = re.findall(r"gml::phase<&((?:gml::)?\w+)", src)
    # per layer: attention, proj, fc, fc2 (proj and fc2 kernels apart: their loads in
    # flight differ), then the next layer's qkv GEMV, or the head's
    assert phases[:2] == attention and phases[6:8] == attention and len(phases) == 12
    assert phases[2] == phases[8] and phases[3] == phases[9] and phases[4] == phases[10]
    assert len({phases[2], phases[3], phases[4], phases[5], phases[11]}) == 5
    # the GEMVs' phases for the row count this function has (batch 2)
    assert "gml::phase<&k1_body<2, gml::ChainSync>>(P[" in src
    slots = sorted(set(re.findall(r"gml::chained\(ctx, P\[(\d+)\]\)", src)))
    assert len(slots) == 2
    bucket = low.bucket([tuple(x.shape) for x in inputs])
    for slot in slots:
        assert bucket.params[int(slot)] == 1
        assert f"  if (!gml::chained(ctx, P[{slot}])) {{  // else the chain above ran this" in src


def test_a_bucket_beyond_the_gemv_rows_runs_the_steps(chained: None) -> None:
    """x @ W1 + x @ W2 over dynamic rows: a chain of the two GEMVs at 3 rows, the cuBLAS
    path at 7 (the chain's slot 0 there)."""
    module = parse(OP_CASES["linear_dyn_residual"].ir)
    low = lower(main_func(module))
    (slot,) = set(re.findall(r"gml::chained\(ctx, P\[(\d+)\]\)", low.source))
    assert low.bucket([(3, 16)]).params[int(slot)] == 1
    assert low.bucket([(7, 16)]).params[int(slot)] == 0


def test_chains_are_off_unless_asked() -> None:
    assert not switches.CHAIN
    assert "launch_chain" not in lower(main_func(_decode_case(40)[0])).source


@needs_nvcc
def test_a_chain_builds_for_sm90(
    chained: None, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gimlet.backends.nvidia.build import build_segment

    monkeypatch.setenv("GIMLET_CACHE_DIR", str(tmp_path))
    lib, _ = build_segment(lower(main_func(_decode_case(40)[0])).source)
    assert lib.exists()


@needs_gpu
@pytest.mark.parametrize("cache_len", [5, 700])
def test_decode_through_a_chain_equals_the_interpreter(chained: None, cache_len: int) -> None:
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction

    module, weights, inputs = _decode_case(cache_len)
    low = lower(main_func(module))
    assert "launch_chain" in low.source
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    for _ in range(2):  # the first call captures the graph, the second replays it
        (got,) = f(*[x.cuda() for x in inputs])
    (ref,) = run(module, [x.numpy() for x in inputs], weights)
    np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=1e-4, atol=1e-5)


@needs_gpu
def test_rows_in_and_beyond_the_chain_equal_the_interpreter(chained: None) -> None:
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction

    case = OP_CASES["linear_dyn_residual"]
    module = parse(case.ir)
    low = lower(main_func(module))
    f = CudaFunction(main_func(module), build_segment(low.source)[0], case.weights, lowered=low)
    for inputs in case.calls:
        (got,) = f(*[numpy_to_torch(x).cuda() for x in inputs])
        (ref,) = run(module, inputs, case.weights)
        np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=1e-4, atol=1e-5)
