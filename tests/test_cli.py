"""gimletc end to end: exit codes, outputs, and one clear message per bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GIMLETC = str(Path(sys.executable).parent / "gimletc")


def gimletc(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GIMLETC, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_compile_writes_ir_and_weights_and_run_executes(tmp_path: Path) -> None:
    out = tmp_path / "mlp"
    r = gimletc("compile", "examples/mlp.py:model", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["inputs.npz", "model.mlir", "weights.safetensors"]
    assert 'gml.param "fc1.weight" : tensor<64x32xf32>' in (out / "model.mlir").read_text()
    x = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    r = gimletc(
        "run", str(out), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npz")
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("out0: float32 [5, 10]")

    import torch

    sys.path.insert(0, str(ROOT / "examples"))
    from mlp import model

    module = model()[0].eval()
    want = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.load(tmp_path / "o.npz")["out0"], want, rtol=1e-4, atol=1e-5)


def test_run_out_dir_uses_the_example_inputs_compile_kept(tmp_path: Path) -> None:
    """`gimletc run OUT/` needs no --inputs: compile keeps the factory's example inputs."""
    out = tmp_path / "mlp"
    assert gimletc("compile", "examples/mlp.py:model", "-o", str(out)).returncode == 0
    r = gimletc("run", str(out), "-o", str(tmp_path / "o.npz"))
    assert r.returncode == 0, r.stderr

    sys.path.insert(0, str(ROOT / "examples"))
    from mlp import model

    module, (x,), _ = model()
    np.testing.assert_array_equal(np.load(out / "inputs.npz")["x"], x.numpy())
    want = module.eval()(x).detach().numpy()
    np.testing.assert_allclose(np.load(tmp_path / "o.npz")["out0"], want, rtol=1e-4, atol=1e-5)


def test_dump_dir_has_one_numbered_file_per_pass(tmp_path: Path) -> None:
    r = gimletc(
        "compile",
        "examples/mlp.py:model",
        "-o",
        str(tmp_path / "o"),
        "--dump-dir",
        str(tmp_path / "d"),
        "--timing",
    )
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "d")) == [
        "00-input.mlir",
        "01-infer-shapes.mlir",
        "02-canonicalize.mlir",
        "03-cse.mlir",
        "04-fuse-elementwise.mlir",
    ]
    assert "Pass execution timing report" in r.stderr and "fuse-elementwise" in r.stderr


def test_list_passes_prints_the_docstring_summaries() -> None:
    from gimlet.pass_manager import PASSES, summary

    r = gimletc("--list-passes")
    assert r.returncode == 0
    for name, cls in PASSES.items():
        assert f"{name}" in r.stdout and summary(cls) in r.stdout


def test_help_explains_each_verb() -> None:
    for verb in ("compile", "opt", "run"):
        r = gimletc(verb, "--help")
        assert r.returncode == 0 and "--pass-pipeline" in r.stdout


def _bad_model(tmp_path: Path, body: str) -> str:
    path = tmp_path / "bad.py"
    path.write_text(body)
    return str(path)


@pytest.mark.parametrize(
    ("body", "factory", "message"),
    [
        ("import torch\n", "model", "bad.py: no function 'model' (found: none)"),
        (
            "def model():\n    return 3\n",
            "model",
            "bad.py: model() must return (module, example_inputs",
        ),
        ("x = (\n", "model", "bad.py: failed to import: "),
        (
            "def model():\n    raise ValueError('boom')\n",
            "model",
            "bad.py: model() failed: {path}:2: ValueError: boom",
        ),
        (
            "import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n"
            "        return torch.fft.fft(x).real\n"
            "def model():\n    return M(), (torch.randn(4),)\n",
            "model",
            "{path}:4: unsupported op aten.",
        ),
    ],
)
def test_bad_models_exit_1_with_one_message(
    tmp_path: Path, body: str, factory: str, message: str
) -> None:
    path = _bad_model(tmp_path, body)
    out = tmp_path / "out"
    r = gimletc("compile", f"{path}:{factory}", "-o", str(out))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("gimletc: error: "), r.stderr
    rel = os.path.relpath(path, ROOT)  # locations under the working directory print relative
    shown = path if rel.startswith("..") else rel
    assert message.format(path=shown) in r.stderr or message.format(path=path) in r.stderr
    assert not out.exists(), "a failed compile must not leave output behind"
    assert [p for p in os.listdir(tmp_path) if p.startswith(".gimlet-")] == []


def test_missing_model_file() -> None:
    r = gimletc("compile", "nope.py:model", "-o", "/tmp/never")
    assert (r.returncode, r.stderr) == (1, "gimletc: error: nope.py: no such file\n")


def test_failed_compile_keeps_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert gimletc("compile", "examples/mlp.py:model", "-o", str(out)).returncode == 0
    before = (out / "model.mlir").read_text()
    r = gimletc("compile", _bad_model(tmp_path, "import torch\n") + ":model", "-o", str(out))
    assert r.returncode == 1 and (out / "model.mlir").read_text() == before


def test_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    r = gimletc("compile", "examples/mlp.py:model", "-o", str(tmp_path))
    assert r.returncode == 1 and "refusing to overwrite" in r.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_malformed_mlir_reports_file_line_col(tmp_path: Path) -> None:
    f = tmp_path / "bad.mlir"
    f.write_text(
        "func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {\n  %y = gml.relu %x : tensor<4xf32\n}\n"
    )
    r = gimletc("opt", str(f))
    assert r.returncode == 1
    assert (
        r.stderr == f"gimletc: error: {f}:3:1: Expected '>' after builtin parameter list\n}}\n^\n"
    )


