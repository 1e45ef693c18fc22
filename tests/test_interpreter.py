"""The reference interpreter against torch's functional ops on small random inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from xdsl.context import Context
from xdsl.dialects import arith
from xdsl.dialects.arith import Arith
from xdsl.dialects.builtin import Builtin, ModuleOp
from xdsl.dialects.func import Func
from xdsl.irdl import IRDLOperation
from xdsl.parser import Parser

from gimlet.dialects import gml
from gimlet.dialects.gml import GML
from gimlet.interpreter import (
    InterpreterError,
    dtype_for,
    element_type_for,
    evaluate_op,
    run,
)

Array = np.ndarray[Any, Any]

_ELT = {
    np.dtype(np.float32): "f32",
    np.dtype(np.float64): "f64",
    np.dtype(np.float16): "f16",
    np.dtype(ml_dtypes.bfloat16): "bf16",
    np.dtype(np.int64): "i64",
    np.dtype(np.int32): "i32",
    np.dtype(np.bool_): "i1",
}
_TORCH_TO_NP = {
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.float16: np.dtype(np.float16),
    torch.bfloat16: np.dtype(ml_dtypes.bfloat16),
    torch.int64: np.dtype(np.int64),
    torch.int32: np.dtype(np.int32),
    torch.bool: np.dtype(np.bool_),
}


def _ctx() -> Context:
    ctx = Context()
    for dialect in (Builtin, Func, Arith, GML):
        ctx.load_dialect(dialect)
    return ctx


CTX = _ctx()


def ty(shape: Sequence[int | str], elt: str = "f32") -> str:
    return f"tensor<{''.join(f'{d}x' for d in shape)}{elt}>"


def ty_of(x: Array | torch.Tensor) -> str:
    dtype = _TORCH_TO_NP[x.dtype] if isinstance(x, torch.Tensor) else x.dtype
    return ty(x.shape, _ELT[dtype])


def parse(src: str) -> ModuleOp:
    module = Parser(CTX, src).parse_module()
    module.verify()
    return module


def run1(
    body: str,
    inputs: Sequence[Array],
    result: str,
    weights: Mapping[str, Array] | None = None,
    arg_types: Sequence[str] | None = None,
) -> Array:
    """Run `body` (arguments %a0, %a1, ...; result %r of type `result`)."""
    types = arg_types or [ty_of(x) for x in inputs]
    args = ", ".join(f"%a{i}: {t}" for i, t in enumerate(types))
    src = f"func.func @main({args}) -> {result} {{\n{body}\nfunc.return %r : {result}\n}}"
    (out,) = run(parse(src), inputs, weights or {})
    return out


def check(actual: Array, expected: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert actual.dtype == _TORCH_TO_NP[expected.dtype]
    assert actual.shape == tuple(expected.shape)
    if expected.is_floating_point():
        np.testing.assert_allclose(
            actual.astype(np.float64), expected.double().numpy(), rtol=rtol, atol=atol
        )
    else:
        np.testing.assert_array_equal(actual, expected.numpy())


def op1(name: str, x: Array, expected: torch.Tensor, attrs: str = "") -> None:
    """Check a single-operand op printed as `gml.name %x <attrs> : type(x) [to type(r)]`."""
    op_class = CTX.get_optional_op(f"gml.{name}")
    assert op_class is not None and issubclass(op_class, IRDLOperation)
    to = f" to {ty_of(expected)}" if "`to`" in (op_class.assembly_format or "") else ""
    body = f"%r = gml.{name} %a0 {attrs} : {ty_of(x)}{to}"
    check(run1(body, [x], ty_of(expected)), expected)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def randn(rng: np.random.Generator, *shape: int, dtype: Any = np.float32) -> Array:
    return rng.standard_normal(shape).astype(dtype)


def T(a: Array) -> torch.Tensor:
    """numpy to torch, bfloat16 included (torch cannot read ml_dtypes arrays)."""
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


# ------------------------------------------------------------ elementwise ---

UNARY: list[tuple[str, Callable[[torch.Tensor], torch.Tensor], bool]] = [
    ("neg", torch.neg, False),
    ("exp", torch.exp, False),
    ("log", torch.log, True),
    ("sqrt", torch.sqrt, True),
    ("rsqrt", torch.rsqrt, True),
    ("abs", torch.abs, False),
    ("tanh", torch.tanh, False),
    ("sigmoid", torch.sigmoid, False),
    ("relu", torch.relu, False),
    ("sin", torch.sin, False),
    ("cos", torch.cos, False),
    ("erf", torch.erf, False),
    ("reciprocal", torch.reciprocal, True),
    ("silu", F.silu, False),
]


@pytest.mark.parametrize(("name", "fn", "positive"), UNARY, ids=[u[0] for u in UNARY])
def test_unary(
    rng: np.random.Generator,
    name: str,
    fn: Callable[[torch.Tensor], torch.Tensor],
    positive: bool,
) -> None:
    x = randn(rng, 3, 17) * 3
    if positive:
        x = np.abs(x) + 0.1
    op1(name, x, fn(T(x)))


def test_not() -> None:
    x = np.array([[True, False], [False, False]])
    op1("not", x, torch.logical_not(T(x)))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(rng: np.random.Generator, approximate: str) -> None:
    x = randn(rng, 4, 33) * 4
    op1("gelu", x, F.gelu(T(x), approximate=approximate), f'approximate "{approximate}"')


def test_erf_extremes() -> None:
    x = np.array([0.0, -1e-8, 2.4999, 2.5, -3.7, 6.0, 30.0, -np.inf, np.nan], np.float64)
    op1("erf", x, torch.erf(T(x)))


@pytest.mark.parametrize(
    ("attrs", "lo", "hi"),
    [
        ("min -5.000000e-01", -0.5, None),
        ("max 1.0", None, 1.0),
        ("min -1.0 max 5.000000e-01", -1.0, 0.5),
    ],
)
def test_clamp(rng: np.random.Generator, attrs: str, lo: float | None, hi: float | None) -> None:
    x = randn(rng, 5, 6)
    op1("clamp", x, torch.clamp(T(x), min=lo, max=hi), attrs)


def binary(name: str, a: Array, b: Array, expected: torch.Tensor, **tol: float) -> None:
    body = f"%r = gml.{name} %a0, %a1 : ({ty_of(a)}, {ty_of(b)}) -> {ty_of(expected)}"
    check(run1(body, [a, b], ty_of(expected)), expected, **tol)


BINARY: list[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = [
    ("add", torch.add),
    ("sub", torch.sub),
    ("mul", torch.mul),
    ("div", torch.div),
    ("pow", torch.pow),
    ("maximum", torch.maximum),
    ("minimum", torch.minimum),
    ("eq", torch.eq),
    ("ne", torch.ne),
    ("lt", torch.lt),
    ("le", torch.le),
    ("gt", torch.gt),
    ("ge", torch.ge),
]


@pytest.mark.parametrize(("name", "fn"), BINARY, ids=[b[0] for b in BINARY])
def test_binary_broadcast(
    rng: np.random.Generator,
    name: str,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    # small integers in float so the comparisons see ties
    a = np.round(randn(rng, 3, 1, 4) * 2)
    b = np.round(randn(rng, 5, 4) * 2)
    if name == "pow":
        a = np.abs(a) + 0.5
    binary(name, a, b, fn(T(a), T(b)))


def test_int_div_floors(rng: np.random.Generator) -> None:
    a = rng.integers(-20, 20, (4, 5))
    b = rng.choice([-3, -2, 2, 7], (5,))
    binary("div", a, b, torch.div(T(a), T(b), rounding_mode="floor"))


@pytest.mark.parametrize(("name", "fn"), [("and", torch.bitwise_and), ("or", torch.bitwise_or)])
def test_and_or(
    rng: np.random.Generator, name: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> None:
    p, q = rng.random((2, 6)) < 0.5
    binary(name, p, q, torch.logical_and(T(p), T(q)) if name == "and" else T(p) | T(q))
    i, j = rng.integers(0, 64, (2, 6))
    binary(name, i, j, fn(T(i), T(j)))


def test_where(rng: np.random.Generator) -> None:
    cond = rng.random((3, 1)) < 0.5
    a, b = randn(rng, 3, 4), randn(rng, 4)
    body = f"%r = gml.where %a0, %a1, %a2 : ({ty_of(cond)}, {ty_of(a)}, {ty_of(b)}) -> {ty([3, 4])}"
    check(run1(body, [cond, a, b], ty([3, 4])), torch.where(T(cond), T(a), T(b)))


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (np.float32, torch.float16),
        (np.float32, torch.bfloat16),
        (np.int64, torch.float32),
        (np.float32, torch.int64),
        (np.float32, torch.bool),
    ],
)
def test_cast(rng: np.random.Generator, src: Any, dst: torch.dtype) -> None:
    x = (randn(rng, 4, 5, dtype=np.float64) * 300).astype(src)
    x.flat[0] = 0
    expected = T(x).to(dst)
    body = f"%r = gml.cast %a0 : {ty_of(x)} to {ty_of(expected)}"
    check(run1(body, [x], ty_of(expected)), expected, rtol=0, atol=0)


def test_cast_f64_to_f16_rounds_through_f32() -> None:
    # halfway between f16 values once rounded to f32: torch rounds twice, to even
    x = np.array([1 + 2**-11 + 2**-40, -(1 + 3 * 2**-11 - 2**-40)])
    expected = T(x).to(torch.float16)
    body = f"%r = gml.cast %a0 : {ty_of(x)} to {ty_of(expected)}"
    check(run1(body, [x], ty_of(expected)), expected, rtol=0, atol=0)


# ------------------------------------------------------------- sources ---


def test_param_constant_full_arange(rng: np.random.Generator) -> None:
    w = randn(rng, 2, 3)
    body = f"""
    %w = gml.param "w" : {ty([2, 3])}
    %c = gml.constant dense<[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]> : {ty([2, 3])}
    %s = gml.constant dense<0.5> : {ty([2, 3])}
    %a = gml.arange 1.0 step 2.0 : {ty([3], "i64")}
    %af = gml.cast %a : {ty([3], "i64")} to {ty([3])}
    %x = gml.add %w, %c : ({ty([2, 3])}, {ty([2, 3])}) -> {ty([2, 3])}
    %y = gml.mul %x, %s : ({ty([2, 3])}, {ty([2, 3])}) -> {ty([2, 3])}
    %r = gml.add %y, %af : ({ty([2, 3])}, {ty([3])}) -> {ty([2, 3])}"""
    expected = (T(w) + torch.tensor([[1.0, 2, 3], [4, 5, 6]])) * 0.5 + torch.arange(1, 7, 2)
    check(run1(body, [], ty([2, 3]), weights={"w": w}), expected)


def test_dynamic_full_and_arange() -> None:
    x = np.zeros((3, 2), np.float32)
    body = f"""
    %d = gml.dim %a0[0] : {ty(["?", 2])}
    %f = gml.full -2.0 dims(%d) : {ty(["?", 4], "i32")}
    %n = gml.arange 0.0 step 1.0 dims(%d) : {ty(["?"], "i32")}
    %c = gml.reshape %n dims(%d) : {ty(["?"], "i32")} to {ty(["?", 1], "i32")}
    %r = gml.add %f, %c : ({ty(["?", 4], "i32")}, {ty(["?", 1], "i32")}) -> {ty(["?", 4], "i32")}"""
    out = run1(body, [x], ty(["?", 4], "i32"), arg_types=[ty(["?", 2])])
    check(
        out, torch.full((3, 4), -2, dtype=torch.int32) + torch.arange(3, dtype=torch.int32)[:, None]
    )


def test_arith_on_index(rng: np.random.Generator) -> None:
    x = randn(rng, 6, 4)
    t_in, t_out = ty(["?", 4]), ty([2, "?", 2])
    body = f"""
    %d = gml.dim %a0[0] : {t_in}
    %c2 = arith.constant 2 : index
    %c3 = arith.constant 3 : index
    %c7 = arith.constant 7 : index
    %h = arith.floordivsi %d, %c2 : index
    %q = arith.divsi %c7, %c3 : index
    %m = arith.muli %h, %q : index
    %s = arith.subi %m, %c2 : index
    %n = arith.addi %s, %c2 : index
    %r = gml.reshape %a0 dims(%n) : {t_in} to {t_out}"""
    check(run1(body, [x], t_out, arg_types=[t_in]), T(x).reshape(2, 6, 2))


# ------------------------------------------------------------ shape ops ---


def test_reshape_dynamic(rng: np.random.Generator) -> None:
    x = randn(rng, 3, 16)
    t_in, t_out = ty(["?", 16]), ty(["?", 4, 4])
    body = f"""
    %d = gml.dim %a0[0] : {t_in}
    %r = gml.reshape %a0 dims(%d) : {t_in} to {t_out}"""
    check(run1(body, [x], t_out, arg_types=[t_in]), T(x).reshape(3, 4, 4))


def test_expand_permute(rng: np.random.Generator) -> None:
    x = randn(rng, 3, 1)
    body = f"""
    %e = gml.expand %a0 : {ty([3, 1])} to {ty([2, 3, 4])}
    %r = gml.permute %e [2, 0, 1] : {ty([2, 3, 4])} to {ty([4, 2, 3])}"""
    check(run1(body, [x], ty([4, 2, 3])), T(x).expand(2, 3, 4).permute(2, 0, 1))


def test_slice_static(rng: np.random.Generator) -> None:
    x = randn(rng, 4, 9)
    op1("slice", x, T(x)[:, 1:8:3], "dim 1 start 1 end 8 step 3")
    op1("slice", x, T(x)[-3:], "dim 0 start -3 end 9223372036854775807 step 1")


def test_slice_dynamic_end(rng: np.random.Generator) -> None:
    x = randn(rng, 5, 6)
    body = f"""
    %d = gml.dim %a0[1] : {ty([5, 6])}
    %c2 = arith.constant 2 : index
    %e = arith.subi %d, %c2 : index
    %r = gml.slice %a0 dim 1 start 1 end 0 step 1 dyn_end %e : {ty([5, 6])} to {ty([5, "?"])}"""
    check(run1(body, [x], ty([5, "?"])), T(x)[:, 1:4])


def test_concat(rng: np.random.Generator) -> None:
    a, b = randn(rng, 2, 3), randn(rng, 2, 5)
    body = f"%r = gml.concat %a0, %a1 dim -1 : ({ty_of(a)}, {ty_of(b)}) -> {ty([2, 8])}"
    check(run1(body, [a, b], ty([2, 8])), torch.cat([T(a), T(b)], dim=-1))


# ------------------------------------------------------------- indexing ---


def test_embedding(rng: np.random.Generator) -> None:
    w, idx = randn(rng, 10, 4), rng.integers(0, 10, (2, 3))
    body = f"""
    %w = gml.param "emb" : {ty_of(w)}
    %r = gml.embedding %w, %a0 : ({ty_of(w)}, {ty_of(idx)}) -> {ty([2, 3, 4])}"""
    check(run1(body, [idx], ty([2, 3, 4]), weights={"emb": w}), F.embedding(T(idx), T(w)))


def test_gather(rng: np.random.Generator) -> None:
    x, idx = randn(rng, 4, 5), rng.integers(0, 5, (3, 7))
    body = f"%r = gml.gather %a0, %a1 dim 1 : ({ty_of(x)}, {ty_of(idx)}) -> {ty([3, 7])}"
    check(run1(body, [x, idx], ty([3, 7])), torch.gather(T(x), 1, T(idx)))


def test_index_one_tensor(rng: np.random.Generator) -> None:
    x, i = randn(rng, 3, 5, 2), rng.integers(-5, 5, (2, 4))
    expected = T(x)[:, T(i)]
    body = f"%r = gml.index %a0[%a1] dims [1] : ({ty_of(x)}, {ty_of(i)}) -> {ty_of(expected)}"
    check(run1(body, [x, i], ty_of(expected)), expected)


def test_index_non_adjacent(rng: np.random.Generator) -> None:
    x, i, j = randn(rng, 3, 5, 4), rng.integers(0, 3, (2, 1)), rng.integers(0, 4, (6,))
    expected = T(x)[T(i), :, T(j)]
    body = (
        f"%r = gml.index %a0[%a1, %a2] dims [0, 2] : "
        f"({ty_of(x)}, {ty_of(i)}, {ty_of(j)}) -> {ty_of(expected)}"
    )
    check(run1(body, [x, i, j], ty_of(expected)), expected)


def test_cumsum(rng: np.random.Generator) -> None:
    x = randn(rng, 3, 6)
    op1("cumsum", x, torch.cumsum(T(x), 1), "dim 1")
    i = rng.integers(-9, 9, (4, 3)).astype(np.int32)
    op1("cumsum", i, torch.cumsum(T(i), 0), "dim 0")
    b = rng.random((5,)) < 0.5
    op1("cumsum", b, torch.cumsum(T(b), -1), "dim -1")


# ----------------------------------------------------------- reductions ---


@pytest.mark.parametrize("name", ["sum", "mean", "amax", "amin"])
@pytest.mark.parametrize(("dims", "keepdim"), [([1], False), ([0, 2], True), ([], False)])
def test_reduce(rng: np.random.Generator, name: str, dims: list[int], keepdim: bool) -> None:
    x = randn(rng, 3, 4, 5)
    expected = getattr(torch, name)(T(x), dim=dims or (0, 1, 2), keepdim=keepdim)
    op1(name, x, expected, f"{dims}{' keepdim true' if keepdim else ''}")


def test_any_and_int_sum(rng: np.random.Generator) -> None:
    b = rng.random((3, 4)) < 0.2
    op1("any", b, torch.any(T(b), dim=1, keepdim=True), "[1] keepdim true")
    op1("sum", b, torch.sum(T(b)), "[]")  # bool sums to int64, 0-d


# ----------------------------------------------------------------- nn ---


@pytest.mark.parametrize(
    ("a_shape", "b_shape"), [((3, 4), (4, 6)), ((2, 1, 3, 4), (5, 4, 6))], ids=["2d", "batched"]
)
def test_matmul(
    rng: np.random.Generator, a_shape: tuple[int, ...], b_shape: tuple[int, ...]
) -> None:
    a, b = randn(rng, *a_shape), randn(rng, *b_shape)
    binary("matmul", a, b, torch.matmul(T(a), T(b)))


@pytest.mark.parametrize("dim", [-1, 0])
def test_softmax(rng: np.random.Generator, dim: int) -> None:
    x = randn(rng, 4, 7) * 5
    op1("softmax", x, torch.softmax(T(x), dim), f"dim {dim}")
    op1("log_softmax", x, torch.log_softmax(T(x), dim), f"dim {dim}")


def layer_norm(x: Array, w: Array | None, b: Array | None, ndim: int, **tol: float) -> None:
    shape = x.shape[x.ndim - ndim :]
    tw, tb = (None if a is None else T(a) for a in (w, b))
    expected = F.layer_norm(T(x), shape, tw, tb, eps=1e-5)
    affine = {k: a for k, a in (("weight", w), ("bias", b)) if a is not None}
    operands = " ".join(f"{k} %a{i}" for i, k in enumerate(affine, 1))
    types = " ".join(f"{k} {ty_of(a)}" for k, a in affine.items())
    body = f"%r = gml.layer_norm %a0 {operands} ndim {ndim} eps 1.0e-05 : {ty_of(x)} {types}"
    check(run1(f"{body} -> {ty_of(x)}", [x, *affine.values()], ty_of(x)), expected, **tol)


def test_layer_norm(rng: np.random.Generator) -> None:
    x = randn(rng, 2, 3, 8) * 2 + 1
    layer_norm(x, randn(rng, 8), randn(rng, 8), 1)
    layer_norm(x, randn(rng, 3, 8), None, 2)
    layer_norm(x, None, None, 2)


def sdpa(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> None:
    tq, tk, tv = (T(a) for a in (q, k, v))
    expected = F.scaled_dot_product_attention(
        tq,
        tk,
        tv,
        None if mask is None else T(mask),
        is_causal=causal,
        scale=scale,
        enable_gqa=q.shape[-3] != k.shape[-3],
    )
    operands = [q, k, v, *([] if mask is None else [mask])]
    attrs = ("mask %a3 " if mask is not None else "") + ("causal true " if causal else "")
    attrs += f"scale {scale!r} " if scale is not None else ""
    types = ", ".join(ty_of(a) for a in operands)
    body = f"%r = gml.sdpa %a0, %a1, %a2 {attrs}: ({types}) -> {ty_of(expected)}"
    check(run1(body, operands, ty_of(expected)), expected)


def test_sdpa(rng: np.random.Generator) -> None:
    q, k, v = randn(rng, 2, 3, 5, 8), randn(rng, 2, 3, 6, 8), randn(rng, 2, 3, 6, 4)
    sdpa(q, k, v)
    sdpa(q, k, v, scale=0.25)
    sdpa(q, k, v, mask=randn(rng, 5, 6))
    bool_mask = rng.random((2, 1, 5, 6)) < 0.7
    bool_mask[..., 0] = True
    sdpa(q, k, v, mask=bool_mask)
    sq = randn(rng, 2, 3, 6, 8)
    sdpa(sq, k, v, causal=True)


def test_sdpa_gqa_and_fully_masked(rng: np.random.Generator) -> None:
    q, k, v = randn(rng, 1, 4, 5, 8), randn(rng, 1, 2, 5, 8), randn(rng, 1, 2, 5, 8)
    sdpa(q, k, v, causal=True)
    mask = np.ones((5, 5), dtype=bool)
    mask[2] = False  # torch 2.13 returns zeros for a row that attends to nothing
    sdpa(q, k, v, mask=mask)


def conv(
    x: Array,
    w: Array,
    b: Array | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> None:
    fn = F.conv1d if x.ndim == 3 else F.conv2d
    expected = fn(T(x), T(w), None if b is None else T(b), stride, padding, dilation, groups)
    operands = [x, w, *([] if b is None else [b])]
    types = ", ".join(ty_of(a) for a in operands)
    body = (
        f"%r = gml.conv %a0, %a1 {'bias %a2 ' if b is not None else ''}stride {stride} "
        f"padding {padding} dilation {dilation} groups {groups} : ({types}) -> {ty_of(expected)}"
    )
    check(run1(body, operands, ty_of(expected)), expected)


def test_conv2d(rng: np.random.Generator) -> None:
    x = randn(rng, 2, 4, 9, 8)
    conv(x, randn(rng, 6, 4, 3, 3), randn(rng, 6), [2, 2], [1, 1], [1, 1], 1)
    conv(x, randn(rng, 6, 2, 3, 2), None, [1, 2], [1, 0], [2, 1], 2)
    conv(x, randn(rng, 8, 1, 3, 3), randn(rng, 8), [1, 1], [1, 1], [2, 2], 4)  # depthwise


def test_conv1d(rng: np.random.Generator) -> None:
    x = randn(rng, 2, 4, 11)
    conv(x, randn(rng, 6, 2, 3), randn(rng, 6), [2], [1], [2], 2)
    conv(x, randn(rng, 5, 4, 1), None, [1], [0], [1], 1)


def test_batch_norm(rng: np.random.Generator) -> None:
    x, w, b, m = randn(rng, 2, 3, 4, 5), randn(rng, 3), randn(rng, 3), randn(rng, 3)
    var = np.abs(randn(rng, 3)) + 0.5
    expected = F.batch_norm(T(x), T(m), T(var), T(w), T(b), training=False, eps=1e-3)
    types = ", ".join([ty_of(x)] + [ty([3])] * 4)
    body = f"%r = gml.batch_norm %a0, %a1, %a2, %a3, %a4 eps 1.0e-03 : ({types}) -> {ty_of(x)}"
    check(run1(body, [x, w, b, m, var], ty_of(x)), expected)


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool2d(rng: np.random.Generator, ceil_mode: bool, kind: str) -> None:
    x = randn(rng, 2, 3, 8, 7)
    for kernel, stride, padding in [([3, 3], [2, 2], [1, 1]), ([2, 3], [3, 2], [0, 1])]:
        if kind == "max":
            expected = F.max_pool2d(T(x), kernel, stride, padding, ceil_mode=ceil_mode)
        else:
            expected = F.avg_pool2d(T(x), kernel, stride, padding, ceil_mode=ceil_mode)
        attrs = (
            f"kernel {kernel} stride {stride} padding {padding} ceil_mode {str(ceil_mode).lower()}"
        )
        op1(f"{kind}_pool2d", x, expected, attrs)


@pytest.mark.parametrize(("size", "out"), [(7, 1), (5, 3), (10, 4)])
def test_adaptive_avg_pool2d(rng: np.random.Generator, size: int, out: int) -> None:
    x = randn(rng, 2, 3, size, size)
    op1("adaptive_avg_pool2d", x, F.adaptive_avg_pool2d(T(x), out))


# ------------------------------------------------------------- structure ---


def test_fusion(rng: np.random.Generator) -> None:
    x, y = randn(rng, 3, 4), randn(rng, 4)
    t = ty([3, 4])
    module = parse(f"""
    func.func @main(%x: {t}, %y: {ty([4])}) -> ({t}, {t}) {{
      %s = gml.sigmoid %x : {t}
      %a, %b = gml.fusion : {t}, {t} {{
        %p = gml.add %s, %y : ({t}, {ty([4])}) -> {t}
        %q = gml.exp %p : {t}
        gml.yield %q, %p : {t}, {t}
      }}
      %r = gml.mul %a, %s : ({t}, {t}) -> {t}
      func.return %r, %b : {t}, {t}
    }}""")
    r, b = run(module, [x, y], {})
    p = torch.sigmoid(T(x)) + T(y)
    check(r, torch.exp(p) * torch.sigmoid(T(x)))
    check(b, p)


# ------------------------------------------------------- low precision ---

LOW = [
    (torch.float16, {"rtol": 1e-2, "atol": 1e-3}),
    (torch.bfloat16, {"rtol": 2e-2, "atol": 1e-2}),
]


@pytest.mark.parametrize(("dtype", "tol"), LOW, ids=["f16", "bf16"])
def test_low_precision(rng: np.random.Generator, dtype: torch.dtype, tol: dict[str, float]) -> None:
    np_dtype = _TORCH_TO_NP[dtype]
    a, b = randn(rng, 2, 8, 32).astype(np_dtype), randn(rng, 32, 16).astype(np_dtype)
    binary("matmul", a, b, torch.matmul(T(a), T(b)), **tol)
    x = (randn(rng, 4, 64) * 3 + 1).astype(np_dtype)
    layer_norm(x, randn(rng, 64).astype(np_dtype), randn(rng, 64).astype(np_dtype), 1, **tol)


# ---------------------------------------------------------- public helpers ---


def test_dtype_round_trip() -> None:
    for dtype in [*_ELT, np.dtype(np.uint8), np.dtype(np.int8)]:
        assert dtype_for(element_type_for(dtype)) == dtype


def test_evaluate_op() -> None:
    module = parse(f"""
    func.func @main(%x: {ty([2, 3])}, %y: {ty([3])}) -> {ty([2, 3])} {{
      %r = gml.add %x, %y : ({ty([2, 3])}, {ty([3])}) -> {ty([2, 3])}
      func.return %r : {ty([2, 3])}
    }}""")
    add = next(op for op in module.walk() if isinstance(op, gml.AddOp))
    x, y = np.ones((2, 3), np.float32), np.arange(3, dtype=np.float32)
    (out,) = evaluate_op(add, [x, y])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, x + y)


def test_evaluate_op_zero_d_and_index() -> None:
    module = parse(f"""
    func.func @main(%x: {ty([4, 5])}) -> {ty([])} {{
      %d = gml.dim %x[1] : {ty([4, 5])}
      %c = arith.constant 3 : index
      %n = arith.muli %d, %c : index
      %r = gml.sum %x [] : {ty([4, 5])} to {ty([])}
      func.return %r : {ty([])}
    }}""")
    mul, total = (op for op in module.walk() if isinstance(op, arith.MuliOp | gml.SumOp))
    assert evaluate_op(mul, [5, 3]) == [15]
    (out,) = evaluate_op(total, [np.ones((4, 5), np.float32)])
    assert isinstance(out, np.ndarray) and out.shape == () and out.dtype == np.float32
    assert out == 20


# -------------------------------------------------------------- errors ---


def test_missing_weight() -> None:
    with pytest.raises(InterpreterError) as err:
        run1(f'%r = gml.param "w" : {ty([2])}', [], ty([2]))
    assert str(err.value) == 'missing weight "w"'


def test_wrong_input_shape() -> None:
    x = np.zeros((2, 15), np.float32)
    with pytest.raises(InterpreterError) as err:
        run1(f"%r = gml.relu %a0 : {ty(['?', 16])}", [x], ty(["?", 16]), arg_types=[ty(["?", 16])])
    assert (
        str(err.value) == "input 0: expected tensor<?x16xf32>, got float32 array of shape (2, 15)"
    )


def test_wrong_input_dtype() -> None:
    x = np.zeros((2, 16), np.float64)
    with pytest.raises(InterpreterError) as err:
        run1(f"%r = gml.relu %a0 : {ty(['?', 16])}", [x], ty(["?", 16]), arg_types=[ty(["?", 16])])
    assert (
        str(err.value) == "input 0: expected tensor<?x16xf32>, got float64 array of shape (2, 16)"
    )
