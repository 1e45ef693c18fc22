"""comm.send / comm.recv on torch.distributed point-to-point: gloo, or NCCL between GPUs.

Channels the manifest marks "nccl" (two GPUs of one vendor, directly linked, in an order
NCCL can match: see bundle._nccl_ordered_pairs) move their payload as a CUDA tensor on
the process group's NCCL backend when this worker has CUDA; shape headers and `index`
values stay on gloo. Without CUDA every channel is gloo, so a GPU cluster's bundle still
runs (slowly, on the interpreter) on a CPU-only host.

Device-resident NCCL channels: a send takes the executor's CUDA tensor as it is, and a
receive whose consumer runs on a GPU executor (`ChannelSpec.device_values`, set by the
worker from the executor of the segment holding the receive) returns the CUDA tensor the
payload landed in: no host staging on either side. Ordering is by streams, never by the
host: NCCL works on its own stream, which waits for the current stream when a transfer is
posted (so the sender's producer kernels come first), and `work.wait()` makes the current
stream wait for the transfer; the CUDA executor orders its own stream after the caller's
current stream with an event (backends/nvidia/runtime/gml_cuda.cpp: gml_cuda_run), so
its kernels read the payload only once it is there. Buffers come from torch's caching
allocator on the current stream and are held here while in flight (a receive's by its
`Pending` until its wait, a send's until `finish()`); after the wait, freeing one and
any reuse of its memory queue behind the transfer on the current stream, so no
`record_stream` is needed. Only a receive consumed on the host (the interpreter, the C++
backend, top-level ops) is copied to host memory.

Why the shapes travel too: a channel's type may have `?` dims (batch, sequence), so the
receiver cannot size its buffer from the IR. Each transfer is a header (the sizes, int64)
on tag 2*channel and the payload on tag 2*channel+1; fully static types skip the header.

Why sends are only waited for at the end of the program: the IR's comm.send is buffered
(it completes without the receiver, docs/placement.md) and the deadlock check assumes so.
A gloo send may not complete until its receive is posted, so blocking at the send's
comm.wait could deadlock a program the verifier accepted. The sent tensor is kept alive
with its handle until `finish()`.

Every blocking wait has a deadline (gloo's `Work.wait(timeout)`); a dead peer closes its
sockets, which gloo reports at once. Both become `CommError`s naming the op.

Between two workers the launcher started on this host, a channel that is not NCCL's
skips gloo: its payload goes through a shared-memory *slot* (`LocalSlot`: a header with
the dtype and shape, then the data) and the receiver is woken through an eventfd, a
copy and a system call instead of gloo's TCP round trips. A slot holds one message: a
channel carries one value per request, and the launcher starts a request only when every
worker has finished the last one. Slots of dynamic-shape channels are sparse (pages
are backed only when written), sized for the largest message they may carry.

Host channels (shared memory, gloo) and GPUs: copies go through runtime/staging.py
(copy streams per GPU, pinned buffers per channel). A receive consumed on a GPU executor
here (`device_values`, decided as for NCCL) returns a CUDA tensor: the slot's bytes go
into a pinned buffer (a gloo payload lands in one directly) and are uploaded on the
GPU's upload stream, the current stream waiting for that copy only. A CUDA tensor sent
to a host channel is downloaded on the download stream into a pinned buffer. For shared
memory, the wait for that copy and the put into the slot happen on a sender thread, so
the worker goes on launching GPU work; `finish()` joins it and fails the request, naming
the channel, when a put failed. Gloo sends copy into pinned memory of their own (held by
the send until `finish()`) and wait for that copy before `isend` (posting from a second
thread would need the process group to be thread-safe, which is not relied on).

Why the slot is not registered with CUDA (cudaHostRegister) and uploaded from in place:
a dynamic-shape slot is 1 GiB of sparse memory that registration would pin whole (or
re-register per message, which costs about what the memcpy saves), and the slot's entry
may be rewritten by its sender as soon as this worker finished the request, while a DMA
reading it in place could still be queued: the receiver would have to hold the entry
until its copy completed, a change to the slot's protocol. One memcpy into a buffer this
worker owns keeps the protocol as it is.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import torch
import torch.distributed as dist

from gimlet.dtypes import numpy_to_torch, torch_to_numpy
from gimlet.runtime import staging
from gimlet.runtime.control import ABORTED, LocalSlot


class CommError(RuntimeError):
    """A transfer that failed or timed out; `kind` is "timeout" or "peer"."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class ChannelSpec:
    """What the manifest says about a channel: its peer ranks and its type."""

    id: int
    src: int
    dst: int
    dtype: str  # numpy dtype name, or "index"
    shape: list[int]  # -1 for `?`
    cuda: torch.device | None = None  # set when the payload goes through NCCL
    local: LocalSlot | None = None  # set when it goes through shared memory (same host)
    # the receiving worker consumes this channel on a GPU executor: an NCCL payload is
    # returned as the CUDA tensor it landed in, a host channel's is uploaded to the
    # worker's GPU (`Channels.gpu`) on a copy stream (else a host numpy array)
    device_values: bool = False
    group: Any = None  # the NCCL payload's process group: its direction's (`nccl_groups`)


