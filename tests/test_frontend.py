"""Importer, round trip and interpreter-vs-torch on every model family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import Imported, imported
from gimlet.dtypes import torch_to_numpy
from gimlet.errors import UnsupportedOpError
from gimlet.frontend import import_model
from gimlet.interpreter import run
from gimlet.ir import parse, print_ir, verify
from gimlet.pass_manager import DEFAULT_PIPELINE, run_pipeline

F32 = {"rtol": 1e-4, "atol": 1e-5}


def _run(imp: Imported, module=None, inputs=None) -> list[np.ndarray]:
    args = [torch_to_numpy(t) for t in (inputs or imp.inputs)]
    return run(module or imp.module, args, imp.weights)


def test_imports_and_verifies(family: Imported) -> None:
    verify(family.module)
    assert sum(1 for _ in family.module.walk()) > 5


def test_round_trip(family: Imported) -> None:
    text = print_ir(family.module)
    again = parse(text)
    assert again.is_structurally_equivalent(family.module)
    assert print_ir(again) == text


def test_weights_are_not_inlined(family: Imported) -> None:
    from gimlet.dialects import gml

    text = print_ir(family.module)
    for op in family.module.walk():
        if isinstance(op, gml.ConstantOp):
            assert op.result.type.element_count() <= 64
    for name in family.weights:
        assert f'gml.param "{name}"' in text


def test_interpreter_matches_torch(family: Imported) -> None:
    outs = _run(family)
    assert len(outs) == len(family.expected)
    for got, want in zip(outs, family.expected, strict=True):
        np.testing.assert_allclose(got, want.detach().numpy(), **F32)


def test_default_pipeline_preserves_values(family: Imported) -> None:
    module = parse(print_ir(family.module))
    run_pipeline(module, DEFAULT_PIPELINE)
    for got, want in zip(_run(family, module), family.expected, strict=True):
        np.testing.assert_allclose(got, want.detach().numpy(), **F32)
    assert parse(print_ir(module)).is_structurally_equivalent(module)


def test_dynamic_dims_stay_symbolic() -> None:
    gpt = imported("gpt")
    text = print_ir(gpt.module)
    assert "tensor<2x?xi64>" in text and "gml.dim %ids[1]" in text
    ids = torch.randint(0, 97, (2, 20))  # another sequence length than exported with
    (got,) = _run(gpt, inputs=(ids,))
    np.testing.assert_allclose(got, gpt.model(ids).detach().numpy(), **F32)


def test_locations_point_at_the_model_source() -> None:
    text = print_ir(imported("mlp").module)
    assert 'loc("fc1"("tests/models.py":' in text or 'loc("fc1"(' in text
    assert "models.py" in text


@pytest.mark.parametrize(
    ("dtype", "tol"),
    [(torch.float16, {"rtol": 1e-2, "atol": 1e-3}), (torch.bfloat16, {"rtol": 2e-2, "atol": 1e-2})],
)
def test_low_precision_dtypes_survive(dtype: torch.dtype, tol: dict) -> None:
    from models import MLP

    torch.manual_seed(0)
    model = MLP().to(dtype)
    x = torch.randn(3, 16, dtype=dtype)
    module, weights = import_model(model, (x,))
    elt = {torch.float16: "f16", torch.bfloat16: "bf16"}[dtype]
    assert f"tensor<3x16x{elt}>" in print_ir(module)
    (got,) = run(module, [torch_to_numpy(x)], weights)
    want = model(x).float().detach().numpy()
    np.testing.assert_allclose(got.astype(np.float32), want, **tol)


def test_integer_and_bool_dtypes_survive() -> None:
    class M(torch.nn.Module):
        def forward(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            return torch.where(keep, ids * 2, ids.cumsum(-1))

    ids, keep = torch.arange(6).view(2, 3), torch.tensor([[True, False, True]] * 2)
    module, weights = import_model(M(), (ids, keep))
    text = print_ir(module)
    assert "tensor<2x3xi64>" in text and "tensor<2x3xi1>" in text
    (got,) = run(module, [ids.numpy(), keep.numpy()], weights)
    np.testing.assert_array_equal(got, M()(ids, keep).numpy())


def test_unsupported_op_names_op_line_and_supported_list() -> None:
    class M(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.fft(x).real  # line below the def: the error must name it

    with pytest.raises(UnsupportedOpError) as err:
        import_model(M(), (torch.randn(8),))
    msg = str(err.value)
    line = M.forward.__code__.co_firstlineno + 1
    assert msg.startswith(f"tests/test_frontend.py:{line}: unsupported op aten.")
    assert "fft" in msg.splitlines()[0]
    assert "supported ops: " in msg and "aten.addmm.default" in msg


def test_pt2_files_import_like_modules(tmp_path) -> None:
    from models import mlp

    model, inputs, dyn = mlp()
    ep = torch.export.export(model.eval(), inputs, dynamic_shapes=dyn)
    torch.export.save(ep, tmp_path / "mlp.pt2")
    module, weights = import_model(str(tmp_path / "mlp.pt2"))
    (got,) = run(module, [inputs[0].numpy()], weights)
    np.testing.assert_allclose(got, model(*inputs).detach().numpy(), **F32)


def test_a_pass_that_breaks_the_ir_is_named() -> None:
    from dataclasses import dataclass

    from xdsl.passes import ModulePass

    from gimlet.dialects import gml
    from gimlet.errors import VerificationError

    @dataclass(frozen=True)
    class Breaker(ModulePass):
        name = "breaker"

        def apply(self, ctx, op) -> None:
            for inner in op.walk():
                if isinstance(inner, gml.PermuteOp):
                    inner.properties["dims"] = gml.ints_attr([0, 0])
                    return

    module = parse(print_ir(imported("mlp").module))
    with pytest.raises(VerificationError) as err:
        run_pipeline(module, [Breaker()])
    assert "gml.permute: [0, 0] is not a permutation of rank 2 after pass 'breaker'" in str(
        err.value
    )
    assert str(err.value).startswith("tests/models.py:")
