"""torch.export Dim bounds in the IR (the importer's `gml.dims`) and TensorRT's
optimization profiles made from them (backends/tensorrt/profile.py, plan.py): each
dynamic input's min/opt/max is the Dim's min, the size exported with and the Dim's max,
carried through the program's arithmetic to every part's inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from gimlet.backends.tensorrt.profile import DimRange, evaluate, symbol_ranges
from gimlet.frontend import import_model
from gimlet.ir import main_func, parse, print_ir

ROOT = Path(__file__).resolve().parents[1]


class Doubled(torch.nn.Module):
    """Its second op reads a size that is twice the input's (a cat along the dynamic
    dim), so a part input's range is 2*min..2*max, not the Dim's."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(torch.cat([x, x], dim=0)))


def _doubled(dim: Any) -> tuple[Any, dict[str, Any]]:
    torch.manual_seed(0)
    return import_model(Doubled().eval(), (torch.randn(5, 8),), ({0: dim},))


def _symbol(module: Any) -> str:
    (arg,) = main_func(module).arg_attrs.data
    (name,) = arg.data["gml.dims"].data
    return str(name.data)


def test_import_keeps_the_bounds_and_the_example_size() -> None:
    module, _ = _doubled(torch.export.Dim("n", min=3, max=40))
    s = _symbol(module)
    text = print_ir(module, False)
    assert text.startswith(
        f"builtin.module attributes {{gml.dims = {{{s} = {{min = 3 : i64, max = 40 : i64, "
        f'example = 5 : i64}}}}}} {{\n  func.func @main(%x: tensor<?x8xf32> {{gml.name = "x", '
        f'gml.dims = ["{s}"]}}) -> tensor<?x8xf32> {{'
    ), text
    assert print_ir(parse(text), False) == text  # printed and parsed back unchanged
    assert symbol_ranges(parse(text)) == {s: DimRange(3, 5, 40)}


def test_an_unbounded_dim_has_no_max_and_gets_the_default() -> None:
    module, _ = _doubled(torch.export.Dim("n"))
    s = _symbol(module)
    dims = module.attributes["gml.dims"].data[s].data  # type: ignore[attr-defined]
    assert list(dims) == ["min", "example"]  # torch.export's lower bound, no upper
    (r,) = symbol_ranges(module).values()
    assert (r.min, r.opt, r.max, r.bounded) == (dims["min"].value.data, 5, 2048, False)
    assert r.to_json()["max_from"] == "default (torch.export gave no upper bound)"


def test_static_models_carry_no_bounds() -> None:
    module, _ = import_model(Doubled().eval(), (torch.randn(5, 8),))
    assert "gml.dims" not in module.attributes
    assert "gml.dims" not in main_func(module).arg_attrs.data[0].data


def test_shapes_follow_the_sizes_through_the_program() -> None:
    module, _ = _doubled(torch.export.Dim("n", min=3, max=40))
    fn = main_func(module)
    env = evaluate(fn, {_symbol(module): 7})
    assert env[fn.args[0]] == (7, 8)
    ret = fn.body.block.last_op
    assert ret is not None and env[ret.operands[0]] == (14, 8)


HAND_WRITTEN = """builtin.module attributes {gml.dims = {n = {min = 2 : i64, max = 9 : i64}}} {
  func.func @main(%x: tensor<?x4xf32> {gml.name = "x", gml.dims = ["n"]}) -> tensor<?x4xf32> {
    %d = gml.dim %x[0] : tensor<?x4xf32>
    %c3 = arith.constant 3 : index
    %m = arith.muli %d, %c3 : index
    %f = gml.full 1.0 dims(%m) : tensor<?x4xf32>
    %e = gml.exp %f : tensor<?x4xf32>
    func.return %e : tensor<?x4xf32>
  }
}
"""


def test_a_size_made_by_arithmetic_is_followed() -> None:
    module = parse(HAND_WRITTEN)
    fn = main_func(module)
    ranges = symbol_ranges(module)
    assert ranges == {"n": DimRange(2, 9, 9)}  # no example: the default opt 64, clamped
    from gimlet.backends.tensorrt.profile import profiles

    e = list(fn.body.block.ops)[-2]
    (got,) = profiles(fn, ranges, [e.results[0]])
    assert got == ((6, 4), (27, 4), (27, 4))


@pytest.fixture(scope="module")
def doubled_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Doubled with the cat on cpu0 and fc on gpu0, compiled for TensorRT."""
    from gimlet.cli import main as gimletc

    d = tmp_path_factory.mktemp("dims")
    (d / "doubled.py").write_text(
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_dim_bounds import Doubled\n\n"
        "def model():\n"
        "    torch.manual_seed(0)\n"
        "    n = torch.export.Dim('n', min=3, max=40)\n"
        "    return Doubled(), (torch.randn(5, 8),), ({0: n},)\n"
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("GIMLET_TENSORRT_CUDA", "0")
    try:
        argv = ["compile", f"{d}/doubled.py:model", "-o", str(d / "b"), "--target", "h100+cpu"]
        argv += ["--pin", "gml.concat=cpu0,fc=gpu0", "--backend", "nvidia=tensorrt"]
        assert gimletc(argv) == 0
    finally:
        mp.undo()
    return d / "b"


def test_the_plan_s_profiles_come_from_the_bounds(doubled_bundle: Path) -> None:
    manifest = json.loads((doubled_bundle / "manifest.json").read_text())
    (art,) = [s["artefact"] for s in manifest["segments"] if s["device"] == "gpu0"]
    plan = json.loads((doubled_bundle / art["plan"]).read_text())
    (s,) = plan["dims"]
    assert plan["dims"][s] == {"min": 3, "opt": 5, "max": 40}
    assert plan["defaults"]["inputs"] == []
    tensors = [i for p in plan["parts"] for i in p["inputs"] if not i["carrier"]]
    assert tensors and all(
        (i["min"], i["opt"], i["max"], i["from"]) == ([6, 8], [10, 8], [80, 8], "torch.export")
        for i in tensors
    ), tensors
    sh = (doubled_bundle / art["trtexec"]).read_text()
    assert f"# Dynamic dims from torch.export's bounds: {s} 3..40 (opt 5).\n" in sh
    assert "--minShapes=in0:6x8" in sh and "--optShapes=in0:10x8" in sh
    assert "--maxShapes=in0:80x8" in sh
