"""One worker: runs one device's program of a bundle (rank = index in the manifest).

Entry points: the local launcher (`gimletc run BUNDLE/`, `gimlet.load`: `--serve`, with
GIMLET_CONTROL_FD and GIMLET_STATUS_FD set, see runtime/control.py) and
`torchrun --nproc-per-node N -m gimlet.runtime.worker BUNDLE/ --inputs x.npz`. Both
give RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in the environment.

A device's program is the function body in order: its own segments (through the
executor of their artefact kind); the host also runs the top-level ops (the comm ops
moving inputs and outputs, size arithmetic) and returns the outputs.

Why the status page: a worker killed outright (os._exit, OOM killer) cannot report where
it was; it rewrites its slot of a shared status page (a memory write) before every op so
the launcher can name the segment and op it died in. Failures it can see are reported
on its control socket before it exits (under torchrun, on stderr).

Fault injection for tests: GIMLET_FAULT="cpu1:exit@3" (or raise, or sleep=SECONDS) fires
before the 3rd op (0-based) that device cpu1 runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import mmap
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gimlet.errors import describe_location
from gimlet.runtime import faults
from gimlet.runtime.pipeline import Place
from gimlet.runtime.trace import GPU_TID, copy_event
from gimlet.runtime.trace import event as _span

DEFAULT_TIMEOUT_S = 60.0


class WorkerError(Exception):
    """A failure inside a worker, with where it happened."""

    def __init__(self, message: str, kind: str, segment: int | None, op: str | None):
        super().__init__(message)
        self.kind, self.segment, self.op = kind, segment, op


def describe_op(op: Any) -> str:
    where = describe_location(op.location)
    from gimlet.dialects import comm

    extra = ""
    if isinstance(op, comm.SendOp | comm.ISendOp | comm.RecvOp | comm.IRecvOp):
        arrow = "to" if isinstance(op, comm.SendOp | comm.ISendOp) else "from"
        extra = f" channel {op.channel.value.data} {arrow} {op.peer.data}"
    elif isinstance(op, comm.WaitOp):
        start = op.token.owner
        if isinstance(start, comm.ISendOp | comm.IRecvOp):
            extra = f" channel {start.channel.value.data} ({start.name} {start.peer.data})"
    return f"{op.name}{extra}" + (f" ({where})" if where else "")


@dataclass
class _Step:
    """A top-level op this device runs: one of its segments, or (host) a top-level op.
    Values live in a list by position (`ins`, `outs`), not a dict keyed by SSA values."""

    op: Any
    call: Callable[[list[Any]], Sequence[Any]]
    ins: list[int]
    outs: list[int]
    segment: int | None = None
    ops: int = 0
    name: str = ""
    stage: int = 0  # micro-batch pipelining's wavefront stage (runtime/pipeline.py)


@dataclass
class _Plan:
    host: bool
    steps: list[_Step]
    returns: list[int]  # the host's outputs
    size: int  # values in the program
    depth: int = -1  # the last step's stage; -1 until a pipelined request needs it


class Worker:
    """State of one device's run: where it is, what it moved, what it timed."""

    def __init__(self, bundle: Any, rank: int, status: Any, timeout_s: float):
        from gimlet.runtime.channels import Channels, ChannelSpec
        from gimlet.runtime.control import LocalSlot

        self.bundle, self.rank = bundle, rank
        self.device = bundle.devices[rank]
        self.status = status  # a control.StatusPage, or None (torchrun)
        self.status_lines: dict[tuple[int, int | None, str], tuple[str, bytes]] = {}
        self.segment: int | None = None
        self.op_desc: str | None = None
        self.count = 0
        fault = faults.from_env()
        self.fault = fault if fault is not None and fault.device == self.device else None
        self.events: list[dict[str, Any]] = []
        self.want_stats = True  # trace spans and per-segment stats (the launcher may not ask)
        self.kernel_s = 0.0  # time in compiled parts this request (the rest is overhead)
        self.stats: dict[int, dict[str, Any]] = {}  # per segment, summed over iterations
        self.executors: dict[str, Any] = {}
        self.plan: _Plan | None = None
        self.channel_of: dict[int, int] = {}  # id(comm op) -> its channel, read once
        # the last thing this device does, when it is a send to shared memory (only sends'
        # waits after it): the answer can go out just before it (see `_serve`)
        self.final_send: int | None = None
        self.early_done: Callable[[], None] | None = None
        self.micro: int | None = None  # the micro-batch running (pipelined requests)
        ranks = self.ranks = {d: i for i, d in enumerate(bundle.devices)}
        self.cuda = cuda_device(bundle, self.device)
        self.nccl = self.cuda is not None and any(
            c.get("backend") == "nccl" and self.device in (c["from"], c["to"])
            for c in bundle.manifest["channels"]
        )
        specs = {
            c["id"]: ChannelSpec(
                c["id"],
                ranks[c["from"]],
                ranks[c["to"]],
                c["dtype"],
                c["shape"],
                self.cuda if self.nccl and c.get("backend") == "nccl" else None,
            )
            for c in bundle.manifest["channels"]
        }
        # channels to workers of this host that the launcher gave shared memory
        slots = LocalSlot.parse(os.environ.get("GIMLET_LOCAL_CHANNELS", ""))
        for ch, spec in specs.items():
            if ch in slots and spec.cuda is None and rank in (spec.src, spec.dst):
                spec.local = slots[ch]
        self.channels = Channels(specs, timeout_s, list(bundle.devices), self._on_transfer)

    def use_nccl_groups(self, groups: dict[tuple[int, int], Any]) -> None:
        """Each NCCL channel's payload goes through its direction's process group."""
        for spec in self.channels.specs.values():
            if spec.cuda is not None:
                spec.group = groups[(spec.src, spec.dst)]

    # -- progress, trace and stats

    def _before_op(self, op: Any, what: str = "") -> None:
        # described once per op: this runs before every interpreted op and compiled part
        key = (id(op), self.segment, what)
        known = self.status_lines.get(key)
        if known is None:
            desc = describe_op(op) + what
            line = json.dumps({"segment": self.segment, "op": desc}).encode()
            if self.status is not None:
                line = self.status.padded(line)
            known = self.status_lines[key] = (desc, line)
        self.op_desc = known[0]
        if self.status is not None:
            self.status.write(self.rank, known[1])
        if self.fault is not None:
            self.fault.check(self.count, self.op_desc)
        self.count += 1

    def _on_span(self, name: str, start: float, end: float) -> None:
        """A compiled kernel's run inside the current segment (nested under its span)."""
        self.kernel_s += end - start
        if self.status is not None:  # for a caller that does not wait for the answer
            self.status.set_kernel(self.rank, self.kernel_s)
        if self.want_stats:
            self.events.append(_span(name, "compute", start, end, 0, {}))

    def _on_transfer(self, channel: int, start: float, end: float, nbytes: int, d: str) -> None:
        """A transfer ("in": post to completion, "out": issue), or a host<->GPU copy of
        the channel's value on a copy stream ("h2d", "d2h": GPU time, runtime/staging.py)."""
        if not self.want_stats:
            return
        spec = self.channels.specs[channel]
        if d in ("h2d", "d2h"):  # counted in bytes by the transfer itself
            self.events.append(copy_event(f"ch{channel}", d, start, end, nbytes))
            return
        peer = self.bundle.devices[spec.src if d == "in" else spec.dst]
        name = f"ch{channel} {'<-' if d == 'in' else '->'} {peer}"
        via = "nccl" if spec.cuda is not None else "shm" if spec.local is not None else "gloo"
        args: dict[str, Any] = {"bytes": nbytes, "via": via}
        if d == "in" and (spec.cuda is not None or spec.device_values):
            args["on_device"] = spec.device_values  # no copy to the host after it
        self.events.append(_span(name, "transfer", start, end, 1, args))
        if self.segment is not None:
            self.stats[self.segment][f"bytes_{d}"] += nbytes

    # -- comm handler (called by executors)

    def _ch(self, op: Any) -> int:
        ch = self.channel_of.get(id(op))
        if ch is None:
            ch = self.channel_of[id(op)] = op.channel.value.data
        return ch

    def send(self, op: Any, value: Any) -> None:
        ch = self._ch(op)
        if ch == self.final_send and self.early_done is not None:
            done, self.early_done = self.early_done, None
            done()
        self.channels.send(ch, value)

    def post_recv(self, op: Any) -> Any:
        return self.channels.post_recv(self._ch(op))

    def wait_recv(self, pending: Any, op: Any) -> Any:
        return self.channels.wait_recv(pending)

    # -- the program

    def run(
        self,
        module: Any,
        weights: dict[str, np.ndarray],
        inputs: Sequence[Any],
        micro_batches: int = 1,
        into: Place | None = None,
    ) -> list[Any]:
        """One pass over the program; executors (and their loaded libraries) persist
        across calls, so repeated runs measure the steady state. `micro_batches` > 1:
        the inputs cut into that many pieces, run as a pipeline (runtime/pipeline.py),
        each micro-batch's outputs put where `into` says as it is done (pipeline.join_micro;
        without `into`, joined at the end)."""
        plan = self.plan if self.plan is not None else self._plan(module, weights)
        if micro_batches > 1:
            return self._run_pipelined(plan, module, inputs, micro_batches, into)
        values: list[Any] = [None] * plan.size
        if plan.host:
            values[: len(inputs)] = inputs
        for step in plan.steps:
            self._step(step, values)
        results = [values[i] for i in plan.returns] if plan.host else []
        self._finish()
        return results

    def _run_pipelined(
        self, plan: _Plan, module: Any, inputs: Sequence[Any], m: int, into: Place | None = None
    ) -> list[Any]:
        """The wavefront: at step s, each op at stage d runs micro-batch s - d."""
        from gimlet.ir import main_func
        from gimlet.runtime.pipeline import join, join_micro, split, stages

        if plan.depth < 0:  # stages worked out on the first pipelined request
            stage_of = stages(main_func(module), self.bundle.host)
            for st in plan.steps:
                st.stage = stage_of[st.op]
            plan.depth = max((st.stage for st in plan.steps), default=0)
        values: list[list[Any]] = [[None] * plan.size for _ in range(m)]
        if plan.host:
            for j, piece in enumerate(split(inputs, m)):
                values[j][: len(piece)] = piece
        joined: list[Any] | None = None
        for s in range(m + plan.depth):
            for step in plan.steps:
                j = s - step.stage
                if 0 <= j < m:
                    self.micro = j
                    self._step(step, values[j])
            done = s - plan.depth  # every stage has run it: its outputs go where they belong
            if plan.host and into is not None and done >= 0:
                joined = join_micro([values[done][i] for i in plan.returns], done, m, into, joined)
                values[done] = []  # its buffers back as the next ones run
        self.micro = None
        if plan.host and into is None:
            joined = join([[v[i] for i in plan.returns] for v in values])
        self._finish()
        return joined if joined is not None else []  # (None: not the host)

    def _step(self, step: _Step, values: list[Any]) -> None:
        """Run one step on one (micro-)batch's values."""
        args = [values[i] for i in step.ins]
        index = step.segment
        if index is None:
            outs = step.call(args)
        elif not self.want_stats:
            self.segment = index
            outs = step.call(args)
            self.segment = None
        else:
            self.segment = index
            stats = self.stats.get(index)
            if stats is None:
                stats = self.stats[index] = {"ops": step.ops, "bytes_in": 0, "bytes_out": 0}
            start = time.time()
            outs = step.call(args)
            end = time.time()
            stats["wall_s"] = stats.get("wall_s", 0.0) + end - start
            span_args = {} if self.micro is None else {"micro_batch": self.micro}
            self.events.append(_span(step.name, "compute", start, end, 0, span_args))
            self.segment = None
        for i, v in zip(step.outs, outs, strict=True):
            values[i] = v

    def _plan(self, module: Any, weights: dict[str, np.ndarray]) -> _Plan:
        """What this device runs, in order (its segments; on the host also the top-level
        ops), with each segment's executor loaded: worked out once, not per request."""
        from xdsl.dialects import func

        from gimlet import backends
        from gimlet.backends.base import segment_call
        from gimlet.backends.interpreter import InterpreterExecutor
        from gimlet.backends.parts import comm_step
        from gimlet.dialects import gml
        from gimlet.ir import main_func

        host = self.device == self.bundle.host
        seg_info = self.bundle.manifest["segments"]
        before_op, on_span = self._gpu_timed_hooks() or (self._before_op, self._on_span)
        host_exec = self.executors["interpreter"] = InterpreterExecutor(
            module, weights, self, before_op, on_span
        )
        fn = main_func(module)
        slots: dict[Any, int] = {v: i for i, v in enumerate(fn.args)}

        def slot(v: Any) -> int:
            if v not in slots:
                slots[v] = len(slots)
            return slots[v]

        steps: list[_Step] = []
        returns: list[int] = []
        # channel -> whether each receive of it here runs on a GPU executor
        on_gpu: dict[int, list[bool]] = {}
        any_gpu = False  # some segment here runs on a GPU executor
        index = -1
        for op in fn.body.block.ops:
            if isinstance(op, gml.SegmentOp):
                index += 1
                if op.device.data != self.device:
                    continue
                art = seg_info[index]["artefact"]
                kind = art["kind"]
                if kind not in backends.kinds():
                    raise WorkerError(
                        f"no backend for artefact kind {kind!r}", "error", index, None
                    )
                if kind not in self.executors:
                    self.segment = index
                    self.executors[kind] = backends.get(kind).load(host_exec, weights, self.bundle)
                    self.segment = None
                gpu = getattr(self.executors[kind], "tensor_device", None) == "cuda"
                any_gpu = any_gpu or gpu
                for ch in _received(op):
                    on_gpu.setdefault(ch, []).append(gpu)
                call = segment_call(self.executors[kind], op, index, art)
                ins, outs = [slot(v) for v in op.inputs], [slot(v) for v in op.outputs]
                steps.append(
                    _Step(op, call, ins, outs, index, seg_info[index]["ops"], f"segment {index}")
                )
            elif not host:
                continue
            elif isinstance(op, func.ReturnOp):
                returns = [slots[v] for v in op.arguments]
                break
            else:
                for ch in _received(op):
                    on_gpu.setdefault(ch, []).append(False)
                call = comm_step(op, self, self._before_op) or _host_call(host_exec, op)
                steps.append(_Step(op, call, [slots[v] for v in op.operands],
                                   [slot(v) for v in op.results]))  # fmt: skip
        self.plan = _Plan(host, steps, returns, len(slots))
        # a payload whose every consumer here is a GPU executor (CUDA, TensorRT) is
        # handed over in device memory: an NCCL one where it landed, a host channel's
        # uploaded on a copy stream of the GPU (runtime/staging.py); the interpreter and
        # the C++ backend take host arrays
        import torch

        if any_gpu and torch.cuda.is_available():
            self.channels.gpu = torch.device("cuda", torch.cuda.current_device())
        self.channels.timed = lambda: self.want_stats
        staged = self.channels.gpu is not None
        for ch, gpus in on_gpu.items():
            spec = self.channels.specs[ch]
            spec.device_values = all(gpus) and (spec.cuda is not None or staged)
        if not host:
            self.final_send = _final_send([st.op for st in steps])
            if self.final_send is not None and self.channels.specs[self.final_send].local is None:
                self.final_send = None  # a gloo send completes at the end, in finish()
        return self.plan

    def _finish(self) -> None:
        self.op_desc = "end of program (waiting for sends)"
        self.channels.finish()
        if self.want_stats:
            self._gpu_spans()

    def _gpu_timed_hooks(self) -> tuple[Callable[..., None], Callable[..., None]] | None:
        """On a GPU worker: the progress and span hooks, also timing each compiled part
        on the GPU when stats are wanted (CUDA events on the current stream around its
        launch, which the part's own stream follows and rejoins), for the trace's "gpu"
        track; a part's host span is only its launch. None elsewhere."""
        import torch

        from gimlet.runtime.bundle import GPU_KINDS

        if not torch.cuda.is_available():
            return None
        kinds = {d["name"]: d["kind"] for d in self.bundle.manifest["cluster"]["devices"]}
        if kinds.get(self.device) not in GPU_KINDS:
            return None
        from gimlet.runtime import staging

        before_op, on_span = self._before_op, self._on_span
        begun: list[Any] = []

        def before(op: Any, what: str = "") -> None:
            before_op(op, what)
            if what and self.want_stats:  # only a compiled part says what (backends/parts.py)
                begun.append(staging.for_device(torch.device("cuda")).begin())

        def span(name: str, start: float, end: float) -> None:
            on_span(name, start, end)
            if begun:
                staging.for_device(torch.device("cuda")).end(begun.pop(), name)

        return before, span

    def _gpu_spans(self) -> None:
        """The request's timed GPU spans (runtime/staging.py), in host time: copies on the
        copy-stream tracks, compiled parts on the gpu track."""
        from gimlet.runtime import staging

        for spans in staging.drain_all().values():
            for s in spans:
                if s.direction == "gpu":
                    self.events.append(_span(s.label, "compute", s.start, s.end, GPU_TID, {}))
                elif s.key in self.channels.specs:
                    self._on_transfer(s.key, s.start, s.end, s.nbytes, s.direction)