def test_verifier_error_names_op_and_source_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.mlir"
    f.write_text(
        "func.func @main(%x: tensor<4x3xf32>, %w: tensor<4x3xf32>) -> tensor<4x3xf32> {\n"
        '  %y = gml.matmul %x, %w : (tensor<4x3xf32>, tensor<4x3xf32>) -> tensor<4x3xf32> loc("model.py":42:0)\n'
        "  func.return %y : tensor<4x3xf32>\n}\n"
    )
    r = gimletc("opt", str(f))
    assert (r.returncode, r.stderr) == (
        1,
        "gimletc: error: model.py:42: gml.matmul: contraction dims differ: 4x3 @ 4x3 (3 vs 4)\n",
    )


def test_unknown_pass_is_a_user_error() -> None:
    r = gimletc("opt", "-", "--pass-pipeline=frobnicate")
    assert r.returncode == 1
    assert "unknown pass 'frobnicate'" in r.stderr and "canonicalize" in r.stderr


def test_bad_inputs_for_run(tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert gimletc("compile", "examples/mlp.py:model", "-o", str(out)).returncode == 0
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 31), np.float32))
    r = gimletc("run", str(out), "--inputs", str(tmp_path / "in.npz"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "input 0" in r.stderr and "tensor<?x32xf32>" in r.stderr


def test_internal_errors_exit_2(tmp_path: Path) -> None:
    # A pass crashing is gimlet's bug, not the user's: exit 2 and no traceback without --debug.
    # --no-cache: the export cache keeps final IR by gimlet's sources, not a patched method
    code = (
        "import sys\nfrom gimlet import cli\nfrom gimlet.passes.canonicalize import Canonicalize\n"
        "Canonicalize.apply = lambda self, ctx, op: 1 / 0\n"
        "sys.exit(cli.main(['compile', 'examples/mlp.py:model', '-o', sys.argv[1], '--no-cache']))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    assert "internal error: ZeroDivisionError" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_python_api_mirrors_the_cli(tmp_path: Path) -> None:
    import torch

    import gimlet

    sys.path.insert(0, str(ROOT / "examples"))
    from mlp import model

    module, inputs, dyn = model()
    compiled = gimlet.compile(module, inputs, dynamic_shapes=dyn)
    assert "gml.matmul" in str(compiled)
    assert list(compiled.dumps) == [
        "00-input",
        "01-infer-shapes",
        "02-canonicalize",
        "03-cse",
        "04-fuse-elementwise",
    ]
    x = torch.randn(7, 32)
    (y,) = compiled(x)
    torch.testing.assert_close(y, module(x), rtol=1e-4, atol=1e-5)
    compiled.save(str(tmp_path / "o"))
    assert (tmp_path / "o" / "weights.safetensors").exists()


def test_generated_docs_are_current() -> None:
    from gimlet.docgen import main

    assert main(["--check", str(ROOT / "docs")]) == 0


def test_target_explain_graph_and_partitioned_run(tmp_path: Path) -> None:
    out = tmp_path / "o"
    r = gimletc(
        "compile",
        "examples/gpt_phases.py:serve",
        "-o",
        str(out),
        "--target",
        "b200+sram+cpu",
        "--pin",
        "prefill=gpu0",
        "--pin",
        "decode=acc0",
        "--explain",
        "--graph",
        str(tmp_path / "g.dot"),
    )
    assert r.returncode == 0, r.stderr
    assert "segment 0 on" in r.stdout and "gain over the best single device" in r.stdout
    assert "via host_bounce" in r.stdout  # the KV cache crosses vendors through the host
    assert "overlap-comm: modelled makespan" in r.stdout
    ir = (out / "model.mlir").read_text()
    assert 'gml.segment "gpu0"' in ir and 'gml.segment "acc0"' in ir and "comm.isend" in ir
    assert (tmp_path / "g.dot").read_text().startswith("digraph gimlet {")
    r = gimletc("run", str(out))
    assert r.returncode == 1 and "no inputs" in r.stderr
    r = gimletc(
        "run",
        "examples/gpt_phases.py:serve",
        "--target",
        "b200+sram+cpu",
        "--pin",
        "prefill=gpu0,decode=acc0",
    )
    plain = gimletc("run", "examples/gpt_phases.py:serve")
    assert r.returncode == 0 and r.stdout == plain.stdout  # partitioned == unpartitioned


def test_explain_json(tmp_path: Path) -> None:
    import json

    r = gimletc(
        "compile",
        "examples/mlp.py:model",
        "-o",
        str(tmp_path / "o"),
        "--target",
        "h100+cpu",
        "--explain=json",
        "--placement",
        "milp",
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout[: r.stdout.rindex("}") + 1])
    assert report["target"] == "h100+cpu" and report["placement"] == "milp/latency"
    assert {s["device"] for s in report["segments"]} <= {"gpu0", "cpu0"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "h100+tpu"], "unknown device preset 'tpu'"),
        (
            ["--target", "h100+cpu", "--pin", "fc1=gpu7"],
            "--pin fc1=gpu7: unknown device; devices: gpu0, cpu0",
        ),
        (["--target", "h100+cpu", "--pin", "nope"], "bad --pin 'nope': expected PATTERN=DEVICE"),
        (["--target", "nope.cluster"], "nope.cluster"),
    ],
)
def test_placement_user_errors(tmp_path: Path, args: list[str], message: str) -> None:
    r = gimletc("compile", "examples/mlp.py:model", "-o", str(tmp_path / "o"), *args)
    assert r.returncode == 1, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
