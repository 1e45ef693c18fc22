"""Decode's kernels load early what they can (switches.DECODE_PREFETCH, NORM_EARLY): what
the generated code says, and on a GPU that either way gives the interpreter's values."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gimlet.backends.gpu import switches
from gimlet.backends.gpu.lower import lower
from gimlet.frontend import import_model
from gimlet.interpreter import run
from gimlet.ir import main_func
from gimlet.pass_manager import DEFAULT_PIPELINE, run_pipeline

HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU (runs on the H200 machine)")


class CacheAttention(nn.Module):
    """One decode step's attention over a KV cache: the cache is the segment's input, or
    (scaled) something a kernel of the segment writes."""

    def __init__(self, scaled: bool) -> None:
        super().__init__()
        self.scaled = scaled

    def forward(self, q: Any, k: Any, v: Any, keys: Any, values: Any) -> Any:
        cache = keys * 0.5 if self.scaled else keys
        k = torch.cat([cache, k], dim=2)
        v = torch.cat([values, v], dim=2)
        return F.scaled_dot_product_attention(q, k, v)


def _case(scaled: bool, cache_len: int, heads: int = 4) -> tuple[Any, Any, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(cache_len)
    inputs = [
        torch.randn(2, heads, 1, 16, generator=gen),
        torch.randn(2, heads, 1, 16, generator=gen),
        torch.randn(2, heads, 1, 16, generator=gen),
        torch.randn(2, heads, cache_len, 16, generator=gen),
        torch.randn(2, heads, cache_len, 16, generator=gen),
    ]
    module, weights = import_model(CacheAttention(scaled).eval(), tuple(inputs), None)
    run_pipeline(module, DEFAULT_PIPELINE)
    return module, weights, inputs


def _cached_slot(low: Any, cache_len: int, heads: int = 4) -> int:
    """The split kernel's `cached` argument at this bucket."""
    (slot,) = re.findall(r"P\[(\d+)\] != 0\);", low.source)
    shapes = [(2, heads, 1, 16)] * 3 + [(2, heads, cache_len, 16)] * 2
    return low.bucket(shapes).params[int(slot)]


@pytest.mark.parametrize(("scaled", "early"), [(False, 1), (True, 0)])
def test_the_cache_is_read_before_the_wait_only_where_no_kernel_writes_it(
    scaled: bool, early: int
) -> None:
    """The split kernel loads the cache's K and V rows before its wait where both are the
    segment's inputs; a cache that a kernel computes (keys * 0.5) is read after it."""
    module, _, _ = _case(scaled, 40)
    assert _cached_slot(lower(main_func(module)), 40) == early


def test_no_early_cache_rows_when_prefetch_is_off(monkeypatch: Any) -> None:
    monkeypatch.setattr(switches, "DECODE_PREFETCH", False)
    module, _, _ = _case(False, 40)
    assert _cached_slot(lower(main_func(module)), 40) == 0


def test_a_gemv_loads_its_epilogues_operands_with_x(monkeypatch: Any) -> None:
    """A decode GEMV's epilogue operands (bias, residual) are a struct gemv_nt fills once x
    is ready; with DECODE_PREFETCH off gemv_nt<..., false, true, 1> fills it after the sum,
    and with NORM_EARLY off <..., true, false, 1> loads the norm's weight as x is normalized."""
    from test_gpu_backend import _decode_case

    module = _decode_case(40)[0]
    src = lower(main_func(module)).source
    assert "struct Operands { float x1[M]; float x4[M]; };  // what the epilogue loads" in src
    assert "    o.x4[r] = gml::load(p4 + off1[0]);" in src
    assert re.search(r"gml::gemv_nt<float, M, \d+>\(", src)
    monkeypatch.setattr(switches, "DECODE_PREFETCH", False)
    late = lower(main_func(module)).source
    assert re.search(r"gml::gemv_nt<float, M, \d+, false, true, 1>\(", late)
    monkeypatch.setattr(switches, "DECODE_PREFETCH", True)
    monkeypatch.setattr(switches, "NORM_EARLY", False)
    late = lower(main_func(module)).source
    assert re.search(r"gml::gemv_nt<float, M, \d+, true, false, 1>\(", late)


@needs_gpu
@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("scaled", [False, True])
def test_decode_attention_equals_the_interpreter_whenever_the_cache_is_read(
    prefetch: bool, scaled: bool, monkeypatch: Any, tmp_path: Any
) -> None:
    """The cache read before the wait or after it (prefetch off, or a cache a kernel
    writes): f32 rtol 1e-4 against the interpreter, three calls in a row."""
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction

    monkeypatch.setenv("GIMLET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(switches, "DECODE_PREFETCH", prefetch)
    module, weights, inputs = _case(scaled, 700)
    low = lower(main_func(module))
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    (ref,) = run(module, [x.numpy() for x in inputs], weights)
    for _ in range(3):
        (got,) = f(*[x.cuda() for x in inputs])
        np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=1e-4, atol=1e-5)