def _final_send(segments: list[Any]) -> int | None:
    """The channel of the last send in these segments when nothing but waits for sends
    (no-ops: shared-memory sends complete at once) and yields follow it, else None."""
    from gimlet.dialects import comm, gml

    last = None
    for seg in segments:
        for op in seg.body.block.ops:
            if isinstance(op, comm.SendOp | comm.ISendOp):
                last = op.channel.value.data
            elif isinstance(op, gml.YieldOp) or (
                isinstance(op, comm.WaitOp) and isinstance(op.token.owner, comm.ISendOp)
            ):
                continue
            else:
                last = None
    return last


def _received(op: Any) -> list[int]:
    """The channels `op` receives from: itself a receive, or a segment holding some."""
    from gimlet.dialects import comm

    return [o.channel.value.data for o in op.walk() if isinstance(o, comm.RecvOp | comm.IRecvOp)]


def _host_call(host_exec: Any, op: Any) -> Callable[[list[Any]], Sequence[Any]]:
    def call(args: list[Any]) -> Sequence[Any]:
        return host_exec.run_op(op, args)

    return call


def all_local(bundle: Any) -> bool:
    """Whether the launcher gave every channel a shared-memory slot."""
    from gimlet.runtime.control import LocalSlot

    slots = LocalSlot.parse(os.environ.get("GIMLET_LOCAL_CHANNELS", ""))
    return all(c["id"] in slots for c in bundle.manifest["channels"])