def nccl_groups(
    channels: Sequence[dict[str, Any]], ranks: dict[str, int], timeout_s: float
) -> dict[Any, Any]:
    """A process group for each direction of every pair of ranks that NCCL channels join,
    keyed (src rank, dst rank); every rank must call this, in the same order. Each group's
    watchdog has the receive timeout `timeout_s`, as the default group's: a new group
    otherwise takes torch's default (10 minutes for NCCL), and a transfer that never
    completes (`Channels._wait` leaves NCCL's to the watchdog) would hang that long.

    Why one a direction: torch gives a pair's point-to-point transfers one NCCL
    communicator and one stream, where each transfer waits for the ones issued before it
    (a send of more than NCCL's buffer does not finish before its receive runs). Program
    order keeps the two directions' transfers compatible, but a micro-batch pipeline
    (runtime/pipeline.py) issues them by stage: gpu0 sends micro-batch j + 1 to gpu1
    before it receives j back, while gpu1 sends j before it receives j + 1, and each
    GPU's stream would wait for the other forever. With a stream a direction, each
    stream holds one side's sends or receives only, in the same order on both GPUs."""
    pairs = sorted(
        {(ranks[c["from"]], ranks[c["to"]]) for c in channels if c.get("backend") == "nccl"}
    )
    timeout = datetime.timedelta(seconds=timeout_s)
    return {pair: dist.new_group(sorted(pair), timeout=timeout, backend="nccl") for pair in pairs}


_TORCH_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
    "index": torch.int64,
}


@dataclass(slots=True)  # one per receive: slots make it a quarter cheaper to make
class Pending:
    """A posted receive: header (if any) then payload, completed by `Channels.wait_recv`."""

    spec: ChannelSpec
    header: torch.Tensor | None
    header_work: Any
    payload: torch.Tensor | None = None
    payload_work: Any = None
    posted_at: float = 0.0
    staged: staging.Buffer | None = None  # the pinned buffer a gloo payload lands in


