"""Run a whole bundle in the caller's process: no workers, no serialization.

Why this is possible: the function body of a partitioned program lists its segments in a
topological order (the reference interpreter relies on the same fact), so running every
segment whole, in body order, finds each received value already sent. A comm op then
becomes a hand-off through a mailbox; `sequential_order_problem` checks the order before
anything runs.

Each segment still runs through the executor its artefact kind registers
(`gimlet.backends.get(kind).load(...)`): the C++ CPU backend, the NVIDIA backend
(`CudaFunction`: values stay on the GPU), the interpreter. An executor says where it
wants tensors by an optional `tensor_device` attribute ("cuda": the GPU its device maps
to; absent or None means host numpy arrays), and a hand-off moves a value only when
its receiver wants it elsewhere: one copy between the host and a GPU, on a copy
stream through a pinned buffer of the channel (runtime/staging.py: an upload does not
block the host, and the GPU waits for it only where the value is used), nothing between
two parts on one device.

Values in and out are torch tensors. Host tensors cross as numpy views (no copy; bf16
through its bits); outputs come back on the device of the inputs, as torch would return
them: a caller passing CUDA tensors gets CUDA tensors without a round trip through host
memory, a caller passing host tensors gets host tensors.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import ml_dtypes
import numpy as np

from gimlet.backends.base import segment_call
from gimlet.errors import UserError
from gimlet.runtime import faults
from gimlet.runtime.bundle import GPU_KINDS, Bundle, BundleError
from gimlet.runtime.trace import copy_event, event

_BF16 = np.dtype(ml_dtypes.bfloat16)


class InProcessError(UserError):
    """A failure inside an in-process run: names the device, segment and op."""


def sequential_order_problem(module: Any) -> str | None:
    """None when the program runs correctly one segment at a time in body order (every
    receive or wait finds its channel's value already sent); else what goes wrong, e.g.
    "segment 1 on cpu1 waits for channel 3 before the segment on cpu0 sends it"."""
    from gimlet.dialects import comm, gml
    from gimlet.ir import main_func
    from gimlet.runtime.pipeline import received_channel

    sent: set[int] = set()
    senders: dict[int, str] = {}
    fn = main_func(module)
    for op in fn.body.block.ops:
        for o in op.walk():
            if isinstance(o, comm.SendOp | comm.ISendOp):
                senders[o.channel.value.data] = _where(o)
    index = -1
    for op in fn.body.block.ops:
        if isinstance(op, gml.SegmentOp):
            index += 1
        inner = list(op.body.block.ops) if isinstance(op, gml.SegmentOp) else [op]
        for o in inner:
            if isinstance(o, comm.SendOp | comm.ISendOp):
                sent.add(o.channel.value.data)
                continue
            ch = received_channel(o)
            if ch is not None and ch not in sent:
                here = f"segment {index} on {op.device.data}" if op is not o else "the host"
                there = senders.get(ch, "no op")
                return f"{here} waits for channel {ch} before {there} sends it"
    return None


def parse_program(bundle: Bundle) -> Any:
    """The bundle's IR (what every segment is cut from)."""
    from gimlet.artifacts import IR_FILE
    from gimlet.ir import parse

    segments = bundle.manifest["segments"]
    with open(bundle.file(segments[0]["artefact"]["file"] if segments else IR_FILE)) as f:
        return parse(f.read())


def _where(op: Any) -> str:
    from gimlet.dialects import gml

    parent = op.parent_op()
    return (
        f"the segment on {parent.device.data}" if isinstance(parent, gml.SegmentOp) else "the host"
    )


def segment_devices(bundle: Bundle) -> list[str]:
    """The devices that run something: the host (top-level ops) and every segment's."""
    used = {bundle.host} | {s["device"] for s in bundle.manifest["segments"]}
    return [d for d in bundle.devices if d in used]


def choose_processes(
    bundle: Bundle, requested: str, order_problem: str | None, micro_batches: int = 1
) -> tuple[str, str]:
    """("one" | "per-device", why) for `gimlet.load(B, processes=requested)`.

    auto runs in one process unless the bundle spreads over several CPU devices (each is
    a set of cores for its own worker) or several GPUs (the multi-process runtime moves
    their traffic over NCCL), or its order needs segments to run concurrently.
    A pipeline (`micro_batches` > 1) whose every stage is compiled for a GPU runs in
    one process too: the caller only queues work, and values cross between GPUs by
    copy-engine copies, where NCCL's kernels would take SMs from the compute beside them
    (2x H200: 96.5 against 98.0 ms, benchmarks/results/gpu_pipeline.md run 23). A
    pipeline with a CPU stage gets a worker per device: in the caller that stage would
    hold back the GPUs' launches."""
    if requested not in ("auto", "one", "per-device"):
        raise UserError(f"processes={requested!r}: expected 'auto', 'one' or 'per-device'")
    kinds = {d["name"]: d["kind"] for d in bundle.manifest["cluster"]["devices"]}
    used = segment_devices(bundle)
    if requested == "per-device":
        return "per-device", "asked for"
    if order_problem:
        if requested == "one":
            raise BundleError(f"this bundle cannot run in one process: {order_problem}")
        return "per-device", f"its segments must run concurrently ({order_problem})"
    cpus = [d for d in used if kinds[d] == "cpu"]
    gpus = [d for d in used if kinds[d] in GPU_KINDS]
    where = ", ".join(used)
    if requested == "one":
        return "one", "asked for"
    if micro_batches > 1:
        for s in bundle.manifest["segments"]:
            if kinds[s["device"]] not in GPU_KINDS or s["artefact"]["kind"] == "interpreter":
                on = "the interpreter" if s["artefact"]["kind"] == "interpreter" else "its cores"
                return "per-device", (
                    f"{s['device']} runs a stage on {on}: in one process it would hold back "
                    "the others"
                )
        return "one", (
            f"every stage compiled for a GPU ({', '.join(gpus)}): this process queues their "
            "work, copy engines move values between them"
        )
    if len(cpus) > 1:
        return "per-device", f"{len(cpus)} CPU devices ({', '.join(cpus)}): one process each"
    if len(gpus) > 1:
        return "per-device", f"{len(gpus)} GPUs ({', '.join(gpus)}): one worker each, NCCL between"
    return "one", f"every segment can run in the caller's process: {where}"


def plan_processes(bundle: Bundle, requested: str, micro_batches: int = 1) -> tuple[str, str, Any]:
    """(processes, why, the parsed program or None) for a load of `bundle`, as
    `gimlet.load` and `gimletc run` take it (`choose_processes`); the program is parsed
    only where it may run here."""
    module = parse_program(bundle) if requested != "per-device" else None
    problem = sequential_order_problem(module) if module is not None else None
    processes, why = choose_processes(bundle, requested, problem, micro_batches)
    return processes, why, module


# -- value placement --------------------------------------------------------------------


_TORCH: Any = None


def _torch() -> Any:
    global _TORCH
    if _TORCH is None:  # imported on first use: the module loads without torch
        import torch

        _TORCH = torch
    return _TORCH


def host_tensor(t: Any, key: Any = None, *, timed: bool = False, label: str = "") -> Any:
    """A torch tensor in host memory: itself, or a copy out of the GPU (on its copy
    stream into pinned memory the caller keeps; the host waits for that copy only).
    `key`, `timed`, `label`: the copy in the trace (runtime/staging.py)."""
    if t.device.type == "cpu":
        return t
    from gimlet.runtime.staging import for_device

    return for_device(t.device).download_owned(t, key, timed=timed, label=label)


def to_host(value: Any, key: Any = None, *, timed: bool = False, label: str = "") -> Any:
    """A value as host code takes it: torch tensors become numpy arrays (no copy for host
    tensors, bf16 through its bits; a GPU tensor is copied out); anything else (arrays,
    sizes, comm tokens) is passed as it is."""
    torch = _torch()
    value = _unwrap(value)
    if not isinstance(value, torch.Tensor):
        return value
    if not value.is_cpu:
        value = host_tensor(value.detach(), key, timed=timed, label=label)
    elif value.requires_grad:
        value = value.detach()
    if value.dtype is torch.bfloat16:
        from gimlet.dtypes import torch_to_numpy

        return torch_to_numpy(value)
    return value.numpy()


def to_device(
    value: Any, device: str, key: Any = None, *, timed: bool = False, label: str = ""
) -> Any:
    """A value as an executor on `device` (a torch device string) takes it: a torch tensor
    there (no copy when it already is); anything else but arrays is passed as it is. From
    the host, the copy goes through `key`'s pinned buffers on a copy stream of the GPU (the
    current stream waits for it, the host does not); `timed`, `label`: for the trace."""
    torch = _torch()
    ready = None
    if type(value) is _Ready:
        value, ready = value.value, value.event
    if isinstance(value, np.ndarray):
        from gimlet.dtypes import numpy_to_torch

        value = numpy_to_torch(value)
    elif not isinstance(value, torch.Tensor):
        return value
    if value.device == torch.device(device):
        return value
    if value.device.type == "cpu" and torch.device(device).type == "cuda":
        from gimlet.runtime.staging import for_device

        return for_device(device).upload(value, key, timed=timed, label=label)
    if value.device.type == "cuda" and torch.device(device).type == "cuda":
        return peer_copy(value, torch.device(device), ready)
    return value.to(device)


_PEER_STREAMS: dict[tuple[int, int], tuple[Any, Any]] = {}


def peer_copy(t: Any, device: Any, ready: Any = None) -> Any:
    """CUDA tensor `t` copied to another GPU of this process, ordered by events only: the
    copy waits for `t`'s producer (event `ready`, recorded after it; else all that its
    GPU's current stream holds), and the receiving GPU's current stream waits for the
    copy. Between GPUs with peer access torch's copy is the
    copy engine's (277 GB/s gpu0 -> gpu1 on the 2x H200, no SM taken from the kernels
    beside it; `benchmarks/probes/gpu_transfer_interference.py`, run 2).

    Why not `t.to(device)`: torch runs that copy on the sender's current stream after
    waiting for everything queued on the receiver's (a two-way barrier), so a pipelined
    sender would queue its next micro-batch behind the receiver's earlier ones. Here
    the copy runs on a stream of the pair's own on each side, whose barrier holds
    earlier copies only."""
    torch = _torch()
    src = t.device
    pair = (src.index, device.index)
    streams = _PEER_STREAMS.get(pair)
    if streams is None:
        streams = _PEER_STREAMS[pair] = (torch.cuda.Stream(src), torch.cuda.Stream(device))
    out_stream, in_stream = streams
    if ready is not None:
        out_stream.wait_event(ready)  # after the producer only
    else:
        out_stream.wait_stream(torch.cuda.current_stream(src))
    with torch.cuda.stream(out_stream), torch.cuda.stream(in_stream):
        out = torch.empty(t.shape, dtype=t.dtype, device=device)  # on in_stream
        out.copy_(t, non_blocking=True)  # on out_stream; in_stream waits for it
    t.record_stream(out_stream)  # its producer may free it before the copy ran
    consumer = torch.cuda.current_stream(device)
    consumer.wait_stream(in_stream)
    out.record_stream(consumer)
    return out


def _mover(
    device: str | None, key: Any = None, timed: bool = False, label: str = ""
) -> Callable[[Any], Any]:
    """A hand-off to where a receiver wants its values; `key` names its pinned buffers
    and, with `timed`, `label` its copies in the trace."""
    if device is None:
        if not timed:  # the key only names a timed copy (host buffers are the caller's)
            return to_host
        return lambda v: to_host(v, key, timed=timed, label=label)
    return lambda v: to_device(v, device, key, timed=timed, label=label)


# -- the runner -------------------------------------------------------------------------


class Remote(Protocol):
    """Where the channels go whose other end is a worker process (runtime/launch.py,
    when the caller runs the host's share of a multi-process bundle)."""

    def send(self, channel: int, value: Any) -> None: ...
    def take(self, channel: int) -> Any: ...


class _Ready:
    """A CUDA value sent in a pipelined run, with an event recorded right after the
    kernels that made it: a copy to another GPU waits for that event, not for whatever
    its GPU was given since (the next micro-batch's kernels)."""

    __slots__ = ("value", "event")

    def __init__(self, value: Any, event: Any):
        self.value, self.event = value, event


def _unwrap(value: Any) -> Any:
    return value.value if type(value) is _Ready else value


class _Mailbox:
    """The comm handler of an in-process run: a send leaves its value under its channel,
    the matching receive takes it, moved to where the receiver wants it. Channels whose
    other end runs elsewhere go to `remote`."""

    def __init__(self) -> None:
        self.values: dict[int, Any] = {}
        self.movers: dict[int, Callable[[Any], Any]] = {}
        self.channel: dict[int, int] = {}  # id(op) -> channel, read once per op
        self.remote: Remote | None = None
        self.remote_channels: set[int] = set()
        self.mark_ready = False  # pipelined: CUDA values go with their producer's event

    def _ch(self, op: Any) -> int:
        ch = self.channel.get(id(op))
        if ch is None:
            ch = self.channel[id(op)] = op.channel.value.data
        return ch

    def send(self, op: Any, value: Any) -> None:
        ch = self._ch(op)
        if ch in self.remote_channels:
            assert self.remote is not None
            self.remote.send(ch, value)
        elif self.mark_ready and getattr(value, "is_cuda", False):
            torch = _torch()
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(value.device))
            self.values[ch] = _Ready(value, event)
        else:
            self.values[ch] = value

    def post_recv(self, op: Any) -> Any:
        return self._ch(op)

    def wait_recv(self, pending: Any, op: Any) -> Any:
        if pending in self.remote_channels:
            assert self.remote is not None
            return self.movers[pending](self.remote.take(pending))
        try:
            value = self.values.pop(pending)
        except KeyError:
            raise InProcessError(f"channel {pending}: received before it was sent") from None
        return self.movers[pending](value)


