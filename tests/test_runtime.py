"""Bundles and the multi-process runtime: results equal torch, faults fail fast and clean.

Bundles are compiled in-process once per module (torch is imported once); each run starts
real worker processes (gloo on localhost), so runs are kept to 2-3 CPU workers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import models
from gimlet.cli import main as gimletc
from gimlet.runtime.bundle import BundleError
from gimlet.runtime.launch import RunError, launch

ROOT = Path(__file__).resolve().parents[1]
THREE = str(ROOT / "examples" / "three_cpus.cluster")
TWO = """cluster "two-cpus"
device cpu0 : cpu
device cpu1 : cpu
link cpu0 <-> cpu1 : pcie { bandwidth = 55 GB/s, latency = 12 us }
"""


def _example(name: str) -> Any:
    sys.path.insert(0, str(ROOT / "examples"))
    mod = __import__(name)
    return mod.model()


@pytest.fixture(scope="module")
def bundles() -> Any:
    # not tmp_path_factory: concurrent pytest runs rotate (delete) old basetemp dirs
    d = Path(tempfile.mkdtemp(prefix="gimlet-bundles-"))
    (d / "two.cluster").write_text(TWO)
    two = str(d / "two.cluster")
    specs = {
        "mlp3": ("examples/mlp.py:model", THREE, "fc1=cpu1,fc2=cpu2"),
        "mlp2": ("examples/mlp.py:model", two, "fc1=cpu1"),
        "gpt2": ("examples/gpt.py:model", two, "h.1=cpu1,ln_f=cpu1,lm_head=cpu1"),
        "cnn3": ("tests/models.py:cnn", THREE, "conv2=cpu1,bn2=cpu1,head=cpu2"),
        "llama3": (
            "tests/models.py:llama_block",
            THREE,
            "norm1=cpu0,q=cpu1,k=cpu1,v=cpu1,down=cpu2",
        ),
    }
    out = {"two.cluster": d / "two.cluster"}
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for name, (model, target, pins) in specs.items():
            argv = ["compile", model, "-o", str(d / name), "--target", target, "--pin", pins]
            assert gimletc(argv) == 0
            out[name] = d / name
    finally:
        os.chdir(cwd)
    yield out
    shutil.rmtree(d, ignore_errors=True)


def _mlp_input() -> tuple[torch.nn.Module, torch.Tensor]:
    module = _example("mlp")[0].eval()
    return module, torch.from_numpy(np.random.default_rng(0).standard_normal((5, 32)).astype("f4"))


def _gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


def test_mlp_on_three_workers_matches_torch_and_traces(bundles: dict[str, Path]) -> None:
    manifest = json.loads((bundles["mlp3"] / "manifest.json").read_text())
    assert [d["name"] for d in manifest["cluster"]["devices"]] == ["cpu0", "cpu1", "cpu2"]
    assert sorted(os.listdir(bundles["mlp3"] / "weights")) == [
        "cpu0.safetensors",
        "cpu1.safetensors",
        "cpu2.safetensors",
    ]
    from safetensors import safe_open

    with safe_open(str(bundles["mlp3"] / "weights" / "cpu1.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["fc1.bias", "fc1.weight"]  # only its own weights
    module, x = _mlp_input()
    result = launch(str(bundles["mlp3"]), [x.numpy()])
    np.testing.assert_allclose(result.outputs[0], module(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    from gimlet.runtime.trace import chrome_trace, summary_table

    trace = chrome_trace(result.stats)
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {1, 2, 0}  # one track per device
    assert {(e["cat"], e["tid"]) for e in spans} == {("compute", 0), ("transfer", 1)}
    # each C++ part is a span nested in its segment's
    assert any(e["name"] == "seg0.part0 (C++, 2 ops)" for e in spans), [e["name"] for e in spans]
    table = summary_table(result.stats)
    assert "cpu1" in table and "cpu2" in table and "bytes in" in table


def test_gpt_on_two_workers_via_load(bundles: dict[str, Path]) -> None:
    from gimlet.runtime import load

    model, (ids,), _ = _example("gpt")
    run = load(str(bundles["gpt2"]))
    (out,) = run(ids)
    assert isinstance(out, torch.Tensor)
    with torch.no_grad():
        np.testing.assert_allclose(out.numpy(), model.eval()(ids).numpy(), rtol=1e-4, atol=1e-5)


def test_load_keeps_its_workers_between_calls(bundles: dict[str, Path]) -> None:
    from gimlet.runtime import load

    module, _ = _mlp_input()
    rng = np.random.default_rng(1)
    with load(str(bundles["mlp2"])) as run:
        walls, pids = [], []
        for batch in (5, 2, 7):
            x = torch.from_numpy(rng.standard_normal((batch, 32)).astype("f4"))
            (out,) = run(x)
            np.testing.assert_allclose(
                out.numpy(), module(x).detach().numpy(), rtol=1e-4, atol=1e-5
            )
            assert run.last is not None
            walls.append(run.last.wall_s)
            pids.append(run.last.pids)
        assert pids[0] == pids[1] == pids[2]  # the same processes served every call
        assert max(walls[1:]) < walls[0]  # no start-up after the first call
    assert _gone(pids[0])  # closed with the block


def test_a_request_says_where_the_callers_time_went(bundles: dict[str, Path]) -> None:
    from gimlet.runtime.bundle import load_bundle
    from gimlet.runtime.launch import Session

    module, x = _mlp_input()
    session = Session(load_bundle(str(bundles["mlp2"])))
    try:
        for _ in range(2):
            result = session([x.numpy()])
            np.testing.assert_allclose(
                result.outputs[0], module(x).detach().numpy(), rtol=1e-4, atol=1e-5
            )
            ph = result.phases  # the caller's share of the wall time, in order
            assert list(ph) == ["send", "wait", "host_run", "host_answered", "copy"]
            assert ph["send"] + ph["wait"] + ph["copy"] <= result.wall_s
            assert 0 <= ph["host_answered"] <= ph["wait"]
            # the host worker runs once told, which is inside "send" (its end is stamped
            # after the workers are told: a caller descheduled there, as on CI's 2 busy
            # cores, sees its worker run before "wait" begins)
            assert 0 < ph["host_run"] < ph["send"] + ph["wait"]
    finally:
        session.close()


def test_failed_request_kills_the_session_and_the_next_restarts_it(
    bundles: dict[str, Path],
) -> None:
    from gimlet.runtime.bundle import load_bundle
    from gimlet.runtime.launch import Session

    module, x = _mlp_input()
    # cpu1 takes 4 progress steps per request (irecv, wait, C++ part, isend): step 5 is in
    # the second request
    session = Session(load_bundle(str(bundles["mlp2"])), env={"GIMLET_FAULT": "cpu1:raise@5"})
    try:
        first = session([x.numpy()])
        with pytest.raises(RunError, match=r"worker cpu1 segment 0 at .*injected fault"):
            session([x.numpy()])
        assert _gone(first.pids)
        third = session([x.numpy()])  # fresh workers: their first request runs clean
        assert third.pids != first.pids
        want = module(x).detach().numpy()
        np.testing.assert_allclose(third.outputs[0], want, rtol=1e-4, atol=1e-5)
    finally:
        session.close()
    assert _gone(third.pids)


def test_cli_run_bundle_with_trace(bundles: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    _, x = _mlp_input()
    np.savez(tmp_path / "in.npz", x=x.numpy())
    trace = tmp_path / "t.json"
    argv = [
        "run",
        str(bundles["mlp2"]),
        "--inputs",
        str(tmp_path / "in.npz"),
        "--trace",
        str(trace),
    ]
    assert gimletc(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("out0: float32 [5, 10]")
    assert "wall ms" in captured.err
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {"cpu0", "cpu1"}


@pytest.mark.skipif(
    shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
    reason="torchrun missing",
)
def test_torchrun_runs_the_same_bundle(bundles: dict[str, Path], tmp_path: Path) -> None:
    from gimlet.runtime.launch import _free_port

    module, x = _mlp_input()
    np.savez(tmp_path / "in.npz", x=x.numpy())
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    r = subprocess.run(
        [
            torchrun,
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            "-m",
            "gimlet.runtime.worker",
            str(bundles["mlp2"]),
            "--inputs",
            str(tmp_path / "in.npz"),
            "-o",
            str(tmp_path / "out.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    got = np.load(tmp_path / "out.npz")["out0"]
    np.testing.assert_allclose(got, module(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_local_channels_use_shared_memory_or_gloo_when_asked(bundles: dict[str, Path]) -> None:
    """Workers of one host move values through shared memory; GIMLET_TRANSPORT=gloo keeps
    them on gloo; both give torch's numbers (a dynamic batch, so the slots are sparse)."""
    module, x = _mlp_input()
    want = module(x).detach().numpy()
    for env, via in (({}, "shm"), ({"GIMLET_TRANSPORT": "gloo"}, "gloo")):
        result = launch(str(bundles["mlp3"]), [x.numpy()], env=env)
        np.testing.assert_allclose(result.outputs[0], want, rtol=1e-4, atol=1e-5)
        spans = [e for s in result.stats for e in s["events"] if e["cat"] == "transfer"]
        assert spans and {e["args"]["via"] for e in spans} == {via}


