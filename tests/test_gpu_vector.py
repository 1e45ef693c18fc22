"""16-byte accesses in generated elementwise kernels and gml::embedding
(backends/gpu/vectorize.py): which kernels get the vector loop, the exact condition a
bucket's shapes and strides must meet, the generated source building with nvcc (and
hipcc where it is installed), and on a GPU the results equal to torch's bit for bit:
both loops compute each element with the same text, each op rounding as torch does,
and an embedding is a copy, so there is no tolerance."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from gimlet.backends.gpu import vectorize
from gimlet.backends.gpu.codegen import _contiguous_strides, _strides_in, index_params
from gimlet.backends.gpu.lower import lower
from gimlet.ir import main_func
from gimlet.pass_manager import DEFAULT_PIPELINE, run_pipeline

HAS_NVCC = shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()
needs_nvcc = pytest.mark.skipif(not HAS_NVCC, reason="nvcc (the CUDA toolkit) is not installed")
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU (runs on the H200 machine)"
)


# ------------------------------------------------------------------ the host condition
def _width(
    dom: tuple[int, ...], operands: list[list[int]], results: list[list[int]], v: int
) -> int:
    """Elements a thread for a kernel over `dom` reading operands and writing results
    through these strides (lower_base's Index slots, then vectorize.per_thread)."""
    ix = index_params(len(dom), dom, [*operands, *results])
    return vectorize.per_thread(ix, len(dom), len(operands), len(results), v)


def _read(shape: tuple[int, ...], dom: tuple[int, ...]) -> list[int]:
    """The strides of a contiguous tensor of `shape` read over `dom` (0: broadcast)."""
    return _strides_in(shape, dom)


def test_width_is_16_bytes_of_the_widest_type() -> None:
    assert vectorize.width([2, 2]) == 8  # f16, bf16
    assert vectorize.width([4, 2, 1]) == 4  # f32 beside f16 and a bool mask
    assert vectorize.width([8, 4]) == 2  # an int64 index
    assert vectorize.width([16]) == 1  # nothing narrower: no vector loop


@pytest.mark.parametrize(
    ("dom", "operands", "results", "v", "want"),
    [
        # GPT's prologue: wte rows + wpe broadcast over the batch, f16 and f32
        ((16, 512, 1024), [(16, 512, 1024), (512, 1024)], 1, 8, 8),
        ((16, 512, 1024), [(16, 512, 1024), (512, 1024)], 1, 4, 4),
        # 1023 wide, but rows and positions merge into one dim of 512 x 1023: a multiple
        ((16, 512, 1023), [(16, 512, 1023), (512, 1023)], 1, 8, 8),
        # no merge: the innermost dim is 1023 (or 511 x 1023, odd) itself
        ((16, 512, 1023), [(16, 512, 1023), (16, 1, 1023)], 1, 8, 1),
        ((16, 511, 1023), [(16, 511, 1023), (511, 1023)], 1, 8, 1),
        # an operand broadcast along the innermost dim (a per-row scale): loaded once
        ((512, 1024), [(512, 1024), (512, 1)], 1, 8, 8),
        # a 0-d operand: every stride 0
        ((512, 1024), [(512, 1024), ()], 1, 8, 8),
        # a 1-d domain of a multiple of 8, and of 8 x 3 + 4
        ((4096,), [(4096,), (4096,)], 1, 8, 8),
        ((28,), [(28,), (28,)], 1, 8, 1),
        # a scalar domain
        ((), [(), ()], 1, 8, 1),
    ],
)
def test_vector_loop_where_shapes_allow(
    dom: tuple[int, ...], operands: list[tuple[int, ...]], results: int, v: int, want: int
) -> None:
    reads = [_read(s, dom) for s in operands]
    writes = [_contiguous_strides(dom)] * results
    assert _width(dom, reads, writes, v) == want


def test_vector_loop_wants_unit_inner_strides_and_aligned_rows() -> None:
    dom = (512, 1024)
    rows = _contiguous_strides(dom)  # [1024, 1]
    assert _width(dom, [rows, rows], [rows], 8) == 8
    # a transposed operand: its innermost stride is 512
    assert _width(dom, [rows, [1, 512]], [rows], 8) == 1
    # rows 1028 apart: stride 1 along them, but a row's 16-byte pieces are not aligned
    assert _width(dom, [[1028, 1], rows], [rows], 8) == 1
    assert _width(dom, [[1024 + 8, 1], rows], [rows], 8) == 8
    # a result smaller than the domain (reduced along the rows, broadcast back)
    assert _width(dom, [rows], [[0, 1]], 8) == 1
    # or along the inner dim
    assert _width(dom, [rows], [[1, 0]], 8) == 1


# ------------------------------------------------------------------ generated code
class _Prologue(torch.nn.Module):
    """GPT's prologue (wte[ids] + wpe[arange(T)]) in f16 and f32 at d = 256 (vector
    loops), in f16 at d = 99 over 63 tokens (scalar: neither the rows nor 63 x 99 are a
    multiple of 8); x[1:] + z, whose first operand is a view 2 bytes into x (the shapes
    allow the vector loop, the pointer does not); a fused mixed-type where over a bool
    mask, f16 and f32 (4 elements a thread: 4, 8 and 16-byte accesses); a bf16 product
    with a per-row scale (an operand broadcast along the innermost dim)."""

    def __init__(self) -> None:
        super().__init__()
        emb = torch.nn.Embedding
        self.wte16, self.wpe16 = (
            emb(97, 256, dtype=torch.float16),
            emb(64, 256, dtype=torch.float16),
        )
        self.wte32, self.wpe32 = emb(97, 256), emb(64, 256)
        self.wte99, self.wpe99 = emb(97, 99, dtype=torch.float16), emb(64, 99, dtype=torch.float16)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ids, ids63, x, z, mask, h, y, u, s = args
        pos = torch.arange(ids.shape[1], device=ids.device)
        pos63 = torch.arange(ids63.shape[1], device=ids.device)
        return (
            self.wte16(ids) + self.wpe16(pos),
            self.wte32(ids) + self.wpe32(pos),
            self.wte99(ids63) + self.wpe99(pos63),
            x[1:] + z,
            torch.where(mask, h.float() * 2.0, y),
            u * s[:, None],
        )


def _inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)

    def normal(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    ids = torch.randint(0, 97, (4, 64), generator=g)
    ids63 = torch.randint(0, 97, (4, 63), generator=g)
    return (
        ids,
        ids63,
        normal(4097, dtype=torch.float16),
        normal(4096, dtype=torch.float16),
        torch.rand(64, 256, generator=g) > 0.5,
        normal(64, 256, dtype=torch.float16),
        normal(64, 256),
        normal(64, 256, dtype=torch.bfloat16),
        normal(64, dtype=torch.bfloat16),
    )


@pytest.fixture(scope="module")
def prologue() -> tuple[Any, Any, Any, torch.nn.Module]:
    """(module, weights, the lowered program, the torch model)."""
    from gimlet.frontend import import_model

    torch.manual_seed(0)  # the tables' values
    model = _Prologue().eval()
    module, weights = import_model(model, _inputs(), None)
    run_pipeline(module, DEFAULT_PIPELINE)
    return module, weights, lower(main_func(module)), model


def _kernels(src: str) -> dict[str, str]:
    """Each generated elementwise kernel's definition by name."""
    return dict(re.findall(r"^__global__ void (k\d+)\((.*?)^\}$", src, re.MULTILINE | re.DOTALL))


def _elementwise_launches(src: str) -> list[tuple[str, int | None, list[int]]]:
    """Per generated kernel launch: (kernel, the slot of its elements a thread or None
    for a kernel without a vector loop, the slots of its arena pointers)."""
    out = []
    for m in re.finditer(r"if \(P\[\d+\] > 0\) (k\d+)<<<gml::blocks_for\((.*?), 256\).*", src):
        per = re.fullmatch(r"P\[\d+\] / P\[(\d+)\]", m.group(2))
        ptrs = [int(p) for p in re.findall(r"\(A \+ P\[(\d+)\]\)", m.group(0))]
        out.append((m.group(1), int(per.group(1)) if per else None, ptrs))
    return out


def test_which_kernels_get_the_vector_loop(prologue: tuple[Any, Any, Any, torch.nn.Module]) -> None:
    """A static program keeps a vector loop (and its slot) only where its one bucket
    takes it: the d = 99 add has the scalar loop alone, unchanged; the view's add keeps
    it (its shapes allow it; its pointer is 2 bytes off, which the kernel finds)."""
    low = prologue[2]
    src = low.source
    kernels = _kernels(src)
    launches = _elementwise_launches(src)
    assert len(launches) == 6 == len(kernels)
    vector = {k for k, per, _ in launches if per is not None}
    widths = {k: re.search(r"if \(width == (\d+) && gml::aligned16\(", kernels[k]) for k in kernels}
    assert {k for k, w in widths.items() if w} == vector
    got = sorted(int(w.group(1)) for w in widths.values() if w)
    assert got == [4, 4, 8, 8, 8]  # f32 add, the where; f16 add, the view's add, bf16 product
    (scalar,) = set(kernels) - vector
    assert "width" not in kernels[scalar] and "gml::Index<3, 3>" in kernels[scalar]
    assert "int64_t n, gml::Index<3, 3> ix, const gml::f16* __restrict__ p0" in kernels[scalar]
    # the bucket: every vector kernel's slot holds its width; the view's add reads 2 bytes
    # into x's buffer, every other pointer is 16-byte aligned
    params = low.bucket([tuple(t.shape) for t in _inputs()]).params
    off = {k: [params[p] % 16 for p in ptrs] for k, _, ptrs in launches}
    assert sorted(params[per] for _, per, _ in launches if per is not None) == got
    assert [o for o in off.values() if any(o)] == [[2, 0, 0]]
    # every gml::embedding launch sizes its grid for 16 bytes a thread where rows allow
    emb = re.findall(r"gml::embedding<(.*?), int64_t><<<gml::blocks_for\((.*?), 256\)", src)
    assert len(emb) == 6
    assert all(re.fullmatch(rf"P\[\d+\] / gml::vec_width<{t}>\(P\[\d+\]\)", g) for t, g in emb)


def test_the_vector_loop_is_the_scalar_body_per_element(
    prologue: tuple[Any, Any, Any, torch.nn.Module],
) -> None:
    """The where kernel: 4 elements a thread (f32 is the widest), each operand loaded
    with its own access size, the members' text as the scalar loop has it."""
    src = prologue[2].source
    (where,) = [k for k in _kernels(src).values() if "gml.where" in k]
    vec, scalar = where.split("  GML_FOR(i, n) {")
    # h, the constant 2.0 (a 0-d weight: stride 0, loaded once), the mask, y; the result
    assert "if (width == 4 && gml::aligned16(p0, p1, p2, p3, q0)) {  // 4 elements a thread" in vec
    assert "const gml::f16* __restrict__ p0" in where and "const bool* __restrict__ p2" in where
    assert "      bool x2[4];\n      gml::load_vec(p2 + off[2], ix.strides[2][1], x2);\n" in vec
    assert "gml::store_vec(q0 + off[4], y0);" in vec
    ops = re.findall(r"= (.*);  // (gml\.\w+)", scalar)
    assert ops and re.findall(r"= (.*);  // (gml\.\w+)", vec) == [
        (re.sub(r"\bx(\d+)\b", r"x\1[e]", e), name) for e, name in ops
    ]


def test_a_result_smaller_than_the_domain_keeps_the_scalar_loop() -> None:
    """A fusion yielding a [256] value beside the [64, 256] domain stores it once per
    element (gml::first_along_broadcast): no vector loop, no slot."""
    from gimlet.ir import parse

    module = parse(
        "func.func @main(%a: tensor<256xf16>, %b: tensor<64x256xf16>)"
        " -> (tensor<256xf16>, tensor<64x256xf16>) {\n"
        "  %0, %1 = gml.fusion : tensor<256xf16>, tensor<64x256xf16> {\n"
        "    %2 = gml.neg %a : tensor<256xf16>\n"
        "    %3 = gml.mul %b, %2 : (tensor<64x256xf16>, tensor<256xf16>) -> tensor<64x256xf16>\n"
        "    gml.yield %2, %3 : tensor<256xf16>, tensor<64x256xf16>\n"
        "  }\n"
        "  func.return %0, %1 : tensor<256xf16>, tensor<64x256xf16>\n"
        "}\n"
    )
    src = lower(main_func(module)).source
    assert "gml::first_along_broadcast(ix, i, 2)" in src
    assert "width" not in src and "load_vec" not in src


def test_dynamic_shapes_decide_per_bucket() -> None:
    """With the sequence dynamic the d = 99 prologue keeps both loops, and the bucket's
    slot says which: 64 x 99 positions merge into a multiple of 8, 63 x 99 do not."""
    from gimlet.frontend import import_model

    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte, self.wpe = torch.nn.Embedding(97, 99), torch.nn.Embedding(64, 99)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))

    seq = torch.export.Dim("seq", min=2, max=64)
    module, _ = import_model(Odd().eval(), (torch.zeros(2, 64, dtype=torch.long),), ({1: seq},))
    run_pipeline(module, DEFAULT_PIPELINE)
    low = lower(main_func(module))
    ((_, per, _),) = _elementwise_launches(low.source)
    assert per is not None
    assert low.bucket([(2, 64)]).params[per] == 4  # f32: 4 elements a thread
    assert low.bucket([(2, 63)]).params[per] == 1


