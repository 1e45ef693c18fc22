"""Importing torch.export's graph without run_decompositions (load.as_exported).

The IR must be what the decomposed program imports as: these tests import both ways and
compare the printed IR with SSA names cleared (the names come from FX node names, the
one thing that differs), and check that programs the importer cannot take as they are
still go through the decompositions and match torch.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from gimlet.dtypes import torch_to_numpy
from gimlet.frontend.importer import import_program
from gimlet.frontend.load import KEEP_WHOLE, as_exported, decompose, export
from gimlet.frontend.registry import AS_EXPORTED, CONVERTERS, DECOMPOSED_FIRST
from gimlet.interpreter import run
from gimlet.ir import print_ir
from models import FAMILIES

aten = torch.ops.aten

# Converted ops torch's decompositions rewrite whose converter emits the IR their
# decomposition imports as (checked op by op in test_vetted_ops_import_as_decomposed).
IMPORTED_AS_DECOMPOSED = {
    aten.linear.default,
    aten.layer_norm.default,
    aten.dropout.default,
    aten.transpose.int,
    aten.t.default,
    aten.split.Tensor,
    aten.squeeze.dim,
    aten.squeeze.default,
    aten._unsafe_view.default,
    aten.reshape.default,
    aten.contiguous.default,
    aten.flatten.using_ints,
    aten.to.dtype,
    aten.softmax.int,
    aten.arange.default,
    aten.arange.start,
    aten.detach.default,
    aten.sum.default,
    aten.var.dim,
    aten.clamp_min.default,
    aten.clamp_max.default,
    aten.silu.default,
    aten.to.dtype_layout,
    aten.to.device,
    aten.new_ones.default,
    aten.new_zeros.default,
    aten.__and__.Tensor,
    aten.__or__.Tensor,
    aten.diff.default,
    aten.stack.default,
    aten.conv2d.default,
    aten.batch_norm.default,
    aten.max_pool2d.default,
    aten.adaptive_avg_pool2d.default,
    aten.matmul.default,
}


def _rewritten_by_torch(op: Any, table: Any) -> bool:
    cia = torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd")
    return (op in table or cia) and op not in KEEP_WHOLE


def test_every_op_torch_rewrites_is_vetted_or_decomposed_first() -> None:
    """A torch upgrade that starts decomposing a converted op fails here until someone
    decides whether its converter imports it as its decomposition does."""
    table = set(torch.export.default_decompositions().keys())
    rewritten = {op for op in CONVERTERS if _rewritten_by_torch(op, table)}
    assert rewritten - DECOMPOSED_FIRST == IMPORTED_AS_DECOMPOSED
    assert rewritten >= DECOMPOSED_FIRST  # nothing listed that torch keeps anyway
    assert set(AS_EXPORTED) <= IMPORTED_AS_DECOMPOSED


def _ir(ep: Any) -> tuple[str, list[str]]:
    module, weights = import_program(ep)
    for op in module.walk():
        for r in op.results:
            r.name_hint = None
        for region in op.regions:
            for block in region.blocks:
                for a in block.args:
                    a.name_hint = None
    return print_ir(module), list(weights)


def _decomposed(ep: Any) -> Any:
    table = torch.export.default_decompositions()
    for op in KEEP_WHOLE:
        table.pop(op, None)
    return ep.run_decompositions(table)


def _same_both_ways(model: nn.Module, inputs: tuple[Any, ...], dyn: Any = None) -> Any:
    ep = export(model, inputs, dyn)
    assert as_exported(ep) is None
    assert decompose(ep) is ep
    assert _ir(ep) == _ir(_decomposed(ep))
    return ep


class Vetted(nn.Module):
    """One call of each op in IMPORTED_AS_DECOMPOSED (in the forms as_exported takes)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 6)
        self.fc_nobias = nn.Linear(8, 6, bias=False)
        self.ln = nn.LayerNorm(8)
        self.drop = nn.Dropout(0.5)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = x.shape[1]
        a, b = x.split(4, dim=2)
        i = (m * 10).to(torch.int64)
        image = x[:, :4].reshape(2, 2, 4, 4)
        return (
            F.silu(x),
            F.silu(x.to(torch.bfloat16)),
            x.to(dtype=torch.float16, device="cpu"),
            x.to("cpu"),
            x.new_ones((2, 3), dtype=torch.bool) & (x[:, :3, 0] > 0) | (x[:, :3, 1] > 0),
            x.new_zeros((3,)),
            torch.diff(i),
            torch.diff(i, n=2, dim=0, prepend=i[:1], append=i[:2]),
            torch.stack([x, x], 1),
            torch.stack([m, m, m], -1),
            F.max_pool2d(self.bn(self.conv(image)), 2),
            F.adaptive_avg_pool2d(image, 1),
            F.adaptive_avg_pool2d(image[0], (2, 2)),
            m @ m.t(),
            x @ x.transpose(1, 2),
            image @ image.transpose(-2, -1).contiguous(),
            self.fc(x),  # rank 3, bias: view, permute, addmm, view
            self.fc_nobias(x),  # rank 3, no bias: permute, view, mm, view
            self.fc(m),  # rank 2: permute, addmm
            self.fc_nobias(m),
            self.ln(x),
            F.layer_norm(x, (8,)),  # no weight, no bias
            self.drop(x),
            x.transpose(1, 2).contiguous(),
            m.t(),
            a * b,
            x[:, :1].squeeze(1),
            x[:, :1].squeeze(),
            torch.ops.aten._unsafe_view(m, [40]),
            x.transpose(1, 2).reshape(-1, 8),  # a non-contiguous reshape
            x.flatten(1),
            x.to(torch.float16),
            torch.softmax(x, -1, dtype=torch.float64),
            torch.arange(n) + torch.arange(1, n + 1),
            x.detach(),
            x.sum(),
            torch.var(x, 1, unbiased=False),
            torch.clamp_min(x, 0.1),
            torch.clamp_max(x, 0.2),
        )