Call = Callable[[list[Any]], Sequence[Any]]


@dataclass
class _Step:
    """One top-level op of the program: a segment (through its executor) or a host op.
    Values live in a list by position (`ins`, `outs`): no dict keyed by SSA values, which
    xdsl hashes in Python, on the request path."""

    op: Any
    call: Call  # its (moved) input values -> its results
    ins: list[int]
    outs: list[int]
    segment: int | None = None  # index, for segments
    device: str = ""
    move: Callable[[Any], Any] | None = None  # applied to each input (None: as is)


class InProcess:
    """A bundle loaded into this process. Call with torch tensors (or numpy arrays); get
    a list of torch tensors. One call at a time (a lock): executors keep per-shape state.

    `stats=True` records, per device, the segments' wall time and a trace span per
    segment and per compiled part, in the multi-process runtime's format (for
    `gimletc run --trace` and the summary table).

    `devices` (default: all) are the devices whose segments run here; the top-level ops
    (the host's) always do. Channels to a device not run here go through `remote`, and
    exceptions of the `passthrough` types it raises propagate as they are (they name a
    worker's failure, not this process's)."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        stats: bool = False,
        module: Any = None,
        devices: Sequence[str] | None = None,
        remote: Remote | None = None,
        passthrough: tuple[type[BaseException], ...] = (),
        micro_batches: int = 1,
    ):
        from gimlet.artifacts import load_weights
        from gimlet.ir import main_func
        from gimlet.runtime.pipeline import check_bundle, check_count

        check_count(micro_batches)
        self.micro_batches = micro_batches
        self.bundle = bundle
        self.module = module if module is not None else parse_program(bundle)
        here = set(bundle.devices if devices is None else devices) | {bundle.host}
        if devices is None:
            problem = sequential_order_problem(self.module)
            if problem:
                raise BundleError(f"this bundle cannot run in one process: {problem}")
        stage_of: dict[Any, int] = {}
        if micro_batches > 1:  # refused here, as a pipeline on workers is, not at a call
            stage_of = check_bundle(
                main_func(self.module), bundle.host, bundle.manifest, micro_batches
            )
        weights: dict[str, np.ndarray] = {}
        for dev, rel in bundle.manifest["weights"].items():
            if dev in here:
                weights.update(load_weights(bundle.file(rel)))
        self.weights = weights
        self.mailbox = _Mailbox()
        self.mailbox.mark_ready = micro_batches > 1
        self.mailbox.remote = remote
        self.passthrough = passthrough
        self.lock = threading.Lock()
        self.stats_on = stats
        self.stats: dict[str, dict[str, Any]] = {}
        self.kernel_s = 0.0  # time in compiled parts during the last call
        self.at: _Step | None = None  # the step running, for messages
        self.op: Any = None
        self.op_what = ""
        self.micro: int | None = None  # the micro-batch running (pipelined), for the trace
        fault = faults.from_env()  # counted per device: how many steps it has run
        self.fault = fault if fault is not None and fault.device in bundle.devices else None
        self.fault_count = 0
        self.gpu_names: dict[int, str] = {}  # CUDA device index -> the device run there
        self._plan(here)
        # each step's stage in the wavefront (runtime/pipeline.py), when pipelined
        self._stages = [stage_of[step.op] for step in self.steps] if micro_batches > 1 else []
        self._sig = _Signature(bundle)

    def _plan(self, here: set[str]) -> None:
        """The steps this process runs, each with its executor's call worked out."""
        from xdsl.dialects import func

        from gimlet import backends
        from gimlet.backends.interpreter import InterpreterExecutor
        from gimlet.dialects import comm, gml
        from gimlet.ir import main_func

        bundle, weights = self.bundle, self.weights
        segments = bundle.manifest["segments"]
        self.host = InterpreterExecutor(
            self.module, weights, self.mailbox, self._before_op, self._on_span
        )
        kinds = {d["name"]: d["kind"] for d in bundle.manifest["cluster"]["devices"]}
        gpus = [d for d in bundle.devices if kinds[d] in GPU_KINDS]
        executors: dict[tuple[str, str], Any] = {}
        receivers: dict[int, str | None] = {}  # channel -> where its receiver wants tensors
        fn = main_func(self.module)
        slots: dict[Any, int] = {v: i for i, v in enumerate(fn.args)}

        def slot(v: Any) -> int:
            if v not in slots:
                slots[v] = len(slots)
            return slots[v]

        self.steps: list[_Step] = []
        index = -1
        for op in fn.body.block.ops:
            if isinstance(op, gml.SegmentOp):
                index += 1
                device = op.device.data
                if device not in here:
                    continue
                art = segments[index]["artefact"]
                gpu = _gpu_context(device, gpus)
                if gpu is not None:
                    self.gpu_names[gpu.idx] = device  # whose copy streams, for the trace
                key = (device, art["kind"])
                if key not in executors:
                    with gpu or contextlib.nullcontext():
                        executors[key] = backends.get(art["kind"]).load(self.host, weights, bundle)
                ex = executors[key]
                # where this executor wants tensors: the torch device of this GPU
                dev = getattr(ex, "tensor_device", None)
                if dev is not None and gpu is not None:
                    dev = f"cuda:{gpu.idx}"
                for o in op.body.block.ops:
                    if isinstance(o, comm.RecvOp | comm.IRecvOp):
                        receivers[o.channel.value.data] = dev
                ins = [slots[v] for v in op.inputs]
                outs = [slot(v) for v in op.outputs]
                mover = _mover(dev, ("segment", index), self.stats_on, f"segment {index} input")
                step = _Step(op, _unset, ins, outs, index, device, mover)
                step.call = self._segment_call(step, ex, art, gpu)
                self.steps.append(step)
            elif isinstance(op, func.ReturnOp):
                self.returns = [slots[v] for v in op.operands]
            else:
                from gimlet.backends.parts import comm_step

                call = comm_step(op, self.mailbox, self._before_op) or self._host_call(op)
                # host ops (size arithmetic) take numpy; a send passes its value as it is
                move = None if isinstance(op, comm.SendOp | comm.ISendOp) else to_host
                ins, outs = [slots[v] for v in op.operands], [slot(v) for v in op.results]
                self.steps.append(_Step(op, call, ins, outs, device=bundle.host, move=move))
        self._blank: list[Any] = [None] * len(slots)
        self._n_args = len(fn.args)
        movers = {
            c["id"]: _mover(
                receivers.get(c["id"]), ("channel", c["id"]), self.stats_on, f"ch{c['id']}"
            )
            for c in bundle.manifest["channels"]
        }
        for ch in _returned_channels(fn):
            # received by the host only to be returned: left where it was made (a GPU
            # output stays there); the outputs go to the caller's device in one move
            movers[ch] = _unwrap  # (a pipelined send's event is not needed there)
        self.mailbox.movers.update(movers)
        self.mailbox.remote_channels = {
            c["id"] for c in bundle.manifest["channels"] if (c["from"] in here) != (c["to"] in here)
        }
        self.executors = executors

    def _host_call(self, op: Any) -> Call:
        host = self.host

        def call(args: list[Any]) -> Sequence[Any]:
            return host.run_op(op, args)

        return call

    def _segment_call(self, step: _Step, ex: Any, art: dict[str, Any], gpu: Any) -> Call:
        """`segment_call`, under the GPU's context, timed when stats are on; without
        either, the step calls the prepared function directly after the first call."""
        index = step.segment
        assert index is not None
        run = segment_call(ex, step.op, index, art)
        if gpu is None and not self.stats_on:

            def first(args: list[Any]) -> Sequence[Any]:
                outs = run(args)
                step.call = run.prepared[0]  # type: ignore[attr-defined]
                return outs

            return first
        call: Call = run
        if gpu is not None:

            def call(args: list[Any]) -> Sequence[Any]:
                with gpu:
                    return run(args)

        if self.stats_on:
            untimed = call

            def call(args: list[Any]) -> Sequence[Any]:
                return self._timed(index, gpu, untimed, args)

        return call

    # -- hooks the executors call

    def _before_op(self, op: Any, what: str = "") -> None:
        self.op, self.op_what = op, what
        if self.fault is None:  # every op: nothing more unless a fault is asked for
            return
        device = self.at.device if self.at is not None else self.bundle.host
        if self.fault.device == device:
            self.fault_count += 1  # counted first: a raised fault fires once
            self.fault.check(self.fault_count - 1, op.name, may_exit=False)

    def _on_span(self, name: str, start: float, end: float) -> None:
        self.kernel_s += end - start
        if self.stats_on:
            self._device_stats()["events"].append(_span(name, start, end, 0))

    def _device_stats(self) -> dict[str, Any]:
        device = self.at.device if self.at is not None else self.bundle.host
        s = self.stats.get(device)
        if s is None:
            s = self.stats[device] = {"device": device, "segments": {}, "events": []}
        return s

    # -- a call

    def __call__(self, *inputs: Any) -> list[Any]:
        with self.lock:
            return self._run(inputs)

    def _run(self, inputs: Sequence[Any]) -> list[Any]:
        if self.micro_batches > 1:
            return self._run_pipelined(inputs, self.micro_batches)
        self._sig.check(inputs)
        values = self._blank.copy()
        values[: self._n_args] = inputs
        if self.mailbox.values:
            self.mailbox.values.clear()  # what a failed call left behind
        self.kernel_s = 0.0
        try:
            for step in self.steps:
                self._do(step, values)
        except self.passthrough:
            raise
        except Exception as e:  # noqa: BLE001 - named with where it happened
            raise self._failure(e) from e
        finally:
            self.at, self.op = None, None
        return outputs_like([values[i] for i in self.returns], inputs)

    def _run_pipelined(self, inputs: Sequence[Any], m: int) -> list[Any]:
        """The inputs cut into m micro-batches run as runtime/pipeline.py's wavefront, in
        this process: at step s each step at stage d runs micro-batch s - d. Every GPU
        call is asynchronous (a graph launch on its GPU's stream), so while this thread
        goes on to the next step, gpu0 computes micro-batch j + 1 and gpu1 j; values
        cross between GPUs as copy-engine copies (`peer_copy`). Each micro-batch has
        its own mailbox; the outputs are joined along their first dim (for a caller on
        the host, each micro-batch's GPU outputs are copied out as it is done: `_Joined`)."""
        from gimlet.runtime.pipeline import join, split

        torch = _torch()
        pieces = split(inputs, m)  # refuses inputs that m does not divide
        self._sig.check(pieces[0], m)
        depth = max(self._stages, default=0)
        values = []
        for piece in pieces:
            v = self._blank.copy()
            v[: self._n_args] = piece
            values.append(v)
        mailboxes: list[dict[int, Any]] = [{} for _ in range(m)]
        host_caller = all(not isinstance(x, torch.Tensor) or x.is_cpu for x in inputs)
        out = _Joined(m) if host_caller else None
        self.kernel_s = 0.0
        try:
            for s in range(m + depth):
                for step, stage in zip(self.steps, self._stages, strict=True):
                    j = s - stage
                    if 0 <= j < m:
                        self.mailbox.values = mailboxes[j]
                        self.micro = j
                        self._do(step, values[j])
                done = s - depth  # every stage has run it: its outputs can go
                if out is not None and done >= 0 and not out.add(done, self._outs(values[done])):
                    out = None  # not every output is a CUDA tensor: joined at the end
        except self.passthrough:
            raise
        except Exception as e:  # noqa: BLE001 - named with where it happened
            raise self._failure(e) from e
        finally:
            self.at, self.op, self.micro = None, None, None
            self.mailbox.values = {}
        if out is not None:
            return out.wait()
        joined = join([self._outs(v) for v in values])
        return outputs_like(joined, inputs)

    def _outs(self, values: list[Any]) -> list[Any]:
        return [values[i] for i in self.returns]

    def _do(self, step: _Step, values: list[Any]) -> None:
        self.at = step
        move = step.move
        if move is None:
            outs = step.call([values[i] for i in step.ins])
        else:
            outs = step.call([move(values[i]) for i in step.ins])
        for i, v in zip(step.outs, outs, strict=True):
            values[i] = v

    def _timed(self, index: int, gpu: Any, call: Call, args: list[Any]) -> Sequence[Any]:
        stats = self._device_stats()
        seg = stats["segments"].setdefault(
            index,
            {"ops": self.bundle.manifest["segments"][index]["ops"], "bytes_in": 0, "bytes_out": 0},
        )
        if gpu is not None and self.micro is not None:
            # pipelined: a sync here would run the GPUs one at a time, so the span is the
            # GPU's, from events around the launch (taken in host time by take_stats)
            from gimlet.runtime.staging import for_device

            st = for_device(f"cuda:{gpu.idx}")
            begun = st.begin()
            outs = call(args)
            st.end(begun, f"segment {index}", ("segment", index, self.micro))
            return list(outs)
        start = time.time()
        outs = call(args)
        if gpu is not None:
            _torch().cuda.synchronize()  # the span is the GPU's time too
        end = time.time()
        seg["wall_s"] = seg.get("wall_s", 0.0) + end - start
        span_args = {} if self.micro is None else {"micro_batch": self.micro}  # as on workers
        stats["events"].append(_span(f"segment {index}", start, end, 0, span_args))
        return list(outs)

    def _failure(self, e: Exception) -> InProcessError:
        """A step's exception as one InProcessError naming where it happened (a UserError
        by its message alone, anything else with its type too)."""
        if isinstance(e, UserError):
            return InProcessError(self._where(e))
        return InProcessError(self._where(e, type(e).__name__))

    def _where(self, e: BaseException, kind: str = "") -> str:
        from gimlet.runtime.worker import describe_op

        at = self.at
        where = at.device if at is not None else self.bundle.host
        if at is not None and at.segment is not None:
            where += f" segment {at.segment}"
        if self.op is not None:
            where += f" at {describe_op(self.op)}{self.op_what}"
        detail = f"{kind}: {e}" if kind else str(e)
        return f"{where}: {detail}"

    def take_stats(self) -> list[dict[str, Any]]:
        """The recorded stats, one entry per device that ran something, then cleared."""
        if self.stats_on and self.gpu_names:
            self._copy_spans()
        out = [self.stats[d] for d in self.bundle.devices if d in self.stats]
        self.stats = {}
        return out

    def _copy_spans(self) -> None:
        """The timed host<->GPU copies (runtime/staging.py) on each GPU's copy-stream
        tracks, and a pipelined run's segments as their GPU ran them, in host time."""
        from gimlet.runtime.staging import drain_all

        for index, spans in drain_all().items():
            device = self.gpu_names.get(index)
            if device is None:
                continue
            stats = self.stats.setdefault(device, {"device": device, "segments": {}, "events": []})
            for sp in spans:
                if sp.direction in ("h2d", "d2h"):
                    ev = copy_event(sp.label, sp.direction, sp.start, sp.end, sp.nbytes)
                    stats["events"].append(ev)
                elif sp.direction == "gpu" and isinstance(sp.key, tuple):
                    _, segment, micro = sp.key
                    seg = stats["segments"][segment]  # made by _timed at the launch
                    seg["wall_s"] = seg.get("wall_s", 0.0) + sp.end - sp.start
                    args = {"micro_batch": micro}
                    stats["events"].append(_span(sp.label, sp.start, sp.end, 0, args))


