"""What `gimletc compile` writes: IR text plus weights, written atomically.

An output directory holds `model.mlir` (the final IR, weights referenced by
name), `weights.safetensors` and, when the model came with example inputs,
`inputs.npz` (so `gimletc run OUT/` needs no --inputs). It is assembled in a temporary sibling and
renamed into place, so a failed compile never leaves a half-written directory.

Weights are written at disk speed (`write_safetensors`): `safetensors.torch.save_file`
serialises every tensor into one in-memory buffer before it writes (GPT-2 small's 650 MB
took 1.35 s, against 2-5 GB/s for the disk's page cache), and gimlet's weights are numpy
arrays, which went through a torch round trip each. Here the file's blocks are reserved
(posix_fallocate), then the header and every array's own memory go down in one `writev`
(no copy; one release of the GIL, not one per tensor), laid out as the reference writer
lays tensors out (widest element first, then by name), so every tensor starts at a
multiple of its element size and mmap-based loaders can view it in place. On this 2-core
VM, writing into memory the guest has not used before costs 0.1-1.5 s for 650 MB
whatever the writer does, so a compile that runs torch.export starts writing the model's
tensors before the export (WeightsWriter's `ahead`). The format
(https://github.com/huggingface/safetensors#format): an 8-byte little-endian header length
N, N bytes of JSON (padded with spaces to a multiple of 8) giving each name's dtype, shape
and [begin, end) byte range in the data that follows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from gimlet.errors import UserError

IR_FILE = "model.mlir"
WEIGHTS_FILE = "weights.safetensors"
INPUTS_FILE = "inputs.npz"


def sha256_file(path: str) -> str:
    """The file's sha256, read in 1 MiB pieces (bundle manifests, the export cache's key)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_weights(path: str, weights: Mapping[str, np.ndarray], digest: bool = False) -> str | None:
    """Write the weights as safetensors at disk speed (write_safetensors); with
    `digest`, return the file's sha256. Tied weights (one buffer under two names) are
    stored once per name: each device later loads only the names it reads."""
    return write_safetensors(path, weights, digest=digest)


_CODES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64",
    np.dtype(np.uint32): "U32",
    np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


def _as_array(value: Any) -> np.ndarray:
    """A C-contiguous numpy view of a numpy array or a CPU torch tensor (bf16 included)."""
    if not isinstance(value, np.ndarray):
        from gimlet.dtypes import torch_to_numpy

        value = torch_to_numpy(value)
    return np.require(value, requirements="C")  # a view unless it was strided


def _header(
    arrays: Mapping[str, np.ndarray],
    order: list[str],
    metadata: Mapping[str, str] | None = None,
    size: int = 0,
) -> bytes | None:
    """The 8-byte length and the JSON header for `arrays` laid out in `order`, padded with
    spaces to `size` bytes (at least to a multiple of 8, so the data starts aligned); None
    when it does not fit in `size`."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name in order:
        a = arrays[name]
        header[name] = {
            "dtype": _CODES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    if size and len(text) > size:
        return None
    text += b" " * (max(size, len(text) + (-len(text) % 8)) - len(text))
    return struct.pack("<Q", len(text)) + text


def _order(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The reference writer's layout: widest element first, then by name."""
    return sorted(arrays, key=lambda n: (-arrays[n].dtype.itemsize, n))


def _data(a: np.ndarray) -> memoryview:
    # reshape(-1) before the byte view: a 0-d array cannot change its itemsize
    return a.reshape(-1).view(np.uint8).data


def _write_all(fd: int, buffers: list[memoryview]) -> None:
    """All of `buffers`, in order, with as few system calls as writev allows: each call
    releases the GIL once (a writer thread beside torch.export would otherwise wait for it
    after every tensor), and a short write goes on where it stopped."""
    pending = [b for b in buffers if len(b)]
    while pending:
        batch = pending[: min(len(pending), os.sysconf("SC_IOV_MAX"))]
        done = os.writev(fd, batch)
        for b in batch:
            if done < len(b):
                pending[0] = b[done:]
                break
            done -= len(b)
            pending.pop(0)


