"""Host<->GPU copies on copy streams, through reusable pinned host buffers.

Why: a value crossing between host memory and a GPU used to move with a plain
`.to(device)` / `.cpu()` on the compute stream, from pageable memory: the host blocked
for the copy and the copy could not overlap kernels. Here each GPU has copy streams
(`Staging`), every copy goes through a pinned buffer (which a DMA engine reads or
writes while the compute stream runs other kernels), and copies are ordered by CUDA
events only, never by synchronising a stream or the device.

Two copy streams per GPU, one per direction: a download waits (on the GPU) for the
kernels that produce its value, so an upload queued behind it on a shared stream would
wait for them too, and the kernels consuming the upload with it; apart, the next input
goes up while the last output is still being computed. GPUs copy each direction on its
own engine, so both run at once.

* host -> GPU (`Staging.upload`): the value is copied into a pinned buffer (one host
  memcpy, by the calling thread alone: `fill`), `cudaMemcpyAsync` runs on the upload
  stream into a device tensor allocated there, an event is recorded after it and the
  consumer's (current) stream waits for that event. The host does not wait; the compute
  stream waits only where the value is used, so kernels queued before that point
  (another input's work) run during the copy.
  A transfer that can land in pinned memory itself (a gloo receive) skips the memcpy
  (`receive_buffer`, then `upload_received`).
* GPU -> host (`Staging.download`): an event recorded on the current stream after the
  producer; the download stream waits for it, copies into a pinned buffer and records an
  event; the host waits for that event only (`Staged.wait`), not for the compute stream.

Buffers: a `Ring` per key (a channel), used round robin, with at least `DEPTH` = 2
buffers: message k+1's memcpy goes into the other buffer while message k's DMA runs. A
buffer is written again only after the copy that last used it completed (its event,
`event.synchronize()`, no polling) and after the host released it (a download stays
held until the send that reads it is done). Sizes are powers of two, at least
`MIN_BYTES`, grown when a message is larger. The bound, per key: max(DEPTH, downloads the
host holds at once) buffers, each less than twice the key's largest message. A grown
ring's old buffer goes back to torch's pinned-memory cache (`torch.empty(...,
pin_memory=True)`), where later pinned allocations reuse it.

Device tensors made by an upload are allocated on the upload stream and marked used
on the consumer's stream (`record_stream`); a download's source is marked used on the
download stream: the caching allocator then never hands their memory out while the other stream
may still touch it.

Tracing (`timed=True`): timing events around each copy on its copy stream, and around
compiled GPU parts on the compute stream (`begin`/`end`); `drain_all()` converts them to
host time (time.time(), the clock every trace span uses) through a reference event
recorded on an otherwise idle stream at a known host time, so a trace shows copies on
their own track against the GPU's compute.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DEPTH = 2  # buffers per ring, at least (double buffering)
MIN_BYTES = 1 << 16  # smallest pinned buffer: one allocation serves every small message
CLOCK_REFRESH_S = 10.0  # a new reference event after this long (GPU and host clocks drift)
MAX_SPANS = 1 << 14  # timed copies kept until drained; older ones are dropped


@dataclass
class Buffer:
    """One pinned host buffer of a ring."""

    host: Any  # a pinned uint8 tensor of `capacity` bytes (None until first sized)
    capacity: int = 0
    event: Any = None  # the last copy through it, until that copy is known complete
    busy: bool = False  # held by the host (a download not released, a receive landing)


def buffer_size(nbytes: int) -> int:
    """A buffer's size for a message of `nbytes`: a power of two, at least MIN_BYTES."""
    return max(MIN_BYTES, 1 << max(nbytes - 1, 0).bit_length())


class Ring:
    """The pinned buffers of one key, reused round robin (see the module docstring).

    `alloc(n)` makes a pinned buffer of n bytes; events need `query()` and
    `synchronize()`. `waits` counts the acquires that found their buffer's last copy
    still running (a stall: the ring is too shallow for the traffic)."""

    def __init__(self, alloc: Callable[[int], Any], depth: int = DEPTH):
        self.alloc, self.depth = alloc, depth
        self.buffers: list[Buffer] = []
        self.next = 0  # the least recently used buffer
        self.waits = 0

    def acquire(self, nbytes: int) -> Buffer:
        """A buffer of at least `nbytes` that no copy and no host use still reads."""
        buf = None
        if len(self.buffers) >= self.depth:
            n = len(self.buffers)
            for i in range(n):
                j = (self.next + i) % n
                if not self.buffers[j].busy:
                    buf, self.next = self.buffers[j], (j + 1) % n
                    break
        if buf is None:  # fewer than `depth` so far, or the host holds every one
            buf = Buffer(None)
            self.buffers.append(buf)
            self.next = 0
        if buf.event is not None:
            if not buf.event.query():
                self.waits += 1
            buf.event.synchronize()
            buf.event = None
        if buf.capacity < nbytes or buf.host is None:
            buf.capacity = buffer_size(nbytes)
            buf.host = self.alloc(buf.capacity)
        return buf

    @property
    def pinned_bytes(self) -> int:
        return sum(b.capacity for b in self.buffers)