def cuda_available_for(bundle: Any) -> bool:
    """Whether this run uses NCCL at all: some channel is marked for it and CUDA is here."""
    if os.environ.get("GIMLET_TRANSPORT") == "gloo":
        return False
    if not any(c.get("backend") == "nccl" for c in bundle.manifest["channels"]):
        return False
    import torch

    return bool(torch.cuda.is_available())


def cuda_device(bundle: Any, device: str) -> Any:
    """The CUDA device a GPU device's worker uses for NCCL transfers, or None (a CPU device,
    no CUDA here, or GIMLET_TRANSPORT=gloo). GPU devices take the local GPUs in manifest
    order, so every rank of one host agrees without talking. The worker's GPU segments
    run on that GPU too (it becomes the current device), whichever the transport."""
    from gimlet.runtime.bundle import GPU_KINDS

    gpus = [d["name"] for d in bundle.manifest["cluster"]["devices"] if d["kind"] in GPU_KINDS]
    if device not in gpus:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    index = gpus.index(device) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    if os.environ.get("GIMLET_TRANSPORT") == "gloo":
        return None
    return torch.device("cuda", index)


def _load_inputs(path: str, bundle: Any) -> list[np.ndarray]:
    from gimlet.runtime.bundle import BundleError, check_inputs

    data = np.load(path)
    names = [s["name"] for s in bundle.manifest["inputs"]]
    for keys in (names, [f"arr_{i}" for i in range(len(names))]):
        if all(k in data for k in keys):
            arrays = [data[k] for k in keys]
            check_inputs(bundle, arrays)
            return arrays
    raise BundleError(f"{path}: expected arrays named {', '.join(names)} (or arr_0..)")