class _Joined:
    """A pipelined call's outputs for a caller on the host: each micro-batch's rows copied
    into pinned host tensors as soon as its last stage is queued (on its GPU's download
    stream, after the kernels that make them), so only the last micro-batch's copy is
    left when the GPUs are done, not the whole output's."""

    def __init__(self, m: int):
        self.m = m
        self.outs: list[Any] | None = None
        self.events: list[Any] = []

    def add(self, j: int, parts: list[Any]) -> bool:
        """Start micro-batch j's copies; False (nothing done) unless every part is a CUDA
        tensor."""
        torch = _torch()
        if not all(isinstance(p, torch.Tensor) and p.is_cuda for p in parts):
            return False
        if self.outs is None:  # every output has a first dim (pipeline.check_bundle, at load)
            self.outs = [
                torch.empty((p.shape[0] * self.m, *p.shape[1:]), dtype=p.dtype, pin_memory=True)
                for p in parts
            ]
        from gimlet.runtime.staging import for_device

        for p, dst in zip(parts, self.outs, strict=True):
            rows = dst[j * p.shape[0] : (j + 1) * p.shape[0]]
            self.events.append(for_device(p.device).download_into(p, rows))
        return True

    def wait(self) -> list[Any]:
        for e in self.events:
            e.synchronize()
        assert self.outs is not None
        return self.outs