@dataclass
class Staged:
    """A download in flight: `wait()` gives the pinned host tensor once its copy is done;
    `release()` (after the host is done with it) lets the ring reuse the buffer."""

    host: Any
    done: Any
    buf: Buffer

    def wait(self) -> Any:
        self.done.synchronize()
        return self.host

    def release(self) -> None:
        self.buf.busy = False


@dataclass
class GpuSpan:
    """A timed copy or compiled part, in host time. `direction`: "h2d", "d2h" or "gpu"."""

    key: Any
    label: str
    direction: str
    nbytes: int
    start: float
    end: float


def _pinned(nbytes: int) -> Any:
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


def _nbytes(dtype: Any, shape: Any) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _view(buf: Buffer, dtype: Any, shape: Any) -> Any:
    """The first bytes of `buf` as a tensor of `dtype` and `shape`."""
    return buf.host[: _nbytes(dtype, shape)].view(dtype).view(shape)


# an integer dtype of each element size: a copy of any dtype as its bits
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def fill(buf: Buffer, src: Any) -> Any:
    """Host tensor `src` copied into the first bytes of `buf`: that tensor (`_view`).

    One thread copies (numpy's copyto, which lets go of the GIL), not torch's `copy_`:
    torch splits a CPU copy of 32768 elements or more over its intra-op thread pool and
    returns when the last of those threads has run its share, so with the host's cores
    oversubscribed (pytest -n 8 on the H200 machine: nvcc builds, torch on the CPU) each
    2 MB upload of a GPU worker waited for a dozen threads to be scheduled. It then cost
    more than the kernels it was to overlap, the worker fell behind its GPU, and no copy
    ran beside a kernel (tests/test_staging.py's overlap test). A 2 MB copy on 2 cores
    with 6 busy processes: torch's 16 ms median (2 threads; 0.05 ms with 1), numpy's
    0.04 ms. The cost: a copy of tens of MB on an idle host takes one core's bandwidth."""
    staged = _view(buf, src.dtype, src.shape)
    bits = _BITS.get(src.element_size())
    if bits is None:  # no integer of that size (complex128): torch's copy
        staged.copy_(src)
    elif src.numel():
        np.copyto(staged.view(bits).numpy(), src.view(bits).numpy(), casting="no")
    return staged