def _restore_bf16(arrays: list[np.ndarray], bundle: Any) -> list[np.ndarray]:
    """npz cannot hold ml_dtypes.bfloat16: the launcher stores its bits as uint16."""
    import ml_dtypes

    out = []
    for a, s in zip(arrays, bundle.manifest["inputs"], strict=False):
        out.append(
            a.view(ml_dtypes.bfloat16) if s["dtype"] == "bfloat16" and a.dtype == np.uint16 else a
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gimlet.runtime.worker")
    p.add_argument("bundle")
    p.add_argument("--inputs", help="inputs .npz (read by the host rank)")
    p.add_argument("-o", "--output", help="outputs .npz (written by the host rank)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per receive")
    p.add_argument("--trace", help="write this rank's Chrome trace events here (torchrun)")
    p.add_argument("--iterations", type=int, default=1, help="run the program N times (benchmarks)")
    p.add_argument(
        "--serve",
        action="store_true",
        help="stay up and run the requests of the launcher that started this worker "
        "(gimlet.load, gimletc run): needs GIMLET_CONTROL_FD and GIMLET_STATUS_FD",
    )
    args = p.parse_args(argv)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    timeout = args.timeout or float(os.environ.get("GIMLET_RECV_TIMEOUT", DEFAULT_TIMEOUT_S))
    worker: Worker | None = None
    control = None
    try:
        control, status = _control(args.serve, world)
        import torch.distributed as dist

        from gimlet.artifacts import IR_FILE, load_weights
        from gimlet.ir import parse
        from gimlet.runtime.bundle import load_bundle

        # the launcher checked every hash before starting anyone
        bundle = load_bundle(args.bundle, verify_hashes=control is None)
        if world != len(bundle.devices):
            raise WorkerError(
                f"the bundle has {len(bundle.devices)} devices ({', '.join(bundle.devices)}) "
                f"but WORLD_SIZE is {world}",
                "error",
                None,
                None,
            )
        worker = Worker(bundle, rank, status, timeout)
        # a program with no segment at all (its outputs are inputs) still has its IR
        segments = bundle.manifest["segments"]
        program = segments[0]["artefact"]["file"] if segments else IR_FILE
        with open(bundle.file(program)) as f:
            module = parse(f.read())
        weights = load_weights(bundle.file(bundle.manifest["weights"][worker.device]))
        inputs: list[Any] = []
        if worker.device == bundle.host and control is None:
            if not args.inputs:
                raise WorkerError("no inputs; pass --inputs INPUTS.npz", "error", None, None)
            inputs = _restore_bf16(_load_inputs(args.inputs, bundle), bundle)
        # every rank takes the same backend string: NCCL communicators are made lazily, per
        # pair, on the first CUDA transfer, so CPU ranks never touch CUDA
        nccl = cuda_available_for(bundle)
        # no process group when every channel is shared memory (the launcher's workers of
        # a CPU bundle; then the caller may be the host rank, outside any group): every
        # rank sees the same channel list, so they all decide alike
        use_group = control is None or not all_local(bundle)
        if use_group:
            dist.init_process_group(
                "cpu:gloo,cuda:nccl" if nccl else "gloo",
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=timeout),
            )
        if use_group and nccl:
            from gimlet.runtime.channels import nccl_groups

            groups = nccl_groups(bundle.manifest["channels"], worker.ranks, timeout)
            worker.use_nccl_groups(groups)
        if control is not None:
            from gimlet.runtime.control import send_msg

            worker.channels.abort_fd = control.fileno()
            send_msg(control, ("ready",))  # start-up is over: the caller's deadline starts
            _serve(worker, module, weights, control)
            if use_group:
                dist.destroy_process_group()
            return 0
        group = dist.new_group(backend="gloo") if nccl else None
        iteration_s = []
        for _ in range(max(args.iterations, 1)):
            dist.barrier(group=group)  # every rank starts together: one request each
            start = time.perf_counter()
            outputs = worker.run(module, weights, inputs)
            iteration_s.append(time.perf_counter() - start)
        if worker.device == bundle.host:
            _write_outputs(outputs, args.output)
        if args.trace:
            with open(args.trace, "w") as f:
                json.dump({"traceEvents": [dict(e, pid=rank) for e in worker.events]}, f)
        dist.destroy_process_group()
        return 0
    except BaseException as e:  # report where, then die without running gloo's teardown
        report = _report(e, worker, rank)
        if control is not None:
            with contextlib.suppress(OSError):
                from gimlet.runtime.control import send_msg

                send_msg(control, ("error", report))
        sys.stderr.write(f"gimlet worker: {report['message']}\n")
        if os.environ.get("GIMLET_DEBUG"):
            traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


