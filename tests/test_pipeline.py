"""Micro-batch pipelining (runtime/pipeline.py): the wavefront's stages, the shared-memory
ring that holds a message per micro-batch, and pipelined requests on real workers that
equal torch on the whole batch."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gimlet.cli import main as gimletc
from gimlet.runtime.control import LocalSlot
from gimlet.runtime.pipeline import (
    PipelineError,
    check_split,
    join,
    join_micro,
    split,
    stages,
)

ROOT = Path(__file__).resolve().parents[1]
THREE = str(ROOT / "examples" / "three_cpus.cluster")


def _example(name: str) -> Any:
    sys.path.insert(0, str(ROOT / "examples"))
    return __import__(name).model()


@pytest.fixture(scope="module")
def bundles() -> Any:
    d = Path(tempfile.mkdtemp(prefix="gimlet-pipeline-"))
    specs = {
        # cpu0 (host) -> cpu1 -> cpu2 -> cpu0: a three-stage pipeline
        "mlp3": ("examples/mlp.py:model", "fc1=cpu1,fc2=cpu2"),
        "gpt3": ("examples/gpt.py:model", "h.0=cpu1,h.1=cpu2,ln_f=cpu2,lm_head=cpu2"),
    }
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for name, (model, pins) in specs.items():
            argv = ["compile", model, "-o", str(d / name), "--target", THREE, "--pin", pins]
            assert gimletc(argv) == 0
    finally:
        os.chdir(cwd)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _program(path: Path) -> Any:
    from gimlet.ir import main_func
    from gimlet.runtime.bundle import load_bundle
    from gimlet.runtime.inprocess import parse_program

    bundle = load_bundle(str(path))
    return bundle, main_func(parse_program(bundle))


def test_stages_count_the_hops_from_the_inputs(bundles: Path) -> None:
    bundle, fn = _program(bundles / "mlp3")
    stage = stages(fn, bundle.host)
    segs = [(op.device.data, stage[op]) for op in fn.body.block.ops if hasattr(op, "device")]
    assert segs == [("cpu1", 1), ("cpu2", 2)]
    # the host receives the output from cpu2: one hop further
    assert max(stage.values()) == 3


def test_a_pair_of_devices_gets_one_lag() -> None:
    # cpu0 sends ch0 (read by cpu1 at once) and ch1 (read by cpu1 after it hears from
    # cpu2): both of cpu1's receives from cpu0 are set to the larger lag, so cpu1 meets
    # them in program order at matching steps
    from gimlet.ir import main_func, parse

    fn = main_func(parse((ROOT / "tests" / "data" / "pipeline_lag.mlir").read_text()))
    stage = stages(fn, "cpu0")
    by_device = [(op.device.data, stage[op]) for op in fn.body.block.ops if hasattr(op, "device")]
    assert by_device == [("cpu1", 2), ("cpu2", 1), ("cpu1", 2)]  # the first cpu1 raised
    # the host's posted receives take their waits' stage: one past cpu1's
    posts = [stage[op] for op in fn.body.block.ops if op.name == "comm.irecv"]
    assert posts == [3, 3]


def test_split_and_join() -> None:
    x = np.arange(12).reshape(6, 2)
    pieces = split([x, torch.arange(6)], 3)
    assert [p[0].shape for p in pieces] == [(2, 2)] * 3
    assert [p[1].tolist() for p in pieces] == [[0, 1], [2, 3], [4, 5]]
    np.testing.assert_array_equal(join([[p[0]] for p in pieces])[0], x)
    # joined where `into` says (the host worker's output arena), one micro-batch at a
    # time as each is done: `into` is asked once, with the joined shape
    asked = []

    def into(specs: list[Any]) -> list[np.ndarray]:
        asked.extend(specs)
        return [np.full(shape, -1, dtype) for shape, dtype in specs]

    dsts = None
    for j, p in enumerate(pieces):
        dsts = join_micro([p[0]], j, 3, into, dsts)
        assert dsts[0][: 2 * (j + 1)].tolist() == x[: 2 * (j + 1)].tolist()
        assert (dsts[0][2 * (j + 1) :] == -1).all()  # later rows not written yet
    assert asked == [((6, 2), x.dtype)]
    with pytest.raises(PipelineError, match="^output 0 is a scalar: micro-batches join"):
        join_micro([np.float32(1.0)], 0, 2, into, None)
    with pytest.raises(PipelineError, match="input 0 has 6 rows in its first dim, which 4 micro"):
        check_split([(6, 2)], 4)
    with pytest.raises(PipelineError, match="^input 1 has 6 rows in its first dim, which 4 micro"):
        split([np.zeros((8, 2)), torch.zeros(6)], 4)  # slices would drop the rest silently
    with pytest.raises(PipelineError, match="^input 1 is a scalar: micro-batches cut every"):
        check_split([(4,), ()], 2)


def test_shared_memory_ring_holds_a_message_per_micro_batch() -> None:
    memfd, efd, cap, n = LocalSlot.create("t", 64, entries=3)
    writer, reader = LocalSlot(memfd, efd, cap, n), LocalSlot(os.dup(memfd), os.dup(efd), cap, n)
    try:
        for request in range(2):  # the second request wraps around the ring
            for j in range(3):  # all written before any is read
                writer.put(np.full(4, 10 * request + j, dtype=np.float32))
            got = [float(reader.take(1.0)[0]) for _ in range(3)]
            assert got == [10.0 * request + j for j in range(3)]
        assert reader.take(0.01) is None  # nothing more
    finally:
        writer.close()
        reader.close()


def test_a_slot_carries_each_dtype_layout_and_byte_order_exactly() -> None:
    # put's fast path (a memcpy of a small C-contiguous native array) and numpy's copy (a
    # large, strided or byte-swapped array, written as the header's native dtype) agree
    import ml_dtypes

    memfd, efd, cap, n = LocalSlot.create("t", 1 << 20, entries=2)
    writer, reader = LocalSlot(memfd, efd, cap, n), LocalSlot(os.dup(memfd), os.dup(efd), cap, n)
    grid = np.arange(12, dtype=np.float64).reshape(3, 4)
    values: list[Any] = [
        grid,
        grid.T,  # strided
        grid.astype(">f4"),  # big-endian
        grid[:, 1:3],
        grid.astype(ml_dtypes.bfloat16),
        np.array([True, False]),
        np.zeros((0, 3), np.int8),
        torch.arange(6, dtype=torch.float16).reshape(2, 3),
        np.arange(100_000, dtype=np.float32).reshape(1000, 100),  # over 64 KiB: numpy's copy
    ]
    try:
        for v in values:
            assert writer.put(v) == np.asarray(v).nbytes
            got, want = reader.take(1.0), np.asarray(v)
            assert got.dtype == want.dtype.newbyteorder("=") and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
        for index in (7, np.int32(3), True):
            assert writer.put(index) == 8
            assert reader.take(1.0) == int(index)
        with pytest.raises(ValueError, match="^a complex64 value cannot go through a shared"):
            writer.put(np.ones(2, np.complex64))
        with pytest.raises(ValueError, match="does not fit the channel's 1048576-byte"):
            writer.put(np.ones(300_000, np.float32))
    finally:
        writer.close()
        reader.close()


def test_a_slot_wait_ends_on_a_message_the_control_socket_or_its_timeout() -> None:
    import socket
    import time

    from gimlet.runtime.control import ABORTED

    memfd, efd, cap, n = LocalSlot.create("t", 64, entries=2)
    writer, reader = LocalSlot(memfd, efd, cap, n), LocalSlot(os.dup(memfd), os.dup(efd), cap, n)
    mine, theirs = socket.socketpair()
    try:
        start = time.monotonic()
        assert reader.take(0.05, mine.fileno()) is None  # nothing came: the timeout
        assert time.monotonic() - start >= 0.05
        theirs.send(b"x")  # the caller says something (stop)
        assert reader.take(5.0, mine.fileno()) is ABORTED
        writer.put(np.ones(2, np.float32))  # a message beats the readable socket
        assert reader.take(5.0, mine.fileno()).tolist() == [1.0, 1.0]
        mine.recv(1)
        theirs.close()  # the caller went away
        assert reader.take(5.0, mine.fileno()) is ABORTED
        assert reader.take(0.0) is None  # without the socket: only messages count
    finally:
        mine.close()
        writer.close()
        reader.close()


def test_pipelined_mlp_on_three_workers_equals_torch(bundles: Path) -> None:
    from gimlet.runtime import load

    module = _example("mlp")[0].eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((24, 32)).astype("f4"))
    with load(str(bundles / "mlp3"), micro_batches=4) as run:
        assert run.reason == (
            "4 micro-batches pipelined over one worker per device (cpu1 runs a stage on its "
            "cores: in one process it would hold back the others)"
        )
        for _ in range(2):  # the ring is reused by the next request
            (out,) = run(x)
            with torch.no_grad():
                np.testing.assert_allclose(out.numpy(), module(x).numpy(), rtol=1e-4, atol=1e-5)


def test_pipelined_outputs_outgrow_the_host_workers_arena(bundles: Path) -> None:
    # the micro-batches' outputs are joined straight into the host worker's output
    # arena; 2000 rows of 10 floats (80 KB) outgrow its first 64 KiB, so a new arena (and
    # its descriptor) goes to the caller, and a smaller request after it still fits
    from gimlet.runtime import load

    module = _example("mlp")[0].eval()
    rng = np.random.default_rng(3)
    with load(str(bundles / "mlp3"), micro_batches=4) as run:
        for rows in (8, 2000, 12):
            x = torch.from_numpy(rng.standard_normal((rows, 32)).astype("f4"))
            (out,) = run(x)
            with torch.no_grad():
                want = module(x).numpy()
            np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-5)


def test_pipelined_gpt_traces_each_micro_batch(bundles: Path) -> None:
    from gimlet.runtime.bundle import load_bundle
    from gimlet.runtime.launch import Session

    model, (ids,), _ = _example("gpt")
    batch = torch.randint(0, 512, (3, 16), generator=torch.Generator().manual_seed(1))
    session = Session(load_bundle(str(bundles / "gpt3")), stats=True, micro_batches=3)
    try:
        result = session([batch.numpy()])
    finally:
        session.close()
    with torch.no_grad():
        want = model.eval()(batch).numpy()
    np.testing.assert_allclose(result.outputs[0], want, rtol=1e-4, atol=1e-5)
    # every device ran its segment once per micro-batch, in order
    for st in result.stats:
        runs = [
            e["args"]["micro_batch"]
            for e in st["events"]
            if e["cat"] == "compute" and e["name"].startswith("segment")
        ]
        assert runs == [0, 1, 2], (st["device"], runs)


def test_pipelined_in_one_process_traces_each_micro_batch(bundles: Path) -> None:
    """`gimletc run --micro-batches M --processes one --trace`: each segment's span says
    its micro-batch, as the workers' do."""
    from gimlet.runtime.bundle import load_bundle
    from gimlet.runtime.inprocess import InProcess

    run = InProcess(load_bundle(str(bundles / "mlp3")), stats=True, micro_batches=3)
    run(np.zeros((6, 32), np.float32))
    stats = run.take_stats()
    assert [st["device"] for st in stats] == ["cpu1", "cpu2"]
    for st in stats:
        segments = [e for e in st["events"] if e["name"].startswith("segment")]
        runs = [e["args"].get("micro_batch") for e in segments]
        assert runs == [0, 1, 2], (st["device"], runs)


