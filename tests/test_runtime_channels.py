"""Channels between GPU workers keep NCCL payloads in device memory when a GPU executor
consumes them (issue 11), and copy them to the host only for the interpreter or C++.

No CUDA here: torch.distributed's isend/irecv are replaced by fakes that move host
tensors, and the channels' "CUDA device" is the CPU. What is checked is the decision
(which receives come back as the tensor they landed in, which as numpy copies), the
send taking the executor's tensor without a copy, and the worker choosing per channel
from the executor of the segment that holds the receive. The real NCCL path, with its
stream ordering, runs in benchmarks/runtime_nccl.py on two GPUs (it checks the bytes
that come back and that they stay on the device).
"""

from __future__ import annotations

import datetime
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from gimlet.ir import parse
from gimlet.runtime import channels as channels_mod
from gimlet.runtime.channels import Channels, ChannelSpec

STAND_IN = torch.device("cpu")  # where the fakes put "device" tensors


class _Work:
    def __init__(self, log: list[str], what: str):
        self.log, self.what = log, what

    def wait(self, timeout: Any = None) -> None:
        self.log.append(f"wait {self.what}")


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Fake point-to-point: isend records the tensor object, irecv fills the buffer with
    the next queued payload; torch.cuda.synchronize is counted."""
    state: dict[str, Any] = {"sent": [], "queue": [], "log": [], "syncs": 0, "posts": []}

    def isend(t: torch.Tensor, dst: int, tag: int = 0, group: Any = None) -> _Work:
        state["sent"].append(t)
        state["posts"].append(("isend", tag, group))
        return _Work(state["log"], f"send {tag}")

    def irecv(t: torch.Tensor, src: int, tag: int = 0, group: Any = None) -> _Work:
        t.copy_(state["queue"].pop(0))
        state["log"].append(f"irecv {tag} into {t.device.type}")
        state["posts"].append(("irecv", tag, group))
        return _Work(state["log"], f"recv {tag}")

    def synchronize() -> None:
        state["syncs"] += 1

    monkeypatch.setattr(channels_mod.dist, "isend", isend)
    monkeypatch.setattr(channels_mod.dist, "irecv", irecv)
    monkeypatch.setattr(channels_mod.torch.cuda, "synchronize", synchronize)
    return state


def _channels(device_values: bool, cuda: torch.device | None = STAND_IN) -> Channels:
    specs = {
        0: ChannelSpec(0, 0, 1, "float32", [2, 3], cuda, device_values=device_values),
        1: ChannelSpec(1, 1, 0, "float32", [2, 3], cuda, device_values=device_values),
    }
    return Channels(specs, 5.0, ["gpu0", "gpu1"])


def test_device_values_receive_returns_the_tensor_it_landed_in(wire: dict[str, Any]) -> None:
    payload = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    wire["queue"].append(payload)
    ch = _channels(device_values=True)
    pending = ch.post_recv(1)
    got = ch.wait_recv(pending)
    assert isinstance(got, torch.Tensor) and got is pending.payload  # no copy, no numpy
    assert got.device == STAND_IN and torch.equal(got, payload)
    assert wire["log"] == ["irecv 3 into cpu", "wait recv 3"]
    assert ch.received == {}  # no host buffer kept for reuse either


def test_host_consumer_gets_a_numpy_copy(wire: dict[str, Any]) -> None:
    payload = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    wire["queue"].append(payload)
    ch = _channels(device_values=False)
    pending = ch.post_recv(1)
    landed = pending.payload
    assert landed is not None
    got = ch.wait_recv(pending)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_array_equal(got, payload.numpy())
    assert not np.shares_memory(got, landed.numpy())  # copied out to host memory


def test_device_values_do_not_apply_to_index_or_gloo_channels(wire: dict[str, Any]) -> None:
    # an index payload is a host int whatever the consumer; without NCCL (spec.cuda None)
    # the payload is host memory and comes back as numpy, as before
    specs = {
        0: ChannelSpec(0, 1, 0, "index", [], STAND_IN, device_values=True),
        1: ChannelSpec(1, 1, 0, "float32", [2], None, device_values=True),
    }
    ch = Channels(specs, 5.0, ["gpu0", "gpu1"])
    wire["queue"] += [torch.tensor(7), torch.tensor([1.0, 2.0])]
    assert ch.wait_recv(ch.post_recv(0)) == 7
    got = ch.wait_recv(ch.post_recv(1))
    assert isinstance(got, np.ndarray) and got.tolist() == [1.0, 2.0]


def test_send_takes_the_executors_tensor_without_a_copy(wire: dict[str, Any]) -> None:
    ch = _channels(device_values=True)
    value = torch.ones(2, 3)
    ch.send(0, value)
    (sent,) = wire["sent"]
    assert sent.data_ptr() == value.data_ptr()  # already on the channel's device
    assert wire["log"] == [] and wire["syncs"] == 0  # nothing waited for at the send
    ch.finish()  # the buffered send completes at the end of the program, then one sync
    assert wire["log"] == ["wait send 1"] and wire["syncs"] == 1
    assert ch.sends == []


def test_a_host_value_goes_to_the_channels_device(wire: dict[str, Any]) -> None:
    ch = _channels(device_values=True)
    ch.send(0, np.full((2, 3), 2.0, np.float32))
    (sent,) = wire["sent"]
    assert isinstance(sent, torch.Tensor) and sent.device == STAND_IN
    assert torch.equal(sent, torch.full((2, 3), 2.0))


# -- the worker decides per channel from the executor of the segment holding the receive

PROGRAM = """builtin.module attributes {gml.target = "TARGET"} {
  func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
    comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32>
    gml.segment "gpu0" () : () -> () {
      %a = comm.recv from "cpu0" channel 0 via "pcie" : tensor<4xf32>
      %b = gml.neg %a : tensor<4xf32>
      comm.send %b to "gpu1" channel 1 via "nvlink" : tensor<4xf32>
      gml.yield
    }
    gml.segment "gpu1" () : () -> () {
      %r = comm.irecv from "gpu0" channel 1 via "nvlink"
      %b = comm.wait %r : tensor<4xf32>
      %c = gml.neg %b : tensor<4xf32>
      comm.send %c to "cpu0" channel 2 via "pcie" : tensor<4xf32>
      gml.yield
    }
    %r = comm.recv from "gpu1" channel 2 via "pcie" : tensor<4xf32>
    func.return %r : tensor<4xf32>
  }
}
"""


class _GpuExecutor:
    tensor_device = "cuda"  # as the CUDA and TensorRT executors say

    def run_segment(self, *args: Any) -> list[Any]:
        raise AssertionError("not run here")


CHANNELS = [
    {"id": 0, "from": "cpu0", "to": "gpu0", "backend": "gloo"},
    {"id": 1, "from": "gpu0", "to": "gpu1", "backend": "nccl"},
    {"id": 2, "from": "gpu1", "to": "cpu0", "backend": "gloo"},
]


def _worker(
    monkeypatch: pytest.MonkeyPatch,
    rank: int,
    gpu1_kind: str,
    program: str | None = None,
    channels: list[dict[str, Any]] = CHANNELS,
    kinds: tuple[str, ...] = ("cuda", ""),
) -> Any:
    from gimlet import backends
    from gimlet.runtime import worker as worker_mod

    devices = ["cpu0", "gpu0", "gpu1"]
    manifest = {
        "cluster": {
            "devices": [{"name": d, "kind": d[:3].replace("gpu", "nvidia")} for d in devices]
        },
        "channels": [dict(c, dtype="float32", shape=[4]) for c in channels],
        "segments": [{"artefact": {"kind": k or gpu1_kind}, "ops": 3} for k in kinds],
    }
    bundle = SimpleNamespace(devices=devices, host="cpu0", manifest=manifest)
    gpu = SimpleNamespace(load=lambda host, weights, bundle: _GpuExecutor())
    real_get = backends.get
    monkeypatch.setattr(backends, "get", lambda k: gpu if k == "cuda" else real_get(k))
    # a GPU device's worker has a CUDA device; the CPU stands in for it
    monkeypatch.setattr(
        worker_mod, "cuda_device", lambda b, d: STAND_IN if d.startswith("gpu") else None
    )
    monkeypatch.delenv("GIMLET_LOCAL_CHANNELS", raising=False)
    w = worker_mod.Worker(bundle, rank, None, 1.0)
    w._plan(parse(program or PROGRAM), {})
    return w


def test_worker_keeps_nccl_receives_on_the_device_for_a_gpu_executor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    specs = _worker(monkeypatch, 2, "cuda").channels.specs
    assert specs[1].cuda == STAND_IN and specs[1].device_values  # consumed by CUDA code
    assert not specs[0].device_values and not specs[2].device_values  # gloo channels


def test_worker_uploads_host_channel_receives_for_a_gpu_executor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gloo/shared-memory receive consumed by CUDA code comes back as a CUDA tensor
    (uploaded on the GPU's copy stream, runtime/staging.py) once CUDA is there."""
    w = _worker(monkeypatch, 1, "cuda")  # gpu0 receives channel 0 (gloo) in CUDA code
    assert not w.channels.specs[0].device_values and w.channels.gpu is None  # no CUDA here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    w = _worker(monkeypatch, 1, "cuda")
    assert w.channels.specs[0].cuda is None and w.channels.specs[0].device_values
    assert w.channels.gpu == torch.device("cuda", 0)
    w = _worker(monkeypatch, 0, "cuda")  # the host receives channel 2 on the interpreter
    assert not w.channels.specs[2].device_values and w.channels.gpu is None


