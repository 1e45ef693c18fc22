"""Inputs and outputs read and written where the caller keeps them (backends/gpu/inplace.py,
gml_cuda.cpp): which parameter-table slots address each, which ends cannot be bound, and
on a GPU that a graph bound to the caller's KV cache reads it in place and equals the
interpreter."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from gimlet.backends.gpu.lower import lower
from gimlet.frontend import import_model
from gimlet.interpreter import run
from gimlet.ir import main_func
from gimlet.pass_manager import DEFAULT_PIPELINE, run_pipeline

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
from gpt import GPT  # noqa: E402
from gpt_phases import Decode  # noqa: E402

HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU (runs on the H200 machine)")


def _decode() -> tuple[Any, Any, list[torch.Tensor]]:
    """A two-layer GPT decode step over a 16-entry KV cache (f32)."""
    torch.manual_seed(0)
    gpt = GPT(vocab=500, ctx=64, d=64, heads=4, layers=2).eval()
    inputs = [
        torch.randint(0, 500, (1, 1)),
        torch.randn(2, 1, 4, 16, 16),
        torch.randn(2, 1, 4, 16, 16),
    ]
    module, weights = import_model(Decode(gpt).eval(), tuple(inputs), None)
    run_pipeline(module, DEFAULT_PIPELINE)
    return module, weights, inputs


def _bucket(module: Any, inputs: list[torch.Tensor]) -> Any:
    return lower(main_func(module)).bucket([tuple(x.shape) for x in inputs])


def test_each_slot_of_a_bound_input_addresses_inside_it() -> None:
    module, _, inputs = _decode()
    b = _bucket(module, inputs)
    assert len(b.bound) == 4  # three inputs, the logits
    for i, x in enumerate(inputs):
        slots = b.bound[i]
        assert slots, f"input {i} is not bound"
        lo, hi = b.input_offsets[i], b.input_offsets[i] + x.numel() * x.element_size()
        assert all(lo <= b.params[s] < hi for s in slots)
    # the logits: written at their planned place, from where the runtime would copy them
    assert b.bound[3] and all(b.params[s] == b.output_offsets[0] for s in b.bound[3])


class ReturnsAView(nn.Module):
    def forward(self, x: Any) -> Any:
        return x.reshape(-1), x * 2, x * 2


class TwiceTheSame(nn.Module):
    def forward(self, x: Any) -> Any:
        y = x + 1
        return y, y


@pytest.mark.parametrize(
    ("model", "bound"),
    [
        # an output that is a view of the input: neither moves alone; two equal products
        # are one value after CSE, returned twice: neither output can be bound
        (ReturnsAView(), [False, False, False, False]),
        (TwiceTheSame(), [True, False, False]),
    ],
)
def test_an_end_that_moves_another_is_never_bound(model: nn.Module, bound: list[bool]) -> None:
    x = torch.randn(4, 8)
    module, _ = import_model(model.eval(), (x,), None)
    run_pipeline(module, DEFAULT_PIPELINE)
    b = _bucket(module, [x])
    assert [s is not None for s in b.bound] == bound


@needs_gpu
@pytest.mark.parametrize("graphs", ["1", "0"])
def test_decode_reads_the_callers_cache_in_place(
    graphs: str, monkeypatch: Any, tmp_path: Any
) -> None:
    """The same cache tensors every call: from the second call on (with graphs) they
    are read where they are; written in place between calls, the next step sees the new
    values. Each call equals the interpreter (f32, rtol 1e-4)."""
    from gimlet.backends.nvidia.build import build_segment
    from gimlet.backends.nvidia.program import CudaFunction

    monkeypatch.setenv("GIMLET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GIMLET_CUDA_GRAPHS", graphs)
    module, weights, inputs = _decode()
    low = lower(main_func(module))
    f = CudaFunction(main_func(module), build_segment(low.source)[0], weights, lowered=low)
    dev = [x.cuda() for x in inputs]
    for step in range(4):
        if step == 3:  # the caller updates its cache in place
            dev[1].mul_(0.5)
            dev[2].add_(1.0)
        (ref,) = run(module, [x.cpu().numpy() for x in dev], weights)
        (got,) = f(*dev)
        np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=1e-4, atol=1e-5)
        del got  # so the next call's logits come back at the same address
    # with graphs: the first call copies and captures, the second captures the bound
    # graph, which the rest replay (had the caller kept each call's logits until the
    # next, they would alternate between two addresses: two keys, two bound graphs)
    assert f.in_place_graphs() == (1 if graphs == "1" else 0)


def test_a_slot_that_computes_with_an_offset_binds_nothing() -> None:
    """binding() on a table of hand-made slots: one addressing each end (and a view's
    slot its root's end) is bound; a slot doubling an offset makes every end copied."""
    from types import SimpleNamespace

    from gimlet.backends.gpu.inplace import binding

    env = SimpleNamespace(offsets={"x": 0, "x_view": 256, "y": 512}, memo={})
    alias: Any = {"x_view": ("x", 256)}
    slots = [
        lambda e: e.offsets["x"],
        lambda e: e.offsets["x_view"] + 64,
        lambda e: e.offsets["y"],
        lambda e: 7,
    ]
    params = [s(env) for s in slots]
    sizes = lambda v: (256, 256)  # noqa: E731
    args: Any = (slots, params, env, alias, ["x"], ["y"], sizes)
    assert binding(*args) == [[0, 1], [2]]
    assert env.offsets == {"x": 0, "x_view": 256, "y": 512}  # restored
    slots.append(lambda e: 2 * e.offsets["y"])
    params.append(1024)
    assert binding(*args) == [None, None]