@pytest.fixture(scope="module")
def built(prologue: tuple[Any, Any, Any, torch.nn.Module]) -> Path:
    from gimlet.backends.nvidia.build import build_segment

    return build_segment(prologue[2].source)[0]


@needs_nvcc
def test_vector_loops_build_for_sm90(built: Path) -> None:
    assert built.stat().st_size > 0


@pytest.mark.skipif(
    shutil.which("hipcc") is None, reason="hipcc (ROCm's HIP compiler) is not installed"
)
def test_vector_loops_compile_for_rocm(
    prologue: tuple[Any, Any, Any, torch.nn.Module], tmp_path: Path
) -> None:
    """The vector loops stay in the part of CUDA that HIP compiles (as the families'
    programs do: test_gpu_backend's test_generated_code_compiles_for_rocm)."""
    from gimlet.backends.nvidia.build import GPU_INCLUDE

    cu = tmp_path / "prologue.cu"
    cu.write_text(prologue[2].source)
    cmd = ["hipcc", "-DGML_HIP", "--offload-arch=gfx90a", "-std=c++17", "-O1"]
    cmd += [f"-I{GPU_INCLUDE}", "-x", "hip", "-c", str(cu), "-o", str(tmp_path / "prologue.o")]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "HIP_PLATFORM": "amd"}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------ on a GPU
@needs_gpu
def test_vector_and_scalar_loops_equal_torch_bit_for_bit(
    prologue: tuple[Any, Any, Any, torch.nn.Module], built: Path
) -> None:
    """Every result equals torch's on the same GPU exactly (torch.equal): the vector
    prologues in f16 and f32, the scalar d = 99 one, the view 2 bytes off (the kernel
    falls back to its scalar loop: its vector loop would fault on the address), the
    mixed-type where and the per-row bf16 scale; a replay of the bucket's graph too."""
    from gimlet.backends.nvidia.program import CudaFunction

    module, weights, low, model = prologue
    f = CudaFunction(main_func(module), built, weights, lowered=low)
    inputs = [t.cuda() for t in _inputs()]
    with torch.no_grad():
        want = model.cuda()(*inputs)
    for _ in range(2):
        got = f(*inputs)
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g.dtype == w.dtype and g.shape == w.shape, i
            assert torch.equal(g, w), f"result {i}: {(g.float() - w.float()).abs().max()}"
