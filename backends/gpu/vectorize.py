"""16-byte accesses for generated elementwise kernels (lower_tensor.py's `elementwise`).

The scalar loop gives a thread one element of the domain: an access of 2 bytes per
operand for f16, and the index math once per element. GPT's prologue add (8192 x 1024
f16, wte rows + wpe broadcast over the batch) took 52.8 us that way on the H200, where
its 16 MiB in and 16 MiB out want ~10. The vector loop gives a thread V consecutive elements,
V = 16 bytes of the widest operand or result type (8 for f16/bf16, 4 for f32, 2 for
64-bit types), so the widest moves 16 bytes an access and a narrower type in the same
kernel (a bool mask, an f16 input of an f32 sum) V elements in one smaller access; the
offsets are computed once for the V elements.

A bucket takes it (its slot holds V, else 1) where, in the kernel's Index (lower_base's
`index_params`: the dims every operand walks contiguously merged):

* the innermost merged dim is a multiple of V: a thread's V elements then share every
  other coordinate, so operand k's are at off[k] + e * (its innermost stride);
* every operand's innermost stride is 1 (one access) or 0 (broadcast along that dim:
  its one element is loaded once), and every other stride of an operand read with
  stride 1 is a multiple of V, so its accesses stay aligned to their size;
* every result's innermost stride is 1 and no result is broadcast along a dim of the
  domain. A result smaller than the domain (written once, by the first thread along
  the broadcast: gml::first_along_broadcast) gets no vector loop at all; that is known
  when the kernel is generated.

The pointers must also be 16-byte aligned, which only the launch knows (the runtime
may bind a caller's tensor in place, a view may start inside its buffer): the kernel
checks its own pointers, once, a branch every thread takes alike. The arithmetic is the
scalar loop's text, each member rounding as it does there, so both loops give the same
bits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ACCESS_BYTES = 16


def width(itemsizes: Iterable[int]) -> int:
    """V for a kernel whose operands and results have these element sizes: 16 bytes of
    the widest (1: no vector loop)."""
    return max(1, ACCESS_BYTES // max(itemsizes, default=ACCESS_BYTES))


def per_thread(ix: Sequence[int], rank: int, operands: int, results: int, v: int) -> int:
    """Elements a thread at a bucket: `v` where its Index slots `ix` ([rank', rank dims,
    then each operand's and each result's rank strides], as lower_base's index_params lays
    them out) allow the vector loop, else 1."""
    if rank == 0 or v < 2:
        return 1
    dims = ix[1 : 1 + rank]
    if dims[-1] % v:
        return 1
    for k in range(operands + results):
        st = ix[1 + rank * (1 + k) : 1 + rank * (2 + k)]
        if k >= operands and any(s == 0 for s, n in zip(st, dims, strict=True) if n > 1):
            return 1  # a result broadcast along a dim (codegen never asks: checked anyway)
        if st[-1] not in (0, 1) or (st[-1] == 1 and any(s % v for s in st[:-1])):
            return 1
    return v


def loop(
    v: int,
    rank: int,
    inputs: Sequence[str],
    outputs: Sequence[str],
    body: Sequence[str],
    yielded: Sequence[str],
) -> list[str]:
    """The kernel's vector loop, taken where the `width` argument is `v` and every
    pointer is aligned (then it returns). `inputs` and `outputs` are the compute types of
    the operands (`p{i}`, `x{i}[e]` in `body`) and results (`q{i}`, set from `yielded`);
    `body` is the scalar body's lines over element `e`, indented 8."""
    k = len(inputs) + len(outputs)
    ptrs = [f"p{i}" for i in range(len(inputs))] + [f"q{i}" for i in range(len(outputs))]
    last = max(rank - 1, 0)
    lines = [
        f"  if (width == {v} && gml::aligned16({', '.join(ptrs)})) {{  // {v} elements a thread",
        f"    GML_FOR(c, n / {v}) {{",
        f"      int64_t off[{k}];",
        f"      gml::offsets(ix, c * {v}, off);",
    ]
    for i, t in enumerate(inputs):
        lines.append(f"      {t} x{i}[{v}];")
        lines.append(f"      gml::load_vec(p{i} + off[{i}], ix.strides[{i}][{last}], x{i});")
    lines += [f"      {t} y{i}[{v}];" for i, t in enumerate(outputs)]
    lines += ["#pragma unroll", f"      for (int e = 0; e < {v}; ++e) {{", *body]
    lines += [f"        y{i}[e] = {val};" for i, val in enumerate(yielded)]
    lines.append("      }")
    for i in range(len(outputs)):
        lines.append(f"      gml::store_vec(q{i} + off[{len(inputs) + i}], y{i});")
    return [*lines, "    }", "    return;", "  }"]