def _host_tensor(value: Any) -> Any:
    """A numpy array (bf16 included) or host tensor as a host tensor, without a copy."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    from gimlet.dtypes import numpy_to_torch

    return numpy_to_torch(np.asarray(value))


class Staging:
    """One GPU's copy streams and pinned rings (`for_device` gives the process's one)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.up = torch.cuda.Stream(device)  # host -> GPU copies
        self.down = torch.cuda.Stream(device)  # GPU -> host copies
        self.rings: dict[Hashable, Ring] = {}
        self.spans: collections.deque[tuple[Any, str, str, int, Any, Any]] = collections.deque(
            maxlen=MAX_SPANS
        )
        self._clock: tuple[Any, float] | None = None  # reference event, its host time
        self._clock_stream: Any = None

    def ring(self, key: Hashable) -> Ring:
        r = self.rings.get(key)
        if r is None:
            r = self.rings[key] = Ring(_pinned)
        return r

    # -- host -> GPU

    def upload(self, value: Any, key: Hashable, *, timed: bool = False, label: str = "") -> Any:
        """A host value (numpy array or host tensor) as a tensor on this GPU, which the
        current stream may use at once (it waits for the copy there, the host does not)."""
        src = _host_tensor(value)
        buf = self.ring(key).acquire(src.numel() * src.element_size())
        staged = fill(buf, src)  # the one host memcpy
        return self._upload(buf, staged, key, timed, label)

    def receive_buffer(self, key: Hashable, dtype: Any, shape: Any) -> tuple[Buffer, Any]:
        """A pinned buffer for a transfer to land in (e.g. a gloo receive), held until
        `upload_received`; the tensor view of it to receive into."""
        buf = self.ring(key).acquire(_nbytes(dtype, shape))
        buf.busy = True
        return buf, _view(buf, dtype, shape)

    def upload_received(
        self, buf: Buffer, staged: Any, key: Hashable, *, timed: bool = False, label: str = ""
    ) -> Any:
        """`upload` of what landed in `receive_buffer`'s buffer: no host memcpy."""
        buf.busy = False
        return self._upload(buf, staged, key, timed, label)

    def _upload(self, buf: Buffer, staged: Any, key: Hashable, timed: bool, label: str) -> Any:
        consumer = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.up):
            out = torch.empty(staged.shape, dtype=staged.dtype, device=self.device)
            start = self._timing_event(self.up) if timed else None
            if out.numel():
                out.copy_(staged, non_blocking=True)
            done = torch.cuda.Event(enable_timing=timed)
            done.record(self.up)
        buf.event = done
        consumer.wait_event(done)
        out.record_stream(consumer)  # freed later: not reused before the consumer is done
        if start is not None:
            self.spans.append((key, label, "h2d", out.numel() * out.element_size(), start, done))
        return out

    # -- GPU -> host

    def download(self, t: Any, key: Hashable, *, timed: bool = False, label: str = "") -> Staged:
        """Start copying CUDA tensor `t` (made on the current stream) into a pinned buffer
        of `key`; the buffer is the host's until `Staged.release()`."""
        buf = self.ring(key).acquire(t.numel() * t.element_size())
        buf.busy = True
        host = _view(buf, t.dtype, t.shape)
        buf.event = self._copy_out(t, host, key, timed, label)
        return Staged(host, buf.event, buf)

    def download_owned(
        self, t: Any, key: Hashable = None, *, timed: bool = False, label: str = ""
    ) -> Any:
        """`t` copied into a new pinned host tensor the caller keeps (from torch's pinned
        cache), once the copy is done: for values that leave the runtime's hands. `key`
        only names the copy in the trace."""
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        self._copy_out(t, host, key, timed, label).synchronize()
        return host

    def download_into(self, t: Any, host: Any) -> Any:
        """Start copying CUDA tensor `t` (made on the current stream) into pinned `host`,
        which the caller owns; the event that says the copy is done."""
        return self._copy_out(t, host, None, False, "")

    def _copy_out(self, t: Any, host: Any, key: Hashable, timed: bool, label: str) -> Any:
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.device))  # after the producer
        self.down.wait_event(ready)
        with torch.cuda.stream(self.down):
            start = self._timing_event(self.down) if timed else None
            if t.numel():
                host.copy_(t, non_blocking=True)
            done = torch.cuda.Event(enable_timing=timed)
            done.record(self.down)
        t.record_stream(self.down)  # the producer may drop `t` before the copy ran
        if start is not None:
            self.spans.append((key, label, "d2h", t.numel() * t.element_size(), start, done))
        return done

    # -- compute timing and the clock

    def begin(self) -> Any:
        """A timing event on the current stream, before a compiled part is launched."""
        return self._timing_event(torch.cuda.current_stream(self.device))

    def end(self, begun: Any, label: str, key: Hashable = None) -> None:
        """After the part's launch: its GPU span (from `begin`'s event) for the trace;
        `key` says which part it was where the label alone does not."""
        done = self._timing_event(torch.cuda.current_stream(self.device))
        self.spans.append((key, label, "gpu", 0, begun, done))

    def _timing_event(self, stream: Any) -> Any:
        if self._clock is None:
            self._reference()
        e = torch.cuda.Event(enable_timing=True)
        e.record(stream)
        return e

    def _reference(self) -> None:
        """A timing event recorded on an idle stream and waited for: it completed within
        a few microseconds of the host time taken around it."""
        if self._clock_stream is None:
            self._clock_stream = torch.cuda.Stream(self.device)
        ref = torch.cuda.Event(enable_timing=True)
        before = time.time()
        ref.record(self._clock_stream)
        ref.synchronize()
        self._clock = (ref, (before + time.time()) / 2)

    def drain(self) -> list[GpuSpan]:
        """The timed spans recorded since the last drain, in host time (waits for them)."""
        if not self.spans or self._clock is None:
            self.spans.clear()
            return []
        ref, ref_s = self._clock
        out = []
        for key, label, direction, nbytes, start, end in self.spans:
            end.synchronize()
            s = ref_s + ref.elapsed_time(start) / 1e3
            e = ref_s + ref.elapsed_time(end) / 1e3
            out.append(GpuSpan(key, label, direction, nbytes, s, max(e, s)))
        self.spans.clear()
        if time.time() - ref_s > CLOCK_REFRESH_S:
            self._clock = None  # a new reference before the next timed event (all later)
        return out


_STAGING: dict[int, Staging] = {}


def for_device(device: Any) -> Staging:
    """The Staging of a CUDA device (a torch.device or "cuda:N"; no index: the current
    GPU), made on first use and kept for the process."""
    d = torch.device(device)
    index = d.index if d.index is not None else torch.cuda.current_device()
    st = _STAGING.get(index)
    if st is None:
        st = _STAGING[index] = Staging(torch.device("cuda", index))
    return st


def drain_all() -> dict[int, list[GpuSpan]]:
    """Every GPU's timed spans since the last drain, by CUDA device index (no CUDA call
    when nothing was staged)."""
    return {index: st.drain() for index, st in _STAGING.items()}