def test_killed_worker_fails_fast_naming_device_and_segment(bundles: dict[str, Path]) -> None:
    _, x = _mlp_input()
    with pytest.raises(RunError) as info:
        # cpu1 runs irecv, wait, then its C++ part: the 3rd progress step (index 2)
        launch(str(bundles["mlp2"]), [x.numpy()], env={"GIMLET_FAULT": "cpu1:exit@2"})
    msg = str(info.value)
    assert "cpu1 (rank 1) died with exit code 1 in segment 0 at gml.matmul" in msg, msg
    assert "(first op of C++ part seg0.part0)" in msg, msg
    assert _gone(info.value.pids)


def test_receive_timeout(bundles: dict[str, Path]) -> None:
    _, x = _mlp_input()
    start = time.time()
    with pytest.raises(
        RunError, match=r"cpu0 segment \d+ at comm.wait channel \d+ .*timed out after 2s"
    ) as info:
        launch(
            str(bundles["mlp2"]), [x.numpy()], timeout_s=2, env={"GIMLET_FAULT": "cpu1:sleep=60@0"}
        )
    assert time.time() - start < 30
    # and where the worker it waited for was stuck
    assert "  meanwhile: cpu1 (rank 1) was in segment 0 at comm.irecv" in str(info.value)
    assert _gone(info.value.pids)