@dataclass
class Channels:
    """The comm endpoints of one worker. `timeout_s` bounds every blocking wait.

    `on_transfer(channel, start_s, end_s, nbytes, direction)` is called once per send (when
    issued) and per receive (posted to completed), for the trace and the per-segment bytes.
    """

    specs: dict[int, ChannelSpec]
    timeout_s: float
    names: list[str]  # device name per rank, for messages
    on_transfer: Callable[[int, float, float, int, str], None] = lambda *a: None
    sends: list[tuple[int, list[Any], list[torch.Tensor], float]] = field(default_factory=list)
    received: dict[int, np.ndarray] = field(default_factory=dict)  # reused when free
    # the worker's control socket: a shared-memory wait also wakes when the caller goes
    # away (or says stop), so a worker never outlives its caller by a receive timeout
    abort_fd: int | None = None
    # the GPU that device-value receives of host channels go to (set by the worker)
    gpu: torch.device | None = None
    # whether copies are timed for the trace now (the worker's want_stats)
    timed: Callable[[], bool] = lambda: False
    deferred: list[tuple[int, Future[None]]] = field(default_factory=list)  # sender thread
    _sender: ThreadPoolExecutor | None = None

    def _timeout(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.timeout_s)

    def _wait(self, work: Any, what: str, peer: int, nccl: bool = False) -> None:
        try:
            if nccl:
                # NCCL's wait(timeout) polls in millisecond sleeps; a plain wait only orders
                # the current stream after the transfer: a host copy that follows blocks
                # until the data is there, a GPU consumer's kernels queue behind it. The
                # process group's watchdog (same timeout) aborts a transfer that never
                # completes.
                work.wait()
                return
            work.wait(timeout=self._timeout())
        except RuntimeError as e:
            raise self._failure(e, what, peer) from e

    def _failure(self, e: RuntimeError, what: str, peer: int) -> CommError:
        """A torch.distributed error as a CommError: a timeout, or a peer that is gone."""
        name = self.names[peer] if peer < len(self.names) else f"rank {peer}"
        msg = str(e)
        # gloo: "Timed out"; NCCL's lazy communicator set-up: "wait timeout"
        if any(t in msg for t in ("Timed out", "timed out", "wait timeout")):
            return CommError(
                f"timed out after {self.timeout_s:g}s waiting for {what} from {name}", "timeout"
            )
        first = msg.split(". This is typically")[0].split(" Exception raised from")[0]
        return CommError(f"{what} failed: peer {name} is gone ({first.strip()})", "peer")

    def _post(
        self, op: Any, tensor: torch.Tensor, peer: int, tag: int, what: str, group: Any = None
    ) -> Any:
        """dist.isend/irecv; NCCL sets up a pair's communicator on its first transfer,
        waiting (up to the timeout) for the peer, so posting can fail too."""
        try:
            return op(tensor, peer, tag=tag, group=group)
        except RuntimeError as e:
            raise self._failure(e, what, peer) from e

    def send(self, channel: int, value: Any) -> None:
        spec = self.specs[channel]
        if spec.cuda is None and isinstance(value, torch.Tensor) and value.is_cuda:
            self._send_from_gpu(spec, value.detach())
            return
        if spec.local is not None:
            if self.deferred:  # this channel's earlier messages go into the slot first
                self._join_deferred(channel)
            start = time.time()
            nbytes = spec.local.put(value)
            self.on_transfer(channel, start, time.time(), nbytes, "out")
            return
        t = _to_tensor(value)
        if spec.cuda is not None:
            # a GPU executor's tensor is there already: no copy, no host synchronisation
            # (isend orders NCCL's stream after the current one, where it was produced)
            t = t.to(spec.cuda)
        self._isend(spec, t)

    def _send_from_gpu(self, spec: ChannelSpec, t: torch.Tensor) -> None:
        """A CUDA tensor to a host channel: downloaded on one of the GPU's copy streams."""
        st = staging.for_device(t.device)
        channel, timed, label = spec.id, self.timed(), f"ch{spec.id}"
        start = time.time()
        if spec.local is None:  # gloo: its own pinned memory, held by the send
            self._isend(spec, st.download_owned(t, channel, timed=timed, label=label))
            return
        staged = st.download(t, channel, timed=timed, label=label)
        self.on_transfer(channel, start, time.time(), t.numel() * t.element_size(), "out")
        if self._sender is None:
            # the thread's CUDA calls go to this GPU (not a fresh context on GPU 0)
            self._sender = ThreadPoolExecutor(
                1, "gimlet-send", initializer=torch.cuda.set_device, initargs=(t.device,)
            )
        self.deferred.append((channel, self._sender.submit(_put_staged, spec.local, staged)))

    def _isend(self, spec: ChannelSpec, t: torch.Tensor) -> None:
        """A host tensor (or, for NCCL, a CUDA one) posted with its header, if any."""
        channel = spec.id
        tensors, works = [t], []
        if -1 in spec.shape:
            header = torch.tensor(list(t.shape), dtype=torch.int64)
            tensors.insert(0, header)
            works.append(dist.isend(header, spec.dst, tag=2 * channel))
        start = time.time()
        what = f"channel {channel}"
        works.append(self._post(dist.isend, t, spec.dst, 2 * channel + 1, what, spec.group))
        self.sends.append((channel, works, tensors, start))
        self.on_transfer(channel, start, time.time(), t.numel() * t.element_size(), "out")

    def post_recv(self, channel: int) -> Pending:
        spec = self.specs[channel]
        p = Pending(spec, None, None, posted_at=time.time())
        if spec.local is not None:
            return p  # nothing to post: the sender writes the slot
        if -1 in spec.shape:
            p.header = torch.empty(len(spec.shape), dtype=torch.int64)
            p.header_work = dist.irecv(p.header, spec.src, tag=2 * channel)
        else:
            p.payload = self._landing(p, spec.shape)
            what = f"channel {channel}"
            p.payload_work = self._post(
                dist.irecv, p.payload, spec.src, 2 * channel + 1, what, spec.group
            )
        return p

    def _uploads(self, spec: ChannelSpec) -> bool:
        """Whether a receive on this host channel goes on to this worker's GPU."""
        return spec.device_values and spec.cuda is None and self.gpu is not None

    def _landing(self, p: Pending, shape: list[int]) -> torch.Tensor:
        """Where a gloo payload lands: a pinned buffer when it goes on to the GPU."""
        spec = p.spec
        if self._uploads(spec) and spec.dtype != "index":
            assert self.gpu is not None
            st = staging.for_device(self.gpu)
            p.staged, t = st.receive_buffer(spec.id, _TORCH_DTYPES[spec.dtype], shape)
            return t  # type: ignore[no-any-return]
        return self._buffer(spec, shape)

    def _buffer(self, spec: ChannelSpec, shape: list[int]) -> torch.Tensor:
        """Where a payload lands: device memory for NCCL (the caching allocator reuses it),
        else host memory, reusing this channel's previous array when the program no
        longer holds it. Fresh host memory costs a page fault per page, which on some
        VMs is slower than the transfer itself."""
        dtype = _TORCH_DTYPES[spec.dtype]
        if spec.cuda is not None:
            return torch.empty(shape, dtype=dtype, device=spec.cuda)
        old = self.received.get(spec.id)
        # 3 references: self.received, `old` and getrefcount's argument; a view the
        # program keeps holds one more (its base)
        if old is not None and list(old.shape) == shape and sys.getrefcount(old) <= 3:
            t = torch.from_numpy(old)
            if t.dtype == dtype:
                return t
        return torch.empty(shape, dtype=dtype)

    def wait_recv(self, p: Pending) -> Any:
        spec = p.spec
        if spec.local is not None:
            value = spec.local.take(self.timeout_s, self.abort_fd)
            if value is None or value is ABORTED:
                what = f"channel {spec.id}"
                name = self.names[spec.src] if spec.src < len(self.names) else f"rank {spec.src}"
                if value is ABORTED:
                    raise CommError(f"the caller went away during the wait for {what}", "peer")
                raise CommError(
                    f"timed out after {self.timeout_s:g}s waiting for {what} from {name}",
                    "timeout",
                )
            nbytes = 8 if isinstance(value, int) else int(value.nbytes)
            self.on_transfer(spec.id, p.posted_at, time.time(), nbytes, "in")
            if self._uploads(spec) and not isinstance(value, int):
                assert self.gpu is not None  # the slot's bytes, copied into a pinned buffer
                st = staging.for_device(self.gpu)
                return st.upload(value, spec.id, timed=self.timed(), label=f"ch{spec.id}")
            return value
        what = f"channel {spec.id}"
        if p.payload is None:
            self._wait(p.header_work, what, spec.src)
            assert p.header is not None
            p.payload = self._landing(p, p.header.tolist())
            p.payload_work = self._post(
                dist.irecv, p.payload, spec.src, 2 * spec.id + 1, what, spec.group
            )
        self._wait(p.payload_work, what, spec.src, nccl=spec.cuda is not None)
        nbytes = p.payload.numel() * p.payload.element_size()
        self.on_transfer(spec.id, p.posted_at, time.time(), nbytes, "in")
        if spec.dtype == "index":
            return int(p.payload.item())
        if p.staged is not None:  # landed in pinned memory: on to the GPU
            assert self.gpu is not None
            st = staging.for_device(self.gpu)
            buf, p.staged = p.staged, None
            return st.upload_received(
                buf, p.payload, spec.id, timed=self.timed(), label=f"ch{spec.id}"
            )
        if spec.cuda is not None and spec.device_values:
            # a GPU executor consumes it: stay on the device (the wait above ordered the
            # current stream, which that executor follows, after the transfer; so the
            # trace span ends when the wait is queued, not when the bytes are there)
            return p.payload
        if spec.cuda is not None:  # to host memory this channel already owns, if free
            host = self._buffer(dataclasses.replace(spec, cuda=None), list(p.payload.shape))
            p.payload = host.copy_(p.payload)
        out = torch_to_numpy(p.payload)
        if out.dtype != np.dtype(ml_dtypes.bfloat16):
            self.received[spec.id] = out
        return out

    def finish(self) -> None:
        """Wait for every outstanding send (the buffered semantics' end of program)."""
        self._join_deferred()
        for channel, works, _tensors, _start in self.sends:
            for w in works:
                spec = self.specs[channel]
                what = f"the send on channel {channel} to complete"
                self._wait(w, what, spec.dst, nccl=spec.cuda is not None and w is works[-1])
        if any(self.specs[c].cuda is not None for c, *_ in self.sends):
            # An NCCL wait only orders streams. Memory does not need the host to wait
            # (after it, reuse of a sent buffer queues behind the send), but a request
            # should end when its transfers have: the launcher's next request, the
            # request's time and an asynchronous CUDA error then belong to it. One
            # device synchronisation per request that sent through NCCL.
            torch.cuda.synchronize()
        self.sends.clear()

    def _join_deferred(self, only: int | None = None) -> None:
        """Wait for the sender thread's puts (of channel `only`, else all); the first
        that failed fails the request."""
        failed: tuple[int, BaseException] | None = None
        rest = []
        for channel, fut in self.deferred:
            if only is not None and channel != only:
                rest.append((channel, fut))
                continue
            error = fut.exception()  # waits for it
            if error is not None and failed is None:
                failed = (channel, error)
        self.deferred[:] = rest
        if failed is not None:
            channel, error = failed
            what = f"{type(error).__name__}: {error}"
            raise RuntimeError(f"the send on channel {channel} failed: {what}") from error


def _put_staged(slot: LocalSlot, staged: staging.Staged) -> None:
    """On the sender thread: wait for the download's copy only, then put it in the slot."""
    try:
        slot.put(torch_to_numpy(staged.wait()))
    finally:
        staged.release()


def _to_tensor(value: Any) -> torch.Tensor:
    """numpy array or torch tensor -> contiguous torch tensor (bf16 stays bf16, a device
    tensor stays where it is); index -> 0-d int64."""
    if isinstance(value, int | np.integer):
        return torch.tensor(int(value), dtype=torch.int64)
    if isinstance(value, torch.Tensor):
        return value.detach().contiguous()
    return numpy_to_torch(np.asarray(value))  # contiguous there; 0-d stays 0-d
