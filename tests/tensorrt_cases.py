"""Per-op cases for the TensorRT backend's ONNX lowering: small torch functions, each
imported through gimlet's frontend, so every gml op (and its options) appears in some
case. Each case is (function, calls, dynamic_shapes): the function is exported with the
first call's inputs, and every call runs through the same ONNX model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

_g = torch.Generator().manual_seed(0)


def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=_g).to(dtype)


def randint(lo: int, hi: int, *shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    return torch.randint(lo, hi, shape, generator=_g).to(dtype)


@dataclass
class Case:
    fn: Callable[..., Any]
    calls: list[tuple[torch.Tensor, ...]]
    dynamic: Any = None
    # parameters/buffers the function reads, as module attributes
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    refused_by_tensorrt: bool = False  # lowers to ONNX, but TensorRT's matrix has no such node


class _Fn(torch.nn.Module):
    def __init__(self, fn: Callable[..., Any], weights: dict[str, torch.Tensor]):
        super().__init__()
        self.fn = fn
        for k, w in weights.items():
            self.register_buffer(k, w)

    def forward(self, *xs: torch.Tensor) -> Any:
        return self.fn(self, *xs)


def module(case: Case) -> torch.nn.Module:
    return _Fn(case.fn, case.weights).eval()


def dynamic_shapes(case: Case) -> Any:
    """forward(*xs) takes its inputs as one tuple argument: the spec is nested once more."""
    return None if case.dynamic is None else (case.dynamic,)


x34 = randn(3, 4)
img = randn(2, 4, 9, 8)
bool34 = randn(3, 4) > 0

CASES: dict[str, Case] = {
    "unary": Case(
        lambda m, x: (
            -x,
            x.exp(),
            (x.abs() + 1).log(),
            x.abs().sqrt(),
            torch.rsqrt(x.abs() + 0.1),
            x.abs(),
            x.tanh(),
            x.sigmoid(),
            x.relu(),
            x.sin(),
            x.cos(),
            torch.erf(x),
            torch.reciprocal(x + 3),
            F.silu(x),
            F.gelu(x),
            F.gelu(x, approximate="tanh"),
        ),
        [(x34,)],
    ),  # fmt: skip
    "clamp": Case(
        lambda m, x, i: (x.clamp(-0.5, 0.7), x.clamp(min=0.1), i.relu(), -i, i.abs()),
        [(x34, randint(-9, 9, 3, 4, dtype=torch.int32))],
    ),
    # TensorRT's Clip is float-only
    "int_clamp": Case(
        lambda m, i: (i.clamp(max=3), i.clamp(-2, 2)),
        [(randint(-9, 9, 3, 4, dtype=torch.int32),)],
        refused_by_tensorrt=True,
    ),
    "binary": Case(
        lambda m, x, y: (
            x + y,
            x - y,
            x * y,
            x / y,
            torch.maximum(x, y),
            torch.minimum(x, y),
            x.abs() ** y,
            x == y,
            x != y,
            x < y,
            x <= y,
            x > y,
            x >= y,
            torch.where(x > 0, x, y),
        ),
        [(x34, randn(4))],
    ),  # fmt: skip
    "integer": Case(
        lambda m, a, b: (
            torch.div(a, b, rounding_mode="floor"),
            a + b,
            a * b,
            a - b,
            a == b,
            a < b,
            torch.maximum(a, b),
            a.float() * 0.5,
            (a.float() * 0.7).long(),
        ),
        [(randint(-20, 20, 3, 5), randint(1, 6, 5) * torch.tensor([1, -1, 1, -1, 1]))],
    ),  # fmt: skip
    "boolean": Case(
        lambda m, p, q: (
            p & q,
            p | q,
            torch.logical_not(p),
            p == q,
            p != q,
            p < q,
            torch.where(p, 1.0, 2.0),
            p.float(),
            (p.float() - 0.5).bool(),
            p.any(),
            p.any(1),
            p.sum(1),
            p.cumsum(0),
        ),
        [(bool34, randn(3, 4) > 0.5)],
    ),  # fmt: skip
    "shapes": Case(
        lambda m, x: (
            x.view(4, 3),
            x.unsqueeze(0).expand(2, 3, 4),
            x.t(),
            x[:, 1::2],
            x[1:],
            torch.cat([x, x * 2], 1),
            F.pad(x, (1, 2, 0, 1), value=0.5),
            F.pad(x, (-1, 1)),
            x.flatten(),
        ),
        [(x34,)],
    ),  # fmt: skip
    "dynamic_shapes": Case(
        lambda m, x: (
            x.view(x.shape[0], 2, 2).permute(2, 0, 1).reshape(2, -1),
            x.unsqueeze(1).expand(x.shape[0], 3, 4),
            torch.full((x.shape[0], 2), 1.5),
            torch.arange(x.shape[0]),
            torch.arange(x.shape[0], dtype=torch.float32) * 0.5,
            torch.cat([x, x], 0)[1:],
        ),
        [(randn(6, 4),), (randn(3, 4),), (randn(11, 4),)],
        ({0: torch.export.Dim("n", min=2, max=64)},),
    ),  # fmt: skip
    "indexing": Case(
        lambda m, x, e, i, k, j: (
            F.embedding(e, m.table),
            torch.gather(x, 1, j),
            x[k],
            x[:, j[0]],
            x[k, i],
            m.cube[i, :, k],
            m.cube[:, j, j],
        ),
        [(randn(3, 5), randint(0, 7, 4), randint(0, 2, 4), randint(0, 3, 4), randint(0, 3, 2, 3))],
        weights={"table": randn(7, 6), "cube": randn(2, 3, 5)},
    ),  # fmt: skip
    "cumsum": Case(
        lambda m, x, i: (x.cumsum(1), x.cumsum(0), i.cumsum(1), i.cumsum(0), i.int().cumsum(1)),
        [(x34, randint(-5, 9, 3, 6))],
    ),
    "reductions": Case(
        lambda m, x: (
            x.sum(),
            x.sum(1),
            x.sum((0, 2), keepdim=True),
            x.mean(-1),
            x.amax(0),
            x.amin((1, 2)),
            x.var(1),
            x.var((0, 2), correction=0, keepdim=True),
            x.argmax(1),
            x.argmin(),
            x.argmax(2, keepdim=True),
            (x > 0).any(2),
            x.int().sum(1),
            x.int().amax(2),
        ),
        [(randn(3, 4, 5),)],
    ),  # fmt: skip
    "nn": Case(
        lambda m, x, b: (
            x @ m.w,
            torch.bmm(b, b.transpose(1, 2)),
            x.softmax(-1),
            F.log_softmax(x, 0),
            F.layer_norm(x, (5,), m.g, m.b),
            F.layer_norm(b, (3, 5)),
            F.linear(x, m.w.t(), m.bias),
        ),
        [(randn(4, 5), randn(2, 3, 5))],
        weights={"w": randn(5, 6), "g": randn(5), "b": randn(5), "bias": randn(6)},
    ),  # fmt: skip
    "attention": Case(
        lambda m, q, k, v, mask, add: (
            F.scaled_dot_product_attention(q, k, v),
            F.scaled_dot_product_attention(q, k, v, is_causal=True),
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
            F.scaled_dot_product_attention(q, k, v, attn_mask=add, scale=0.3),
            F.scaled_dot_product_attention(q, k[:, :1], v[:, :1], enable_gqa=True),
        ),
        [
            (
                randn(2, 2, 5, 4),
                randn(2, 2, 6, 4),
                randn(2, 2, 6, 3),
                # row 1 attends to nothing: torch's safe softmax gives zeros
                torch.tensor(
                    [[True] * 6, [False] * 6, [True, False] * 3, [False] * 5 + [True], [True] * 6]
                ),
                randn(5, 6),
            )
        ],
    ),  # fmt: skip
    # masks known at compile time (buffers): one hides a whole row (the safe softmax stays),
    # the other none (a plain Softmax), with and without the causal mask on top
    "attention_known_masks": Case(
        lambda m, q, k, v: (
            F.scaled_dot_product_attention(q, k, v, attn_mask=m.hiding_row),
            F.scaled_dot_product_attention(q, k, v, attn_mask=m.every_row),
            F.scaled_dot_product_attention(q, k, v, attn_mask=m.every_row, is_causal=True),
            F.scaled_dot_product_attention(q, k, v, attn_mask=m.additive),
        ),
        [(randn(1, 2, 4, 4), randn(1, 2, 4, 4), randn(1, 2, 4, 4))],
        weights={
            "hiding_row": torch.tensor([[True] * 4, [False] * 4, [True] * 4, [False, True] * 2]),
            "every_row": torch.tensor([[True, False] * 2] * 4),
            "additive": torch.where(torch.eye(4, dtype=torch.bool), 0.0, -float("inf")),
        },
    ),
    "conv": Case(
        lambda m, x, s: (
            F.conv2d(x, m.w, m.b, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2),
            F.conv2d(x, m.wd, padding=1, groups=4),
            F.conv1d(s, m.ws, stride=2, padding=1),
            F.batch_norm(x, m.mean, m.var, m.g, m.bb, False, 0.0, 1e-3),
        ),
        [(img, randn(2, 3, 10))],
        weights={
            "w": randn(6, 2, 3, 3),
            "b": randn(6),
            "wd": randn(4, 1, 3, 3),
            "ws": randn(4, 3, 3),
            "mean": randn(4),
            "var": torch.rand(4, generator=_g) + 0.5,
            "g": randn(4),
            "bb": randn(4),
        },
    ),  # fmt: skip
    "pooling": Case(
        lambda m, x: (
            F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
            F.max_pool2d(x, 2),
            F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
            F.avg_pool2d(x, 2, 2, ceil_mode=True),
            F.avg_pool2d(x, 2, 1, 1, divisor_override=3),
            F.avg_pool2d(x, 3, 1, 1),
            F.adaptive_avg_pool2d(x, 1),
            F.adaptive_avg_pool2d(x, (3, 4)),
            F.adaptive_avg_pool2d(x, (4, 3)),
        ),
        [(randn(2, 3, 9, 8),)],
    ),  # fmt: skip
    "rank0": Case(
        lambda m, s: (s.softmax(0), s.sum(), s.argmax(), s * 2, s.cumsum(0), s.amax(), s.var()),
        [(torch.tensor(1.5),)],
    ),
    # lowers to ONNX, but TensorRT has no double and pools without dilation only
    "double": Case(lambda m, x: (x.double() * 2).sum(0), [(x34,)], refused_by_tensorrt=True),
    "dilated_pool": Case(
        lambda m, x: F.max_pool2d(x, 3, 2, 1, dilation=2), [(img,)], refused_by_tensorrt=True
    ),
}


# gml written by hand: what torch rarely produces (dynamic slice bounds, every size
# operation, carriers: sizes crossing a part boundary as bool tensors' lengths), returns of
# an input and of one value twice; (IR, calls)
IR_CASES: dict[str, tuple[str, list[list[Any]]]] = {
    "sizes": (
        """func.func @main(%x: tensor<?x4xf32>) -> (tensor<?x4xf32>, tensor<?x4xf32>, tensor<?xi64>, tensor<?x4xf32>, tensor<?x4xf32>) {
  %n = gml.dim %x[0] : tensor<?x4xf32>
  %c2 = arith.constant 2 : index
  %c3 = arith.constant 3 : index
  %h = arith.floordivsi %n, %c2 : index
  %e = arith.floordivsi %n, %c3 : index
  %r = arith.remsi %n, %c3 : index
  %q = arith.divsi %n, %c3 : index
  %lo = arith.subi %h, %e : index
  %hi = arith.addi %q, %r : index
  %d = arith.subi %n, %lo : index
  %s = arith.addi %d, %c2 : index
  %m = arith.muli %s, %c3 : index
  %r0 = gml.slice %x dim 0 start 0 end 0 step 1 dyn_start %lo dyn_end %n : tensor<?x4xf32> to tensor<?x4xf32>
  %r1 = gml.slice %x dim 0 start 1 end 0 step 2 dyn_end %hi : tensor<?x4xf32> to tensor<?x4xf32>
  %r2 = gml.arange 0.000000e+00 step 1.000000e+00 dims(%m) : tensor<?xi64>
  func.return %r0, %r1, %r2, %x, %r0 : tensor<?x4xf32>, tensor<?x4xf32>, tensor<?xi64>, tensor<?x4xf32>, tensor<?x4xf32>
}
""",
        [[randn(n, 4).numpy()] for n in (1, 5, 9)],
    ),
    # torch decomposes F.silu before gimlet sees it
    "silu": (
        """func.func @main(%x: tensor<3x4xf32>) -> tensor<3x4xf32> {
  %y = gml.silu %x : tensor<3x4xf32>
  func.return %y : tensor<3x4xf32>
}
""",
        [[randn(3, 4).numpy()]],
    ),
    "carriers": (
        """func.func @main(%c: tensor<?xi1>, %x: tensor<?xf32>) -> (tensor<?xi1>, tensor<?xf32>) {
  %n = gml.dim %c[0] : tensor<?xi1>
  %c1 = arith.constant 1 : index
  %m = arith.addi %n, %c1 : index
  %o = gml.full 0.000000e+00 dims(%m) : tensor<?xi1>
  %y = gml.slice %x dim 0 start 0 end 0 step 1 dyn_end %n : tensor<?xf32> to tensor<?xf32>
  func.return %o, %y : tensor<?xi1>, tensor<?xf32>
}
""",
        [[np.zeros(k, dtype=bool), randn(7).numpy()] for k in (0, 3, 7)],
    ),
}
