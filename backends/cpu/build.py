"""Compile generated C++ with the system compiler into content-addressed shared libraries.

The CPU runtime is real C++ shipped as package data beside this module:
`include/gimlet/cpu_runtime.h` (+ `include/gimlet/cpu/*.h`: templates and the inline code
loops call) and `src/*.cpp` (the thread pool, buffer pool, BLAS and convolution wrappers).
The `.cpp` files are compiled once per flags into a runtime library,
`runtime/libgimlet_cpu_runtime-<key>.so`, that every generated kernel library links (found
through `$ORIGIN/runtime`, in the cache as in a bundle). So a process has one thread pool
and one buffer pool, the native dependencies (OpenBLAS, oneDNN) are linked and parsed
once, and a kernel's compile only parses the headers.

Libraries live in `$GIMLET_CACHE_DIR/cpu` (default `~/.cache/gimlet/cpu`), named by the
sha256 of what went into them: the generated source, the bytes of every runtime file,
the flags and the compiler's version. Recompiling an unchanged program is a file lookup;
the `.cpp` stays beside the `.so` for users to read. A compiler failure is a `UserError`
quoting the generated `file:line` and the compiler's message.
"""

from __future__ import annotations

import ctypes.util
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from gimlet.errors import UserError

# include/ and src/ of the runtime, shipped as package data next to this file (an
# editable install reads them from the checkout, a wheel from site-packages)
RUNTIME_ROOT = Path(__file__).resolve().parent
RUNTIME_DIR = "runtime"  # beside the kernel libraries: the runtime library
RUNTIME_LIB = "libgimlet_cpu_runtime-{key}.so"
_RUNTIME_LOCK = threading.Lock()  # a bundle compiles its parts on threads: build it once


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


@functools.cache
def compiler_version(cxx: str) -> str:
    """`cxx --version`'s first line: part of every cache key (a new compiler rebuilds)."""
    proc = subprocess.run([cxx, "--version"], capture_output=True, text=True)
    return proc.stdout.splitlines()[0] if proc.stdout else cxx