def test_bad_micro_batches_are_refused_before_workers_start(bundles: Path) -> None:
    from gimlet.runtime.bundle import load_bundle
    from gimlet.runtime.launch import Session

    session = Session(load_bundle(str(bundles / "mlp3")), micro_batches=4)
    with pytest.raises(PipelineError) as e:
        session([np.zeros((10, 32), np.float32)])
    assert str(e.value) == (
        "input 0 has 10 rows in its first dim, which 4 micro-batches do not divide"
    )
    assert session.procs == []
    with pytest.raises(PipelineError, match="^micro-batches must be at least 1, not 0$"):
        Session(load_bundle(str(bundles / "mlp3")), micro_batches=0)


def test_gimletc_run_micro_batches(
    bundles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = _example("mlp")[0].eval()
    x = np.random.default_rng(2).standard_normal((8, 32)).astype("f4")
    np.savez(tmp_path / "in.npz", x=x)
    out = tmp_path / "out.npz"
    argv = ["run", str(bundles / "mlp3"), "--inputs", str(tmp_path / "in.npz"), "-o", str(out)]
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    # auto: a worker per device (the stages run on CPUs); then --processes one
    for flags, said in (
        ((), "(2 micro-batches pipelined, cpu1 runs a stage on its cores"),
        (("--processes", "one"), "running in this process (2 micro-batches pipelined, asked for)"),
    ):
        assert gimletc([*argv, "--micro-batches", "2", *flags]) == 0
        assert said in capsys.readouterr().err
        np.testing.assert_allclose(np.load(out)["out0"], want, rtol=1e-4, atol=1e-5)
        out.unlink()  # the next run writes its own
    assert gimletc([*argv, "--micro-batches", "3"]) == 1
    err = capsys.readouterr().err
    assert "error: input 0 has 8 rows in its first dim, which 3 micro-batches do not divide" in err
    assert gimletc([*argv, "--micro-batches", "0"]) == 1  # not taken for the default, 1
    assert "error: micro-batches must be at least 1, not 0" in capsys.readouterr().err


def test_a_program_that_waits_before_it_sends_cannot_be_pipelined() -> None:
    from gimlet.ir import main_func, parse

    text = (ROOT / "tests" / "data" / "pipeline_lag.mlir").read_text()
    send = '    %0 = comm.isend %x to "cpu1" channel 0 via "pcie" : tensor<4xf32>\n'
    assert send in text
    # cpu0's send of channel 0 moved after the segment on cpu1 that waits for it
    late = text.replace(send, "").replace("    comm.wait %0\n", send + "    comm.wait %0\n")
    with pytest.raises(PipelineError) as e:
        stages(main_func(parse(late)), "cpu0")
    assert str(e.value) == (
        "cannot pipeline micro-batches: the segment on cpu1 waits for channel 0 before the "
        "program sends it"
    )


def test_micro_batches_in_one_process_equal_torch(bundles: Path) -> None:
    """processes="one" runs the wavefront in the caller's process (every device's steps
    from one thread; on CPUs they take turns, on GPUs their streams overlap)."""
    from gimlet.runtime import load

    module = _example("mlp")[0].eval()
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((24, 32)).astype("f4"))
    with load(str(bundles / "mlp3"), micro_batches=4, processes="one") as run:
        assert run.reason == "4 micro-batches pipelined over this process (asked for)"
        for _ in range(2):
            (out,) = run(x)
            with torch.no_grad():
                np.testing.assert_allclose(out.numpy(), module(x).numpy(), rtol=1e-4, atol=1e-5)
        with pytest.raises(PipelineError) as e:
            run(x[:10])
    assert str(e.value) == (
        "input 0 has 10 rows in its first dim, which 4 micro-batches do not divide"
    )