def _control(serve: bool, world: int) -> tuple[Any, Any]:
    """The control socket and status page the launcher passed (runtime/control.py), or
    (None, None) under torchrun."""
    fd = os.environ.get("GIMLET_CONTROL_FD")
    if not serve:
        return None, None
    if fd is None:
        raise WorkerError(
            "--serve needs GIMLET_CONTROL_FD (it is started by gimlet.load or gimletc run)",
            "error",
            None,
            None,
        )
    import socket

    from gimlet.runtime.control import StatusPage

    control = socket.socket(fileno=int(fd))
    status = StatusPage(world, int(os.environ["GIMLET_STATUS_FD"]))
    return control, status


def _serve(worker: Worker, module: Any, weights: dict[str, np.ndarray], control: Any) -> None:
    """Run the launcher's requests until it says stop or goes away (end of file).

    Request `("run", K, inputs, stats)`: the host rank finds its inputs in the caller's
    arena (`inputs` = (arena size, [(dtype, shape, offset)]); a new arena's descriptor
    comes with the message), every rank runs its program, then answers
    `("done", K, outputs, stats, seconds)`; the host's `outputs` say where in its own
    arena the outputs lie (a new arena's descriptor comes along). Blocking reads: a worker
    costs nothing while it waits, and wakes as soon as a request arrives."""
    from gimlet.runtime.control import Arena, recv_msg, send_msg

    host = worker.device == worker.bundle.host
    # the caller is the host and reads answers from the status page (launch.Session)
    early_answers = os.environ.get("GIMLET_EARLY_ANSWERS") == "1" and not host
    arena_in: Arena | None = None
    out = _HostOutputs()
    while True:
        try:
            msg, fds = recv_msg(control)
        except (EOFError, ConnectionError):
            return  # the launcher closed its end, or died
        if msg[0] != "run":
            return
        _, k, request, want_stats = msg[:4]
        micro = msg[4] if len(msg) > 4 else 1  # micro-batches (runtime/pipeline.py)
        free, drop = msg[5] if len(msg) > 5 else ((), ())  # handed output arenas
        inputs: list[Any] = []
        if host:
            size, meta = request
            if fds:
                arena_in = Arena(size, fds[0])
                arena_in.sent()
            assert arena_in is not None
            inputs = arena_in.views(meta)
        worker.events, worker.stats, worker.kernel_s = [], {}, 0.0
        worker.want_stats = bool(want_stats)
        if worker.status is not None:
            worker.status.set_kernel(worker.rank, 0.0)
        start = time.perf_counter()
        answered: list[bool] = []
        if early_answers and not want_stats and worker.final_send is not None and micro == 1:
            # the answer goes into the status page just before the last send (nothing
            # but that send is left to do), not over the socket: a caller that starts
            # the next request right away finds it there, even when this worker loses
            # its core to the woken caller after the send, and a caller waiting for
            # that send is not woken twice. A failure in the send is still reported.
            def early(k: int = k, answered: list[bool] = answered) -> None:
                worker.status.set_done(worker.rank, k)
                answered.append(True)

            worker.early_done = early
        out.begin(free, drop)
        # a pipelined request's micro-batches are joined straight into the output arena
        outputs = worker.run(module, weights, inputs, micro, out.place if host else None)
        seconds = time.perf_counter() - start
        worker.early_done = None
        del inputs
        if answered:
            continue
        where = None
        new: list[int] = []
        if host:
            if out.where is None:  # not joined there: copied in
                out.write([np.asarray(o) for o in outputs])
            where = out.where
            if out.new is not None:
                assert out.new.fd is not None
                new = [out.new.fd]
        del outputs  # views of the arena, when joined there
        stats = None
        if want_stats:
            stats = {"device": worker.device, "segments": worker.stats, "events": worker.events}
        send_msg(control, ("done", k, where, stats, seconds, worker.kernel_s), new)
        if out.new is not None:
            out.new.sent()  # the caller has the descriptor now


