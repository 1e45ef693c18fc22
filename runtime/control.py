"""How a caller talks to the worker processes it started: sockets and shared memory.

Why not files: a request used to be an `.npz` file that the workers polled for (10 ms
sleeps), so a 1 ms model took 12 ms through `gimlet.load`. Now each worker has one end of
a Unix socket pair; the other end stays with the caller:

* messages are length-prefixed pickles (both ends are our own processes): `run` (the
  request number, and for the host rank where its inputs lie), `done` (and where the
  host's outputs lie), `error` (a worker's report, sent before it exits), `stop`;
* tensors travel through *arenas*, shared memory (`memfd_create`) the writer maps and
  fills and the reader maps and reads in place. The caller owns the input arena, the
  host worker the output arena; whoever outgrows one makes a larger one and passes its
  file descriptor along with the message (SCM_RIGHTS), so the other side maps it;
* every wait blocks in the kernel (a blocking read, or `select` with a deadline on the
  caller's side) instead of sleeping and looking again. A worker that dies closes its
  socket, which wakes the caller at once; a caller that goes away closes the workers'
  sockets, and each worker stops on that end-of-file.

Where a worker is (the segment and op it is about to run) goes into its slot of a shared
status page, a plain memory write per op, so that the caller can say where a worker was
when it died without a report.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import select
import socket
import struct
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np

_LEN = struct.Struct("<Q")
MAX_FDS = 4
ALIGN = 64
STATUS_BYTES = 512  # one worker's slot in the status page


def send_msg(sock: socket.socket, obj: Any, fds: Sequence[int] = ()) -> None:
    """One message (and file descriptors to pass along, if any)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    payload = _LEN.pack(len(data)) + data
    if not fds:
        sock.sendall(payload)
        return
    sent = socket.send_fds(sock, [payload], list(fds))
    if sent < len(payload):
        sock.sendall(payload[sent:])


def recv_msg(sock: socket.socket) -> tuple[Any, list[int]]:
    """The next message and the descriptors that came with it; EOFError when the peer
    closed its end (it exited or died)."""
    head, fds, _flags, _addr = socket.recv_fds(sock, _LEN.size, MAX_FDS)
    if not head:
        raise EOFError("the peer closed the socket")
    head += _read(sock, _LEN.size - len(head))
    (n,) = _LEN.unpack(head)
    return pickle.loads(_read(sock, n)), list(fds)