def runtime_files(root: Path = RUNTIME_ROOT) -> list[Path]:
    """The runtime's headers and sources under `root` (include/, src/), sorted."""
    files = [*(root / "include").rglob("*.h"), *(root / "src").glob("*.cpp")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def runtime_digest(root: Path = RUNTIME_ROOT) -> str:
    """sha256 over the runtime files' paths and bytes: any edit invalidates the cache."""
    h = hashlib.sha256()
    for path in runtime_files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def copy_runtime(dest: Path, root: Path = RUNTIME_ROOT) -> list[Path]:
    """Copy the runtime's include/ and src/ under `dest`; the files written."""
    out = []
    for path in runtime_files(root):
        target = dest / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        out.append(target)
    return out


def default_flags(opt: str = "-O3") -> list[str]:
    """Compiler flags; recorded on the result and part of the cache key.

    No -ffast-math: inf/nan must behave as in torch, and the reference comparison is
    f32 rtol 1e-4. -fno-math-errno only lets sqrt/exp skip setting errno;
    -fno-trapping-math lets GCC turn selects on possibly-NaN floats into vector blends
    (it changes only floating-point exception flags, which nothing reads).
    """
    return [
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
        "-Wextra",
    ]


def native_flags() -> list[str]:
    """Include and link flags of the runtime library's native dependencies on this
    machine (they live under this machine's site-packages and system dirs, so they are
    not recorded with a bundle's flags: a rebuild elsewhere uses that machine's)."""
    return _blas_flags() + _dnnl_flags()


def _dnnl_flags() -> list[str]:
    """oneDNN (Debian's libdnnl-dev, which `make setup` installs) for convolutions, when
    its header and library are on the system paths; GIMLET_CPU_DNNL=0 turns it off."""
    if os.environ.get("GIMLET_CPU_DNNL", "1") == "0" or not dnnl_available():
        return []
    return ["-DGML_DNNL", "-ldnnl"]


@functools.cache
def dnnl_available() -> bool:
    """oneDNN's C++ header and shared library are where the compiler finds them."""
    headers = [Path(d, "oneapi/dnnl/dnnl.hpp") for d in ("/usr/include", "/usr/local/include")]
    return any(h.exists() for h in headers) and ctypes.util.find_library("dnnl") is not None


def _blas_flags() -> list[str]:
    """OpenBLAS from the scipy-openblas64 package (ILP64, symbols `scipy_cblas_*64_`):
    its header, and its library linked by path with an rpath, so no system BLAS is
    needed. Without the package the runtime falls back to a naive loop (-DGML_NO_BLAS)."""
    try:
        import scipy_openblas64 as blas
    except ImportError:
        return ["-DGML_NO_BLAS"]
    lib = blas.get_lib_dir()
    return [
        f"-I{blas.get_include_dir()}",
        f"-L{lib}",
        f"-l:{blas.get_library(True)}",
        f"-Wl,-rpath,{lib}",
    ]


def build_runtime(flags: list[str], root: Path = RUNTIME_ROOT) -> Path:
    """The runtime library for `flags` built from the runtime files under `root` (this
    package's, or a bundle's copy), compiled now or found in the cache."""
    cxx = compiler()
    native = native_flags()
    key = _digest([runtime_digest(root), *flags, *native, compiler_version(cxx)])[:16]
    out = cache_dir() / RUNTIME_DIR
    lib = out / RUNTIME_LIB.format(key=key)
    with _RUNTIME_LOCK:
        if lib.exists():
            return lib
        out.mkdir(parents=True, exist_ok=True)
        sources = [str(p) for p in sorted((root / "src").glob("*.cpp"))]
        cmd = [cxx, *sources, "-o", "{out}", f"-I{root / 'include'}", *flags, *native]
        _compile(cmd, lib, None, "")
    return lib


def build_library(source: str, flags: list[str], root: Path = RUNTIME_ROOT) -> tuple[Path, bool]:
    """The shared library for `source` (compiled now or found in the cache), and whether
    it was a cache hit. `root` holds the runtime it includes and links (a bundle's own
    copy when rebuilding a bundle's source)."""
    runtime = build_runtime(flags, root)
    cxx = compiler()
    key = _digest([source, runtime.name, runtime_digest(root), *flags, compiler_version(cxx)])
    base = cache_dir()
    lib = base / f"{key}.so"
    cpp = base / f"{key}.cpp"
    if lib.exists():
        return lib, True
    cpp.write_text(source)
    link = [f"-L{runtime.parent}", f"-l:{runtime.name}", f"-Wl,-rpath,$ORIGIN/{RUNTIME_DIR}"]
    cmd = [cxx, str(cpp), "-o", "{out}", f"-I{root / 'include'}", *flags, *link]
    _compile(cmd, lib, cpp, source)
    return lib, False


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _compile(cmd: list[str], target: Path, cpp: Path | None, source: str) -> None:
    """Run `cmd` (its "{out}" a temporary file) and move the result to `target`, so a
    concurrent build or a failure never leaves a half-written library behind."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [tmp if a == "{out}" else a for a in cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise CpuCompileError(_describe_failure(cpp, source, proc.stderr, cmd))
    os.replace(tmp, target)


def _describe_failure(cpp: Path | None, source: str, stderr: str, cmd: list[str]) -> str:
    """`file.cpp:LINE: error: ...` plus the offending generated line."""
    match = cpp and re.search(rf"{re.escape(str(cpp))}:(\d+):(\d+): (?:fatal )?error: (.*)", stderr)
    if not match:
        return f"C++ compilation failed ({' '.join(cmd)}):\n{stderr.strip()[:4000]}"
    line = int(match.group(1))
    text = source.splitlines()[line - 1] if 0 < line <= len(source.splitlines()) else ""
    return (
        f"C++ compilation of generated code failed at {cpp}:{line}: {match.group(3)}\n"
        f"  {line} | {text.strip()}\n"
        f"compiler output:\n{stderr.strip()[:4000]}"
    )
