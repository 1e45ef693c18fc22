"""gimlet.load in the caller's process, and the Python entry points built on it.

In-process = multi-process = interpreter on the same bundles (numbers, not speed);
which path `processes="auto"` picks and that it says so; faults name device, segment and
op and leave the loaded bundle usable; outputs belong to the caller; gimlet.compile
runs compiled backends; torch.compile(backend="gimlet") compiles what gimlet supports
and hands the rest back to torch with one warning. Tests marked `cuda` run only where
torch sees a GPU (the lead runs them on the H200).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import gimlet
import models
from conftest import mlp_example
from gimlet.cli import main as gimletc
from gimlet.runtime.bundle import Bundle, BundleError
from gimlet.runtime.inprocess import InProcessError
from gimlet.runtime.launch import RunError

ROOT = Path(__file__).resolve().parents[1]
TWO = """cluster "two-cpus"
device cpu0 : cpu
device cpu1 : cpu
link cpu0 <-> cpu1 : pcie { bandwidth = 55 GB/s, latency = 12 us }
"""
CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch sees none)")

IDENTITY = """import torch


class Drop(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(x)


def model():
    return Drop(), (torch.randn(3, 4),)
"""


def _compile(out: Path, model: str, target: str, *flags: str) -> Path:
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert gimletc(["compile", model, "-o", str(out), "--target", target, *flags]) == 0
    finally:
        os.chdir(cwd)
    return out


@pytest.fixture(scope="module")
def bundles() -> Any:
    d = Path(tempfile.mkdtemp(prefix="gimlet-inproc-"))
    (d / "two.cluster").write_text(TWO)
    (d / "ident.py").write_text(IDENTITY)
    two = str(d / "two.cluster")
    out = {
        "mlp": _compile(d / "mlp", "examples/mlp.py:model", "cpu"),
        "mlp2": _compile(d / "mlp2", "examples/mlp.py:model", two, "--pin", "fc1=cpu1"),
        "mlp_interp": _compile(
            d / "mlp_interp", "examples/mlp.py:model", "cpu", "--backend", "cpu=interpreter"
        ),
        "cnn": _compile(d / "cnn", "tests/models.py:cnn", "cpu"),
        "gpt": _compile(d / "gpt", "tests/models.py:gpt", "cpu"),
        # a GPU segment and comm ops between it and the host; the interpreter runs it here
        "gpu": _compile(
            d / "gpu",
            "examples/mlp.py:model",
            "h200",
            "--pin",
            "fc1=gpu0,fc2=gpu0",
            "--backend",
            "nvidia=interpreter",
        ),
        "ident": _compile(d / "ident", f"{d}/ident.py:model", "cpu"),
        "bf16": _compile(d / "bf16", "tests/models.py:gpt_bf16", "cpu"),
    }
    yield out
    shutil.rmtree(d, ignore_errors=True)


def _mlp() -> tuple[torch.nn.Module, torch.Tensor]:
    return mlp_example(5)


# -- which path, and the same numbers on every path


def test_auto_runs_one_device_bundles_in_process_and_says_why(bundles: dict[str, Path]) -> None:
    with gimlet.load(str(bundles["mlp"])) as run:
        assert run.processes == "one"
        assert run.reason == "every segment can run in the caller's process: cpu0"
    with gimlet.load(str(bundles["gpu"])) as run:  # the host CPU and one GPU
        assert run.processes == "one"
        assert run.reason == "every segment can run in the caller's process: gpu0, cpu0"
    with gimlet.load(str(bundles["mlp2"])) as run:
        assert run.processes == "per-device"
        assert run.reason == (
            "2 CPU devices (cpu0, cpu1): one process each; the host cpu0 in this process, "
            "cpu1 on a worker"
        )
    with pytest.raises(gimlet.errors.UserError, match=r"processes='two': expected 'auto'"):
        gimlet.load(str(bundles["mlp"]), processes="two")


@pytest.mark.parametrize(
    ("bundle", "family"), [("mlp", None), ("cnn", "cnn"), ("gpt", "gpt"), ("gpu", None)]
)
def test_in_process_equals_workers_equals_torch(
    bundles: dict[str, Path], bundle: str, family: str | None
) -> None:
    if family is None:
        module, x = _mlp()
        inputs: tuple[torch.Tensor, ...] = (x,)
    else:
        module, inputs = models.family_with_bundle_weights(family, bundles[bundle])
    with torch.no_grad():
        want = module(*inputs)
    with gimlet.load(str(bundles[bundle]), processes="one") as one:
        (a,) = one(*inputs)
        (a2,) = one(*inputs)  # a second call: executors and mailboxes are reused
    with gimlet.load(str(bundles[bundle]), processes="per-device") as workers:
        (b,) = workers(*inputs)
        assert workers.last is not None and workers.last.pids  # really other processes
    assert a.dtype == b.dtype == want.dtype and a.shape == b.shape == want.shape
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a2, a, rtol=0, atol=0)
    torch.testing.assert_close(a, want, rtol=1e-4, atol=1e-5)


def test_in_process_equals_the_interpreter_bundle(bundles: dict[str, Path]) -> None:
    _, x = _mlp()
    manifest = json.loads((bundles["mlp_interp"] / "manifest.json").read_text())
    assert {s["artefact"]["kind"] for s in manifest["segments"]} == {"interpreter"}
    with gimlet.load(str(bundles["mlp"])) as cxx, gimlet.load(str(bundles["mlp_interp"])) as ref:
        torch.testing.assert_close(cxx(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)


OUT_OF_ORDER = """builtin.module {
  func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
    comm.send %x to "gpu1" channel 0 via "pcie" : tensor<4xf32>
    gml.segment "gpu0" () : () -> () {
      %a = comm.recv from "gpu1" channel 1 via "nvlink" : tensor<4xf32>
      comm.send %a to "cpu0" channel 2 via "pcie" : tensor<4xf32>
      gml.yield
    }
    gml.segment "gpu1" () : () -> () {
      %a = comm.recv from "cpu0" channel 0 via "pcie" : tensor<4xf32>
      comm.send %a to "gpu0" channel 1 via "nvlink" : tensor<4xf32>
      gml.yield
    }
    %r = comm.recv from "gpu0" channel 2 via "pcie" : tensor<4xf32>
    func.return %r : tensor<4xf32>
  }
}
"""


def test_a_program_whose_segments_must_overlap_gets_workers(bundles: dict[str, Path]) -> None:
    from gimlet.ir import parse
    from gimlet.runtime.bundle import load_bundle
    from gimlet.runtime.inprocess import choose_processes, sequential_order_problem

    problem = sequential_order_problem(parse(OUT_OF_ORDER))
    assert problem == "segment 0 on gpu0 waits for channel 1 before the segment on gpu1 sends it"
    bundle = load_bundle(str(bundles["gpu"]))
    assert choose_processes(bundle, "auto", problem) == (
        "per-device",
        f"its segments must run concurrently ({problem})",
    )
    with pytest.raises(BundleError, match="this bundle cannot run in one process: segment 0"):
        choose_processes(bundle, "one", problem)
    assert sequential_order_problem(parse(TWO_IN_ORDER)) is None


def _manifest(*segments: tuple[str, str]) -> Bundle:
    """A bundle's manifest as choose_processes reads it: cpu0 hosts two GPUs and cpu1;
    a segment per (device, artefact kind)."""
    devices = [("cpu0", "cpu"), ("gpu0", "nvidia"), ("gpu1", "nvidia"), ("cpu1", "cpu")]
    return Bundle(
        "b",
        {
            "cluster": {"host": "cpu0", "devices": [{"name": n, "kind": k} for n, k in devices]},
            "segments": [{"device": d, "artefact": {"kind": k}} for d, k in segments],
        },
    )


def test_auto_pipelines_gpu_stages_in_one_process() -> None:
    """A pipeline whose stages all run compiled on GPUs is driven from the caller (copy
    engines between the GPUs, no NCCL kernels beside the compute); a stage on a CPU or
    the interpreter gets workers; without micro-batches two GPUs still get workers."""
    from gimlet.runtime.inprocess import choose_processes

    gpus = _manifest(("gpu0", "nvidia"), ("gpu1", "nvidia"))
    assert choose_processes(gpus, "auto", None, micro_batches=4) == (
        "one",
        "every stage compiled for a GPU (gpu0, gpu1): this process queues their work, copy "
        "engines move values between them",
    )
    assert choose_processes(gpus, "auto", None) == (
        "per-device",
        "2 GPUs (gpu0, gpu1): one worker each, NCCL between",
    )
    with_cpu = _manifest(("gpu0", "nvidia"), ("cpu1", "cpp"))
    assert choose_processes(with_cpu, "auto", None, micro_batches=4) == (
        "per-device",
        "cpu1 runs a stage on its cores: in one process it would hold back the others",
    )
    fallback = _manifest(("gpu0", "nvidia"), ("gpu1", "interpreter"))
    assert choose_processes(fallback, "auto", None, micro_batches=4)[1] == (
        "gpu1 runs a stage on the interpreter: in one process it would hold back the others"
    )
    assert choose_processes(gpus, "per-device", None, micro_batches=4) == (
        "per-device",
        "asked for",
    )


def test_compile_says_where_a_pipeline_runs_when_it_differs() -> None:
    """gimletc compile prints how a plain call runs the bundle and, where micro-batches
    change it, how a pipeline does (two GPUs: workers, but a pipeline in this process)."""
    from gimlet.cli import _pipelined_line
    from gimlet.runtime.inprocess import choose_processes

    gpus = _manifest(("gpu0", "nvidia"), ("gpu1", "nvidia"))
    plain, piped = (choose_processes(gpus, "auto", None, m) for m in (1, 2))
    assert _pipelined_line(plain, piped) == (
        "with --micro-batches M (micro_batches=M) it runs in this process (every stage "
        "compiled for a GPU (gpu0, gpu1): this process queues their work, copy engines move "
        "values between them)"
    )
    cpus = _manifest(("cpu0", "cpp"), ("cpu1", "cpp"))
    plain, piped = (choose_processes(cpus, "auto", None, m) for m in (1, 2))
    assert _pipelined_line(plain, piped) is None  # workers either way


TWO_IN_ORDER = """builtin.module {
  func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
    comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32>
    gml.segment "gpu0" () : () -> () {
      %a = comm.recv from "cpu0" channel 0 via "pcie" : tensor<4xf32>
      comm.send %a to "cpu0" channel 1 via "pcie" : tensor<4xf32>
      gml.yield
    }
    %r = comm.recv from "gpu0" channel 1 via "pcie" : tensor<4xf32>
    func.return %r : tensor<4xf32>
  }
}
"""


def test_two_cpu_bundle_forced_into_one_process(bundles: dict[str, Path]) -> None:
    module, x = _mlp()
    with gimlet.load(str(bundles["mlp2"]), processes="one") as run:
        assert (run.processes, run.reason) == ("one", "asked for")
        (got,) = run(x)
    torch.testing.assert_close(got, module(x).detach(), rtol=1e-4, atol=1e-5)


def test_dynamic_shapes_and_bf16_in_process(bundles: dict[str, Path]) -> None:
    module, inputs = models.family_with_bundle_weights("gpt", bundles["gpt"])
    with gimlet.load(str(bundles["gpt"])) as run:
        for seq in (12, 5, 31):
            ids = torch.randint(0, 97, (2, seq))
            with torch.no_grad():
                torch.testing.assert_close(run(ids)[0], module(ids), rtol=1e-4, atol=1e-5)
    model, (ids,) = models.gpt_bf16()
    with gimlet.load(str(bundles["bf16"])) as run:
        (got,) = run(ids)
    assert got.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(got.float(), model(ids).float(), rtol=2e-2, atol=1e-2)


def test_numpy_inputs_and_outputs_the_caller_owns(bundles: dict[str, Path]) -> None:
    x = torch.randn(3, 4)
    with gimlet.load(str(bundles["ident"])) as run:
        (y,) = run(x)
        torch.testing.assert_close(y, x)
        y.add_(1)  # the output is a copy, not the input
        torch.testing.assert_close(run(x)[0], x)
        (z,) = run(x.numpy())  # numpy arrays go in too
        assert isinstance(z, torch.Tensor)
    _, xm = _mlp()
    with gimlet.load(str(bundles["mlp"])) as run:
        (a,) = run(xm)
        keep = a.clone()
        run(xm + 1)  # a later call does not write into an earlier output
        torch.testing.assert_close(a, keep, rtol=0, atol=0)


def test_bad_inputs_get_the_multi_process_message(bundles: dict[str, Path]) -> None:
    with gimlet.load(str(bundles["mlp"])) as run:
        with pytest.raises(BundleError, match=r"input x: expected float32 \[\?x32\], got float32"):
            run(torch.zeros(2, 31))
        with pytest.raises(BundleError, match=r"got float64 array of shape \[2, 32\]"):
            run(torch.zeros(2, 32, dtype=torch.float64))
        with pytest.raises(BundleError, match="the bundle takes 1 inputs, got 2"):
            run(torch.zeros(2, 32), torch.zeros(2, 32))


# -- faults


def test_in_process_fault_names_device_segment_and_op_and_the_next_call_works(
    bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, x = _mlp()
    # cpu0's first progress step is its C++ part: the fault fires in the first call only
    monkeypatch.setenv("GIMLET_FAULT", "cpu0:raise@0")
    with gimlet.load(str(bundles["mlp"])) as run:
        with pytest.raises(InProcessError) as info:
            run(x)
        assert str(info.value).startswith(
            "cpu0 segment 0 at gml.matmul (examples/mlp.py:14) "
            "(first op of C++ part seg0.part0): RuntimeError: injected fault before gml.matmul"
        ), str(info.value)
        torch.testing.assert_close(run(x)[0], module(x).detach(), rtol=1e-4, atol=1e-5)


def test_gpu_segment_fault_in_process_names_the_gpu(
    bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, x = _mlp()
    monkeypatch.setenv("GIMLET_FAULT", "gpu0:raise@2")
    with (
        gimlet.load(str(bundles["gpu"]), processes="one") as run,
        pytest.raises(InProcessError, match=r"^gpu0 segment 0 at gml\.\w+ .*injected fault"),
    ):
        run(x)


def _gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


def test_workers_get_requests_without_files_and_a_dead_worker_is_replaced(
    bundles: dict[str, Path],
) -> None:
    module, x = _mlp()
    with gimlet.load(str(bundles["mlp2"])) as run:
        run(x)
        assert run.session is not None
        # the caller is the host (cpu0), cpu1 its one worker, whose log is the session's
        # only file: requests, outputs, status and errors go through sockets and shared
        # memory
        assert sorted(os.listdir(run.session.log_dir)) == ["log-1.txt"]
        first = run.last.pids if run.last else []
        assert len(first) == 1
        os.kill(first[0], 9)  # between calls: the next call starts a new worker
        run.session.procs[0].wait()
        (y,) = run(x)
        assert run.last is not None and run.last.pids != first
        torch.testing.assert_close(y, module(x).detach(), rtol=1e-4, atol=1e-5)
        pids = run.last.pids
    assert _gone(first) and _gone(pids)


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        # cpu1 runs: irecv, wait, its C++ part (step 2), isend, wait; cpu0 (the caller):
        # isend, then its segment's irecv, wait, C++ part (step 3), then a wait.
        # A worker raises, or dies, while the caller (the host) waits for its channel:
        ("cpu1:raise@2", r"worker cpu1 segment 0 at gml\.\w+ .*\(first op of C\+\+ part "
         r"seg0\.part0\): RuntimeError: injected fault before gml\.\w+"),
        ("cpu1:exit@2", r"worker cpu1 \(rank 1\) died with exit code 1 in segment 0 at "
         r"gml\.\w+ .*\(first op of C\+\+ part seg0\.part0\)"),
        # the host's own share, in the caller, raises: the worker waiting for it goes too
        ("cpu0:raise@3", r"cpu0 segment 1 at gml\.\w+ .*\(first op of C\+\+ part "
         r"seg1\.part0\): RuntimeError: injected fault before gml\.\w+"),
    ],
)  # fmt: skip
def test_caller_as_host_faults_name_device_segment_and_op_and_the_next_call_works(
    bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch, fault: str, said: str
) -> None:
    module, x = _mlp()
    monkeypatch.setenv("GIMLET_FAULT", fault)  # the workers inherit it when they start
    with gimlet.load(str(bundles["mlp2"])) as run:
        assert run.session is not None and run.session.local is not None
        with pytest.raises(RunError) as info:
            run(x)
        assert re.match(said, str(info.value)), str(info.value)
        assert info.value.pids and _gone(info.value.pids)
        monkeypatch.delenv("GIMLET_FAULT")  # the next workers start without it
        (y,) = run(x)
        torch.testing.assert_close(y, module(x).detach(), rtol=1e-4, atol=1e-5)
        pids = run.last.pids if run.last else []
    assert _gone(pids)


def test_caller_as_host_a_hung_worker_misses_the_deadline(
    bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    _, x = _mlp()
    monkeypatch.setenv("GIMLET_FAULT", "cpu1:sleep=60@2")
    with gimlet.load(str(bundles["mlp2"]), deadline_s=3) as run:
        start = time.time()
        with pytest.raises(RunError) as info:
            run(x)
        assert time.time() - start < 30  # start-up plus the deadline, not the sleep
    msg = str(info.value)
    assert re.match(
        r"worker cpu1 \(rank 1\) was in segment 0 at gml\.\w+ .*\(first op of C\+\+ part "
        r"seg0\.part0\) and request 1 did not finish within 3s",
        msg,
    ), msg
    assert _gone(info.value.pids)


CALLER = """import os
import gimlet
import torch
x = torch.zeros(2, 32)
os.environ["GIMLET_FAULT"] = "cpu0:sleep=600@0"  # before its send: the worker waits
run = gimlet.load({bundle!r})
run.session._ensure_started()
print(run.session.procs[0].pid, flush=True)
run(x)
"""


def test_a_worker_whose_caller_dies_mid_request_exits(bundles: dict[str, Path]) -> None:
    import subprocess
    import time

    code = CALLER.format(bundle=str(bundles["mlp2"]))
    caller = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert caller.stdout is not None
    worker = int(caller.stdout.readline())
    time.sleep(1.0)  # the worker is starting, or waiting for the caller's channel
    caller.kill()
    caller.wait()
    # it notices (its control socket closed) at once, wherever it is: not after 60 s
    deadline = time.time() + 30
    while not _gone([worker]) and time.time() < deadline:
        time.sleep(0.1)
    assert _gone([worker])


def test_a_hung_worker_misses_the_deadline_naming_where_it_was(bundles: dict[str, Path]) -> None:
    import time

    from gimlet.runtime.bundle import load_bundle
    from gimlet.runtime.launch import Session

    _, x = _mlp()
    # the host's 1st progress step is its first top-level op; it sleeps there
    session = Session(
        load_bundle(str(bundles["mlp2"])),
        env={"GIMLET_FAULT": "cpu0:sleep=60@0"},
        deadline_s=3,
    )
    session._ensure_started()
    pids = [p.pid for p in session.procs]
    start = time.time()
    try:
        with pytest.raises(RunError) as info:
            session([x.numpy()])
    finally:
        session.close()
    assert time.time() - start < 30  # start-up plus the deadline, not the sleep
    msg = str(info.value)
    assert "request 1 did not finish within 3s" in msg, msg
    assert "cpu0 (rank 0) was in segment" in msg or "cpu0 (rank 0) was at" in msg, msg
    assert _gone(pids)


def test_worker_killed_by_a_signal_is_named(bundles: dict[str, Path]) -> None:
    from gimlet.runtime.bundle import load_bundle
    from gimlet.runtime.launch import Session

    _, x = _mlp()
    session = Session(
        load_bundle(str(bundles["mlp2"])), env={"GIMLET_FAULT": "cpu1:sleep=60@0"}, timeout_s=30
    )
    try:
        session._ensure_started()
        victim = session.procs[1]
        import threading

        # once cpu1 is asleep at its first op, kill it from outside
        def kill() -> None:
            assert session.status is not None
            for _ in range(600):
                if b"comm.irecv" in session.status.read(1):
                    os.kill(victim.pid, 9)
                    return
                threading.Event().wait(0.05)

        t = threading.Thread(target=kill)
        t.start()
        with pytest.raises(RunError, match=r"cpu1 \(rank 1\) was killed by SIGKILL in segment 0"):
            session([x.numpy()])
        t.join()
    finally:
        session.close()


# -- gimletc


def test_cli_run_says_how_it_runs(bundles: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    _, x = _mlp()
    np.savez(tmp_path / "in.npz", x=x.numpy())
    for processes, said in (
        ("auto", "gimletc: running in this process (every segment can run in the caller's "
         "process: cpu0)"),
        ("per-device", "gimletc: running on 1 worker process (asked for)"),
    ):  # fmt: skip
        argv = ["run", str(bundles["mlp"]), "--inputs", str(tmp_path / "in.npz")]
        assert gimletc([*argv, "--processes", processes, "--trace", str(tmp_path / "t.json")]) == 0
        out, err = capsys.readouterr()
        assert out.startswith("out0: float32 [5, 10]")
        assert said in err, err
        trace = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
        assert any(e["name"] == "seg0.part0 (C++, 4 ops)" for e in trace)


def test_compile_explain_says_how_load_runs_the_bundle(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "two.cluster").write_text(TWO)
    _compile(tmp_path / "a", "examples/mlp.py:model", "cpu", "--explain")
    out, err = capsys.readouterr()
    line = (
        "gimlet.load and gimletc run run this bundle in one process (every segment can run "
        "in the caller's process: cpu0)"
    )
    assert f"runtime: {line}\n" in out and f"gimletc: {line}\n" in err
    _compile(
        tmp_path / "b",
        "examples/mlp.py:model",
        str(tmp_path / "two.cluster"),
        "--pin",
        "fc1=cpu1",
        "--explain=json",
    )
    out, err = capsys.readouterr()
    out = out[: out.rindex("}\n") + 1]  # the report; then the line saying what was written
    report = json.loads(out)
    assert report["runtime"] == {
        "processes": "per-device",
        "why": "2 CPU devices (cpu0, cpu1): one process each",
    }


# -- gimlet.compile


def test_gimlet_compile_runs_compiled_code_in_process() -> None:
    module, x = _mlp()
    sys.path.insert(0, str(ROOT / "examples"))
    from mlp import model

    _, inputs, dyn = model()
    compiled = gimlet.compile(module, inputs, dynamic_shapes=dyn)
    (y,) = compiled(x)
    run = compiled.loaded()
    assert run.processes == "one"
    manifest = json.loads(Path(run.bundle.path, "manifest.json").read_text())
    assert {s["artefact"]["kind"] for s in manifest["segments"]} == {"cpu-cxx"}
    torch.testing.assert_close(y, module(x).detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled.reference(x)[0], y, rtol=1e-4, atol=1e-5)
    interp = gimlet.compile(module, inputs, dynamic_shapes=dyn, backend="interpreter")
    manifest = json.loads(Path(interp.loaded().bundle.path, "manifest.json").read_text())
    assert {s["artefact"]["kind"] for s in manifest["segments"]} == {"interpreter"}
    torch.testing.assert_close(interp(x)[0], y, rtol=1e-4, atol=1e-5)


def test_gimlet_compile_for_a_cpu_and_gpu_target() -> None:
    module, x = _mlp()
    compiled = gimlet.compile(
        module,
        (x,),
        target="h200",
        pin="fc1=gpu0,fc2=gpu0",
        backend=None if CUDA else {"nvidia": "interpreter"},
    )
    (y,) = compiled(x)
    assert compiled.loaded().processes == "one"
    torch.testing.assert_close(y, module(x).detach(), rtol=1e-4, atol=1e-5)


# -- torch.compile(backend="gimlet")


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 16)
        self.bn = torch.nn.BatchNorm1d(16)
        self.out = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.bn(self.fc(x))))


class _Topk(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.topk(x.relu(), 2).values


class _Break(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        torch._dynamo.graph_break()
        return self.b(torch.tanh(y))


def _graphs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Records what the gimlet backend returns for each graph dynamo hands it."""
    import gimlet.dynamo

    made: list[Any] = []
    real = gimlet.dynamo.backend

    def spy(gm: Any, example_inputs: Any, **kw: Any) -> Any:
        made.append(real(gm, example_inputs, **kw))
        return made[-1]

    monkeypatch.setattr(gimlet.dynamo, "backend", spy)
    return made


