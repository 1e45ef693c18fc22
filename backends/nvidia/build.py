"""Build GPU code with nvcc into content-addressed shared libraries.

Two kinds of library:
* a segment (`build_segment`): the generated `.cu` of one function, compiled at
  `gimletc compile` time on any machine with nvcc (no GPU needed) to sm_90 machine code
  plus compute_90 PTX, so a newer GPU JIT-compiles the PTX at load; a file laid out in
  units (backends/gpu/units.py) as up to one translation unit per core, compiled by
  parallel nvcc processes and linked into the one library (one nvcc is serial: GPT-2
  decode's 2.8 s was one core's);
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
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gimlet.backends.gpu import units
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


def segment_flags(link: bool = True) -> list[str]:
    """nvcc's flags for a segment: one command that compiles and links (`link`), or the
    compilation of one of its translation units into an object."""
    gencode = [f"-gencode=arch=compute_{a},code=[sm_{a},compute_{a}]" for a in ARCHS]
    return [
        "-std=c++17",
        # nvcc's -O is the host compiler's level (device code is optimised either way: the
        # same cubin at -O3 and -O0). The host side is launch glue that a CUDA graph
        # captures once per bucket, and gcc at -O3 took 40% of a GPT-2 decode build
        "--expt-relaxed-constexpr",  # std::numeric_limits in device code
        "-shared" if link else "-c",
        "-Xcompiler=-fPIC,-Wall,-O0",
        "-cudart=shared",  # the process's (torch's) libcudart, not a second static copy
        *gencode,
    ]


NVCC_TIMEOUT_S = 900  # a build that hangs is an error that names the command, not a stall


def nvcc_jobs() -> int:
    """How many nvcc processes may run at once: $GIMLET_NVCC_JOBS, else one per core."""
    env = os.environ.get("GIMLET_NVCC_JOBS", "")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise UserError(f"GIMLET_NVCC_JOBS must be a positive integer, not {env!r}")
        return int(env)
    return os.cpu_count() or 1


# Every nvcc this process runs takes a slot: segments built in parallel (a bundle's
# parts, backend.py) and the translation units of each share the cores, not multiply.
_SLOTS = threading.BoundedSemaphore(max(nvcc_jobs(), 1))


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join([*parts, _headers(), nvcc_version()]).encode()).hexdigest()


def _nvcc(cmd: list[str], cu: Path, source: str) -> None:
    """Run one nvcc command; a failure is a CudaBuildError naming `cu`'s line."""
    with _SLOTS:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=NVCC_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise CudaBuildError(
                f"nvcc ran over {NVCC_TIMEOUT_S} s building {cu}: {' '.join(cmd)}"
            ) from e
    if proc.returncode != 0:
        raise CudaBuildError(_describe_failure(cu, source, proc.stderr, cmd))


def _build(
    source: str, flags: list[str], suffix: str, extra_key: str = "", jobs: int = 1
) -> tuple[Path, bool]:
    """The library of `source` built with `flags` (one nvcc command), or, for a segment
    with `jobs` > 1, as its units on parallel processes (_build_units). The key is the
    same either way: how many processes built a library does not change what it does, so
    a library built on a 16-core machine is found on a 2-core one."""
    key = _key(source, extra_key, *flags)
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    lib = root / f"{key}{suffix}.so"
    cu = root / f"{key}{suffix}.cu"
    if lib.exists():
        return lib, True
    cu.write_text(source)
    with tempfile.TemporaryDirectory(dir=root) as work:
        tmp = Path(work, lib.name)
        tus = segment_units(source, jobs) if jobs > 1 else [source]
        if len(tus) > 1:
            _build_units(tus, cu, source, Path(work), tmp)
        else:
            cmd = [nvcc(), "-x", "cu", str(cu), "-o", str(tmp), f"-I{GPU_INCLUDE}", *flags]
            _nvcc(cmd, cu, source)
        os.replace(tmp, lib)
    return lib, False


LINK_FLAGS = ["-shared", "-cudart=shared"]  # the units' objects into one library
# what a translation unit's `#line` directives say until the cache key, which names the
# generated file, is known
_SOURCE_PATH = "@GIMLET_SOURCE@"


def segment_units(source: str, jobs: int) -> list[str]:
    """The translation units `source` is built as with `jobs` nvcc processes: its units
    (backends/gpu/units.py) in at most `jobs` groups, `#line`s naming _SOURCE_PATH."""
    head, sections = units.cut(source)
    weights = [units.weight(s.text) for s in sections]
    return units.merge(head, sections, jobs, _SOURCE_PATH, weights)


def _build_units(tus: list[str], cu: Path, source: str, work: Path, out: Path) -> None:
    """Compile each translation unit to an object (in parallel, a slot each), then link
    them into `out`. Errors name `cu`, the whole generated file, through `#line`."""
    objs, cmds = [], []
    for i, text in enumerate(tus):
        unit = work / f"unit{i}.cu"
        unit.write_text(text.replace(_SOURCE_PATH, str(cu)))
        objs.append(str(unit.with_suffix(".o")))
        flags = segment_flags(link=False)
        cmds.append([nvcc(), "-x", "cu", str(unit), "-o", objs[-1], f"-I{GPU_INCLUDE}", *flags])
    with ThreadPoolExecutor(len(cmds)) as pool:
        # every unit runs; the first failure in file order is the one raised
        for done in [pool.submit(_nvcc, cmd, cu, source) for cmd in cmds]:
            done.result()
    _nvcc([nvcc(), *objs, "-o", str(out), *LINK_FLAGS], cu, source)


def segment_key(source: str) -> str:
    """The cache key of a segment's library: its source (so every unit's text), the
    headers, the flags and nvcc's version; not how many processes build it."""
    return _key(source, "", *segment_flags())


def build_segment(source: str, jobs: int | None = None) -> tuple[Path, bool]:
    """The library of one generated segment (built now or found), and whether cached.

    A file laid out in units (backends/gpu/units.py) is compiled as up to `jobs`
    (default nvcc_jobs(): one per core) translation units by parallel nvcc processes,
    then linked."""
    return _build(source, segment_flags(), ".seg", jobs=nvcc_jobs() if jobs is None else jobs)


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