def test_raised_error_names_the_op(bundles: dict[str, Path]) -> None:
    _, x = _mlp_input()
    with pytest.raises(RunError, match=r"worker cpu1 segment 0 at .*injected fault") as info:
        launch(str(bundles["mlp2"]), [x.numpy()], env={"GIMLET_FAULT": "cpu1:raise@1"})
    assert _gone(info.value.pids)


def test_tampered_bundle_is_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundles["mlp2"], copy)
    w = copy / "weights" / "cpu1.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(data)
    with pytest.raises(BundleError, match="weights/cpu1.safetensors does not match"):
        launch(str(copy), [np.zeros((2, 32), "f4")])
    w.unlink()
    with pytest.raises(BundleError, match="weights/cpu1.safetensors is missing"):
        launch(str(copy), [np.zeros((2, 32), "f4")])


def test_wrong_cluster_is_refused(bundles: dict[str, Path], capsys: Any) -> None:
    with pytest.raises(BundleError, match=r"bundle built for .*two.cluster \(devices cpu0:cpu"):
        launch(str(bundles["mlp2"]), [np.zeros((2, 32), "f4")], target=THREE)
    # the CLI: one message, exit 1
    argv = ["run", str(bundles["mlp3"]), "--inputs", os.devnull, "--target", "h100+cpu"]
    assert gimletc(argv) == 1


