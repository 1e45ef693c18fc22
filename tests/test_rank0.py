"""Rank-0 tensors and identity programs, end to end.

A 0-d tensor is a value like any other: it comes back from every stage with shape (),
not (1,) (numpy's ascontiguousarray makes scalars 1-d, which once leaked into outputs,
the C++ backend's input check and channel payloads); ops taking a dim accept 0-d
inputs as torch does (dim 0 or -1); and a program whose output is its input (dropout
in eval mode) runs as a bundle.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import gimlet
from gimlet.cli import main as gimletc

TWO = """cluster "two-cpus"
device cpu0 : cpu
device cpu1 : cpu
link cpu0 <-> cpu1 : pcie { bandwidth = 55 GB/s, latency = 12 us }
"""

MODELS = '''
import torch


class Reduce(torch.nn.Module):
    def forward(self, x):
        return x.sum()


class Scale(torch.nn.Module):
    def forward(self, s):
        return s * 2 + 1


class Scalar(torch.nn.Module):
    """A scalar input and output, and a scalar crossing devices when b is pinned away."""

    def __init__(self):
        super().__init__()
        self.a, self.b = Reduce(), Scale()

    def forward(self, x, s):
        return self.b(self.a(x) * s), s - 1


class Drop(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(x)


def scalar():
    return Scalar(), (torch.arange(6.0).reshape(2, 3), torch.tensor(0.5))


def drop():
    return Drop(), (torch.arange(6.0).reshape(2, 3),)
'''


class Dims(torch.nn.Module):
    """Every op that takes a dim, on a 0-d input (each crashed the importer or the
    interpreter: modulo by zero, numpy AxisError)."""

    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (
            s.sum(0),
            s.mean(-1, keepdim=True),
            s.amax(0),
            torch.cumsum(s, 0),
            torch.softmax(s, 0),
            torch.log_softmax(s, -1),
            torch.index_select(s, 0, torch.tensor([0])),
            torch.gather(s, 0, torch.tensor(0)),
            torch.argmax(s, 0),
            s.var(0, correction=0),
        )


def _check(got: Any, want: Any) -> None:
    for g, w in zip(got, want, strict=True):
        g = torch.as_tensor(np.asarray(g))
        assert g.shape == w.shape and g.dtype == w.dtype, (g, w)
        torch.testing.assert_close(g, w, equal_nan=True)


def test_ops_with_a_dim_on_0d_inputs_interpreter_and_cpp() -> None:
    from gimlet.backends.cpu import compile_module

    s = torch.tensor(1.5)
    with torch.no_grad():
        want = Dims()(s)
    compiled = gimlet.compile(Dims(), (s,))
    _check(compiled(s), want)
    assert "tensor<f32>" in compiled.ir
    lib = compile_module(compiled.module, opt="-O1")
    _check(lib([s.numpy()], compiled.weights), want)


def test_scalar_inputs_and_outputs_keep_shape_everywhere(tmp_path: Path) -> None:
    """In-process (interpreter, C++ backend) and as a bundle on two workers with the
    scalar crossing a channel both ways."""
    from gimlet.backends.cpu import compile_module
    from gimlet.runtime.launch import launch

    (tmp_path / "m.py").write_text(textwrap.dedent(MODELS))
    (tmp_path / "two.cluster").write_text(TWO)
    x, s = torch.arange(6.0).reshape(2, 3), torch.tensor(0.5)
    want = (torch.tensor((x.sum() * s).item() * 2 + 1), torch.tensor(-0.5))

    compiled = gimlet.compile(f"{tmp_path}/m.py:scalar")
    assert "-> (tensor<f32>, tensor<f32>)" in compiled.ir
    _check(compiled(x, s), want)
    lib = compile_module(compiled.module, opt="-O1")
    _check(lib([x.numpy(), s.numpy()], compiled.weights), want)

    out = tmp_path / "b"
    argv = ["compile", f"{tmp_path}/m.py:scalar", "-o", str(out)]
    argv += ["--target", str(tmp_path / "two.cluster"), "--pin", "b=cpu1"]
    assert gimletc(argv) == 0
    result = launch(str(out), [x.numpy(), s.numpy()])  # a 0-d input passes the check
    _check(result.outputs, want)
    busy = {st["device"] for st in result.stats if st["segments"]}
    assert busy == {"cpu0", "cpu1"}  # the scalar really crossed to cpu1 and back


def test_bundle_refuses_a_1d_input_for_a_scalar(tmp_path: Path) -> None:
    from gimlet.runtime.bundle import BundleError
    from gimlet.runtime.launch import launch

    (tmp_path / "m.py").write_text(textwrap.dedent(MODELS))
    (tmp_path / "two.cluster").write_text(TWO)
    out = tmp_path / "b"
    assert gimletc(["compile", f"{tmp_path}/m.py:scalar", "-o", str(out), "--target",
                    str(tmp_path / "two.cluster")]) == 0  # fmt: skip
    with pytest.raises(
        BundleError, match=r"input s: expected float32 \[\], got float32 array of shape \[1\]"
    ):
        launch(str(out), [np.zeros((2, 3), "f4"), np.zeros(1, "f4")])


def test_identity_program_runs_as_a_bundle(tmp_path: Path, capsys: Any) -> None:
    """Dropout in eval mode: the output is the input, no segment at all."""
    (tmp_path / "m.py").write_text(textwrap.dedent(MODELS))
    (tmp_path / "two.cluster").write_text(TWO)
    out = tmp_path / "b"
    model = f"{tmp_path}/m.py:drop"
    assert (
        gimletc(["compile", model, "-o", str(out), "--target", str(tmp_path / "two.cluster")]) == 0
    )
    x = np.arange(6.0, dtype="f4").reshape(2, 3)
    np.savez(tmp_path / "x.npz", x=x)
    outputs = tmp_path / "o.npz"
    assert gimletc(["run", str(out), "--inputs", str(tmp_path / "x.npz"), "-o", str(outputs)]) == 0
    np.testing.assert_array_equal(np.load(outputs)["out0"], x)
    # and in one process, from the directory `gimletc compile` wrote
    plain = tmp_path / "p"
    assert gimletc(["compile", model, "-o", str(plain)]) == 0
    capsys.readouterr()
    assert gimletc(["run", str(plain)]) == 0
    assert capsys.readouterr().out.startswith("out0: float32 [2, 3] [0. 1. 2. 3. 4. 5.]")
    assert os.path.exists(plain / "inputs.npz")