def test_torch_compile_backend_gimlet(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    made = _graphs(monkeypatch)
    torch.manual_seed(0)
    net, x = _Net().eval(), torch.randn(4, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fallback would warn
        got = torch.compile(net, backend="gimlet")(x)
    with torch.no_grad():
        torch.testing.assert_close(got, net(x), rtol=1e-4, atol=1e-5)
    assert [type(m).__name__ for m in made] == ["_Runner"]  # compiled by gimlet
    # graph breaks: each graph is compiled on its own
    made.clear()
    torch._dynamo.reset()
    brk = _Break().eval()
    got = torch.compile(brk, backend="gimlet")(x)
    with torch.no_grad():
        torch.testing.assert_close(got, brk(x), rtol=1e-4, atol=1e-5)
    assert [type(m).__name__ for m in made] == ["_Runner", "_Runner"]
    torch._dynamo.reset()


def test_torch_compile_hands_unsupported_graphs_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch._dynamo

    import gimlet.dynamo

    torch._dynamo.reset()
    monkeypatch.setattr(gimlet.dynamo, "_WARNED", set())
    x = torch.randn(3, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = torch.compile(_Topk(), backend="gimlet")
        got = f(x)
        f(x)
        torch.compile(_Topk(), backend="gimlet", dynamic=False)(torch.randn(2, 5))
    torch.testing.assert_close(got, _Topk()(x))
    mine = [str(w.message) for w in caught if "gimlet" in str(w.message)]
    assert len(mine) == 1, mine
    assert mine[0].startswith("gimlet cannot compile this graph, it runs on torch: ")
    line = _Topk.forward.__code__.co_firstlineno + 1
    assert mine[0].endswith(f"test_inprocess.py:{line}: unsupported op aten.topk.default"), mine[0]
    torch._dynamo.reset()


def test_torch_compile_sees_changed_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._dynamo

    import gimlet.dynamo

    torch._dynamo.reset()
    monkeypatch.setattr(gimlet.dynamo, "_WARNED", set())
    net, x = _Net().eval(), torch.randn(4, 8)
    f = torch.compile(net, backend="gimlet")
    f(x)
    with torch.no_grad():
        net.out.weight.mul_(2)  # an in-place update gimlet's copy does not have
    with pytest.warns(UserWarning, match="weights changed after torch.compile captured them"):
        got = f(x)
    with torch.no_grad():
        torch.testing.assert_close(got, net(x), rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


def test_torch_compile_rejects_unknown_options() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    f = torch.compile(_Net().eval(), backend="gimlet", options={"tagret": "cpu"})
    with pytest.raises(Exception, match=r"unknown option\(s\) tagret; gimlet takes target"):
        f(torch.randn(4, 8))
    torch._dynamo.reset()


# -- GPU to GPU in one process, with torch.cuda faked


class _OnGpu0(torch.Tensor):
    """A host tensor that says it is on cuda:0 (nothing here reads its memory)."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda", 0)

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True


def test_a_pipelined_gpu_value_crosses_gpus_after_its_producer_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pipelined, a send of a CUDA value records an event on its GPU's current stream
    (right after the kernels that made it) and the copy to the next GPU waits for that
    event (peer_copy's `ready`), not for the micro-batches its GPU was given since;
    unpipelined, the copy waits for the GPU's stream (no event). A receiver that keeps
    the value where it is (the host's returned channels) gets the tensor itself."""
    from gimlet.runtime import inprocess

    class Event:
        def record(self, stream: str) -> None:
            self.stream = stream

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: f"stream of {device}")
    copies: list[tuple[Any, Any, Any]] = []

    def peer_copy(t: Any, device: Any, ready: Any = None) -> str:
        copies.append((t, device, ready))
        return "copied"

    monkeypatch.setattr(inprocess, "peer_copy", peer_copy)
    x = torch.Tensor._make_subclass(_OnGpu0, torch.zeros(2))
    op = SimpleNamespace(channel=SimpleNamespace(value=SimpleNamespace(data=1)))
    for pipelined in (True, False):
        box = inprocess._Mailbox()
        box.mark_ready = pipelined
        box.movers = {1: inprocess._mover("cuda:1")}
        box.send(op, x)
        assert box.wait_recv(box.post_recv(op), op) == "copied"
        box.movers = {1: inprocess._unwrap}
        box.send(op, x)
        assert box.wait_recv(box.post_recv(op), op) is x
        assert box.values == {}
    (t1, to1, ready), (t2, to2, unordered) = copies
    assert t1 is x and t2 is x and to1 == to2 == torch.device("cuda", 1)
    assert isinstance(ready, Event) and ready.stream == "stream of cuda:0"
    assert unordered is None


# -- on a GPU (skipped here; the lead runs them on the H200)


@pytest.fixture(scope="module")
def cuda_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not CUDA:
        pytest.skip("needs a CUDA GPU (torch sees none)")
    d = Path(tempfile.mkdtemp(prefix="gimlet-cuda-"))
    return _compile(d / "gpu", "examples/mlp.py:model", "h200", "--pin", "fc1=gpu0,fc2=gpu0")


@cuda
def test_cuda_bundle_in_process_keeps_gpu_tensors_on_the_gpu(cuda_bundle: Path) -> None:
    manifest = json.loads((cuda_bundle / "manifest.json").read_text())
    assert [s["artefact"]["kind"] for s in manifest["segments"]] == ["cuda"]
    module, x = _mlp()
    want = module(x).detach()
    with gimlet.load(str(cuda_bundle)) as run:
        assert run.processes == "one"
        from gimlet.runtime.inprocess import InProcess

        assert isinstance(run.inprocess, InProcess)
        assert run.inprocess.mailbox.movers  # values cross to the GPU by .to(), no workers
        (host,) = run(x)  # host tensors in: host tensors out
        assert host.device.type == "cpu"
        xg = x.cuda()
        (dev,) = run(xg)  # GPU tensors in: GPU tensors out, no copy back to the host
        assert dev.device == xg.device
        big = torch.randn(16384, 32, device="cuda")  # 2 MiB: a larger pinned buffer
        (bo,) = run(big.cpu())
    torch.testing.assert_close(host, want, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(dev.cpu(), want, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(bo, module(big.cpu()).detach(), rtol=1e-3, atol=1e-3)
    with gimlet.load(str(cuda_bundle), processes="per-device") as workers:
        (b,) = workers(x)
    torch.testing.assert_close(b, host, rtol=1e-5, atol=1e-5)


@cuda
def test_cuda_executor_takes_device_tensors(cuda_bundle: Path) -> None:
    from gimlet.runtime.bundle import load_bundle
    from gimlet.runtime.inprocess import InProcess

    run = InProcess(load_bundle(str(cuda_bundle)))
    ex = [e for (dev, kind), e in run.executors.items() if kind == "cuda"]
    assert ex and getattr(ex[0], "tensor_device", None) == "cuda"
    movers = run.mailbox.movers
    _, x = _mlp()
    moved = movers[0](x.numpy())  # channel 0: host -> gpu0
    assert isinstance(moved, torch.Tensor) and moved.is_cuda
    # channel 1: gpu0 -> host, only to be returned: it stays on the GPU until the output
    # goes to the caller's device
    assert movers[1](moved) is moved


@cuda
def test_torch_compile_on_the_gpu() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    net, x = _Net().eval().cuda(), torch.randn(4, 8, device="cuda")
    options = {"target": "h200", "pin": "fc=gpu0,bn=gpu0,out=gpu0"}
    got = torch.compile(net, backend="gimlet", options=options)(x)
    assert got.is_cuda
    with torch.no_grad():
        torch.testing.assert_close(got, net(x), rtol=1e-3, atol=1e-3)
    torch._dynamo.reset()


def test_gimlet_fault_names_a_device_an_action_and_a_step(monkeypatch: Any) -> None:
    """runtime/faults.py, which the workers and the in-process runtime share."""
    from gimlet.runtime.faults import Fault, from_env

    monkeypatch.setenv("GIMLET_FAULT", "cpu1:sleep=2.5@3")
    assert from_env() == Fault("cpu1", "sleep", 3, 2.5)
    monkeypatch.setenv("GIMLET_FAULT", "cpu1")  # no action
    assert from_env() is None
    monkeypatch.delenv("GIMLET_FAULT")
    assert from_env() is None
    fault = Fault("cpu0", "raise", 1)
    fault.check(0, "gml.add")  # not its step
    with pytest.raises(RuntimeError, match="^injected fault before gml.add$"):
        fault.check(1, "gml.add")
    Fault("cpu0", "exit", 0).check(0, "gml.add", may_exit=False)  # in one process: nothing