class NormLinear(nn.Module):
    """A layer norm into a Linear of 37 columns (a block of 8 warps: no multiple of its
    columns at any split; an odd width, padded for cuBLAS) and a residual."""

    def __init__(self, k: int, cols: int = 37) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(k)
        self.lin = nn.Linear(k, cols)
        torch.manual_seed(0)
        for p in self.parameters():
            nn.init.normal_(p, std=0.5)

    def forward(self, x: Any, r: Any) -> Any:
        return self.lin(self.norm(x)) + r


def _norm_linear(
    k: int, dtype: torch.dtype, rows: int = 2, cols: int = 37
) -> tuple[Any, Any, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(rows, k, generator=gen), torch.randn(rows, cols, generator=gen)]
    inputs = [x.to(dtype) for x in inputs]
    module, weights = import_model(NormLinear(k, cols).to(dtype).eval(), tuple(inputs), None)
    run_pipeline(module, DEFAULT_PIPELINE)
    return module, weights, inputs


@pytest.mark.parametrize(
    ("k", "dtype", "split", "loads"),
    [
        (512, torch.float32, 4, 1),  # 5 blocks a warp a column; 4 warps of 128 elements
        (512, torch.float16, 2, 1),  # 2 warps of 256
        (510, torch.float32, 2, 2),  # k not 16-byte chunks: part 0 takes the column
        (64, torch.float32, 1, 1),  # under a load a lane for 2 warps
    ],
)
def test_a_gemv_with_few_columns_splits_them_over_warps(
    k: int, dtype: torch.dtype, split: int, loads: int, monkeypatch: Any
) -> None:
    """37 columns a warp each fill 5 blocks: each column's k is split over warps while
    every warp keeps a 16-byte load a lane, and the grid grows by as much; with
    GEMV_SPLIT off a warp takes a column."""
    ct = "float" if dtype == torch.float32 else "gml::f16"
    src = lower(main_func(_norm_linear(k, dtype)[0])).source
    tail = "" if split == 1 else f", true, true, {split}"
    assert f"gml::gemv_nt<{ct}, M, {loads}{tail}>(" in src
    assert f"+ gml::GEMV_COLS / {split} - 1) / (gml::GEMV_COLS / {split}));" in src
    monkeypatch.setattr(switches, "GEMV_SPLIT", False)
    assert (
        "+ gml::GEMV_COLS / 1 - 1) / (gml::GEMV_COLS / 1));"
        in lower(main_func(_norm_linear(k, dtype)[0])).source
    )


