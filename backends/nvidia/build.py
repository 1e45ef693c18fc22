"""Build GPU code with nvcc into content-addressed shared libraries.

Two kinds of library:
* a segment (`build_segment`): the generated `.cu` of one function, compiled at
  `gimletc compile` time on any machine with nvcc (no GPU needed) to sm_90 machine code
  plus compute_90 PTX, so a newer GPU JIT-compiles the PTX at load;
* the runtime (`build_runtime`): backends/nvidia/runtime/gml_cuda.cpp, compiled once per
  machine that runs segments, against that machine's CUDA and cuBLAS headers.

Both live under `$GIMLET_CACHE_DIR/cuda` (default ~/.cache/gimlet/cuda), named by the
sha256 of their sources, the headers they include, the flags and nvcc's version, so an
unchanged build is a file lookup. A failure is a `UserError` quoting the generated
`file:line` and nvcc's message.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gimlet.errors import UserError

GPU_INCLUDE = Path(__file__).resolve().parents[1] / "gpu" / "include"
RUNTIME_SOURCE = Path(__file__).resolve().parent / "runtime" / "gml_cuda.cpp"
ARCHS = ("90",)  # Hopper (H100, H200); the PTX also runs on anything newer


class CudaBuildError(UserError):
    """nvcc rejected generated code (a backend bug) or is missing."""


def cache_dir() -> Path:
    root = os.environ.get("GIMLET_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "gimlet") / "cuda"


@functools.cache
def nvcc() -> str:
    """nvcc from $CUDA_HOME, PATH or /usr/local/cuda; one clear error when absent."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    for cand in ([str(Path(home) / "bin" / "nvcc")] if home else []) + [
        shutil.which("nvcc") or "",
        "/usr/local/cuda/bin/nvcc",
    ]:
        if cand and os.access(cand, os.X_OK):
            return cand
    raise CudaBuildError(
        "the NVIDIA backend needs nvcc (the CUDA toolkit, 12.4 or newer) to build GPU "
        "segments, and none was found: install the CUDA toolkit (e.g. apt-get install "
        "nvidia-cuda-toolkit, or NVIDIA's cuda-toolkit package) or set CUDA_HOME; or compile "
        "with --backend nvidia=interpreter"
    )


@functools.cache
def nvcc_version() -> str:
    out = subprocess.run([nvcc(), "--version"], capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1] if out.strip() else "unknown"


def _headers() -> str:
    """Every header generated code may include, for the cache key."""
    return "".join(p.read_text() for p in sorted(GPU_INCLUDE.rglob("*.cuh")))


def segment_flags() -> list[str]:
    gencode = [f"-gencode=arch=compute_{a},code=[sm_{a},compute_{a}]" for a in ARCHS]
    return [
        "-std=c++17",
        # nvcc's -O is the host compiler's level (device code is optimised either way: the
        # same cubin at -O3 and -O0). The host side is launch glue that a CUDA graph
        # captures once per bucket, and gcc at -O3 took 40% of a GPT-2 decode build
        "--expt-relaxed-constexpr",  # std::numeric_limits in device code
        "-shared",
        "-Xcompiler=-fPIC,-Wall,-O0",
        "-cudart=shared",  # the process's (torch's) libcudart, not a second static copy
        *gencode,
    ]


NVCC_TIMEOUT_S = 900  # a build that hangs is an error that names the command, not a stall


def _build(source: str, flags: list[str], suffix: str, extra_key: str = "") -> tuple[Path, bool]:
    key = hashlib.sha256(
        "\0".join([source, _headers(), extra_key, *flags, nvcc_version()]).encode()
    ).hexdigest()
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    lib = root / f"{key}{suffix}.so"
    cu = root / f"{key}{suffix}.cu"
    if lib.exists():
        return lib, True
    cu.write_text(source)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=root)
    os.close(fd)
    cmd = [nvcc(), "-x", "cu", str(cu), "-o", tmp, f"-I{GPU_INCLUDE}", *flags]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=NVCC_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        os.unlink(tmp)
        raise CudaBuildError(
            f"nvcc ran over {NVCC_TIMEOUT_S} s building {cu}: {' '.join(cmd)}"
        ) from e
    if proc.returncode != 0:
        os.unlink(tmp)
        raise CudaBuildError(_describe_failure(cu, source, proc.stderr, cmd))
    os.replace(tmp, lib)
    return lib, False


def build_segment(source: str) -> tuple[Path, bool]:
    """The library of one generated segment (built now or found), and whether cached."""
    return _build(source, segment_flags(), ".seg")


def build_runtime() -> Path:
    """The runtime library for this machine (needs the CUDA and cuBLAS headers)."""
    inc, lib = cublas_dirs()
    path, _ = _build(RUNTIME_SOURCE.read_text(), runtime_flags(inc, lib), ".rt", str(inc))
    return path


def runtime_flags(inc: Path, lib: Path) -> list[str]:
    """nvcc's flags for the runtime library. Every library goes to the host linker as an
    option: _build's `-x cu` makes nvcc read any bare input file as CUDA source (a
    750 MB libcublasLt.so among them ran for ever on the H200, gpu_tests.md runs 6, 8)."""
    # cuBLASLt (GEMMs with fused epilogues) by file name: torch's wheels ship only the
    # versioned name, which -l misses; libcublas itself depends on it, so it is there
    lt = min(lib.glob("libcublasLt.so*"), key=lambda f: len(f.name), default=None)
    if lt is None:
        raise CudaBuildError(f"the NVIDIA backend's runtime needs libcublasLt.so beside {lib}")
    return [
        "-std=c++17",
        "-O2",
        "--expt-relaxed-constexpr",
        "-shared",
        "-Xcompiler=-fPIC,-Wall",
        "-cudart=shared",
        f"-I{inc}",
        f"-L{lib}",
        "-lcublas",
        f"-Xlinker=-l:{lt.name}",
        f"-Xlinker=-rpath,{lib}",
    ]


def cublas_dirs() -> tuple[Path, Path]:
    """(include, lib) of cuBLAS: torch's CUDA wheels (nvidia/cu13 or nvidia/cublas) or
    the CUDA toolkit's own."""
    cands: list[Path] = []
    for entry in sys.path:
        for sub in ("nvidia/cu13", "nvidia/cublas", "nvidia/cu12"):
            cands.append(Path(entry) / sub)
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    cands.append(Path(home))
    for c in cands:
        if (c / "include" / "cublas_v2.h").exists():
            for lib in ("lib", "lib64"):
                if any((c / lib).glob("libcublas.so*")):
                    return c / "include", c / lib
    raise CudaBuildError(
        "the NVIDIA backend's runtime needs cuBLAS (cublas_v2.h and libcublas.so), found "
        "neither in the CUDA toolkit nor in torch's nvidia-cublas wheel"
    )


def _describe_failure(cu: Path, source: str, stderr: str, cmd: list[str]) -> str:
    """`file.cu(LINE): error: ...` plus the offending generated line."""
    match = re.search(rf"{re.escape(str(cu))}\((\d+)\): error: (.*)", stderr)
    if not match:
        return f"CUDA compilation failed ({' '.join(cmd)}):\n{stderr.strip()[:4000]}"
    line = int(match.group(1))
    lines = source.splitlines()
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    return (
        f"CUDA compilation of generated code failed at {cu}:{line}: {match.group(2)}\n"
        f"  {line} | {text.strip()}\n"
        f"nvcc output:\n{stderr.strip()[:4000]}"
    )
