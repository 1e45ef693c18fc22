"""The TensorRT backend (backends/tensorrt/): gimlet's own gml -> ONNX lowering, checked
with everything that runs without TensorRT. No machine here has TensorRT (nor `trtexec`),
so every emitted model passes `onnx.checker.check_model(full_check=True)`, shape
inference (the inferred output shapes equal gml's) and TensorRT's ONNX operator matrix
node by node, and runs on onnxruntime's CPU provider against the reference interpreter:
every model family and the per-op cases of tests/tensorrt_cases.py, at rtol 1e-4 /
atol 1e-5 (f32; integer and boolean results exactly). The build script is driven
against a stand-in `tensorrt` module that records the builder calls.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tensorrt_cases import CASES, IR_CASES, dynamic_shapes, module

from conftest import imported
from gimlet.backends.tensorrt.lower import IR_VERSION, OPSET, OnnxPart, lower, verify
from gimlet.backends.tensorrt.ops import lowered_ops
from gimlet.backends.tensorrt.support import (
    GML_DTYPES,
    attribute_limit,
    gml_supported,
    refusals,
)
from gimlet.dtypes import torch_to_numpy
from gimlet.errors import UnsupportedOpError, UserError
from gimlet.interpreter import run
from gimlet.ir import main_func, parse
from gimlet.pass_manager import DEFAULT_PIPELINE, run_pipeline
from models import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(autouse=True)
def _quiet_ort() -> None:
    ort.set_default_logger_severity(3)  # its shape-merge warnings are noise here


def _session(part: OnnxPart) -> ort.InferenceSession:
    return ort.InferenceSession(part.model.SerializeToString(), providers=["CPUExecutionProvider"])


def _compare(got: list[np.ndarray], ref: list[Any], what: str) -> None:
    assert len(got) == len(ref), what
    for k, (g, r) in enumerate(zip(got, ref, strict=True)):
        r = np.asarray(r)
        assert g.dtype == r.dtype and g.shape == r.shape, (
            f"{what} out{k}: {g.dtype}{g.shape} vs {r.dtype}{r.shape}"
        )
        if r.dtype.kind in "iub":
            np.testing.assert_array_equal(g, r, err_msg=f"{what} out{k}")
        else:
            np.testing.assert_allclose(
                g, r, rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=f"{what} out{k}"
            )


def _checked(fn: Any, weights: dict[str, np.ndarray]) -> tuple[OnnxPart, onnx.ModelProto]:
    part = lower(fn, weights)
    inferred = verify(part)  # the checker (full) and shape inference against gml's types
    assert part.model.opset_import[0].version == OPSET >= 17
    assert part.model.ir_version == IR_VERSION
    return part, inferred


# ------------------------------------------------------------------ model families


@pytest.fixture(scope="module")
def families() -> dict[str, tuple[Any, OnnxPart, onnx.ModelProto]]:
    out = {}
    for name in FAMILIES:
        module = imported(name).module.clone()
        run_pipeline(module, DEFAULT_PIPELINE)
        out[name] = (module, *_checked(main_func(module), imported(name).weights))
    return out


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_lowers_to_onnx_tensorrt_takes_and_matches_the_interpreter(
    name: str, families: dict[str, Any]
) -> None:
    module, part, inferred = families[name]
    assert refusals(inferred, part.origin) == []
    imp = imported(name)
    inputs = [torch_to_numpy(x) for x in imp.inputs]
    got = _session(part).run(None, {p.name: x for p, x in zip(part.inputs, inputs, strict=True)})
    _compare(got, run(module, inputs, imp.weights), name)


def test_dynamic_sizes_run_through_one_model(families: dict[str, Any]) -> None:
    module, part, _ = families["gpt"]
    assert part.inputs[0].shape == (2, -1)
    sess = _session(part)
    for seq in (3, 12, 40):
        ids = np.random.default_rng(seq).integers(0, 97, (2, seq))
        _compare(
            sess.run(None, {"in0": ids}), run(module, [ids], imported("gpt").weights), f"seq {seq}"
        )


def test_peepholes_fold_weights_into_fewer_nodes(families: dict[str, Any]) -> None:
    """x @ W^T + b is one Gemm on a folded W^T; a conv's batch norm folds into its weights;
    a linear layer on [B, T, D] is MatMul (+Add) without the flatten/unflatten Reshapes."""
    _, part, _ = families["mlp"]
    assert part.op_types() == ["Gemm", "Gelu", "Gemm"]
    weights = {t.name: t for t in part.model.graph.initializer}
    assert list(weights["fc1.weight.permute"].dims) == [16, 32]
    assert {"fc1.bias", "fc2.weight.permute", "fc2.bias"} <= part.external
    assert "BatchNormalization" not in families["cnn"][1].op_types()
    gpt = families["gpt"][1].op_types()
    # a layer: qkv, fc and out as MatMul, attention's two; the projection after attention
    # flattens [B, T, heads, size] (not a plain flatten): Reshape + Gemm; and the lm head
    assert (gpt.count("MatMul"), gpt.count("Gemm")) == (2 * (3 + 2) + 1, 2)


def test_saved_model_keeps_its_weights_as_external_data(
    families: dict[str, Any], tmp_path: Path
) -> None:
    module, part, _ = families["gpt"]
    onnx_name, data_name = part.save(tmp_path / "seg0.part0.onnx")
    assert (onnx_name, data_name) == ("seg0.part0.onnx", "seg0.part0.data")
    onnx.checker.check_model(str(tmp_path / onnx_name), full_check=True)
    bare = onnx.load(str(tmp_path / onnx_name), load_external_data=False)
    external = {
        t.name for t in bare.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    }
    assert external == part.external and "wte.weight" in external
    assert (tmp_path / onnx_name).stat().st_size < 20_000 < (tmp_path / data_name).stat().st_size
    sess = ort.InferenceSession(str(tmp_path / onnx_name), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(1).integers(0, 97, (2, 7))
    _compare(sess.run(None, {"in0": ids}), run(module, [ids], imported("gpt").weights), "saved")
    size = (tmp_path / data_name).stat().st_size
    part.save(tmp_path / "seg0.part0.onnx")  # again: the data file is replaced, not appended to
    assert (tmp_path / data_name).stat().st_size == size
    loaded = {t.name: t for t in onnx.load(str(tmp_path / onnx_name)).graph.initializer}
    wte = onnx.numpy_helper.to_array(loaded["wte.weight"])
    np.testing.assert_array_equal(wte, imported("gpt").weights["wte.weight"])


# ------------------------------------------------------------------ one op at a time


@pytest.fixture(scope="module")
def cases() -> dict[str, tuple[Any, dict[str, np.ndarray], OnnxPart, onnx.ModelProto]]:
    from gimlet.frontend import import_model

    out = {}
    for name, case in CASES.items():
        ir, weights = import_model(module(case), case.calls[0], dynamic_shapes(case))
        run_pipeline(ir, DEFAULT_PIPELINE)
        out[name] = (ir, weights, *_checked(main_func(ir), weights))
    for name, (text, _) in IR_CASES.items():
        ir = parse(text)
        out[name] = (ir, {}, *_checked(main_func(ir), {}))
    return out


@pytest.mark.filterwarnings("ignore:Degrees of freedom")  # numpy on var of one element
@pytest.mark.parametrize("name", sorted(CASES))
def test_op_case_matches_the_interpreter(name: str, cases: dict[str, Any]) -> None:
    ir, weights, part, inferred = cases[name]
    assert bool(refusals(inferred, part.origin)) == CASES[name].refused_by_tensorrt
    sess = _session(part)
    for call in CASES[name].calls:
        inputs = [torch_to_numpy(x) for x in call]
        got = sess.run(None, {p.name: x for p, x in zip(part.inputs, inputs, strict=True)})
        _compare(got, run(ir, inputs, weights), name)


@pytest.mark.parametrize("name", sorted(IR_CASES))
def test_hand_written_ir_matches_the_interpreter(name: str, cases: dict[str, Any]) -> None:
    ir, _, part, inferred = cases[name]
    assert refusals(inferred, part.origin) == []
    sess = _session(part)
    for call in IR_CASES[name][1]:
        got = sess.run(None, {p.name: x for p, x in zip(part.inputs, call, strict=True)})
        _compare(got, run(ir, call, {}), name)


def test_carriers_are_bool_inputs_and_outputs(cases: dict[str, Any]) -> None:
    part = cases["carriers"][2]
    assert [(p.name, p.dtype, p.shape) for p in part.inputs] == [
        ("in0", "bool", (-1,)),
        ("in1", "float32", (-1,)),
    ]
    assert [(p.name, p.dtype) for p in part.outputs] == [("out0", "bool"), ("out1", "float32")]


def test_size_operations_the_interpreter_lacks() -> None:
    """arith.minsi/maxsi/ceildivsi (the GPU backend's shape code emits them): their size
    makes an arange's length, checked against Python."""
    ir = parse(
        """func.func @main(%x: tensor<?xf32>) -> tensor<?xi64> {
  %n = gml.dim %x[0] : tensor<?xf32>
  %c3 = arith.constant 3 : index
  %c5 = arith.constant 5 : index
  %a = arith.ceildivsi %n, %c3 : index
  %b = arith.minsi %n, %c5 : index
  %c = arith.maxsi %a, %b : index
  %d = arith.addi %a, %c : index
  %r = gml.arange 0.000000e+00 step 1.000000e+00 dims(%d) : tensor<?xi64>
  func.return %r : tensor<?xi64>
}
"""
    )
    part, _ = _checked(main_func(ir), {})
    sess = _session(part)
    for n in (1, 3, 4, 7, 17):
        (got,) = sess.run(None, {"in0": np.zeros(n, np.float32)})
        a = -(-n // 3)
        assert len(got) == a + max(a, min(n, 5)), n


def test_every_lowered_op_has_a_case(families: dict[str, Any], cases: dict[str, Any]) -> None:
    seen = {
        op.name
        for module in [f[0] for f in families.values()] + [c[0] for c in cases.values()]
        for op in module.walk()
    }
    untested = {c.name for c in lowered_ops()} - seen
    assert untested == {"arith.ceildivsi", "arith.maxsi", "arith.minsi"}  # the test above


def test_support_table_agrees_with_the_operator_matrix(
    families: dict[str, Any], cases: dict[str, Any]
) -> None:
    """`GML_DTYPES` (what placement reads) says an op runs on TensorRT exactly when none of
    the ONNX nodes it lowered to is refused by the matrix, over every op of every case."""
    from gimlet.backends.tensorrt.lower import element_types
    from gimlet.backends.tensorrt.support import node_refusal

    assert set(GML_DTYPES) == {c.name for c in lowered_ops() if c.name.startswith("gml.")}
    checked = 0
    for part, inferred in [f[1:] for f in families.values()] + [c[2:] for c in cases.values()]:
        types = element_types(inferred)
        refused: dict[Any, bool] = {}
        for node in inferred.graph.node:
            op = part.origin.get(node.name)
            if op is not None:
                refused[op] = refused.get(op, False) or node_refusal(node, types) is not None
        for op, bad in refused.items():
            expected = op.name.startswith("gml.") and (  # size arithmetic always runs
                not gml_supported(op) or attribute_limit(op) is not None
            )
            assert bad == expected, f"{op.name}: refused {bad}"
            checked += 1
    assert checked > 300


def test_an_op_without_a_lowering_is_named_with_its_line() -> None:
    ir = parse(
        """func.func @main(%x: tensor<4x3xf32>, %m: tensor<4xi1>) -> tensor<?x3xf32> {
  %y = gml.index %x[%m] dims [0] : (tensor<4x3xf32>, tensor<4xi1>) -> tensor<?x3xf32> loc("pick"("model.py":7:0))
  func.return %y : tensor<?x3xf32>
}
"""
    )
    with pytest.raises(UnsupportedOpError) as e:
        lower(main_func(ir), {})
    assert str(e.value) == (
        "cannot lower to ONNX:\ngml.index at pick (model.py:7): boolean mask indexing "
        "(its result size depends on the data)"
    )


def test_tensorrt_refusal_names_the_gml_op_and_line() -> None:
    ir = parse(
        """func.func @main(%x: tensor<4xf64>) -> tensor<4xf64> {
  %y = gml.exp %x : tensor<4xf64> loc("head"("model.py":9:0))
  func.return %y : tensor<4xf64>
}
"""
    )
    part, inferred = _checked(main_func(ir), {})
    assert refusals(inferred, part.origin) == [
        "gml.exp at head (model.py:9): TensorRT 10.1 runs ONNX Exp on BF16, FP16, FP32, not "
        "DOUBLE (onnx-tensorrt docs/operators.md @ 96e7811 (ONNX-TensorRT 10.1 GA))"
    ]


# ------------------------------------------------------------------ build plan and script


def _part(ir: str) -> OnnxPart:
    return _checked(main_func(parse(ir)), {})[0]


def test_plan_sets_precision_and_one_profile_per_dynamic_input() -> None:
    from gimlet.backends.tensorrt.plan import make_plan, trtexec_script

    half = _part(
        """func.func @main(%x: tensor<?x8xf16>, %y: tensor<2x8xbf16>) -> (tensor<?x8xf16>, tensor<2x8xbf16>) {
  %a = gml.exp %x : tensor<?x8xf16>
  %b = gml.exp %y : tensor<2x8xbf16>
  func.return %a, %b : tensor<?x8xf16>, tensor<2x8xbf16>
}
"""
    )
    plan = make_plan(3, [("trt/seg3.part0.onnx", "trt/seg3.part0.data", half)])
    (entry,) = plan["parts"]
    assert entry["precision"] == ["fp16", "bf16"] and entry["tf32"] is False
    x, y = entry["inputs"]
    assert (x["min"], x["opt"], x["max"]) == ([1, 8], [64, 8], [2048, 8])
    assert "min" not in y  # static: no profile entry
    assert x["from"] == "defaults" and plan["defaults"]["inputs"] == ["seg3.part0:in0"]
    assert "without torch.export Dim bounds" in plan["defaults"]["why"] and plan["dims"] == {}
    script = trtexec_script(plan)
    assert script.splitlines()[-1] == (
        "trtexec --onnx=seg3.part0.onnx --saveEngine=seg3.part0.engine --minShapes=in0:1x8 "
        "--optShapes=in0:64x8 --maxShapes=in0:2048x8 --fp16 --bf16 --noTF32 "
        "--timingCacheFile=timing.cache"
    )


class _Recorder:
    """A stand-in for the `tensorrt` module: records what build_engine.py asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        rec = self

        class Obj:
            def __init__(self, name: str):
                self._name = name

            def __getattr__(self, attr: str) -> Any:
                def call(*args: Any, **kwargs: Any) -> Any:
                    rec.calls.append((f"{self._name}.{attr}", *args, *kwargs.values()))
                    if attr == "parse_from_file":
                        return True
                    if attr == "build_serialized_network":
                        return b"ENGINE"
                    if attr == "serialize":
                        return b"TIMINGS"
                    return Obj(attr)

                return call

        self.module = types.SimpleNamespace(
            __version__="10.1.0",
            Logger=lambda level: Obj("logger"),
            Builder=lambda logger: Obj("builder"),
            OnnxParser=lambda network, logger: Obj("parser"),
            BuilderFlag=types.SimpleNamespace(FP16="FP16", BF16="BF16", TF32="TF32"),
            NetworkDefinitionCreationFlag=types.SimpleNamespace(EXPLICIT_BATCH=0),
        )
        self.module.Logger.WARNING = 2  # type: ignore[attr-defined]


def test_build_script_drives_the_tensorrt_builder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gimlet.backends.tensorrt.build_engine import build_part

    fake = _Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    entry = {
        "onnx": "trt/seg0.part0.onnx",
        "precision": ["fp16"],
        "tf32": False,
        "inputs": [
            {"name": "in0", "shape": [2, -1], "min": [2, 1], "opt": [2, 64], "max": [2, 2048]},
            {"name": "in1", "shape": [4]},
        ],
    }
    cache = tmp_path / "timing.cache"
    assert build_part(entry, tmp_path, cache) == b"ENGINE"
    names = [c[0] for c in fake.calls]
    assert ("parser.parse_from_file", str(tmp_path / "trt/seg0.part0.onnx")) in fake.calls
    assert ("create_builder_config.set_flag", "FP16") in fake.calls
    assert ("create_builder_config.clear_flag", "TF32") in fake.calls
    assert (
        "create_optimization_profile.set_shape",
        "in0",
        [2, 1],
        [2, 64],
        [2, 2048],
    ) in fake.calls
    assert [c for c in fake.calls if c[0].endswith("set_shape")][1:] == []  # static in1: none
    assert names.index("create_builder_config.add_optimization_profile") < names.index(
        "builder.build_serialized_network"
    )
    assert cache.read_bytes() == b"TIMINGS"


# ------------------------------------------------------------------ bundles and placement


@pytest.fixture(scope="module")
def trt_bundle() -> Any:
    from gimlet.cli import main as gimletc

    d = Path(tempfile.mkdtemp(prefix="gimlet-trt-"))
    cwd, old = os.getcwd(), os.environ.get("GIMLET_TENSORRT_CUDA")
    os.chdir(ROOT)
    os.environ["GIMLET_TENSORRT_CUDA"] = "0"  # CUDA parts: tests/test_gpu_backend.py
    try:
        argv = ["compile", "examples/gpt.py:model", "-o", str(d / "b"), "--target", "h100+cpu"]
        argv += ["--pin", "h.0=gpu0,h.1=gpu0,ln_f=gpu0", "--backend", "nvidia=tensorrt"]
        assert gimletc(argv) == 0
    finally:
        os.chdir(cwd)
        if old is None:
            del os.environ["GIMLET_TENSORRT_CUDA"]
        else:
            os.environ["GIMLET_TENSORRT_CUDA"] = old
    yield d / "b"
    shutil.rmtree(d, ignore_errors=True)


def test_bundle_carries_models_plan_script_and_trtexec(trt_bundle: Path) -> None:
    manifest = json.loads((trt_bundle / "manifest.json").read_text())
    (seg,) = [s for s in manifest["segments"] if s["device"] == "gpu0"]
    art, n = seg["artefact"], seg["index"]
    assert art["kind"] == "tensorrt" and art["opset"] == 20
    assert art["cuda"] is None and art["cuda_skipped"] == "GIMLET_TENSORRT_CUDA=0"
    files = [p["onnx"] for p in art["parts"]] + [p["data"] for p in art["parts"]]
    files += [art["plan"], art["script"], art["trtexec"]]
    assert all(f in manifest["files"] for f in files)  # hashed, checked before a run
    for p in art["parts"]:
        onnx.checker.check_model(str(trt_bundle / p["onnx"]), full_check=True)
    script = (trt_bundle / "trt" / "build_engine.py").read_text()
    assert script == (ROOT / "backends" / "tensorrt" / "build_engine.py").read_text()
    plan = json.loads((trt_bundle / art["plan"]).read_text())
    assert [p["onnx"] for p in plan["parts"]] == [p["onnx"] for p in art["parts"]]
    sh = (trt_bundle / art["trtexec"]).read_text()
    assert sh.count("trtexec --onnx=") == len(art["parts"]) and os.access(
        trt_bundle / art["trtexec"], os.X_OK
    )
    assert f"seg{n}.part0.onnx" in sh


def test_bundle_runs_without_tensorrt_and_matches_the_interpreter(trt_bundle: Path) -> None:
    """No TensorRT, no GPU, no CUDA parts: the segment runs on the interpreter."""
    from gimlet.runtime.launch import launch

    (x,) = np.load(ROOT / "examples" / "gpt_inputs.npz").values()
    result = launch(str(trt_bundle), [x])
    ref = run(parse((trt_bundle / "model.mlir").read_text()), [x], _weights(trt_bundle))
    np.testing.assert_allclose(result.outputs[0], ref[0], rtol=RTOL, atol=ATOL)


def _weights(bundle: Path) -> dict[str, np.ndarray]:
    from gimlet.artifacts import load_weights

    out: dict[str, np.ndarray] = {}
    for f in (bundle / "weights").iterdir():
        out.update(load_weights(str(f)))
    return out


def _no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> str:
    """This machine as the tests expect it: no `tensorrt` module (even where one is
    installed); the CUDA check is left as it is (the bundle has no CUDA parts)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    return "TensorRT is not installed here (no `tensorrt` module)"


def test_gimletc_run_reports_what_ran_each_segment(
    trt_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    from gimlet.cli import main as gimletc

    missing = _no_tensorrt(monkeypatch)
    argv = ["run", str(trt_bundle), "--inputs", str(ROOT / "examples" / "gpt_inputs.npz")]
    assert gimletc(argv) == 0
    err = capsys.readouterr().err
    assert err.startswith(
        "gimletc: seg0 on cpu0: cpu-cxx\n"
        f"gimletc: seg1 on gpu0: interpreter, not tensorrt: {missing}, and the bundle has no "
        "CUDA parts (GIMLET_TENSORRT_CUDA=0)\n"
        "gimletc: seg2 on cpu0: cpu-cxx\n"
        "gimletc: running in this process"
    ), err


def test_load_says_a_fallback_once_and_keeps_the_report(
    trt_bundle: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    import gimlet

    missing = _no_tensorrt(monkeypatch)
    (x,) = np.load(ROOT / "examples" / "gpt_inputs.npz").values()
    with gimlet.load(str(trt_bundle)) as f:
        f(torch.from_numpy(x))
        f(torch.from_numpy(x))
    line = (
        f"seg1 on gpu0: interpreter, not tensorrt: {missing}, and the bundle has no CUDA parts "
        "(GIMLET_TENSORRT_CUDA=0)"
    )
    assert capsys.readouterr().err == f"gimlet: {line}\n"  # once per load, not per call
    assert [str(r) for r in f.report] == ["seg0 on cpu0: cpu-cxx", line, "seg2 on cpu0: cpu-cxx"]
    assert [(r.planned, r.ran, r.when) for r in f.report][1] == ("tensorrt", "interpreter", "load")


def test_the_executor_load_picks_is_the_one_the_report_names(monkeypatch: Any) -> None:
    """The report predicts (for worker processes it cannot see) what `load` picks."""
    from gimlet.backends import get
    from gimlet.backends.tensorrt.backend import FallbackExecutor

    _no_tensorrt(monkeypatch)
    host: Any = types.SimpleNamespace()
    executor = get("tensorrt").load(host, {}, None)
    assert isinstance(executor, FallbackExecutor)
    ran, _ = get("tensorrt").runs_here({"kind": "tensorrt", "cuda": {"kind": "cuda"}})  # type: ignore[attr-defined]
    assert ran == ("cuda" if executor.cuda is not None else "interpreter")


def test_backend_choice_for_nvidia_devices() -> None:
    from gimlet import backends

    assert backends.kinds().index("cuda") < backends.kinds().index("tensorrt")
    assert backends.select("nvidia", {}).name == "cuda"
    assert backends.select("nvidia", {"nvidia": "tensorrt"}).name == "tensorrt"
    assert [b.option for b in backends.serving("nvidia")] == ["cuda", "tensorrt", "interpreter"]


CLUSTER = """cluster "trt"
device cpu0 : cpu { dtypes = [f64, f32, i64, i32, i1] }
device gpu0 : h100 { host = cpu0, dtypes = [f64, f32, f16, bf16, i64, i32, i1] }
"""


class _F64(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x))
        return (h.double().cumsum(-1)).float() + h  # f64: TensorRT has no DOUBLE


def _placed(tmp_path: Path, backends: str, pins: str = "") -> Any:
    from gimlet.frontend import import_model
    from gimlet.passes.place import Place

    (tmp_path / "trt.cluster").write_text(CLUSTER)
    torch.manual_seed(0)
    module, _ = import_model(_F64().eval(), (torch.randn(4, 16),))
    run_pipeline(module, DEFAULT_PIPELINE)
    run_pipeline(
        module, [Place(target=str(tmp_path / "trt.cluster"), pins=pins, backends=backends)]
    )
    return {
        op.name: op.attributes["gml.device"].data
        for op in main_func(module).walk()
        if "gml.device" in op.attributes
    }  # type: ignore[attr-defined]


def test_placement_moves_what_tensorrt_cannot_run(tmp_path: Path) -> None:
    """The f64 cumsum costs nothing... only on gpu0 with CUDA; with TensorRT gpu0 cannot
    run it, so the solver has cpu0 alone for it, while fc stays pinned on gpu0."""
    from gimlet.frontend import import_model
    from gimlet.placement.backend_ops import restrict
    from gimlet.placement.cluster_lang import load_cluster
    from gimlet.placement.solvers import build_problem

    (tmp_path / "trt.cluster").write_text(CLUSTER)
    cluster = load_cluster(tmp_path / "trt.cluster")
    module, _ = import_model(_F64().eval(), (torch.randn(4, 16),))
    run_pipeline(module, DEFAULT_PIPELINE)
    for choices, runs_on_gpu in (({}, True), ({"nvidia": "tensorrt"}, False)):
        problem = build_problem(module, restrict(cluster, choices))
        i = next(k for k, op in enumerate(problem.nodes) if op.name == "gml.cumsum")
        gpu = problem.devices.index("gpu0")
        assert np.isfinite(problem.time[i, gpu]) == runs_on_gpu
    assert problem.why[(i, gpu)].startswith(
        "gpu0 does not support gml.cumsum on f64 with --backend nvidia=tensorrt"
    )
    placed = _placed(tmp_path, "nvidia=tensorrt", "fc=gpu0")
    assert placed["gml.cumsum"] == "cpu0" and placed["gml.matmul"] == "gpu0"


def test_pinning_what_tensorrt_cannot_run_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        _placed(tmp_path, "nvidia=tensorrt", "gml.cumsum=gpu0")
    assert str(e.value) == (
        f"{__file__.removeprefix(str(ROOT) + '/')}:{_F64.forward.__code__.co_firstlineno + 2}: "
        "gml.cumsum has no device to run on: pinned to gpu0, but gpu0 does not support "
        "gml.cumsum on f64 with --backend nvidia=tensorrt (TensorRT 10.1: onnx-tensorrt "
        "docs/operators.md @ 96e7811 (ONNX-TensorRT 10.1 GA))"
    )


def test_a_cluster_file_s_backend_narrows_placement_as_the_flag_does(tmp_path: Path) -> None:
    """`backend = tensorrt` on gpu0 in the .cluster file: as --backend nvidia=tensorrt,
    the message names where the choice was made; --backend nvidia=cuda overrides it."""
    from gimlet.frontend import import_model
    from gimlet.passes.place import Place

    path = tmp_path / "trt.cluster"
    path.write_text(CLUSTER.replace("host = cpu0,", "host = cpu0, backend = tensorrt,"))
    module, _ = import_model(_F64().eval(), (torch.randn(4, 16),))
    run_pipeline(module, DEFAULT_PIPELINE)
    with pytest.raises(UserError) as e:
        run_pipeline(module.clone(), [Place(target=str(path), pins="gml.cumsum=gpu0")])
    assert str(e.value).endswith(
        "gml.cumsum has no device to run on: pinned to gpu0, but gpu0 does not support "
        f"gml.cumsum on f64 with backend = tensorrt at {path}:3 (TensorRT 10.1: onnx-tensorrt "
        "docs/operators.md @ 96e7811 (ONNX-TensorRT 10.1 GA))"
    )
    run_pipeline(module, [Place(target=str(path), pins="gml.cumsum=gpu0", backends="nvidia=cuda")])


def test_docs_and_placement_table_are_generated_from_the_code() -> None:
    from gimlet.backends.tensorrt.docs import main

    assert main(["--check", str(ROOT / "docs")]) == 0


@pytest.mark.skipif(
    shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists(),
    reason="nvcc (the CUDA toolkit) is not installed",
)
def test_bundle_carries_cuda_parts_too_where_nvcc_is(tmp_path: Path) -> None:
    """For machines without TensorRT: the CUDA backend's parts of the same segment."""
    from gimlet.cli import main as gimletc

    out = tmp_path / "b"
    argv = ["compile", str(ROOT / "examples" / "mlp.py") + ":model", "-o", str(out)]
    argv += ["--target", "h100+cpu", "--pin", "fc1=gpu0,fc2=gpu0", "--backend", "nvidia=tensorrt"]
    assert gimletc(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    (art,) = [s["artefact"] for s in manifest["segments"] if s["device"] == "gpu0"]
    assert art["kind"] == "tensorrt" and art["cuda"]["kind"] == "cuda"
    libraries = [p["library"] for p in art["cuda"]["parts"]]
    assert libraries and all(lib in manifest["files"] for lib in libraries)
    assert len(art["cuda"]["parts"]) == len(art["parts"])


def test_a_model_the_onnx_checks_reject_falls_back_with_a_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lowering bug must not kill `gimletc compile`: the segment falls back, saying why."""
    import gimlet.backends.tensorrt.lower as lower_module
    from gimlet.backends.tensorrt.backend import lower_segment

    def reject(part: OnnxPart) -> None:
        raise onnx.checker.ValidationError("Field 'type' of 'value_info' is required")

    ir = parse(
        """func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
  %y = gml.segment "gpu0" (%x) : (tensor<4xf32>) -> tensor<4xf32> {
  ^bb0(%a: tensor<4xf32>):
    %b = gml.exp %a : tensor<4xf32>
    gml.yield %b : tensor<4xf32>
  }
  func.return %y : tensor<4xf32>
}
"""
    )
    segment = next(op for op in main_func(ir).walk() if op.name == "gml.segment")
    monkeypatch.setattr(lower_module, "verify", reject)
    with pytest.raises(UnsupportedOpError) as e:
        lower_segment(segment, 0, {})  # type: ignore[arg-type]
    assert str(e.value) == (
        "cannot lower to TensorRT:\nseg0.part0: the ONNX checks reject gimlet's model "
        "(Field 'type' of 'value_info' is required); a gimlet bug"
    )