def test_worker_stages_nccl_receives_for_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = _worker(monkeypatch, 2, "interpreter").channels.specs
    assert specs[1].cuda == STAND_IN and not specs[1].device_values


# -- NCCL between two GPUs both ways: a process group a direction

# cpu0 -> gpu0 -> gpu1 -> gpu0 -> gpu1 -> cpu0: each GPU holds two stages (an interleaved
# pipeline, benchmarks/gpu_pipeline.py --chunks 2)
ROUND_TRIP = """builtin.module attributes {gml.target = "TARGET"} {
  func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
    comm.send %x to "gpu0" channel 0 via "pcie" : tensor<4xf32>
    gml.segment "gpu0" () : () -> () {
      %a = comm.recv from "cpu0" channel 0 via "pcie" : tensor<4xf32>
      %b = gml.neg %a : tensor<4xf32>
      comm.send %b to "gpu1" channel 1 via "nvlink" : tensor<4xf32>
      gml.yield
    }
    gml.segment "gpu1" () : () -> () {
      %a = comm.recv from "gpu0" channel 1 via "nvlink" : tensor<4xf32>
      %b = gml.neg %a : tensor<4xf32>
      comm.send %b to "gpu0" channel 2 via "nvlink" : tensor<4xf32>
      gml.yield
    }
    gml.segment "gpu0" () : () -> () {
      %r = comm.irecv from "gpu1" channel 2 via "nvlink"
      %a = comm.wait %r : tensor<4xf32>
      %b = gml.neg %a : tensor<4xf32>
      comm.send %b to "gpu1" channel 3 via "nvlink" : tensor<4xf32>
      gml.yield
    }
    gml.segment "gpu1" () : () -> () {
      %a = comm.recv from "gpu0" channel 3 via "nvlink" : tensor<4xf32>
      %b = gml.neg %a : tensor<4xf32>
      comm.send %b to "cpu0" channel 4 via "pcie" : tensor<4xf32>
      gml.yield
    }
    %r = comm.recv from "gpu1" channel 4 via "pcie" : tensor<4xf32>
    func.return %r : tensor<4xf32>
  }
}
"""
ROUND_TRIP_CHANNELS = [
    {"id": 0, "from": "cpu0", "to": "gpu0", "backend": "gloo"},
    {"id": 1, "from": "gpu0", "to": "gpu1", "backend": "nccl"},
    {"id": 2, "from": "gpu1", "to": "gpu0", "backend": "nccl"},
    {"id": 3, "from": "gpu0", "to": "gpu1", "backend": "nccl"},
    {"id": 4, "from": "gpu1", "to": "cpu0", "backend": "gloo"},
]