def test_vetted_ops_import_as_decomposed() -> None:
    model = Vetted().eval()
    inputs = (torch.randn(2, 5, 8), torch.randn(5, 8))
    ep = _same_both_ways(model, inputs)
    used = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    assert used >= IMPORTED_AS_DECOMPOSED  # the module does call every vetted op


class VettedDynamic(Vetted):
    """The vetted ops that take symbolic sizes, over a dynamic batch and sequence."""

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = x.shape[1]
        a, b = x.split(4, dim=2)
        return (
            self.fc(x),
            self.fc_nobias(x),
            self.fc(m),
            self.ln(x),
            self.drop(x),
            x.transpose(0, 1).reshape(-1, 8),
            x.flatten(1),
            a * b,
            torch.arange(n) + torch.arange(1, n + 1),
            torch.softmax(x, -1),
            x @ x.transpose(1, 2),
        )


def test_vetted_ops_with_dynamic_dims_import_as_decomposed() -> None:
    batch, seq = torch.export.Dim("batch", min=2, max=16), torch.export.Dim("seq", min=2, max=64)
    dyn = ({0: batch, 1: seq}, {0: seq})
    _same_both_ways(VettedDynamic().eval(), (torch.randn(2, 5, 8), torch.randn(5, 8)), dyn)


@pytest.mark.parametrize("name", ["mlp", "cnn", "gpt", "gpt_bf16", "llama_block", "hf_gpt2"])
def test_families_import_as_exported_as_they_would_decomposed(name: str) -> None:
    torch.manual_seed(0)
    model, inputs, *dyn = FAMILIES[name]() if name in FAMILIES else models.gpt_bf16()
    _same_both_ways(model.eval(), inputs, dyn[0] if dyn else None)


class NeedsDecomposing(nn.Module):
    """Ops the importer only takes decomposed: an in-place op, a buffer update,
    ones_like, a vector matmul, a linear over a non-contiguous input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = self.fc(x.transpose(0, 1))
        z = x * 2
        z.relu_()
        self.calls.add_(1)
        return torch.ones_like(y) + y, x[0] @ x[0, 0], z, self.calls * 1


def _one(fn: Any) -> nn.Module:
    class One(NeedsDecomposing):
        def forward(self, x: torch.Tensor) -> Any:
            return fn(self, x)

    return One().eval()


@pytest.mark.parametrize(
    ("fn", "why"),
    [
        (lambda m, x: m.calls.add_(1) + x, "add_ (aten.add_.Tensor): mutates its input"),
        (lambda m, x: (x * 2).relu_(), "relu_ (aten.relu_.default): mutates its input"),
        (
            lambda m, x: torch.ones_like(x),
            "ones_like (aten.ones_like.default): imported after decomposition",
        ),
        (
            lambda m, x: torch.diff(x > 0),
            "diff (aten.diff.default): this form is imported after decomposition",
        ),
        (
            lambda m, x: x[0] @ x[0, 0],
            "matmul (aten.matmul.default): this form is imported after decomposition",
        ),
        (
            lambda m, x: m.fc(x.transpose(0, 1)),
            "linear (aten.linear.default): this form is imported after decomposition",
        ),
    ],
    ids=[
        "buffer-update",
        "in-place",
        "ones-like",
        "bool-diff",
        "matmul",
        "non-contiguous-linear",
    ],
)
def test_programs_that_need_decomposing_name_the_node(fn: Any, why: str) -> None:
    assert as_exported(export(_one(fn), (torch.randn(4, 4, 8),))) == why


def test_a_program_that_needs_decomposing_still_matches_torch() -> None:
    torch.manual_seed(0)
    model = NeedsDecomposing().eval()
    x = torch.randn(4, 4, 8)
    with torch.no_grad():  # on a copy: the program shares the model's buffer
        want = copy.deepcopy(model)(x)
    ep = export(model, (x,))
    assert as_exported(ep) is not None
    module, weights = import_program(decompose(ep))
    got = run(module, [torch_to_numpy(x)], weights)
    assert len(got) >= len(want)
    for g, w in zip(got[-len(want) :], want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-6)