def test_a_fault_mid_wavefront_in_one_process_leaves_the_next_call_right(
    bundles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cpu2 runs 5 progress steps a micro-batch (irecv, wait, its C++ part, isend, wait):
    step 12 is micro-batch 2's part, after cpu1 has sent micro-batch 3. The error names
    where it was; the next call starts from empty mailboxes and equals torch."""
    from gimlet.runtime import load
    from gimlet.runtime.inprocess import InProcessError

    module = _example("mlp")[0].eval()
    x = torch.from_numpy(np.random.default_rng(6).standard_normal((8, 32)).astype("f4"))
    monkeypatch.setenv("GIMLET_FAULT", "cpu2:raise@12")
    with load(str(bundles / "mlp3"), micro_batches=4, processes="one") as run:
        with pytest.raises(InProcessError) as e:
            run(x)
        assert str(e.value).startswith(
            "cpu2 segment 1 at gml.matmul (examples/mlp.py:14) (first op of C++ part "
            "seg1.part0): RuntimeError: injected fault before gml.matmul"
        ), str(e.value)
        assert run.inprocess is not None and run.inprocess.mailbox.values == {}
        (out,) = run(x)
    with torch.no_grad():
        np.testing.assert_allclose(out.numpy(), module(x).numpy(), rtol=1e-4, atol=1e-5)


SMALL = """
import torch


class ScaleBy(torch.nn.Module):
    def forward(self, x, s):
        return x * s


class Total(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x).sum()


class Double(torch.nn.Module):
    def forward(self, x):
        return x * 2


def scalar_in():
    return ScaleBy(), (torch.randn(4, 3), torch.tensor(2.0))


def scalar_out():
    return Total(), (torch.randn(4, 3),)


def fixed():  # no dynamic dim: the bundle takes 4 rows, one micro-batch
    return Double(), (torch.randn(4, 3),)
"""


@pytest.fixture(scope="module")
def small() -> Any:
    """One-CPU bundles: a scalar input, a scalar output, a fixed batch of 4 rows."""
    d = Path(tempfile.mkdtemp(prefix="gimlet-pipeline-small-"))
    (d / "small.py").write_text(SMALL)
    for name in ("scalar_in", "scalar_out", "fixed"):
        argv = ["compile", f"{d}/small.py:{name}", "-o", str(d / name), "--target", "cpu"]
        assert gimletc(argv) == 0
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("processes", ["one", "auto"])
def test_a_scalar_input_or_output_is_refused_at_load(small: Path, processes: str) -> None:
    """Nothing to cut or join: refused when the bundle is loaded, in this process as on
    workers (the in-process pipeline ran every micro-batch before it found the scalar
    output, and both found a scalar input only at a call)."""
    from gimlet.runtime import load

    for name, what in [
        ("scalar_in", "input 1 is a scalar: micro-batches cut every input along its first dim"),
        ("scalar_out", "output 0 is a scalar: micro-batches join outputs along their first dim"),
    ]:
        with pytest.raises(PipelineError) as e:
            load(str(small / name), micro_batches=2, processes=processes)
        assert str(e.value) == what


@pytest.mark.parametrize("processes", ["one", "auto"])
def test_a_micro_batch_that_does_not_fit_is_named_as_one(small: Path, processes: str) -> None:
    """The bundle takes 4 rows: 8 rows make two micro-batches. 4 rows are refused as two
    micro-batches of 2 rows, which the message says (it named a shape never passed)."""
    from gimlet.runtime import load
    from gimlet.runtime.bundle import BundleError

    with load(str(small / "fixed"), micro_batches=2, processes=processes) as run:
        (out,) = run(torch.ones(8, 3))
        np.testing.assert_array_equal(out.numpy(), np.full((8, 3), 2, np.float32))
        with pytest.raises(BundleError) as e:
            run(torch.ones(4, 3))
    assert str(e.value) == (
        "input x: expected float32 [4x3], got float32 array of shape [2, 3] (a micro-batch: "
        "every input's first dim cut in 2; the bundle was compiled for one micro-batch)"
    )


TWO_GPUS = str(ROOT / "examples" / "two_h200.cluster")

ROUND_TRIPS = """
import torch


class Chain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(1024, 1024) for _ in range(4))

    def forward(self, x):
        for block in self.blocks:
            x = torch.tanh(block(x))
        return x