@needs_gpu
@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize(
    ("k", "dtype", "tol"),
    [(512, torch.float32, 1e-4), (510, torch.float32, 1e-4), (512, torch.float16, 1e-2)],
)
def test_split_columns_equal_the_interpreter(
    split: bool, k: int, dtype: torch.dtype, tol: float, monkeypatch: Any, tmp_path: Any
) -> None:
    """Columns split over 4 or 2 warps (or not), the last block's warps partly past the
    37 columns, a layer norm in the GEMV and a residual in its epilogue, at 2 rows: the
    interpreter's values (f32 rtol 1e-4, f16 1e-2)."""
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction

    monkeypatch.setenv("GIMLET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(switches, "GEMV_SPLIT", split)
    module, weights, inputs = _norm_linear(k, dtype)
    low = lower(main_func(module))
    assert "gml::gemv_nt<" in low.source
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    (got,) = f(*[x.cuda() for x in inputs])
    (ref,) = run(module, [x.numpy() for x in inputs], weights)
    np.testing.assert_allclose(
        got.float().cpu().numpy(), np.asarray(ref, np.float32), rtol=tol, atol=tol
    )


@pytest.mark.parametrize("ahead", [True, False])
def test_each_decode_gemv_prefetches_what_the_next_kernel_reads(
    ahead: bool, monkeypatch: Any
) -> None:
    """gml::L2Ahead: a layer's qkv GEMV prefetches the attention's K and V cache pieces,
    every other GEMV the next GEMV's weight (a head larger than L2_AHEAD_BYTES only its
    first L2_AHEAD_BYTES), the last GEMV nothing; with L2_AHEAD off, none does."""
    from test_gpu_backend import _decode_case

    monkeypatch.setattr(switches, "L2_AHEAD", ahead)
    monkeypatch.setattr(switches, "L2_AHEAD_BYTES", 100_000)
    module = _decode_case(40)[0]  # f32, d 64, 2 layers, a head of 512 x 64
    got: dict[str, str] = {}  # the Linear a launch is for -> its L2Ahead's initializer
    linear = ""
    for line in lower(main_func(module)).source.splitlines():
        if m := re.search(r"// gml\.matmul gpt\.(\S+)", line):
            linear = m.group(1)
        if m := re.search(r"gml::L2Ahead\{(.*)\}\);$", line):
            got[linear] = m.group(1)
    if not ahead:
        assert set(got.values()) == {""} and len(got) == 9
        return
    cache = r"reinterpret_cast<const float\*>\(A \+ P\[\d+\]\)"
    weight = r"\{static_cast<const float\*>\(W\[\d+\]\)\}, "
    for layer in (0, 1):
        assert re.fullmatch(
            rf"\{{{cache}, {cache}\}}, \{{P\[\d+\], P\[\d+\]\}}", got[f"h.{layer}.qkv"]
        )
        assert re.fullmatch(weight + r"\{65536\}", got[f"h.{layer}.proj"])  # fc: 64 x 256 f32
        assert re.fullmatch(weight + r"\{65536\}", got[f"h.{layer}.fc"])  # fc2's
    assert re.fullmatch(weight + r"\{49152\}", got["h.0.out"])  # layer 1's qkv: 64 x 192
    assert re.fullmatch(weight + r"\{100000\}", got["h.1.out"])  # the head's first bytes
    assert got["lm_head"] == ""


@pytest.mark.parametrize("affine", [(True, True), (True, False), (False, False)])
def test_a_folded_norm_gives_the_norms_product(affine: tuple[bool, bool]) -> None:
    """gml::LnFoldRows's arithmetic on the host: rstd (W'x - mean c1) + c2, the statistics
    as sums of x and x^2, equals layer_norm(x) @ W (f32, rtol 1e-5), with the norm's
    weight and bias, only its weight, or neither."""
    from gimlet.backends.nvidia.program import folded_norm

    gen = np.random.default_rng(0)
    k, n = 96, 40
    w = gen.standard_normal((k, n)).astype(np.float32)
    gamma = gen.standard_normal(k).astype(np.float32) if affine[0] else None
    beta = gen.standard_normal(k).astype(np.float32) if affine[1] else None
    x = (gen.standard_normal(k) * 3 + 0.5).astype(np.float32)
    ref = (
        F.layer_norm(
            torch.from_numpy(x),
            (k,),
            None if gamma is None else torch.from_numpy(gamma),
            None if beta is None else torch.from_numpy(beta),
        ).numpy()
        @ w
    )
    scaled, c1, c2 = (folded_norm(w, gamma, beta, p) for p in ("scaled", "c1", "c2"))
    assert scaled.shape == (n, k) and c1.dtype == c2.dtype == np.float32
    mean = x.sum() / k
    rstd = 1 / np.sqrt((x * x).sum() / k - mean * mean + 1e-5)
    np.testing.assert_allclose(rstd * (scaled @ x - mean * c1) + c2, ref, rtol=1e-5, atol=1e-5)


def test_decode_gemvs_fold_their_layer_norm_and_upload_the_weight_once(
    monkeypatch: Any,
) -> None:
    """GPT decode (static, a row a call): qkv and fc read gml::LnFoldRows and their
    folded weight, never the Linear's own (no bucket multiplies more rows); with
    FOLD_NORM off they normalize in the warp (gml::LnRows) and upload the weight as is."""
    from test_gpu_backend import _decode_case

    module = _decode_case(40)[0]
    low = lower(main_func(module))
    parts = [w.part for w in low.weights if w.norm is not None]
    assert sorted(parts) == sorted(["scaled", "c1", "c2"] * parts.count("scaled"))
    assert parts.count("scaled") >= 2  # the layer's qkv and fc
    folded = {w.value for w in low.weights if w.norm is not None}
    assert not [w for w in low.weights if w.value in folded and w.norm is None]
    assert "gml::LnFoldRows<float>{" in low.source and "gml::LnRows<" not in low.source
    monkeypatch.setattr(switches, "FOLD_NORM", False)
    low = lower(main_func(module))
    assert all(w.norm is None for w in low.weights)
    assert "gml::LnRows<float>{" in low.source and "LnFoldRows" not in low.source


@pytest.mark.parametrize(
    ("cols", "split", "folded"), [(40, True, False), (40, False, True), (37, False, False)]
)
def test_the_fold_takes_a_warp_a_column_and_an_unpadded_weight(
    cols: int, split: bool, folded: bool, monkeypatch: Any
) -> None:
    """Columns split over warps (their statistics would need summing across them too)
    normalize x per warp (gml::LnRows), as does an odd width padded for cuBLAS (the fold
    has not run on a GPU with one); 40 columns a warp each fold."""
    monkeypatch.setattr(switches, "GEMV_SPLIT", split)
    src = lower(main_func(_norm_linear(512, torch.float32, cols=cols)[0])).source
    assert ("gml::LnFoldRows<float>{" in src) == folded
    assert ("gml::LnRows<float>{" in src) != folded


def test_a_prefill_program_uploads_no_folded_weight() -> None:
    """A static function of many rows never takes the GEMV branch: its Linears keep their
    own weight for cuBLAS and no folded copy is uploaded beside it."""
    module = _norm_linear(64, torch.float32, rows=16)[0]
    low = lower(main_func(module))
    assert all(w.norm is None for w in low.weights)
    assert "LnFoldRows" not in low.source
