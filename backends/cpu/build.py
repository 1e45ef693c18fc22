"""Compile generated C++ with the system compiler into a content-addressed shared library.

Libraries live in `$GIMLET_CACHE_DIR` (default `~/.cache/gimlet/cpu`) named by the
sha256 of source, runtime header and flags, so recompiling an unchanged program is a
file lookup. The `.cpp` stays beside the `.so` for users to read. A compiler failure
is a `UserError` quoting the generated `file:line` and the compiler's message.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from gimlet.errors import UserError

from .runtime import RUNTIME_HEADER, RUNTIME_HEADER_NAME


class CpuCompileError(UserError):
    """The system C++ compiler rejected generated code (a backend bug or a bad flag)."""


def cache_dir() -> Path:
    root = os.environ.get("GIMLET_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "gimlet"
    return base / "cpu"


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise UserError("the CPU backend needs a C++ compiler (g++), and none is on PATH")
    return cxx


def openblas() -> Path | None:
    """numpy's bundled OpenBLAS (exports `scipy_cblas_sgemm64_`), if this numpy has one."""
    roots = [Path(np.__file__).parent.parent / "numpy.libs", Path(np.__file__).parent / ".libs"]
    for root in roots:
        hits = sorted(glob.glob(str(root / "libscipy_openblas64_*.so*")))
        if hits:
            return Path(hits[0])
    return None


def default_flags(opt: str = "-O3") -> list[str]:
    """Compiler flags; recorded on the result and part of the cache key.

    No -ffast-math: inf/nan must behave as in torch, and the reference comparison is
    f32 rtol 1e-4. -fno-math-errno only lets sqrt/exp skip setting errno;
    -fno-trapping-math lets GCC turn selects on possibly-NaN floats into vector blends
    (it changes only floating-point exception flags, which nothing reads).
    """
    flags = [
        opt,
        "-march=native",
        "-std=c++17",
        "-fopenmp-simd",  # `omp simd` loops only: threads come from the runtime's own pool
        "-pthread",
        "-fPIC",
        "-shared",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-Wall",
        "-Wno-unused-variable",
        "-Wno-unused-but-set-variable",
    ]
    blas = openblas()
    if blas is None:
        flags.append("-DGML_NO_BLAS")
    else:
        flags += [f"-L{blas.parent}", f"-l:{blas.name}", f"-Wl,-rpath,{blas.parent}"]
    return flags


def build_library(source: str, flags: list[str], header: str = RUNTIME_HEADER) -> tuple[Path, bool]:
    """The shared library for `source` (compiled now or found in the cache), and whether
    it was a cache hit. `header` is the runtime header it includes (a bundle's own copy
    when rebuilding a bundle's source)."""
    key = hashlib.sha256("\0".join([source, header, *flags]).encode()).hexdigest()
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    lib = root / f"{key}.so"
    cpp = root / f"{key}.cpp"
    if lib.exists():
        return lib, True
    # the readable `#include "gimlet_cpu_runtime.h"` resolves to this version of it
    inc = root / "include" / hashlib.sha256(header.encode()).hexdigest()[:16]
    if not (inc / RUNTIME_HEADER_NAME).exists():
        inc.mkdir(parents=True, exist_ok=True)
        (inc / RUNTIME_HEADER_NAME).write_text(header)
    cpp.write_text(source)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=root)
    os.close(fd)
    cmd = [compiler(), str(cpp), "-o", tmp, f"-I{inc}", *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise CpuCompileError(_describe_failure(cpp, source, proc.stderr, cmd))
    os.replace(tmp, lib)
    return lib, False


def _describe_failure(cpp: Path, source: str, stderr: str, cmd: list[str]) -> str:
    """`file.cpp:LINE: error: ...` plus the offending generated line."""
    match = re.search(rf"{re.escape(str(cpp))}:(\d+):(\d+): (?:fatal )?error: (.*)", stderr)
    if not match:
        return f"C++ compilation failed ({' '.join(cmd)}):\n{stderr.strip()[:4000]}"
    line = int(match.group(1))
    text = source.splitlines()[line - 1] if 0 < line <= len(source.splitlines()) else ""
    return (
        f"C++ compilation of generated code failed at {cpp}:{line}: {match.group(3)}\n"
        f"  {line} | {text.strip()}\n"
        f"compiler output:\n{stderr.strip()[:4000]}"
    )
