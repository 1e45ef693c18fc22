"""The export cache (gimlet.frontend.cache) and the fast weights writer.

A hit must give what a fresh export gives (same IR, same weights), and a stale entry must
never be used: changed weights, source, input shapes, dynamic dims or torch version are
misses. Each test gets its own cache directory."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import gimlet
from gimlet.artifacts import WeightsWriter, read_safetensors, save_weights
from gimlet.cli import main
from gimlet.frontend import cache
from gimlet.frontend.load import frontend

FACTORY = """
import numpy as np
import torch
from torch import nn

from helper import scale


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        # torch.tensor in forward becomes a lifted constant: not a parameter of the model
        return scale(self.fc(x)) + torch.tensor([1.0, 2.0, 3.0])


def model():
    net = Net()
    w = np.load(__file__.replace("net.py", "w.npy"))
    with torch.no_grad():
        net.fc.weight.copy_(torch.from_numpy(w))
        net.fc.bias.zero_()
    return net, (torch.ones(2, 4),)
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's tree: net.py (the factory), helper.py (imported by it), w.npy (weights)."""
    monkeypatch.setenv("GIMLET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "helper", raising=False)  # another test's helper.py
    (tmp_path / "net.py").write_text(FACTORY)
    (tmp_path / "helper.py").write_text("def scale(x):\n    return x * 2.0\n")
    np.save(tmp_path / "w.npy", np.arange(12, dtype=np.float32).reshape(3, 4) / 10)
    return tmp_path


def compile_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    assert main(["compile", "net.py:model", "-o", "out", *args]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def entries(project: Path) -> list[str]:
    """The cache's entries: base/weights-hash for a live model, a hash for a .pt2."""
    root = project / "cache"
    return sorted(str(p.parent.relative_to(root)) for p in root.glob("**/meta.json"))


def hit_line(project: Path) -> str:
    (entry,) = entries(project)
    return (
        f"gimletc: export cache: reusing the export of net.py:model from "
        f"{project / 'cache' / entry} (--no-cache exports again)\n"
    )


def test_repeat_compile_hits_and_writes_the_same_output(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = compile_cli(capsys)
    assert "export cache" not in err
    ir = (project / "out" / "model.mlir").read_text()
    weights = load_file(str(project / "out" / "weights.safetensors"))
    assert sorted(weights) == ["fc.bias", "fc.weight", "lifted_tensor_0"]
    (entry,) = entries(project)
    meta = json.loads((project / "cache" / entry / "meta.json").read_text())
    assert meta["from_model"] == ["fc.weight", "fc.bias"]  # the constant is in the entry
    out2, err2 = compile_cli(capsys)
    assert err2 == hit_line(project)
    assert out2 == out
    assert (project / "out" / "model.mlir").read_text() == ir
    again = load_file(str(project / "out" / "weights.safetensors"))
    assert sorted(again) == sorted(weights)
    for name in weights:
        np.testing.assert_array_equal(again[name], weights[name])
    # the hit linked the weights the first compile wrote instead of writing them again
    assert os.stat(project / "out" / "weights.safetensors").st_nlink == 2


def test_changed_weights_source_or_helper_are_misses(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compile_cli(capsys)
    np.save(project / "w.npy", np.ones((3, 4), dtype=np.float32))  # a data file the factory reads
    assert "export cache" not in compile_cli(capsys)[1]
    (project / "net.py").write_text(FACTORY + "# an edit\n")
    assert "export cache" not in compile_cli(capsys)[1]
    assert "gimletc: export cache: reusing" in compile_cli(capsys)[1]
    assert len(entries(project)) == 3
    # helper.py is imported (not executed anew like the factory's file): edited after this
    # process imported it, the module in memory is not what the file says; no cache
    (project / "helper.py").write_text("def scale(x):\n    return x * 3.0\n")
    assert compile_cli(capsys)[1] == (
        f"gimletc: note: not using the export cache: {project / 'helper.py'} changed after "
        "this process imported it\n"
    )
    del sys.modules["helper"]  # as a new process would, import the new helper.py
    assert "export cache" not in compile_cli(capsys)[1]
    assert "3.0" in (project / "out" / "model.mlir").read_text()  # nothing stale reused
    assert "gimletc: export cache: reusing" in compile_cli(capsys)[1]
    assert len(entries(project)) == 4


def test_torch_version_input_shape_and_dynamic_dims_are_in_the_key(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    x = torch.randn(2, 4)

    def cached(*args: Any) -> str | None:
        fe = frontend(net, *args)
        fe.commit()
        return fe.cached

    assert cached((x,)) is None
    first = cached((x,))
    assert first is not None
    assert cached((torch.randn(5, 4),)) is None  # input shape
    assert cache.input_specs((x.double(),), None) != cache.input_specs((x,), None)  # dtype
    batch = torch.export.Dim("batch", min=1, max=64)
    assert cached((x,), ({0: batch},)) is None  # a dynamic dim
    assert cached((x,), ({0: torch.export.Dim("batch", min=1, max=32)},)) is None  # its bounds
    assert cached((x,), ({0: batch},)) is not None
    with torch.no_grad():
        net[0].weight[0, 0] += 1.0  # one weight of 12
    assert cached((x,)) is None
    monkeypatch.setattr(torch, "__version__", "9.9.9+monkeypatched")
    assert cached((x,)) is None


def test_hit_gives_what_a_fresh_export_gives(project: Path) -> None:
    fresh = gimlet.compile("net.py:model", cache=False)
    assert entries(project) == []  # cache=False neither reads nor writes
    gimlet.compile("net.py:model")
    hit = gimlet.compile("net.py:model")
    assert hit.ir == fresh.ir
    assert sorted(hit.weights) == sorted(fresh.weights)
    for name, w in fresh.weights.items():
        np.testing.assert_array_equal(hit.weights[name], w)
    x = torch.ones(2, 4)
    np.testing.assert_allclose(hit.reference(x)[0].numpy(), fresh.reference(x)[0].numpy())


def test_an_nn_module_uses_the_cache_only_when_asked(project: Path) -> None:
    net = torch.nn.Linear(4, 3)
    gimlet.compile(net, (torch.ones(1, 4),))
    assert entries(project) == []
    gimlet.compile(net, (torch.ones(1, 4),), cache=True)
    assert len(entries(project)) == 1


def test_no_cache_bypasses_it(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    compile_cli(capsys, "--no-cache")
    assert entries(project) == []
    compile_cli(capsys)
    _, err = compile_cli(capsys, "--no-cache")
    assert err == ""


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("meta.json", "JSONDecodeError: Expecting value: line 1 column 1 (char 0)"),
        ("imported.mlir", "imported.mlir does not match its checksum"),
        (
            "extra.safetensors",
            "ValueError: {entry}/extra.safetensors: shorter than a safetensors header",
        ),
    ],
)
def test_a_corrupt_entry_is_a_miss_with_a_note(
    project: Path, capsys: pytest.CaptureFixture[str], damage: str, why: str
) -> None:
    compile_cli(capsys)
    ir = (project / "out" / "model.mlir").read_text()
    (entry,) = entries(project)
    path = project / "cache" / entry
    (path / damage).write_text("")
    _, err = compile_cli(capsys)
    assert err == (
        f"gimletc: note: ignoring a corrupt export cache entry {path}: {why.format(entry=path)}\n"
    )
    assert (project / "out" / "model.mlir").read_text() == ir
    _, err = compile_cli(capsys)  # the fresh export replaced it
    assert err == hit_line(project)


def test_pt2_files_are_keyed_by_their_bytes(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    ep = torch.export.export(net, (torch.randn(2, 4),))
    torch.export.save(ep, "m.pt2")
    assert main(["compile", "m.pt2", "-o", "out"]) == 0
    ir = (project / "out" / "model.mlir").read_text()
    weights = load_file(str(project / "out" / "weights.safetensors"))
    inputs = np.load(project / "out" / "inputs.npz")["input"]
    capsys.readouterr()
    os.remove(project / "out" / "weights.safetensors")  # the entry keeps its own link
    assert main(["compile", "m.pt2", "-o", "out"]) == 0
    (entry,) = entries(project)
    assert capsys.readouterr().err == (
        f"gimletc: export cache: reusing the export of m.pt2 from {project / 'cache' / entry} "
        "(--no-cache exports again)\n"
    )
    assert (project / "out" / "model.mlir").read_text() == ir
    np.testing.assert_array_equal(np.load(project / "out" / "inputs.npz")["input"], inputs)
    again = load_file(str(project / "out" / "weights.safetensors"))
    for name, w in weights.items():
        np.testing.assert_array_equal(again[name], w)
    with torch.no_grad():
        net[0].bias += 1
    torch.export.save(torch.export.export(net, (torch.randn(2, 4),)), "m.pt2")
    assert main(["compile", "m.pt2", "-o", "out"]) == 0
    assert "export cache" not in capsys.readouterr().err


def test_key_parts_name_the_model_source_and_packages(project: Path) -> None:
    import transformers

    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=8)
    model = transformers.GPT2Model(config)
    structure, tensors = cache.model_state(model)
    assert "wte.weight" in tensors
    files, packages = cache.source_closure([__import__("net")])
    assert sorted(os.path.basename(f) for f in files) == ["helper.py", "net.py"]
    assert {"numpy", "torch"} <= set(packages)
    _, packages = cache.source_closure([__import__(type(model).__module__, fromlist=["_"])])
    assert packages["transformers"] == transformers.__version__
    other = transformers.GPT2Model(
        transformers.GPT2Config(
            n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=8, layer_norm_epsilon=1e-3
        )
    )
    # same weights' shapes, another config value: the structure differs
    assert cache.key_of({"s": cache.model_state(other)[0]}) != cache.key_of({"s": structure})


def test_safetensors_writer_round_trips_every_dtype(tmp_path: Path) -> None:
    weights = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "scalar": np.array(3.5, dtype=np.float32),
        "bf16": np.arange(5, dtype=np.float32).astype(ml_dtypes.bfloat16),
        "f16": np.zeros((0, 4), dtype=np.float16),
        "i64": np.arange(3, dtype=np.int64),
        "bool": np.array([True, False, True]),
        "u8": np.arange(3, dtype=np.uint8),
        "strided": np.arange(12, dtype=np.float32).reshape(3, 4).T,
        "torch": torch.arange(4, dtype=torch.int32),
    }
    weights["tied"] = weights["f32"]
    path = str(tmp_path / "w.safetensors")
    digest = save_weights(path, weights, digest=True)
    import hashlib

    assert digest == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    from safetensors.torch import load_file as load_torch

    reference = load_torch(path)  # safetensors' own reader accepts it
    ours = read_safetensors(path)
    for name, value in weights.items():
        expected = value.numpy() if isinstance(value, torch.Tensor) else value
        assert ours[name].dtype == expected.dtype, name
        assert ours[name].shape == expected.shape, name
        np.testing.assert_array_equal(ours[name], expected)
        assert tuple(reference[name].shape) == expected.shape


def test_a_model_whose_key_cannot_be_computed_compiles_without_the_cache(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(tensors: Any) -> str:
        raise RuntimeError("no bytes for a meta tensor")

    compile_cli(capsys)  # an entry: the next compile hashes before exporting
    monkeypatch.setattr(cache, "hash_tensors", boom)
    np.save(project / "w.npy", np.ones((3, 4), dtype=np.float32))
    for _ in range(2):  # hashed before torch.export, then while it runs (no entry)
        _, err = compile_cli(capsys)
        assert err == (
            "gimletc: note: not using the export cache: cannot hash the weights "
            "(RuntimeError: no bytes for a meta tensor)\n"
        )
        assert len(entries(project)) == 1
        assert (project / "out" / "weights.safetensors").is_file()
        monkeypatch.setattr(cache, "has_entries", lambda base: False)


def test_numpy_attributes_are_described_by_their_values() -> None:
    class Table(torch.nn.Module):
        def __init__(self, table: np.ndarray) -> None:
            super().__init__()
            self.table = table  # a forward reading it bakes its values into the graph

    a = cache.model_state(Table(np.zeros(1000)))[0]
    b = cache.model_state(Table(np.r_[np.zeros(999), 1.0]))[0]
    assert cache.key_of({"s": a}) != cache.key_of({"s": b})


# --- the final IR kept in an entry (cache.Output) ------------------------------------------


def no_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make parsing IR or running a pass fail the test: a reused final IR needs neither."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsed IR or ran passes")

    monkeypatch.setattr("gimlet.cli.run_pipeline", fail)
    monkeypatch.setattr("gimlet.ir.parse", fail)


def outputs(project: Path) -> list[Path]:
    return sorted((project / "cache").glob("**/output-*.json"))


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the process had started after every file was saved: in a shared checkout a
    gimlet file edited during the test session would otherwise turn the final IR off."""
    monkeypatch.setattr(cache, "_process_start", lambda: float("inf"))


def test_a_repeat_compile_reuses_the_final_ir_without_parsing_or_passes(
    project: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    settled: None,
) -> None:
    out, _ = compile_cli(capsys)
    ir = (project / "out" / "model.mlir").read_text()
    inputs = np.load(project / "out" / "inputs.npz")["x"]
    assert len(outputs(project)) == 1
    with monkeypatch.context() as m:
        no_passes(m)
        out2, err2 = compile_cli(capsys)
    assert err2 == hit_line(project)
    assert (
        out2
        == out
        == "gimletc: wrote out/model.mlir (14 ops), weights.safetensors (3 tensors) and inputs.npz (example inputs)\n"
    )
    assert (project / "out" / "model.mlir").read_text() == ir
    np.testing.assert_array_equal(np.load(project / "out" / "inputs.npz")["x"], inputs)
    assert os.stat(project / "out" / "weights.safetensors").st_nlink == 2
    # another pipeline option is another final IR: the passes run once for it, then not
    compile_cli(capsys, "--no-locations")
    plain = (project / "out" / "model.mlir").read_text()
    assert "loc(" in ir and "loc(" not in plain
    assert len(outputs(project)) == 2
    with monkeypatch.context() as m:
        no_passes(m)
        compile_cli(capsys, "--no-locations")
    assert (project / "out" / "model.mlir").read_text() == plain


def test_the_final_ir_is_keyed_by_pipeline_and_gimlet_sources(
    project: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    settled: None,
) -> None:
    import gimlet.cli

    runs: list[str] = []
    real = gimlet.cli.run_pipeline

    def counted(module: Any, pipeline: Any, instr: Any) -> None:
        runs.append("ran")
        real(module, pipeline, instr)

    monkeypatch.setattr(gimlet.cli, "run_pipeline", counted)
    compile_cli(capsys)
    compile_cli(capsys)
    assert len(runs) == 1
    compile_cli(capsys, "--pass-pipeline", "infer-shapes")  # another pipeline
    assert len(runs) == 2
    compile_cli(capsys, "--dump-dir", "dumps")  # dumps per pass: asked for the passes
    assert len(runs) == 3 and os.listdir(project / "dumps")
    assert cache.output_key("a", True) != cache.output_key("a", False)
    monkeypatch.setattr(cache, "gimlet_tree", lambda: "an edited gimlet")  # any source
    compile_cli(capsys)
    assert len(runs) == 4
    compile_cli(capsys)
    assert len(runs) == 4


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (
            lambda text: "{",
            "{name}: JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        (lambda text: text.replace("gml.", "gml.x"), "{name} does not match its checksum"),
    ],
)
def test_a_corrupt_final_ir_is_a_note_and_the_passes_run_again(
    project: Path, capsys: pytest.CaptureFixture[str], damage: Any, why: str, settled: None
) -> None:
    compile_cli(capsys)
    ir = (project / "out" / "model.mlir").read_text()
    (path,) = outputs(project)
    path.write_text(damage(path.read_text()))
    _, err = compile_cli(capsys)
    assert err == (
        f"gimletc: note: ignoring a corrupt export cache entry {path.parent}: "
        f"{why.format(name=path.name)}\n" + hit_line(project)
    )
    assert (project / "out" / "model.mlir").read_text() == ir
    assert cache.read_output(str(path.parent), path.stem.removeprefix("output-")) is not None
    assert compile_cli(capsys)[1] == hit_line(project)  # the hit wrote it anew


# --- weights written while torch.export runs (WeightsWriter's `ahead`) ----------------------


def written(tmp_path: Path, ahead: dict[str, Any], weights: dict[str, Any]) -> tuple[bool, Path]:
    """Write ahead, settle, move; (whether the bytes written ahead became the file, it)."""
    writer = WeightsWriter(str(tmp_path / "out"), ahead=ahead)
    writer.settle(weights)
    path = tmp_path / "w.safetensors"
    writer.move_to(str(path))
    ours, reference = read_safetensors(str(path)), load_file(str(path))
    assert sorted(ours) == sorted(reference) == sorted(weights)
    for name, value in weights.items():
        expected = value.numpy() if isinstance(value, torch.Tensor) else value
        np.testing.assert_array_equal(ours[name], expected)
        np.testing.assert_array_equal(reference[name], expected)
    return writer.reused_ahead, path


def model_tensors() -> dict[str, torch.Tensor]:
    return {
        "w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "ids": torch.arange(5, dtype=torch.int64),
        "half": torch.ones(6, dtype=torch.bfloat16),
    }


def views(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    from gimlet.dtypes import torch_to_numpy

    return {n: torch_to_numpy(t) for n, t in tensors.items()}


def test_weights_written_ahead_become_the_file_when_the_import_names_them(
    tmp_path: Path,
) -> None:
    tensors = model_tensors()
    assert written(tmp_path, tensors, views(tensors))[0]
    # a lifted constant is appended (8-byte data so far: its alignment holds)
    assert written(tmp_path, tensors, {**views(tensors), "c": np.arange(3, dtype=np.float32)})[0]


def test_weights_written_ahead_are_rewritten_when_the_import_differs(tmp_path: Path) -> None:
    tensors = model_tensors()
    copied = {**views(tensors), "w": views(tensors)["w"].copy()}  # other memory
    assert not written(tmp_path, tensors, copied)[0]
    dropped = {n: a for n, a in views(tensors).items() if n != "ids"}
    assert not written(tmp_path, tensors, dropped)[0]
    odd = {"b": torch.ones(3, dtype=torch.uint8)}  # 3 bytes: an f32 after it is misaligned
    assert not written(tmp_path, odd, {**views(odd), "c": np.ones(2, dtype=np.float32)})[0]
    many = {f"constant_{'x' * 200}_{i}": np.ones(1, dtype=np.int8) for i in range(100)}
    assert not written(tmp_path, tensors, {**views(tensors), **many})[0]  # header overflows


def test_a_weights_writer_discarded_before_it_settles_leaves_nothing(tmp_path: Path) -> None:
    writer = WeightsWriter(str(tmp_path / "out"), ahead=model_tensors())
    writer.discard()
    assert not writer.thread.is_alive()
    assert os.listdir(tmp_path) == []


def test_a_missed_compile_writes_the_weights_while_torch_exports(project: Path) -> None:
    fe = frontend("net.py:model", out_dir=str(project / "out"))
    assert fe.writer is not None
    fe.writer.move_to(str(project / "w.safetensors"))
    assert fe.writer.reused_ahead  # fc.weight and fc.bias, then the lifted constant
    again = load_file(str(project / "w.safetensors"))
    assert sorted(again) == ["fc.bias", "fc.weight", "lifted_tensor_0"]
    for name, w in fe.weights.items():
        np.testing.assert_array_equal(again[name], w)


def test_no_final_ir_is_kept_or_used_when_gimlet_changed_after_the_process_started(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the code running may not be what gimlet's files now say: their hash must not name it
    monkeypatch.setattr(cache, "_process_start", lambda: 0.0)
    assert cache.output_key("a", True) is None
    compile_cli(capsys)
    assert "gimletc: export cache: reusing" in compile_cli(capsys)[1]  # the import still
    assert outputs(project) == []