def model():
    torch.manual_seed(0)
    return Chain(), (torch.randn(4096, 1024),)  # a micro-batch: 16 MiB between the GPUs
"""


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_gpu_pipeline_with_two_stages_on_each_gpu_equals_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpu0 -> gpu1 -> gpu0 -> gpu1 over NCCL, 4 micro-batches of 16 MiB activations (more
    than NCCL's buffer, so a send waits for its receive). The wavefront sends micro-batch
    j + 1 from gpu0 before gpu0 receives j back; on one NCCL stream per pair both GPUs
    would wait for each other (runtime/channels.py: nccl_groups). A deadlock would end at
    the 60 s timeout, in the NCCL watchdog. Then the same in this process
    (processes="one"): the GPUs' values cross as copy-engine copies (inprocess.peer_copy)."""
    from gimlet.runtime import load

    (tmp_path / "round_trips.py").write_text(ROUND_TRIPS)
    pins = "blocks.0=gpu0,blocks.1=gpu1,blocks.2=gpu0,blocks.3=gpu1"
    bundle = tmp_path / "bundle"
    argv = ["compile", f"{tmp_path}/round_trips.py:model", "-o", str(bundle)]
    assert gimletc([*argv, "--target", TWO_GPUS, "--pin", pins]) == 0
    monkeypatch.setenv("GIMLET_RECV_TIMEOUT", "60")
    sys.path.insert(0, str(tmp_path))
    try:
        net = __import__("round_trips").model()[0].eval()
    finally:
        sys.path.remove(str(tmp_path))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((4 * 4096, 1024)).astype("f4"))
    with torch.no_grad():
        want = net(x).numpy()
    # workers with NCCL between them; then this process (auto's choice for a pipeline whose
    # stages all run on GPUs), copy-engine copies between GPUs
    for processes in ("per-device", "auto"):
        with load(str(bundle), micro_batches=4, processes=processes) as run:
            assert run.processes == ("one" if processes == "auto" else "per-device")
            for _ in range(2):
                (out,) = run(x)  # fp32, TF32 off in gimlet's cuBLAS calls
                np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-5)