def _read(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("the peer closed the socket mid-message")
        got += k
    return bytes(buf)


def dtype_of(name: str) -> np.dtype[Any]:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


class Arena:
    """Shared memory holding the arrays of one message. `fd` is open until `sent()`."""

    def __init__(self, size: int, fd: int | None = None):
        self.size = size
        self.fd: int | None = fd
        if fd is None:
            self.fd = os.memfd_create("gimlet-arena", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, size)
        assert self.fd is not None
        self.map = mmap.mmap(self.fd, size)  # holds its own duplicate of the descriptor

    def sent(self) -> None:
        """The descriptor went to the peer (or is not needed): close ours."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @staticmethod
    def layout(arrays: Sequence[np.ndarray]) -> tuple[list[int], int]:
        return Arena.layout_sizes([a.nbytes for a in arrays])

    @staticmethod
    def layout_sizes(sizes: Sequence[int]) -> tuple[list[int], int]:
        """Where arrays of these byte sizes go (aligned), and the arena size they need."""
        offsets, end = [], 0
        for n in sizes:
            offsets.append(end)
            end += -(-n // ALIGN) * ALIGN
        return offsets, max(end, ALIGN)

    def place(
        self, specs: Sequence[tuple[tuple[int, ...], np.dtype[Any]]], offsets: Sequence[int]
    ) -> tuple[list[np.ndarray], list[Any]]:
        """Arrays of these (shape, dtype)s at `offsets`, for the writer to fill in place;
        what the reader needs to find them: (dtype, shape, offset)."""
        views, meta = [], []
        for (shape, dtype), off in zip(specs, offsets, strict=True):
            views.append(np.ndarray(shape, dtype, buffer=self.map, offset=off))
            meta.append((dtype.name, tuple(shape), off))
        return views, meta

    def write(self, arrays: Sequence[np.ndarray], offsets: Sequence[int]) -> list[Any]:
        """Copy `arrays` in; what the reader needs to find them: (dtype, shape, offset)."""
        views, meta = self.place([(a.shape, a.dtype) for a in arrays], offsets)
        for dst, a in zip(views, arrays, strict=True):
            np.copyto(dst, a, casting="no")
        return meta

    def views(self, meta: Sequence[Any]) -> list[np.ndarray]:
        """The arrays `write` described, in place (valid until the next message)."""
        return [
            np.ndarray(shape, dtype_of(dt), buffer=self.map, offset=off) for dt, shape, off in meta
        ]


def grow(arena: Arena | None, need: int) -> tuple[Arena, bool]:
    """`arena` if it holds `need` bytes, else a new one (doubling, to whole pages); True
    when it is new and its descriptor must go to the peer."""
    if arena is not None and arena.size >= need:
        return arena, False
    size = max(need, 2 * arena.size if arena else 1 << 16)
    size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
    return Arena(size), True


class StatusPage:
    """One STATUS_BYTES slot per rank in shared memory: the line a worker wrote last (what
    it is about to run); then the seconds its compiled parts took so far in the current
    request, and the last request it finished early (`set_done`), for a caller that does
    not wait for the worker's answer before it returns."""

    LINE = STATUS_BYTES - 16
    _KERNEL = struct.Struct("<d")
    _DONE = struct.Struct("<q")

    def __init__(self, ranks: int, fd: int | None = None):
        self.arena = Arena(max(ranks, 1) * STATUS_BYTES, fd)

    @property
    def fd(self) -> int:
        assert self.arena.fd is not None
        return self.arena.fd

    @classmethod
    def padded(cls, line: bytes) -> bytes:
        """`line` as a slot holds it (a worker pads each line once, not per write)."""
        return line.ljust(cls.LINE, b" ")[: cls.LINE]

    def write(self, rank: int, line: bytes) -> None:
        off = rank * STATUS_BYTES
        if len(line) != self.LINE:
            line = self.padded(line)
        self.arena.map[off : off + self.LINE] = line

    def read(self, rank: int) -> bytes:
        off = rank * STATUS_BYTES
        return bytes(self.arena.map[off : off + self.LINE]).rstrip(b" \0")

    def set_kernel(self, rank: int, seconds: float) -> None:
        self._KERNEL.pack_into(self.arena.map, rank * STATUS_BYTES + self.LINE, seconds)

    def kernel(self, rank: int) -> float:
        (seconds,) = self._KERNEL.unpack_from(self.arena.map, rank * STATUS_BYTES + self.LINE)
        return float(seconds)

    def set_done(self, rank: int, k: int) -> None:
        self._DONE.pack_into(self.arena.map, rank * STATUS_BYTES + self.LINE + 8, k)

    def done(self, rank: int) -> int:
        (k,) = self._DONE.unpack_from(self.arena.map, rank * STATUS_BYTES + self.LINE + 8)
        return int(k)


# -- channels between two workers of this host (runtime/channels.py uses them)

# header code -> dtype name (numpy's names; "index" for sizes)
_DTYPES = [
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "index",
]
_HEADER = struct.Struct("<II8q")  # dtype code, ndim, dims (payload at HEADER_BYTES)
HEADER_BYTES = 128
MAX_RANK = 8
_INDEX = _DTYPES.index("index")
# looked up per message, so worked out once: numpy's `dtype.name` is a Python property
# that costs more (1.5 us) than the rest of a small put; a dtype hashes in 40 ns.
# Keys are native byte order; any other value takes `_code_of`'s slow path.
_NUMPY_DTYPES = [dtype_of("int64" if n == "index" else n) for n in _DTYPES]
_CODES = {dt: code for code, dt in enumerate(_NUMPY_DTYPES) if code != _INDEX}
_PAD = [(0,) * (MAX_RANK - n) for n in range(MAX_RANK + 1)]  # the unused dims of a header
_SMALL = 1 << 16  # payload bytes put by a plain memcpy under the GIL (see `put`)


class LocalSlot:
    """One channel's shared memory (a memfd) and wake-up (an eventfd), as the launcher
    passed them: `LocalSlot.parse(os.environ["GIMLET_LOCAL_CHANNELS"])` in a worker.

    The memory is a ring of `entries` messages (one per micro-batch of a request: see
    runtime/pipeline.py). Both ends count the messages they moved, so the k-th message
    goes to entry k mod entries on either side; a request has at most `entries` messages
    per channel and the next request starts only when every worker finished this one,
    so a message is never overwritten before it was read. The eventfd counts messages
    written and not yet taken (a read returns them all: `ready` keeps the rest)."""

    def __init__(self, memfd: int, eventfd: int, capacity: int, entries: int = 1):
        self.memfd, self.eventfd, self.capacity = memfd, eventfd, capacity
        self.entries = entries
        self.stride = _stride(capacity)
        self.sent = self.taken = 0  # messages this end moved, since the slot was made
        self.ready = 0  # written, counted off the eventfd, not yet taken
        self._map: mmap.mmap | None = None

    @property
    def map(self) -> mmap.mmap:
        if self._map is None:  # mapped by the endpoints only, on first use
            self._map = mmap.mmap(self.memfd, self.stride * self.entries)
        return self._map

    @staticmethod
    def capacity_for(dtype: str, shape: list[int]) -> int:
        """Bytes a message needs: the static size, or (a `?` dim) 1 GiB of sparse memory."""
        if -1 in shape:
            return 1 << 30
        item = 8 if dtype == "index" else _itemsize(dtype)
        return max(int(np.prod(shape)) * item, 8)

    @staticmethod
    def create(name: str, capacity: int, entries: int = 1) -> tuple[int, int, int, int]:
        """A new slot's (memfd, eventfd, capacity, entries), to pass to a worker."""
        memfd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(memfd, _stride(capacity) * entries)  # sparse: pages come on first write
        return memfd, os.eventfd(0, os.EFD_CLOEXEC), capacity, entries

    @staticmethod
    def encode(slots: dict[int, tuple[int, int, int, int]]) -> str:
        return ",".join(f"{ch}:{m}:{e}:{c}:{n}" for ch, (m, e, c, n) in slots.items())

    @staticmethod
    def parse(text: str) -> dict[int, LocalSlot]:
        out = {}
        for item in filter(None, text.split(",")):
            ch, m, e, c, n = (int(v) for v in item.split(":"))
            out[ch] = LocalSlot(m, e, c, n)
        return out

    def put(self, value: Any) -> int:
        """Copy `value` in (numpy array, host tensor or index) and wake the receiver; the
        payload's bytes."""
        code: int | None
        if isinstance(value, np.ndarray):
            a, code = value, _CODES.get(value.dtype)
        elif isinstance(value, int | np.integer):
            a, code = np.asarray(int(value), dtype=np.int64), _INDEX
        else:
            if hasattr(value, "detach"):  # a tensor
                from gimlet.dtypes import torch_to_numpy

                value = torch_to_numpy(value.detach().cpu())
            a = np.asarray(value)
            code = _CODES.get(a.dtype)
        native = code is not None
        if code is None:
            code = _code_of(a.dtype)
        nbytes = a.nbytes
        if a.ndim > MAX_RANK or nbytes > self.capacity:
            raise ValueError(
                f"a {a.dtype.name} {list(a.shape)} value does not fit the channel's "
                f"{self.capacity}-byte shared-memory slot"
            )
        m = self._map if self._map is not None else self.map
        base = (self.sent % self.entries) * self.stride
        _HEADER.pack_into(m, base, code, a.ndim, *a.shape, *_PAD[a.ndim])
        start = base + HEADER_BYTES
        if native and nbytes <= _SMALL and a.flags.c_contiguous:
            # one memcpy, no array made around the slot (an ndarray is a buffer; numpy's
            # stubs do not say so). Only for small payloads: it holds the GIL, and a GPU
            # worker's puts run on its sender thread while the main thread launches work
            m[start : start + nbytes] = a  # type: ignore[call-overload]
        else:  # large (numpy lets go of the GIL), strided, or another byte order
            dst = np.ndarray(a.shape, _NUMPY_DTYPES[code], buffer=m, offset=start)
            np.copyto(dst, a, casting="unsafe")
        self.sent += 1
        os.eventfd_write(self.eventfd, 1)
        return int(nbytes)

    def take(self, timeout_s: float, abort_fd: int | None = None) -> Any:
        """Wait (up to timeout_s) for the next message; a view of it (valid until the next
        request), or an int for an index. None on timeout; ABORTED when `abort_fd` (the
        worker's control socket: the caller went away or says stop) became readable
        first."""
        if self.ready:
            return self._next()
        fds = [self.eventfd] if abort_fd is None else [self.eventfd, abort_fd]
        ready, _, _ = select.select(fds, [], [], timeout_s)
        if self.eventfd in ready:
            return self.take_ready()
        return ABORTED if ready else None

    def take_ready(self) -> Any:
        """The next message, once the eventfd says one is there (see `take`)."""
        self.ready += os.eventfd_read(self.eventfd)
        return self._next()

    def _next(self) -> Any:
        self.ready -= 1
        base = (self.taken % self.entries) * self.stride
        self.taken += 1
        m = self._map if self._map is not None else self.map
        code, ndim, *dims = _HEADER.unpack_from(m, base)
        if code == _INDEX:
            return int(np.ndarray((), np.int64, buffer=m, offset=base + HEADER_BYTES))
        return np.ndarray(dims[:ndim], _NUMPY_DTYPES[code], buffer=m, offset=base + HEADER_BYTES)

    def close(self) -> None:
        """Unmap and close this end's descriptors (the caller's, when it is the host)."""
        if self._map is not None:
            self._map.close()
            self._map = None
        for fd in (self.memfd, self.eventfd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _stride(capacity: int) -> int:
    """Bytes of one ring entry: the header, then the payload, 64-byte aligned."""
    return HEADER_BYTES + -(-capacity // 64) * 64


ABORTED = object()  # LocalSlot.take: the control socket woke the wait, not the message


def _code_of(dtype: np.dtype[Any]) -> int:
    """A dtype's header code, whatever its byte order (the payload is written native)."""
    name = dtype.name
    if name not in _DTYPES or name == "index":
        raise ValueError(f"a {name} value cannot go through a shared-memory slot")
    return _DTYPES.index(name)


def _itemsize(dtype: str) -> int:
    return int(
        np.dtype(ml_dtypes.bfloat16).itemsize if dtype == "bfloat16" else np.dtype(dtype).itemsize
    )