def test_bad_inputs_rejected_before_workers(bundles: dict[str, Path]) -> None:
    start = time.time()
    with pytest.raises(BundleError, match=r"input x: expected float32 \[\?x32\], got float32"):
        launch(str(bundles["mlp2"]), [np.zeros((2, 31), "f4")])
    with pytest.raises(BundleError, match="got float64"):
        launch(str(bundles["mlp2"]), [np.zeros((2, 32))])
    assert time.time() - start < 1.0  # no worker was started


@pytest.mark.parametrize(("bundle", "family"), [("cnn3", "cnn"), ("llama3", "llama_block")])
def test_families_on_three_cpu_workers_run_as_cxx(
    bundles: dict[str, Path], bundle: str, family: str
) -> None:
    manifest = json.loads((bundles[bundle] / "manifest.json").read_text())
    kinds = {(s["device"], s["artefact"]["kind"]) for s in manifest["segments"]}
    assert {d for d, _ in kinds} == {"cpu0", "cpu1", "cpu2"}  # really split three ways
    assert {k for _, k in kinds} == {"cpu-cxx"}
    module, inputs = models.family_with_bundle_weights(family, bundles[bundle])
    result = launch(str(bundles[bundle]), [x.numpy() for x in inputs])
    with torch.no_grad():
        want = module(*inputs).numpy()
    np.testing.assert_allclose(result.outputs[0], want, rtol=1e-4, atol=1e-5)


def test_bundle_holds_readable_cxx_for_cpu_segments(bundles: dict[str, Path]) -> None:
    b = bundles["mlp2"]
    manifest = json.loads((b / "manifest.json").read_text())
    art = manifest["segments"][0]["artefact"]
    assert art["kind"] == "cpu-cxx"
    assert art["parts"] == [
        {
            "source": "cpu/seg0.part0.cpp",
            "library": "cpu/seg0.part0.so",
            "ops": 3,
            "weights": ["fc1.weight", "fc1.bias", "fc2.weight"],  # placement put fc2's matmul here
        }
    ]
    assert "-march=native" in art["flags"] and "-O3" in art["flags"]
    for rel in ("cpu/seg0.part0.cpp", "cpu/seg0.part0.so", art["header"]):
        assert rel in manifest["files"]  # hashed like every other file
    source = (b / "cpu" / "seg0.part0.cpp").read_text()
    assert "// gml.matmul  fc1 (examples/mlp.py:" in source
    assert '#include "gimlet/cpu_runtime.h"' in source


def test_cpu_backend_interpreter_flag(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "b"
    argv = ["compile", "examples/mlp.py:model", "-o", str(out), "--target", THREE]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert gimletc([*argv, "--pin", "fc2=cpu1", "--cpu-backend", "interpreter"]) == 0
    finally:
        os.chdir(cwd)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["artefact"]["kind"] for s in manifest["segments"]} == {"interpreter"}
    assert not (out / "cpu").exists()
    module, x = _mlp_input()
    result = launch(str(out), [x.numpy()])
    np.testing.assert_allclose(result.outputs[0], module(x).detach().numpy(), rtol=1e-4, atol=1e-5)


CONV1D = """import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3)
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return self.fc(self.conv(x))


def model():
    torch.manual_seed(0)
    return Net(), (torch.randn(1, 4, 8),)
"""