def _unset(args: list[Any]) -> Sequence[Any]:
    raise AssertionError("a step without its call")


def _any_differs(shape: Sequence[int], fixed: list[tuple[int, int]]) -> bool:
    """Whether `shape` differs from a signature in one of its `fixed` (dim, size) pairs."""
    for i, d in fixed:  # noqa: SIM110 - a generator costs a microsecond per call here
        if shape[i] != d:
            return True
    return False


def _returned_channels(fn: Any) -> list[int]:
    """Channels the host receives at top level only to be returned."""
    from xdsl.dialects import func

    from gimlet.dialects import comm

    found = []
    start: Any
    value: Any
    for op in fn.body.block.ops:
        if isinstance(op, comm.RecvOp):
            start, value = op, op.result
        elif isinstance(op, comm.WaitOp) and isinstance(op.token.owner, comm.IRecvOp):
            start, value = op.token.owner, op.value
        else:
            continue
        uses = list(value.uses) if value is not None else []
        if uses and all(isinstance(u.operation, func.ReturnOp) for u in uses):
            found.append(start.channel.value.data)
    return found


def _gpu_context(device: str, gpus: list[str]) -> Any:
    """The torch.cuda.device a GPU device's segments run under (GPUs take the local GPUs
    in manifest order, as the workers do), or None (not a GPU, or no CUDA here)."""
    if device not in gpus:
        return None
    torch = _torch()
    if not torch.cuda.is_available():
        return None
    return torch.cuda.device(gpus.index(device) % torch.cuda.device_count())