def test_each_direction_of_an_nccl_pair_gets_its_own_process_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[tuple[list[int], Any, str]] = []

    def new_group(ranks: list[int], timeout: Any = None, backend: str = "") -> str:
        made.append((ranks, timeout, backend))
        return f"group {len(made)}"

    monkeypatch.setattr(channels_mod.dist, "new_group", new_group)
    ranks = {"cpu0": 0, "gpu0": 1, "gpu1": 2}
    groups = channels_mod.nccl_groups(ROUND_TRIP_CHANNELS, ranks, 60.0)
    # every rank makes the same groups in the same order; gloo channels make none; each
    # group's watchdog has the receive timeout (not torch's 10 minutes for a new group)
    limit = datetime.timedelta(seconds=60)
    assert made == [([1, 2], limit, "nccl"), ([1, 2], limit, "nccl")]
    assert groups == {(1, 2): "group 1", (2, 1): "group 2"}
    w = _worker(monkeypatch, 2, "interpreter", ROUND_TRIP, ROUND_TRIP_CHANNELS, ("",) * 4)
    w.use_nccl_groups(groups)
    assert {c: s.group for c, s in w.channels.specs.items()} == {
        0: None, 1: "group 1", 2: "group 2", 3: "group 1", 4: None,
    }  # fmt: skip


def test_nccl_payloads_go_through_their_directions_group(wire: dict[str, Any]) -> None:
    ch = _channels(device_values=True)
    ch.specs[0].group, ch.specs[1].group = "gpu0->gpu1", "gpu1->gpu0"
    wire["queue"].append(torch.zeros(2, 3))
    ch.send(0, torch.ones(2, 3))
    ch.wait_recv(ch.post_recv(1))
    assert wire["posts"] == [("isend", 1, "gpu0->gpu1"), ("irecv", 3, "gpu1->gpu0")]