def write_safetensors(
    path: str,
    tensors: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
    digest: bool = False,
) -> str | None:
    """Write `tensors` (name -> numpy array or torch tensor) to `path`; with `digest`,
    return the file's sha256 (hex), computed from the bytes as they are written so the
    caller need not read the file back. Names given twice over one buffer (tied weights)
    are simply written twice: the format has no aliases."""
    arrays = _arrays(tensors)
    order = _order(arrays)
    head = _header(arrays, order, metadata)
    assert head is not None
    buffers = [memoryview(head), *(_data(arrays[n]) for n in order)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _allocate(fd, sum(len(b) for b in buffers))
        _write_all(fd, buffers)
    finally:
        os.close(fd)
    if not digest:
        return None
    h = hashlib.sha256()
    for b in buffers:
        h.update(b)
    return h.hexdigest()


def _arrays(tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
    arrays = {name: _as_array(v) for name, v in tensors.items()}
    for name, a in arrays.items():
        if a.dtype not in _CODES:
            raise UserError(f"cannot write weight '{name}' of dtype {a.dtype} to safetensors")
    return arrays


def _allocate(fd: int, size: int) -> None:
    """Reserve the file's blocks in one go: ext4 then need not find them write by write
    (650 MB of weights: 0.11-0.25 s against 0.37-1.0 s here, overwriting a file of the
    same size); a file system without it just writes."""
    if size:
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, size)


_DTYPES = {code: dtype for dtype, code in _CODES.items()}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """name -> array, memory-mapped copy-on-write (nothing is read until used, and a
    caller writing to an array does not change the file). ValueError for a file that is
    not whole: a bad header, an unknown dtype, a range beyond its end."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"{path}: header length {n} beyond the end of the file")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    start = 8 + n
    data = np.memmap(path, dtype=np.uint8, mode="c", offset=start) if size > start else None
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: '{name}' has unknown dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = tuple(int(d) for d in info["shape"])
        if not 0 <= begin <= end <= size - start or end - begin != dtype.itemsize * int(
            np.prod(shape, dtype=np.int64)
        ):
            raise ValueError(f"{path}: '{name}' has a bad byte range [{begin}, {end})")
        raw = data[begin:end] if data is not None else np.zeros(0, np.uint8)
        out[name] = raw.view(dtype).reshape(shape)
    return out


class WeightsWriter:
    """Writes weights on a thread into a file beside `out_dir`, so that the write (mostly
    the kernel copying into the page cache, the GIL released) overlaps other work;
    `move_to` waits for it and renames the file into the output being assembled.

    `WeightsWriter(out_dir, weights)` writes `weights`. `WeightsWriter(out_dir,
    ahead=tensors)` starts before the weights are known: a compile that misses the export
    cache writes the model's tensors (the weights an import names, in nearly every model)
    while torch.export runs, leaving room for the header; `settle(weights)` then says
    what the file must hold. When those are the tensors written (same memory, so the same
    bytes), plus others appended with their alignment kept (lifted constants), only the
    header remains to write; anything else (a tensor the import copied, renamed or
    dropped) is written again from scratch, so the file always holds exactly
    `weights`."""

    def __init__(
        self,
        out_dir: str,
        weights: Mapping[str, Any] | None = None,
        *,
        ahead: Mapping[str, Any] | None = None,
    ) -> None:
        parent = os.path.dirname(os.path.abspath(out_dir))
        os.makedirs(parent, exist_ok=True)
        self.path = os.path.join(parent, f".gimlet-weights-{os.getpid()}-{id(self):x}")
        self.error: BaseException | None = None
        self.reused_ahead = False  # whether the bytes written ahead became the file
        self.seconds = 0.0  # spent writing on the thread (waiting for settle() excluded)
        self._weights = weights
        self._known = threading.Event()  # set once _weights is what the file must hold
        self._cancelled = False
        if weights is not None:
            self._known.set()
        self.thread = threading.Thread(target=self._run, args=(ahead,), daemon=True)
        self.thread.start()

    def settle(self, weights: Mapping[str, Any]) -> None:
        """The weights the file must hold (an ahead writer waits for them)."""
        self._weights = weights
        self._known.set()

    def _run(self, ahead: Mapping[str, Any] | None) -> None:
        try:
            if ahead is not None:
                self.reused_ahead = self._write_ahead(ahead)
            self._known.wait()
            if not self.reused_ahead and not self._cancelled:
                assert self._weights is not None
                start = time.perf_counter()
                save_weights(self.path, self._weights)
                self.seconds += time.perf_counter() - start
        except BaseException as e:  # re-raised in the caller's thread by move_to
            self.error = e

    def _write_ahead(self, tensors: Mapping[str, Any]) -> bool:
        """Write `tensors` where the data goes, wait for settle(), complete the file;
        whether it holds exactly the settled weights."""
        arrays = {n: a for n, a in _cpu_arrays(tensors).items() if a.dtype in _CODES}
        order = _order(arrays)
        head = _header(arrays, order)
        assert head is not None
        # room for the names appended later: a few lifted constants take a few hundred bytes
        room = len(head) - 8 + max(4096, len(head) // 4)
        room += -room % 8
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            size = sum(a.nbytes for a in arrays.values())
            _allocate(fd, 8 + room + size)
            os.lseek(fd, 8 + room, os.SEEK_SET)
            start = time.perf_counter()
            _write_all(fd, [_data(arrays[n]) for n in order])
            self.seconds += time.perf_counter() - start
            self._known.wait()
            if self._cancelled or self._weights is None:
                return False
            final = _arrays(self._weights)
            if any(n not in final or not _same_bytes(final[n], arrays[n]) for n in order):
                return False
            extras = {n: a for n, a in final.items() if n not in arrays}
            extra_order = _order(extras)
            if extra_order and size % extras[extra_order[0]].dtype.itemsize:
                return False  # the appended tensors would start misaligned
            head = _header({**arrays, **extras}, order + extra_order, size=room)
            if head is None:
                return False
            start = time.perf_counter()
            _write_all(fd, [_data(extras[n]) for n in extra_order])
            os.pwrite(fd, head, 0)  # a regular file's pwrite of a few KB is never short
            self.seconds += time.perf_counter() - start
            return True
        finally:
            os.close(fd)

    def move_to(self, dst: str) -> None:
        if not self._known.is_set():
            raise RuntimeError("WeightsWriter.move_to before settle()")
        self.thread.join()
        if self.error is not None:
            raise self.error
        os.replace(self.path, dst)

    def discard(self) -> None:
        """Stop waiting, wait for the thread and remove its file if it was not moved (a
        failed compile)."""
        if not self._known.is_set():
            self._cancelled = True
            self._known.set()
        self.thread.join()
        if os.path.exists(self.path):
            os.remove(self.path)


def _cpu_arrays(tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """numpy views of the C-contiguous CPU tensors among `tensors` (the others are left to
    the import's weights: copying them here would not be the bytes the import names)."""
    import torch

    from gimlet.dtypes import torch_to_numpy

    out: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            t = t.detach()
            if t.device.type != "cpu" or not t.is_contiguous() or t.is_sparse:
                continue
            try:
                out[name] = torch_to_numpy(t)
            except Exception:  # a dtype numpy cannot view: the import decides
                continue
        elif isinstance(t, np.ndarray) and t.flags.c_contiguous:
            out[name] = t
    return out


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether `a` is `b`'s memory viewed the same way (so its bytes are those written)."""
    return (
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.dtype == b.dtype
        and a.shape == b.shape
        and a.flags.c_contiguous
    )


def load_weights(path: str) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    from gimlet.dtypes import torch_to_numpy

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such weights file")
    try:
        return {k: torch_to_numpy(v) for k, v in load_file(path).items()}
    except Exception as e:
        raise UserError(f"{path}: not a safetensors file ({e})") from e


def write_atomically(out_dir: str, fill: Callable[[str], None]) -> None:
    """Run `fill(tmp_dir)`, then move tmp_dir to out_dir (replacing an earlier output)."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir}: exists and is not a directory")
    if (
        os.path.isdir(out_dir)
        and os.listdir(out_dir)
        and not os.path.isfile(os.path.join(out_dir, IR_FILE))
    ):
        raise UserError(f"{out_dir}: not empty and not a gimlet output; refusing to overwrite")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".gimlet-", dir=parent)
    try:
        fill(tmp)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


def read_inputs(path: str, names: list[str]) -> list[np.ndarray]:
    """`--inputs x.npz`: arrays named after the program's inputs, or arr_0, arr_1, ..."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        data = np.load(path)
    except Exception as e:
        raise UserError(f"{path}: not an .npz file ({e})") from e
    for keys in (names, [f"arr_{i}" for i in range(len(names))]):
        if all(k in data for k in keys):
            return [data[k] for k in keys]
    raise UserError(
        f"{path}: expected arrays named {', '.join(names)} (or arr_0..), found {', '.join(data.files)}"
    )


def save_inputs(path: str, names: list[str], arrays: list[np.ndarray]) -> None:
    """Example inputs under the program's input names (what `--inputs` reads); bf16 has
    no .npz dtype, so it is stored as its bits (uint16) and viewed back on reading."""
    import ml_dtypes

    named = {
        n: (a.view(np.uint16) if a.dtype == np.dtype(ml_dtypes.bfloat16) else a)
        for n, a in zip(names, arrays, strict=True)
    }
    np.savez(path, **named)  # type: ignore[arg-type]


def format_outputs(outputs: list[np.ndarray]) -> str:
    """One line per output: dtype, shape and the first values (what `gimletc run` prints)."""
    return "".join(
        f"out{i}: {o.dtype} {list(o.shape)} {np.array2string(o.ravel()[:6], precision=5)}\n"
        for i, o in enumerate(outputs)
    )


def save_outputs(path: str, outputs: list[np.ndarray]) -> None:
    """`-o outputs.npz`: out0, out1, ..."""
    named: dict[str, np.ndarray] = {f"out{i}": o for i, o in enumerate(outputs)}
    np.savez(path, **named)  # type: ignore[arg-type]