def test_a_pipelined_gpu_segment_is_timed_by_events_not_a_sync(
    bundles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stats on (gimletc run does), a pipelined GPU segment is not followed by a device
    sync, which would run the GPUs one at a time: its span is the GPU's, from timing events
    around the launch, taken in host time at take_stats (torch.cuda and staging faked)."""
    from types import SimpleNamespace

    from gimlet.runtime import inprocess, staging
    from gimlet.runtime.bundle import load_bundle

    run = inprocess.InProcess(load_bundle(str(bundles / "mlp3")), stats=True)
    marks: list[Any] = []

    class Staged:
        def begin(self) -> str:
            marks.append("begin")
            return "start event"

        def end(self, begun: str, label: str, key: Any = None) -> None:
            marks.append((begun, label, key))

    monkeypatch.setattr(staging, "for_device", lambda device: Staged())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: marks.append("sync"))
    gpu = SimpleNamespace(idx=0)
    run.micro = 3
    assert run._timed(1, gpu, lambda args: (args[0] + 1,), [1]) == [2]
    assert marks == ["begin", ("start event", "segment 1", ("segment", 1, 3))]
    device = run.at.device if run.at is not None else run.bundle.host
    span = staging.GpuSpan(("segment", 1, 3), "segment 1", "gpu", 0, 10.0, 10.25)
    monkeypatch.setattr(staging, "drain_all", lambda: {0: [span]})
    run.gpu_names = {0: device}
    (stats,) = [s for s in run.take_stats() if s["device"] == device]
    assert stats["segments"][1]["wall_s"] == 0.25
    (event,) = stats["events"]
    assert (event["name"], event["args"]) == ("segment 1", {"micro_batch": 3})
