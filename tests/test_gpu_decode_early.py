"""Decode's kernels load early what they can (codegen.DECODE_PREFETCH) and split attention
combines its own chunks (codegen.ATTN_FOLD): what the generated code says, and on a GPU
that every switch gives the interpreter's values."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gimlet.backends.gpu import codegen as cg
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
    (slot,) = re.findall(r"P\[(\d+)\] != 0, tickets", low.source)
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
    monkeypatch.setattr(cg, "DECODE_PREFETCH", False)
    module, _, _ = _case(False, 40)
    assert _cached_slot(lower(main_func(module)), 40) == 0


def test_split_attention_takes_tickets_to_combine_unless_folding_is_off(monkeypatch: Any) -> None:
    """Folded, the split kernel gets the runtime's tickets and the combine kernel runs only
    where attention_tickets gives none; GIMLET_GPU_ATTN_FOLD=0 passes none."""
    module, _, _ = _case(False, 40)
    src = lower(main_func(module)).source
    assert "unsigned* tickets = gml::attention_tickets(ctx, " in src
    assert "  if (!tickets) gml::launch_pdl(gml::attention_combine<float>" in src
    monkeypatch.setattr(cg, "ATTN_FOLD", False)
    assert "unsigned* tickets = nullptr;" in lower(main_func(module)).source


def test_a_gemv_loads_its_epilogues_operands_with_x(monkeypatch: Any) -> None:
    """A decode GEMV's epilogue operands (bias, residual) are a struct gemv_nt fills once x
    is ready; with DECODE_PREFETCH off gemv_nt<..., false, true> fills it after the sum,
    and with NORM_EARLY off <..., true, false> loads the norm's weight as x is normalized."""
    from test_gpu_backend import _decode_case

    module = _decode_case(40)[0]
    src = lower(main_func(module)).source
    assert "struct Operands { float x1[M]; float x4[M]; };  // what the epilogue loads" in src
    assert "    o.x4[r] = gml::load(p4 + off1[0]);" in src
    assert re.search(r"gml::gemv_nt<float, M, \d+>\(", src)
    monkeypatch.setattr(cg, "DECODE_PREFETCH", False)
    late = lower(main_func(module)).source
    assert re.search(r"gml::gemv_nt<float, M, \d+, false, true>\(", late)
    monkeypatch.setattr(cg, "DECODE_PREFETCH", True)
    monkeypatch.setattr(cg, "NORM_EARLY", False)
    late = lower(main_func(module)).source
    assert re.search(r"gml::gemv_nt<float, M, \d+, true, false>\(", late)


@needs_gpu
@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("scaled", [False, True])
def test_decode_attention_equals_the_interpreter_under_every_switch(
    fold: bool, prefetch: bool, scaled: bool, monkeypatch: Any, tmp_path: Any
) -> None:
    """Cache read early or late, chunks combined by the split kernel or by a kernel of
    their own: f32 rtol 1e-4 against the interpreter, three calls in a row (the tickets
    are left zero for the next call's graph)."""
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction

    monkeypatch.setenv("GIMLET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cg, "ATTN_FOLD", fold)
    monkeypatch.setattr(cg, "DECODE_PREFETCH", prefetch)
    module, weights, inputs = _case(scaled, 700)
    low = lower(main_func(module))
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    (ref,) = run(module, [x.numpy() for x in inputs], weights)
    for _ in range(3):
        (got,) = f(*[x.cuda() for x in inputs])
        np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=1e-4, atol=1e-5)


@needs_gpu
def test_past_256_chunks_the_combine_is_a_kernel_of_its_own(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """attention_tickets gives none past ATTN_CHUNK_MAX chunks (their weights would not fit
    the split's shared scores): 70000 keys of one head are 274 chunks of 256, combined by
    attention_combine, equal to the interpreter."""
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction

    monkeypatch.setenv("GIMLET_CACHE_DIR", str(tmp_path))
    assert cg._decode_split(2, 70001, cg.DECODE_TARGET_BLOCKS) == (256, 274)
    module, weights, inputs = _case(False, 70000, heads=1)
    low = lower(main_func(module))
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    (got,) = f(*[x.cuda() for x in inputs])
    (ref,) = run(module, [x.numpy() for x in inputs], weights)
    np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=1e-4, atol=1e-5)
