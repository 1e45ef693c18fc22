"""GPU lowering of gml.matmul: batched products through the context's GEMM, and x @ W
with W a weight as a generated decode GEMV (up to 4 rows, its consumers fused in, a
layer norm before it folded into the weight) or cuBLAS / cuBLASLt with the consumers in
its epilogue, odd widths padded. Split from codegen.py for size; it builds on
lower_tensor.py, whose elementwise bodies the GEMV's epilogue reuses."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from xdsl.dialects import func
from xdsl.ir import Operation, SSAValue

from gimlet.backends.cpu.codegen import ctype, where
from gimlet.dialects import gml
from gimlet.dialects.shapes import shape_of
from gimlet.errors import UnsupportedOpError
from gimlet.ir import external_operands

from . import chains, switches
from .lower_base import (
    _DTYPE,
    HALF,
    THREADS,
    Env,
    Scratch,
    _broadcast,
    _ct,
    _launch,
    _numel,
    _phase,
    _strides_in,
    _vt,
    index_params,
)
from .lower_tensor import TensorLowering
from .symdims import covers, numel


def _warp_elements(ct: str) -> int:
    """A warp's elements in one 16-byte load a lane."""
    return 32 * (16 // (2 if ct in HALF else 4))


def _gemv_loads(k: int, ct: str, split: int = 1) -> int:
    """gml::gemv_nt's U: 16-byte loads a lane in flight, its share of a column's (split
    warps a column) where k is static."""
    if not switches.GEMV_LOADS_PER_COLUMN or k <= 0:
        return 8
    step = split * _warp_elements(ct)  # elements a load of the column's warps
    return min(16, max(1, -(-k // step)))


def _gemv_split(n: int, k: int, ct: str) -> int:
    """gml::gemv_nt's S: warps a column (1, 2, 4 or 8), doubled while a warp a column
    leaves fewer than DECODE_TARGET_BLOCKS blocks (GPT-2's fc2: 768 columns are 96
    blocks of 8 warps, on 96 of 132 SMs) and each warp keeps at least a load a lane.
    1 where n or k is dynamic, or GEMV_SPLIT is off."""
    step = _warp_elements(ct)
    s = 1
    while switches.GEMV_SPLIT and n > 0 and k > 0 and s < 8:
        if -(-n * s // 8) >= switches.DECODE_TARGET_BLOCKS or k < 2 * s * step:
            break
        s *= 2
    return s


class MatmulLowering(TensorLowering):
    """gml.matmul: GEMMs, decode GEMVs and vendor epilogues."""

    # ------------------------------------------------------------ products
    def matmul(self, op: gml.MatmulOp) -> None:
        a, b, y = op.lhs, op.rhs, op.result
        ra, rb = len(shape_of(a.type)), len(shape_of(b.type))
        ct = _ct(y)
        if ct not in _DTYPE:
            raise self.refuse(op, f"matmul on {ct} (the GPU backend multiplies f32, f16 and bf16)")
        if ra < 2 or rb < 2:
            raise self.refuse(op, "matmul with a 1-d operand")
        dt = _DTYPE[ct]
        if rb == 2 and b in self.free:  # x @ W: W uploaded as n x k (a Linear's own layout)
            return self.linear(op)
        if ra != rb:
            raise self.refuse(op, "batched matmul with different operand ranks")

        def dims(env: Env) -> list[int]:
            xa, xb = env.shapes[a], env.shapes[b]
            if xa[:-2] != xb[:-2]:
                raise UnsupportedOpError(f"{op.name} at {where(op)}: broadcast batch dims")
            return [xa[-2], xb[-1], xa[-1], _numel(xa[:-2])]

        p = self.slots_of(dims, 4)
        M, N, K, B = (f"P[{p + i}]" for i in range(4))
        self.comment([op])
        self.emit(
            f"if (int e = ctx->gemm(ctx, stream, {dt}, {dt}, false, {M}, {N}, {K}, "
            f"{self.ptr(a, const=True)}, {K}, {M} * {K}, {self.ptr(b, const=True)}, {N}, {K} * {N}, "
            f"{self.ptr(y)}, {N}, {M} * {N}, {B}, 1.0f)) return e;"
        )

    def _epilogue(self, mm: gml.MatmulOp) -> list[tuple[Operation, gml.ReshapeOp | None]]:
        """The elementwise ops or fusions that consume the matmul result one after the
        other (each the sole reader of the last, possibly through a reshape), which the
        GEMV or the GEMM's epilogue can apply before it stores, element i of the product
        to element i of the group's one result: each group's domain is, at every bucket,
        the shape of the value it reads from the chain (dynamic dims included: symdims.py
        proves them equal, so a dynamic batch keeps the fusion), which it yields over;
        every other operand defined before the matmul. (group, reshape feeding it) pairs."""
        y = mm.result
        block = mm.parent_block()
        assert block is not None
        before: set[SSAValue] = set(block.args)
        for o in block.ops:
            if o is mm:
                break
            before.update(o.results)
        chain: list[tuple[Operation, gml.ReshapeOp | None]] = []
        v: SSAValue = y
        via: gml.ReshapeOp | None = None
        while True:
            user = self._sole_user(v)
            if isinstance(user, gml.ReshapeOp) and via is None and chain:
                via, v = user, user.result
                continue
            if user is None or not isinstance(user, (gml.FusionOp, *gml.ELEMENTWISE)):
                break
            members, yielded, results = self._group(user)
            dom = self.sym.broadcast([self.sym[m.results[0]] for m in members])
            if len(results) != 1 or not covers(self.sym[v], tuple(dom)):
                break
            if self.sym[yielded[0]] != tuple(dom):
                break
            inside = {r for m in members for r in m.results}
            ext = [e for e in external_operands(members) if e is not v]
            if any(e not in before and e not in self.free and e not in inside for e in ext):
                break
            if any(
                ctype(x.type.element_type) is None
                for m in members
                for x in (*m.operands, *m.results)
            ):  # type: ignore[attr-defined]
                break
            chain.append((user, via))
            v, via = results[0], None
        return chain

    def _gemv_operands(
        self, op: gml.MatmulOp, ldm: int, split: int, gemv_live: bool
    ) -> tuple[str, str, str, str]:
        """(rows type, rows, weight) of x @ W's GEMV, and W as the GEMM branch reads it.
        The rows are x itself; or (decode after a layer norm that feeds only this product) x through
        the norm, folded into the weight (gml::LnFoldRows: W' and the column's c1, c2) or
        computed by each warp (gml::LnRows). The fold takes a warp a column and no chain;
        W itself is uploaded only where a bucket multiplies more rows (cuBLAS after the
        norm's kernel) and the folded parts only where one runs the GEMV, so a decode
        program and a prefill program each upload one copy. A weight padded to an aligned
        width keeps gml::LnRows."""
        a, b = op.lhs, op.rhs
        ct = _ct(op.result)
        ln_src = a.owner.input if isinstance(a.owner, gml.ReshapeOp) else a
        ln = ln_src.owner if isinstance(ln_src.owner, gml.LayerNormOp) else None
        if ln is not None and self._normalized_by(ln) is not op:
            ln = None
        gemm_dead = self.never(lambda env: _numel(env.shapes[a][:-1]) > 4)
        fold = (
            gemv_live
            and ln is not None
            and switches.FOLD_NORM
            and split == 1
            and not switches.CHAIN
        )
        fold = fold and not ldm  # an odd width padded for cuBLAS: not run on a GPU folded
        w = (
            "nullptr"  # no bucket takes the GEMM branch, which alone reads it
            if fold and gemm_dead
            else f"static_cast<const {ct}*>(W[{self.weight(b, transposed=True, rows=ldm)}])"
        )
        if ln is None:
            return f"gml::Rows<{ct}>", f"gml::Rows<{ct}>{{{self.ptr(a, const=True)}}}", w, w
        x = self.ptr(ln.input, const=True)
        if fold:
            norm = (ln.weight, ln.bias)

            def part(name: str, t: str) -> str:
                return f"static_cast<const {t}*>(W[{self.weight(b, True, 0, norm, name)}])"

            scaled, c1, c2 = part("scaled", ct), part("c1", "float"), part("c2", "float")
            rows_t = f"gml::LnFoldRows<{ct}>"
            return rows_t, f"{rows_t}{{{x}, {c1}, {c2}, {ln.eps.value.data!r}f}}", scaled, w
        g = self.ptr(ln.weight, const=True) if ln.weight else "nullptr"
        bias = self.ptr(ln.bias, const=True) if ln.bias else "nullptr"
        rows_t = f"gml::LnRows<{ct}>"
        return rows_t, f"{rows_t}{{{x}, {g}, {bias}, {ln.eps.value.data!r}f}}", w, w

    def linear(self, op: gml.MatmulOp) -> None:
        """x @ W with W a weight: up to 4 rows, a generated GEMV with the consumers fused
        in (bias, activation, residual); otherwise cuBLAS, then the consumers' kernels."""
        a, b, y = op.lhs, op.rhs, op.result
        ct, dt = _ct(y), _DTYPE[_ct(y)]
        p = self.slots_of(
            lambda env: [_numel(env.shapes[a][:-1]), env.shapes[a][-1], env.shapes[b][1]], 3
        )
        M, K, N = (f"P[{p + i}]" for i in range(3))
        # cuBLAS's Hopper kernels want every dim 16-byte aligned: a weight with an odd
        # number of outputs (GPT-2's 50257-token head) is uploaded with zero rows up to the
        # next multiple and multiplied at that width (unpadded, cuBLAS picks an sm75
        # kernel: 424 us for that head at T=512 on the H200). The padded product is the
        # function's result itself where only the return reads it (the caller gets a view
        # whose rows are ldm apart, as torch.compile returns it); otherwise it goes to a
        # scratch that the consumers' kernel reads, or that is copied out unpadded
        esize = 2 if ct in HALF else 4
        n_static = shape_of(b.type)[1]
        padded = switches.PAD_WEIGHTS and n_static > 0 and n_static % (16 // esize) != 0
        ldm = -(-n_static // (16 // esize)) * (16 // esize) if padded else 0
        x = self.ptr(a, const=True)
        split = _gemv_split(n_static, shape_of(a.type)[-1], ct)
        # the row counts some bucket has: a multiple of the rows' static factor (GPT's 512
        # tokens of a dynamic batch: none of 1..4, no GEMV instantiated), the one count of
        # a static function
        rows_form = numel(self.sym[a][:-1])
        live = [r for r in (1, 2, 3, 4) if rows_form.can_be(r)]
        rows_t, gemv_x, gemv_w, w = self._gemv_operands(op, ldm, split, bool(live))
        chain = self._epilogue(op)
        args: list[str] = []
        ptrs: list[str] = []
        val: dict[SSAValue, str] = {y: "acc"}
        # the epilogue: in the GEMV (body; its operands, loads, loaded by gemv_nt once x is
        # ready into the fields of a struct) and in a kernel after the GEMM (flat_body)
        body: list[str] = []
        loads: list[str] = []
        fields: list[str] = []
        flat_body: list[str] = []
        last: SSAValue = y
        for g, (group, via) in enumerate(chain):
            if via is not None:
                self.reshape(via)
                val[via.result] = val[last]
            members, yielded, results = self._group(group)
            externals = [e for e in external_operands(members) if e not in val]
            rank = len(_broadcast([shape_of(m.results[0].type) for m in members]))
            member_results = [m.results[0] for m in members]

            def params(
                env: Env,
                externals: list[SSAValue] = externals,
                mr: Sequence[SSAValue] = member_results,
                rank: int = rank,
                out: SSAValue = yielded[0],
            ) -> list[int]:
                dom = _broadcast([env.shapes[r] for r in mr])
                # what _epilogue proved for every bucket, checked at this one (not an
                # assert: `python -O` would drop it, and a wrong fusion writes wrong values)
                if env.shapes[out] != dom or _numel(dom) != _numel(env.shapes[y]):
                    raise RuntimeError(
                        f"internal error: {op.name} at {where(op)} fused consumers over {dom} "
                        f"into a product of {env.shapes[y]}"
                    )
                return index_params(rank, dom, [_strides_in(env.shapes[e], dom) for e in externals])

            ix = self.slots_of(params, 1 + rank * (1 + len(externals)))
            args.append(f"gml::Index<{rank}, {len(externals)}> ix{g}")
            ptrs.append(f"gml::index_from<{rank}, {len(externals)}>(P + {ix})")
            offsets = [
                f"    int64_t off{g}[{max(len(externals), 1)}];",
                f"    gml::offsets(ix{g}, i, off{g});",
            ]
            flat_body += offsets
            if externals:
                loads += offsets
            for e in externals:
                j = len(val)
                args.append(f"const {_ct(e)}* __restrict__ p{j}")
                ptrs.append(self.ptr(e, const=True))
                load = f"gml::load(p{j} + off{g}[{externals.index(e)}])"
                fields.append(f"{_vt(e)} x{j}[M];")
                loads.append(f"    o.x{j}[r] = {load};")
                body.append(f"    const {_vt(e)} x{j} = o.x{j}[r];")
                flat_body.append(f"    const {_vt(e)} x{j} = {load};")
                val[e] = f"x{j}"
            compute = self._body(members, val, "    ", prefix=f"g{g}s")
            body += compute
            flat_body += compute
            last = results[0]
            val[last] = val[yielded[0]]
        args.append(f"{_ct(last)}* __restrict__ out")
        ptrs.append(self.ptr(last))
        signature = (
            f"int64_t n, int64_t k, {rows_t} x, const {ct}* __restrict__ w, {', '.join(args)}"
        )
        in_flight = _gemv_loads(shape_of(a.type)[-1], ct, split)
        flags = ", ".join(str(f).lower() for f in (switches.DECODE_PREFETCH, switches.NORM_EARLY))
        early = (
            ""
            if switches.DECODE_PREFETCH and switches.NORM_EARLY and split == 1
            else f", {flags}, {split}"
        )
        device = [
            "template <int M, class S>",
            f"GML_D void KERNEL_body(S& sync, int64_t block, int64_t stride, int64_t, {signature}) {{",
            f"  struct Operands {{ {' '.join(fields)} }};  // what the epilogue loads",
            f"  gml::gemv_nt<{ct}, M, {in_flight}{early}>(sync, block, stride, n, k, x, w, [&](int64_t col) {{",
            "    Operands o;",
            *(
                ["#pragma unroll", "    for (int r = 0; r < M; ++r) {"]
                + ["      const int64_t i = r * n + col;"]
                + ["  " + line for line in loads]
                + ["    }"]
                if loads
                else []
            ),
            "    return o;",
            "  }, [&](int64_t col, const float (&accs)[M], const Operands& o) {",
            "#pragma unroll",
            "    for (int r = 0; r < M; ++r) {",
            f"      const {_vt(y)} acc = gml::rounded_as<{ct}>(accs[r]);",
            "      const int64_t i = r * n + col;",
            *("  " + line for line in body),
            f"      gml::store(out + i, {val[last]});",
            "    }",
            "  });",
            "}",
        ]
        names = ", ".join(["n", "k", "x", "w", *(a.rsplit(" ", 1)[1] for a in args)])
        lines = [
            "template <int M>",
            f"__global__ void KERNEL({signature}, gml::L2Ahead ahead) {{",
            "  gml::Pdl sync;",
            "  ahead.issue();",
            f"  KERNEL_body<M>(sync, blockIdx.x, gridDim.x, gridDim.x, {names});",
            "}",
        ]
        name = self.kernel("\n".join(lines), body="\n".join(device))
        self.comment([op, *(m for g, _ in chain for m in self._group(g)[0])])

        def rows_of(env: Env) -> int:
            return _numel(env.shapes[a][:-1])

        first = len(self.body)
        self.emit(f"if ({M} <= 4) {{  // decode: a few rows against a weight read once")
        self.emit(
            f"  const unsigned g = unsigned(({N} + gml::GEMV_COLS / {split} - 1) / (gml::GEMV_COLS / {split}));  // {split} warp(s) a column"
        )
        phases = []
        blocks = f"({N} + gml::GEMV_COLS - 1) / gml::GEMV_COLS"
        ahead = f"@ahead{len(self.ahead)}@"  # what the next decode kernel reads
        kw, nw = shape_of(b.type)
        wbytes = min(max(kw, 0) * max(ldm or nw, 0) * esize, switches.L2_AHEAD_BYTES)
        self.ahead.append((ahead, [(gemv_w, str(wbytes))]))
        for i, rows in enumerate(live):
            self.emit(
                f"  {'' if i == 0 else 'else '}if ({M} == {rows}) "
                + _launch(
                    f"{name}<{rows}>",
                    "g",
                    "gml::GEMV_THREADS",
                    [N, K, gemv_x, gemv_w, *ptrs, ahead],
                )
            )
            phases.append(
                _phase(
                    f"{name}_body<{rows}, gml::ChainSync>",
                    f"{M} == {rows}",
                    blocks,
                    [N, K, gemv_x, gemv_w, *ptrs],
                )
            )
        self.emit("} else {")
        with self.dead_if(self.never(lambda env: rows_of(env) > 4)):  # the GEMM path
            fused = (
                None if padded or not switches.VENDOR_EPILOGUE else self._vendor_epilogue(op, chain)
            )
            if fused is not None:  # one cuBLASLt call: bias, GELU and residual in its epilogue
                bias, gelu, resid = fused
                out = chain[-1][0].results[0]
                self.emit(
                    f"  if (int e = ctx->gemm_epilogue(ctx, stream, {dt}, {M}, {N}, {K}, {x}, {w}, "
                    f"{self.ptr(out)}, {N}, {self.ptr(bias, const=True) if bias else 'nullptr'}, "
                    f"{'true' if gelu else 'false'}, "
                    f"{self.ptr(resid, const=True) if resid else 'nullptr'})) return e;"
                )
            elif padded and not chain and self._only_returned(y):
                # one GEMM at the aligned width straight into the result's arena slot,
                # which the plan sizes rows x ldm (Lowered.pitches); no scratch, no copy
                self.pitches[y] = partial(_pitch_above_gemv, a, ldm)
                self.emit(
                    f"  if (int e = ctx->gemm(ctx, stream, {dt}, {dt}, true, {M}, {ldm}, {K}, "
                    f"{x}, {K}, 0, {w}, {K}, 0, {self.ptr(y)}, {ldm}, 0, 1, 1.0f)) return e;"
                )
            else:  # cuBLAS, then the consumers as one kernel over the product (flat index i)
                product = self.ptr(y)
                # a padded product read unpadded by an op that is no elementwise consumer
                # (a softmax or slice of a head's logits) goes CHUNK rows at a time through
                # a scratch of CHUNK x ldm, copied out unpadded after each GEMM: the whole
                # padded product beside the logits would double the arena
                chunk = max(64, switches.PADDED_SCRATCH_BYTES // max(ldm * esize, 1) // 64 * 64)
                if padded:

                    def pad_bytes(env: Env, ldm: int = ldm, whole: bool = bool(chain)) -> int:
                        rows = _numel(env.shapes[a][:-1])
                        return (
                            (rows if whole else min(rows, chunk)) * ldm * esize if rows > 4 else 0
                        )

                    pad = Scratch(f"padded{self.step}", pad_bytes)
                    self.scratch.append((pad, self.step))
                    product = self.ptr(pad, ct)
                if padded and not chain:
                    self.emit(f"  for (int64_t r0 = 0; r0 < {M}; r0 += {chunk}) {{")
                    self.emit(f"    const int64_t mr = {M} - r0 < {chunk} ? {M} - r0 : {chunk};")
                    self.emit(
                        f"    if (int e = ctx->gemm(ctx, stream, {dt}, {dt}, true, mr, {ldm}, {K}, "
                        f"{x} + r0 * {K}, {K}, 0, {w}, {K}, 0, {product}, {ldm}, 0, 1, 1.0f)) return e;"
                    )
                    self.emit(
                        f"    gml::copy_pitched<{ct}><<<gml::copy_pitched_blocks<{ct}>(mr * {N}, {THREADS}), "
                        f"{THREADS}, 0, stream>>>(mr, {N}, {ldm}, {product}, {self.ptr(y)} + r0 * {N});"
                    )
                    self.emit("  }")
                else:
                    self.emit(
                        f"  if (int e = ctx->gemm(ctx, stream, {dt}, {dt}, true, {M}, {ldm or N}, {K}, "
                        f"{x}, {K}, 0, {w}, {K}, 0, {product}, {ldm or N}, 0, 1, 1.0f)) return e;"
                    )
                if chain:
                    # a padded product's rows are `ld` apart
                    read = "mm + i" if not padded else "mm + (i / cols) * ld + i % cols"
                    pitch = "int64_t cols, int64_t ld, " if padded else ""
                    flat = [
                        f"__global__ void KERNEL(int64_t total, {pitch}const {ct}* __restrict__ mm, {', '.join(args)}) {{",
                        "  GML_FOR(i, total) {",
                        f"    const {_vt(y)} acc = gml::load({read});",
                        *flat_body,
                        f"    gml::store(out + i, {val[last]});",
                        "  }",
                        "}",
                    ]
                    total = self.slot(lambda env: _numel(env.shapes[y]))
                    self.emit(
                        f"  if (P[{total}] > 0) {self.kernel(chr(10).join(flat))}<<<gml::blocks_for(P[{total}], {THREADS}), "
                        f"{THREADS}, 0, stream>>>(P[{total}], {f'{N}, {ldm}, ' if padded else ''}{product}, "
                        f"{', '.join(ptrs)});"
                    )
        for group, _ in chain:
            self.done.add(group)
            for r in group.results:
                self.defined_at[r] = self.step
        for _, via in chain:
            if via is not None:
                self.done.add(via)
                self.defined_at[via.result] = self.step
        self.emit("}")
        if phases:  # the decode branch, as a chain's phase (chains.py)
            self.chain_part = chains.Part(phases, 1, first, len(self.body), [(p, "<=", 4)])

    def _only_returned(self, y: SSAValue) -> bool:
        """Whether the function's return is all that reads `y`, itself or through
        reshapes that keep its last dim (each a view of y's rows, wherever they are)."""
        n = shape_of(y.type)[-1]

        def returned(op: Operation) -> bool:
            return isinstance(op, func.ReturnOp) or (
                isinstance(op, gml.ReshapeOp)
                and op.parent_op() is self.fn
                and shape_of(op.result.type)[-1:] == (n,)
                and self._only_returned(op.result)
            )

        return bool(y.uses) and all(returned(u.operation) for u in y.uses)

    def _vendor_epilogue(
        self, mm: gml.MatmulOp, chain: list[tuple[Operation, gml.ReshapeOp | None]]
    ) -> tuple[SSAValue | None, bool, SSAValue | None] | None:
        """(bias, gelu, residual) when the consumers of x @ W^T are exactly what a
        cuBLASLt epilogue computes: + bias (a weight of n elements), then tanh GELU, or
        + a residual of the product's shape (which the vendor adds before an activation,
        so not both); each member the sole step from the last. None otherwise."""
        y = mm.result
        ct, n = _ct(y), shape_of(y.type)[-1]
        cur: SSAValue = y
        bias: SSAValue | None = None
        resid: SSAValue | None = None
        gelu = False
        for group, via in chain:
            if via is not None:
                if via.input is not cur:
                    return None
                cur = via.result
            members, yielded, results = self._group(group)
            for m in members:
                if isinstance(m, gml.AddOp) and cur in (m.lhs, m.rhs):
                    other = m.rhs if m.lhs is cur else m.lhs
                    if _ct(other) != ct or other is cur:
                        return None
                    if bias is None and resid is None and not gelu and other in self.free:
                        if shape_of(other.type) != (n,):
                            return None
                        bias = other
                    elif resid is None and not gelu and self.sym[other] == self.sym[m.result]:
                        resid = other
                    else:
                        return None
                elif isinstance(m, gml.GeluOp) and m.approximate.data == "tanh":
                    if gelu or resid is not None:
                        return None
                    gelu = True
                else:
                    return None
                cur = m.results[0]
            if list(yielded) != [cur]:
                return None
            cur = results[0]
        if not chain:
            return None
        return bias, gelu, resid


def _pitch_above_gemv(a: SSAValue, ldm: int, env: Env) -> int:
    """A padded head's row pitch at a bucket: ldm where its GEMM runs (more than 4 rows
    of `a`), 0 where the GEMV writes it contiguous."""
    return ldm if _numel(env.shapes[a][:-1]) > 4 else 0