def outputs_like(values: list[Any], inputs: Sequence[Any], owned: bool = False) -> list[Any]:
    """Torch tensors on the inputs' device: the first CUDA input's, else the host. What
    the caller gets is its own: a view (of an input, a weight, a buffer an executor
    reuses) is copied; an array the executor made (the C++ backend's) is wrapped, and so
    is every array when `owned` says they are the caller's already (views of an arena
    handed over with them, launch.Session)."""
    torch = _torch()
    cuda = None
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.is_cuda:
            cuda = x.device
            break
    out = []
    for k, v in enumerate(values):
        if type(v) is np.ndarray:
            if not owned and (
                v.base is not None or not v.flags.writeable or any(v is x for x in inputs)
            ):
                v = v.copy()
            t = torch.from_numpy(v) if v.dtype.kind != "V" else _wrap(v)  # bf16 is "V"
        elif isinstance(v, torch.Tensor):
            t = v if cuda is not None else host_tensor(v)
            if any(v is x for x in inputs):
                t = t.clone()
        else:
            t = _wrap(np.array(v))
        if cuda is not None and t.device != cuda:
            t = to_device(t, str(cuda), ("output", k))
        out.append(t)
    return out


def _wrap(a: np.ndarray) -> Any:
    from gimlet.dtypes import numpy_to_torch

    return numpy_to_torch(a)