# outputs at least this large go to the caller in an arena of their own
HANDOVER_BYTES = int(os.environ.get("GIMLET_HANDOVER_BYTES", 4 << 20))


class _HostOutputs:
    """Where the host worker leaves a request's outputs for the caller: its output arena
    (runtime/control.py), replaced by a larger one (whose descriptor goes to the caller
    with the answer) when they outgrow it.

    Outputs of HANDOVER_BYTES or more go into a *handed* arena instead, which the caller
    gives to its caller as the outputs' memory (views of it: no copy). Both processes keep
    a pool of them by id: each request says which ones the caller's caller has let go of
    (`begin(free, drop)`), and this worker writes into a free one of the size, or makes a
    new one (its descriptor goes with the answer). Why: the caller copied them out of the
    reused arena after the devices were done, 1.7 ms for a pipeline's 25.7 MB of logits on
    the H200 machine; an arena per request instead cost page faults here and the unmap
    of the last one in the caller, 2-3 ms (gpu_pipeline runs 10-12). Reused, the pages
    are there already."""

    def __init__(self) -> None:
        from gimlet.runtime.control import Arena

        self.arena: Arena | None = None
        self.handed: dict[int, Arena] = {}  # id -> arena (the caller has it mapped too)
        self.free: set[int] = set()  # handed arenas nobody holds now: this worker may reuse them
        self.next_id = 0
        # this request's: (arena size, meta, the handed arena's id or None)
        self.where: tuple[int, list[Any], int | None] | None = None
        self.new: Arena | None = None  # the arena this request made (its fd goes along)

    def begin(self, free: Sequence[int] = (), drop: Sequence[int] = ()) -> None:
        self.where, self.new = None, None
        for i in drop:  # the caller let go of its mapping: so do we
            self.handed.pop(i, None)
        self.free = {i for i in free if i in self.handed}

    def place(self, specs: list[tuple[tuple[int, ...], np.dtype[Any]]]) -> list[np.ndarray]:
        """Arrays in the arena for outputs of these (shape, dtype)s, to fill in place."""
        from gimlet.runtime.control import Arena, grow

        sizes = [int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for shape, dtype in specs]
        offsets, need = Arena.layout_sizes(sizes)
        handed: int | None = None
        if need >= HANDOVER_BYTES:
            fits = [i for i in sorted(self.free) if self.handed[i].size >= need]
            if fits:
                handed = fits[0]
                self.free.discard(handed)
            else:
                handed, self.next_id = self.next_id, self.next_id + 1
                self.handed[handed] = self.new = Arena(-(-need // mmap.PAGESIZE) * mmap.PAGESIZE)
            arena = self.handed[handed]
        else:
            self.arena, fresh = grow(self.arena, need)
            arena = self.arena
            if fresh:
                self.new = arena
        views, meta = arena.place(specs, offsets)
        self.where = (arena.size, meta, handed)
        return views

    def write(self, arrays: list[np.ndarray]) -> None:
        """`arrays` copied into the arena."""
        for dst, a in zip(self.place([(a.shape, a.dtype) for a in arrays]), arrays, strict=True):
            np.copyto(dst, a, casting="no")


# how gloo words a peer that went away (its socket closed or reset mid-transfer)
_PEER_GONE = ("closed by peer", "reset by peer", "Broken pipe")


def _report(e: BaseException, worker: Worker | None, rank: int) -> dict[str, Any]:
    from gimlet.runtime.channels import CommError

    kind = e.kind if isinstance(e, CommError | WorkerError) else "error"
    if kind == "error" and any(m in str(e) for m in _PEER_GONE):  # gloo saw a dead peer first
        kind = "peer"
    if worker is None:
        return {"rank": rank, "kind": kind, "message": f"rank {rank}: {e}"}
    from gimlet.errors import UserError

    seg = worker.segment
    where = worker.device + (f" segment {seg}" if seg is not None else "")
    if worker.op_desc:
        where += f" at {worker.op_desc}"
    detail = str(e) if kind != "error" or isinstance(e, UserError) else f"{type(e).__name__}: {e}"
    detail = detail.split(" Exception raised from")[0].split("\nException raised from")[0]
    return {
        "rank": rank,
        "device": worker.device,
        "segment": seg,
        "op": worker.op_desc,
        "kind": kind,
        "message": f"{where}: {detail}",
    }


def _write_outputs(outputs: list[Any], path: str | None) -> None:
    import ml_dtypes

    arrays = {}
    for i, o in enumerate(outputs):
        a = np.asarray(o)
        arrays[f"out{i}"] = a.view(np.uint16) if a.dtype == ml_dtypes.bfloat16 else a
    if path:
        np.savez(path, **arrays)  # type: ignore[arg-type]
    else:
        for k, a in arrays.items():
            print(f"{k}: {a.dtype} {list(a.shape)} {np.array2string(a.ravel()[:6], precision=5)}")


if __name__ == "__main__":
    sys.exit(main())