def test_segment_the_backend_cannot_lower_falls_back_with_a_note(
    bundles: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    (tmp_path / "net.py").write_text(CONV1D)
    out = tmp_path / "b"
    argv = ["compile", f"{tmp_path}/net.py:model", "-o", str(out), "--target"]
    assert gimletc([*argv, str(bundles["two.cluster"]), "--pin", "conv=cpu1,fc=cpu0"]) == 0
    printed = capsys.readouterr().err
    # the model's path is shown relative to the working directory when it is below it
    shown = os.path.relpath(tmp_path / "net.py")
    shown = shown if not shown.startswith("..") else str(tmp_path / "net.py")
    assert (
        "gimletc: segment 0 on cpu1: reference interpreter (the CPU backend cannot compile it: "
        f"gml.conv at conv ({shown}:12): only 2-d convolution is supported)\n"
    ) in printed
    manifest = json.loads((out / "manifest.json").read_text())
    kinds = [s["artefact"]["kind"] for s in manifest["segments"]]
    assert kinds == ["interpreter", "cpu-cxx"]
    # by path under its own name: another test's net.py may already be sys.modules["net"]
    spec = importlib.util.spec_from_file_location("conv1d_net", tmp_path / "net.py")
    assert spec is not None and spec.loader is not None
    net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(net)
    module, (x,) = net.model()
    result = launch(str(out), [x.numpy()])
    np.testing.assert_allclose(result.outputs[0], module(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_tampered_library_is_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundles["mlp2"], copy)
    lib = copy / "cpu" / "seg0.part0.so"
    lib.write_bytes(lib.read_bytes() + b"\0")
    with pytest.raises(BundleError, match=r"cpu/seg0.part0.so does not match its manifest hash"):
        launch(str(copy), [np.zeros((2, 32), "f4")])


def test_bundle_from_another_cpu_rebuilds_its_source(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundles["mlp2"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for seg in manifest["segments"]:
        seg["artefact"]["built_for"] = "Some Other CPU"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    cache = tmp_path / "cache"
    module, x = _mlp_input()
    result = launch(str(copy), [x.numpy()], env={"GIMLET_CACHE_DIR": str(cache)})
    np.testing.assert_allclose(result.outputs[0], module(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert len(list((cache / "cpu").glob("*.so"))) == 2  # one per compiled part, built here


GPUS = (ROOT / "examples" / "cpu_two_gpus.cluster").read_text()


def test_gpu_to_gpu_channels_are_marked_for_nccl_and_fall_back_to_gloo_without_cuda(
    tmp_path: Path,
) -> None:
    (tmp_path / "gpus.cluster").write_text(GPUS)
    out = tmp_path / "b"
    argv = ["compile", "examples/mlp.py:model", "-o", str(out), "--target"]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert gimletc([*argv, str(tmp_path / "gpus.cluster"), "--pin", "fc1=gpu0,fc2=gpu1"]) == 0
    finally:
        os.chdir(cwd)
    manifest = json.loads((out / "manifest.json").read_text())
    via = {(c["from"], c["to"]): c["backend"] for c in manifest["channels"]}
    assert via == {("cpu0", "gpu0"): "gloo", ("gpu0", "gpu1"): "nccl", ("gpu1", "cpu0"): "gloo"}
    module, x = _mlp_input()
    result = launch(str(out), [x.numpy()], env={"CUDA_VISIBLE_DEVICES": ""})
    np.testing.assert_allclose(result.outputs[0], module(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    spans = [e for s in result.stats for e in s["events"] if e["cat"] == "transfer"]
    via = {int(e["name"].split()[0][2:]): e["args"]["via"] for e in spans}
    # no CUDA here: the NCCL channel falls back to gloo; the others, between workers of
    # one host, go through shared memory
    want = {c["id"]: "gloo" if c["backend"] == "nccl" else "shm" for c in manifest["channels"]}
    assert via == want and sorted(want.values()) == ["gloo", "shm", "shm"], via


CROSSED = """builtin.module attributes {gml.target = "TARGET"} {
  func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
    comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32>
    gml.segment "gpu0" () : () -> () {
      %a = comm.recv from "cpu0" channel 0 via "pcie" : tensor<4xf32>
      %b = gml.neg %a : tensor<4xf32>
      %t1 = comm.isend %a to "gpu1" channel 1 via "nvlink" : tensor<4xf32>
      %t2 = comm.isend %b to "gpu1" channel 2 via "nvlink" : tensor<4xf32>
      comm.wait %t1
      comm.wait %t2
      gml.yield
    }
    gml.segment "gpu1" () : () -> () {
      %r2 = comm.irecv from "gpu0" channel 2 via "nvlink"
      %r1 = comm.irecv from "gpu0" channel 1 via "nvlink"
      %b = comm.wait %r2 : tensor<4xf32>
      %a = comm.wait %r1 : tensor<4xf32>
      %c = gml.add %a, %b : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
      comm.send %c to "cpu0" channel 3 via "pcie" : tensor<4xf32>
      gml.yield
    }
    %r = comm.recv from "gpu1" channel 3 via "pcie" : tensor<4xf32>
    func.return %r : tensor<4xf32>
  }
}
"""


def test_channels_nccl_would_match_out_of_order_stay_on_gloo(tmp_path: Path) -> None:
    from gimlet.bundle import describe
    from gimlet.ir import parse

    (tmp_path / "gpus.cluster").write_text(GPUS)
    module = parse(CROSSED.replace("TARGET", str(tmp_path / "gpus.cluster")))
    via = {c["id"]: c["backend"] for c in describe(module)["channels"]}
    # gpu0 sends 1 then 2, gpu1 posts 2 then 1: NCCL ignores tags and would swap them
    assert via == {0: "gloo", 1: "gloo", 2: "gloo", 3: "gloo"}
    in_order = CROSSED.replace(
        """      %r2 = comm.irecv from "gpu0" channel 2 via "nvlink"
      %r1 = comm.irecv from "gpu0" channel 1 via "nvlink"
""",
        """      %r1 = comm.irecv from "gpu0" channel 1 via "nvlink"
      %r2 = comm.irecv from "gpu0" channel 2 via "nvlink"
""",
    )
    module = parse(in_order.replace("TARGET", str(tmp_path / "gpus.cluster")))
    via = {c["id"]: c["backend"] for c in describe(module)["channels"]}
    assert via == {0: "gloo", 1: "nccl", 2: "nccl", 3: "gloo"}


def _edit(m: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    for k in parents:
        m = m[k]
    if value is KeyError:
        del m[last]
    else:
        m[last] = value


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("format", 99, r"manifest.json: bundle format 99, expected 1"),
        ("segments.0.device", KeyError, r"malformed manifest: no segments\[0\].device"),
        ("cluster.devices", "cpu0", r"malformed manifest: cluster.devices should be list, not str"),
        ("segments.0.artefact.kind", "rocm", r"segments\[0\] has artefact kind 'rocm'; "),
        ("channels.0.to", "gpu9", r"malformed manifest: channels\[0\] joins unknown devices"),
        ("weights.cpu1", "../../etc/passwd", r"file '../../etc/passwd' is outside the bundle"),
        ("segments.0.artefact.parts.0.ops", "3", None),  # not read by the runtime: ignored
    ],
)
def test_malformed_manifest_is_refused_with_the_field(
    bundles: dict[str, Path], tmp_path: Path, path: str, value: Any, message: str | None
) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundles["mlp2"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    _edit(manifest, path, value)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    from gimlet.runtime.bundle import load_bundle

    if message is None:
        load_bundle(str(copy))
        return
    with pytest.raises(BundleError, match=message):
        load_bundle(str(copy))


def test_unreadable_manifest_fails_the_cli_with_one_line(
    bundles: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundles["mlp2"], copy)
    (copy / "manifest.json").write_text('{"format": 1, "segments": [')
    assert gimletc(["run", str(copy), "--inputs", os.devnull]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gimletc: error: {copy}/manifest.json: unreadable")


def test_bf16_model_split_over_two_cpu_workers_as_cxx(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "b"
    argv = ["compile", f"{ROOT}/tests/models.py:gpt_bf16", "-o", str(out), "--target"]
    assert gimletc([*argv, str(bundles["two.cluster"]), "--pin", "h.1=cpu1,lm_head=cpu1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["artefact"]["kind"] for s in manifest["segments"]} == {"cpu-cxx"}
    assert any(c["dtype"] == "bfloat16" for c in manifest["channels"])  # bf16 on the wire
    module, (ids,) = models.gpt_bf16()
    from gimlet.runtime import load

    with load(str(out)) as run:
        (got,) = run(ids)
    with torch.no_grad():
        want = module(ids)
    assert got.dtype == torch.bfloat16
    # bf16 tolerance as for the interpreter (tests/test_frontend.py)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=1e-2)


def test_outputs_the_caller_owns_are_wrapped_and_views_of_others_copied() -> None:
    """gimlet.load's tensors from a session's outputs: views of an arena handed over with
    them are wrapped as they are (a copy of a pipeline's 25.7 MB of logits cost 10 ms on
    the H200 machine); a view of memory the runtime reuses is copied."""
    import mmap

    from gimlet.runtime.inprocess import outputs_like

    m = mmap.mmap(-1, 4096)
    view = np.ndarray((4, 8), np.float32, buffer=m)
    view[...] = 1.5
    (owned,) = outputs_like([view], (), owned=True)
    (copied,) = outputs_like([view], ())
    assert np.shares_memory(owned.numpy(), view) and not np.shares_memory(copied.numpy(), view)
    assert owned.tolist() == copied.tolist() == view.tolist()


def test_large_outputs_are_handed_to_the_caller_without_a_copy(bundles: dict[str, Path]) -> None:
    """Outputs of GIMLET_HANDOVER_BYTES or more come as views of a handed arena (no copy
    out of the reused one): outputs still held are left alone by later requests, which
    get arenas of their own; once let go, an arena is written again (at most KEEP_FREE
    kept, the rest unmapped on both sides). Smaller ones are copied out of the reused
    arena."""
    import mmap

    from gimlet.runtime.bundle import load_bundle
    from gimlet.runtime.launch import Session

    module, _ = _mlp_input()
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((512, 32)).astype("f4") for _ in range(3)]
    # mlp's output [512, 10] f32 is 20 KiB: handed over at 16 KiB, copied at 1 MiB
    for limit, handed in ((16 << 10, True), (1 << 20, False)):
        env = {"GIMLET_HANDOVER_BYTES": str(limit)}
        session = Session(load_bundle(str(bundles["mlp2"])), env=env)
        try:
            got = [session([x]).outputs[0] for x in xs]
            for x, g in zip(xs, got, strict=True):  # earlier outputs unchanged by later ones
                want = module(torch.from_numpy(x)).detach().numpy()
                np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5)
            bases = [g.base for g in got]
            if handed:  # each request's own shared memory while they are held
                assert all(isinstance(b, mmap.mmap) for b in bases)
                assert len({id(b) for b in bases}) == 3
                ids = {id(b) for b in bases}
                del got, bases, g
                again = session([xs[0]]).outputs[0]  # 3 let go: 2 kept, 1 unmapped
                assert id(again.base) in ids and len(session.handed) == 2
                want = module(torch.from_numpy(xs[0])).detach().numpy()
                np.testing.assert_allclose(again, want, rtol=1e-4, atol=1e-5)
                other = session([xs[1]]).outputs[0]  # `again` held: the other one
                assert other.base is not again.base and len(session.handed) == 2
                np.testing.assert_allclose(again, want, rtol=1e-4, atol=1e-5)
            else:  # copies of their own
                assert bases == [None, None, None]
        finally:
            session.close()