class _Signature:
    """The input check of `runtime.bundle.check_inputs`, on torch tensors too (a CUDA
    tensor is checked where it is, not copied to the host for it). Per input: its dtype
    name, rank and the dims the signature fixes, worked out once."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.sig = [
            (s["dtype"], len(s["shape"]), [(i, d) for i, d in enumerate(s["shape"]) if d != -1])
            for s in bundle.manifest["inputs"]
        ]
        self.names: dict[Any, str] = {}

    def _dtype(self, x: Any) -> str:
        dt = getattr(x, "dtype", None)
        name = self.names.get(dt)
        if name is None:
            torch = _torch()
            if isinstance(dt, torch.dtype):
                from gimlet.dtypes import element_type_for_torch, numpy_dtype

                name = numpy_dtype(element_type_for_torch(dt)).name
            else:
                name = np.asarray(x).dtype.name
            self.names[dt] = name
        return name

    def check(self, inputs: Sequence[Any], micro_batches: int = 1) -> None:
        """`check_inputs`'s refusal of `inputs` (one of `micro_batches`, when > 1)."""
        if len(inputs) == len(self.sig):
            for (dtype, rank, fixed), x in zip(self.sig, inputs, strict=True):
                xs = x.shape
                if len(xs) != rank or self._dtype(x) != dtype:
                    break
                if _any_differs(xs, fixed):
                    break
            else:
                return
        from gimlet.runtime.bundle import check_inputs

        # stand-ins with each input's dtype and shape (broadcast: no memory), so the message
        # is the one a multi-process run gives
        from gimlet.runtime.control import dtype_of

        check_inputs(
            self.bundle,
            [np.broadcast_to(np.zeros((), dtype_of(self._dtype(x))), x.shape) for x in inputs],
            micro_batches,
        )
        raise AssertionError("unreachable: check_inputs accepted what the fast check refused")


def _span(
    name: str, start: float, end: float, tid: int, args: dict[str, Any] | None = None
) -> dict[str, Any]:
    return event(name, "compute", start, end, tid, args or {})
