"""GPU lowering of gml.sdpa: the fused split-KV decode kernel and its combine, the flash
prefill kernel, or cuBLAS's two GEMMs around a softmax; and the planning that lets
attention read q/k/v (and write its output) in place through strides instead of copying
the views that build them. Split from codegen.py for size: attention is the largest op
family, and tensor ops (lower_tensor.py) ask it whether a copy or concat is needed."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

from xdsl.ir import Operation, SSAValue

from gimlet.dialects import gml
from gimlet.dialects.shapes import shape_of

from . import chains, switches
from .lower_base import (
    _DTYPE,
    HALF,
    THREADS,
    Env,
    Scratch,
    Slot,
    _contiguous_strides,
    _ct,
    _itemsize,
    _launch,
    _LoweringBase,
    _nbytes,
    _numel,
    _offset,
    _phase,
    _strides_in,
    index_params,
)
from .shapes import Shape


def _prefill_split(batches: int, rows: int, keys: int) -> tuple[int, int]:
    """(keys per chunk, chunks) of gml::attention_prefill for `batches` (batch x kv head)
    of `rows` query rows over `keys` keys; one chunk when the row blocks fill the GPU."""
    blocks = batches * -(-rows // switches.PREFILL_ROWS)
    if blocks <= 0 or blocks >= switches.PREFILL_SPLIT_BELOW or keys <= switches.PREFILL_CHUNK_MIN:
        return max(keys, 1), 1
    want = -(-switches.PREFILL_TARGET_BLOCKS // blocks)
    chunk = -(-keys // want)
    chunk = max(
        switches.PREFILL_CHUNK_MIN,
        -(-chunk // switches.PREFILL_CHUNK_MIN) * switches.PREFILL_CHUNK_MIN,
    )
    return chunk, -(-keys // chunk)


def _decode_split(blocks: int, keys: int, target: int) -> tuple[int, int]:
    """(keys per chunk, chunks) for `blocks` (batch x kv head) blocks over `keys` keys,
    about `target` blocks in all."""
    want = max(1, -(-target // max(blocks, 1)))
    chunk = -(-max(keys, 1) // want)
    chunk = min(switches.DECODE_CHUNK_MAX, max(switches.DECODE_CHUNK_MIN, -(-chunk // 32) * 32))
    return chunk, max(1, -(-keys // chunk))


class AttentionLowering(_LoweringBase):
    """gml.sdpa, and where its operands are read in place."""

    def _decode_attention(self, op: gml.SdpaOp, env: Env) -> bool:
        """Whether this bucket runs `op` as the fused decode kernel (few query rows)."""
        sq, sk = env.shapes[op.query], env.shapes[op.key]
        m = (sq[-3] // sk[-3]) * sq[-2]
        chunks = _decode_split(_numel(sq[:-3]) * sk[-3], sk[-2], self.decode_blocks)[1]
        # head dims are the kernel's template parameters (static, <= 128: its arrays are
        # sized by them); 8 query rows and 512 chunk weights fit its shared memory
        d, dv = shape_of(op.query.type)[-1], shape_of(op.value.type)[-1]
        return m <= 8 and 0 < d <= 128 and 0 < dv <= 128 and chunks <= 512

    def _may_decode(self, op: gml.SdpaOp) -> bool:
        """Whether some bucket with rows runs `op` as the decode kernel: its query rows per
        kv head, (heads / kv heads) x Tq, are a multiple of their static factor, which
        must be at most 8 (GPT's prefill at a dynamic batch: Tq static, never)."""
        q, k = self.sym[op.query], self.sym[op.key]
        groups = q[-3].exact_div(k[-3])
        return groups is None or any((groups * q[-2]).can_be(m) for m in range(1, 9))

    def _flash_prefill(self, op: gml.SdpaOp) -> bool:
        """Whether `op`'s prefill buckets run gml::attention_prefill: f16/bf16, head dims
        static multiples of 16 up to 128 (the kernel's template parameters)."""
        d, dv = shape_of(op.query.type)[-1], shape_of(op.value.type)[-1]
        dims_ok = all(0 < x <= 128 and x % 16 == 0 for x in (d, dv))
        return switches.FLASH_PREFILL and _ct(op.result) in HALF and dims_ok

    def _kv_pieces(self, op: gml.SdpaOp, kv: SSAValue) -> list[SSAValue]:
        """The pieces the fused decode kernel reads `kv` from: a two-piece concat along
        the sequence (a KV cache and the new entry) is read in place, never built."""
        src = kv.owner
        if (
            isinstance(src, gml.ConcatOp)
            and len(src.inputs) == 2
            and src.dim.value.data % len(shape_of(kv.type)) == len(shape_of(kv.type)) - 2
            and self._sole_user(kv) is op
        ):
            return list(src.inputs)
        return [kv]

    def _cache_range(self, op: gml.SdpaOp, kv: SSAValue) -> tuple[str, str]:
        """(pointer, bytes) of K's or V's first piece (the KV cache), for gml::L2Ahead."""
        first = self._kv_pieces(op, kv)[0]
        n = self.slot(lambda env: min(_nbytes(first, env), switches.L2_AHEAD_BYTES))
        return self.ptr(first, const=True), f"P[{n}]"

    def _cache_rows_early(self, op: gml.SdpaOp) -> Slot:
        """1 where decode attention may read K's and V's first pieces before its wait (a
        bucket where each is the segment's input or a weight, or a view of one: no
        kernel of the segment writes it), else 0."""
        if not switches.DECODE_PREFETCH:
            return lambda env: 0
        firsts = [self._kv_pieces(op, kv)[0] for kv in (op.key, op.value)]
        args = set(self.fn.body.block.args)

        def early(env: Env) -> int:
            source = {v: src for v, src, _ in self.views}
            for x in firsts:
                while x in env.views:
                    x = source[x]
                if x not in args and x not in self.free:
                    return 0
            return 1

        return early

    def sdpa(self, op: gml.SdpaOp) -> None:
        q, k, v, y = op.query, op.key, op.value, op.result
        ct = _ct(y)
        if ct not in _DTYPE:
            raise self.refuse(op, f"attention on {ct}")
        dt = _DTYPE[ct]
        causal = "true" if op.is_causal.value.data else "false"

        # q [B.., H, Tq, D], k [B.., KV, Tk, D], v [B.., KV, Tk, Dv]; heads h = kv * G + g,
        # so Q is [B..*KV, G*Tq, D] as it lies: one strided-batched GEMM per product.
        def dims(env: Env) -> list[int]:
            sq, sk, sv = env.shapes[q], env.shapes[k], env.shapes[v]
            h, tq, d = sq[-3], sq[-2], sq[-1]
            kv, tk, dv = sk[-3], sk[-2], sv[-1]
            return [_numel(sq[:-3]) * kv, (h // kv) * tq, tk, d, dv, tq]

        p = self.slots_of(dims, 6)
        scale = op.scale.value.data if op.scale is not None else None
        sc = self.slot(lambda env: env.shapes[q][-1])
        fused = self.slot(lambda env: int(self._decode_attention(op, env)))
        target = self.decode_blocks
        split = self.slots_of(
            lambda env: list(_decode_split(dims(env)[0], dims(env)[2], target)), 2
        )
        if switches.CHAIN:  # a chain's split: chunks for one round of its blocks (fewer, longer)
            ctarget = switches.CHAIN_TARGET_SMS * switches.CHAIN_BLOCKS
            csplit = self.slots_of(
                lambda env: list(_decode_split(dims(env)[0], dims(env)[2], ctarget)), 2
            )

        flash = self._flash_prefill(op)  # then no bucket materialises scores or probs

        def unfused(nbytes: Callable[[Env], int]) -> Callable[[Env], int]:
            return lambda env: 0 if flash or self._decode_attention(op, env) else nbytes(env)

        def split_bytes(env: Env) -> int:  # [batch, chunk, row, dv + 2] floats
            if not self._decode_attention(op, env):
                return 0
            b, m, n, _, dv, _ = dims(env)
            return b * _decode_split(b, n, target)[1] * m * (dv + 2) * 4

        def prefill_split(env: Env) -> list[int]:
            b, m, n = dims(env)[:3]
            return list(_prefill_split(b, m, n)) if flash else [n, 1]

        def prefill_partials(env: Env) -> int:  # [batch, chunk, row, dv + 2] floats
            if not flash or self._decode_attention(op, env):
                return 0
            b, m, _, _, dv, _ = dims(env)
            chunks = prefill_split(env)[1]
            return 0 if chunks == 1 else b * chunks * m * (dv + 2) * 4

        scores = Scratch(f"scores{self.step}", unfused(lambda env: _prod(dims(env)[:3]) * 4))
        half = 2 if ct in HALF else 4
        probs = Scratch(f"probs{self.step}", unfused(lambda env: _prod(dims(env)[:3]) * half))
        part = Scratch(f"part{self.step}", split_bytes)
        fpart = Scratch(f"fpart{self.step}", prefill_partials)
        self.scratch += [(scores, self.step), (probs, self.step), (part, self.step)]
        self.scratch += [(fpart, self.step)]
        s_ptr, p_ptr = self.ptr(scores, "float"), self.ptr(probs, ct)
        part_ptr = self.ptr(part, "float")
        fsplit = self.slots_of(prefill_split, 2)
        fpart_ptr = self.ptr(fpart, "float")
        alpha = f"{scale!r}f" if scale is not None else f"1.0f / sqrtf(float(P[{sc}]))"
        B, M, N, D, DV, TQ = (f"P[{p + i}]" for i in range(6))
        bias = f"gml::Causal{{{N}, {TQ}}}" if causal == "true" else "gml::NoBias{}"
        if op.mask is not None:
            bias = self.mask_bias(op, causal, N, TQ)
        qp, yp = self.ptr(q, const=True), self.ptr(y)

        def pieces(kv: SSAValue) -> str:
            parts = self._kv_pieces(op, kv)
            sizes = self.slots_of(
                lambda env: [env.shapes[x][-2] for x in parts] + [0] * (2 - len(parts)), 2
            )
            ptrs = [self.ptr(x, const=True) for x in parts] + ["nullptr"] * (2 - len(parts))
            return f"gml::Pieces<{ct}, 2>{{{{{', '.join(ptrs)}}}, {{P[{sizes}], P[{sizes + 1}]}}}}"

        self.comment([op])
        chunk, chunks = f"P[{split}]", f"P[{split + 1}]"
        decode = partial(self._decode_attention, op)
        first = len(self.body)
        self.emit(f"if (P[{fused}]) {{  // decode: a block per (batch, kv head, key chunk)")
        dead = self.never(decode) or not self._may_decode(op)
        with self.dead_if(dead):
            d, dv = max(shape_of(q.type)[-1], 1), max(shape_of(v.type)[-1], 1)
            bias_t = bias.split("{", 1)[0]  # the bias's type is its initializer's name
            kp, vp = pieces(k), pieces(v)
            cached = self.slot(self._cache_rows_early(op))
            self.ahead.append((None, [self._cache_range(op, x) for x in (k, v)]))
            split_args = [M, chunk, qp, kp, vp, part_ptr, alpha, bias]
            combine_args = [chunks, M, DV, part_ptr, yp]
            # every template argument named (a function pointer deduces none)
            self.emit(
                "  "
                + _launch(
                    f"gml::attention_decode_split<{ct}, {d}, {dv}, {bias_t}>",
                    f"dim3(unsigned({B}), unsigned({chunks}))",
                    "gml::ATTN_SPLIT_THREADS",
                    [*split_args, f"P[{cached}] != 0"],
                )
            )
            self.emit(
                "  "
                + _launch(
                    f"gml::attention_combine<{ct}>",
                    f"unsigned({B})",
                    "gml::ATTN_COMBINE_THREADS",
                    combine_args,
                )
            )
            # as a chain's phases: the split with a chain's block of threads (its shared
            # memory beside the combine's fits 48 KB up to head dims of 64)
            cchunk, cchunks = (
                (f"P[{csplit}]", f"P[{csplit + 1}]") if switches.CHAIN else (chunk, chunks)
            )
            phases = [
                _phase(
                    f"gml::attention_decode_split_body<{ct}, {d}, {dv}, {bias_t}, "
                    "gml::CHAIN_THREADS, gml::ChainSync>",
                    "true",
                    f"{B} * {cchunks}",
                    [M, cchunk, qp, kp, vp, part_ptr, alpha, bias],
                ),
                _phase(
                    f"gml::attention_combine_body<{ct}, gml::ChainSync>",
                    "true",
                    B,
                    [cchunks, M, DV, part_ptr, yp],
                ),
            ]
        self.emit("} else {")
        # operands as cuBLAS or the flash kernel read them: in place through strides where
        # this bucket folds their views (attention_fold), else the contiguous copies; the
        # flash kernel walks its batches as (outer batch, head), each with its own stride
        heads = self.slot(lambda env: env.shapes[k][-3]) if flash else -1
        lay: dict[str, tuple[str, str, str, str]] = {}
        for name, val in (("q", q), ("k", k), ("v", v), ("y", y)):
            base_v: SSAValue = (
                self.fold_out[op].result if name == "y" and op in self.fold_out else val
            )
            plain = self.slot(partial(_offset, val))
            width = self.slot(partial(_last_dim, val))
            # one batch's matrix: q and y hold the G query groups of a kv head (G*Tq rows)
            rows = self.slot(partial(_matrix_size, val, q, k, name in "qy"))
            o = self.slot(partial(self._operand, op, name, 0, plain))
            ld = self.slot(partial(self._operand, op, name, 1, width))
            bs = self.slot(partial(self._operand, op, name, 2, rows))
            batch = f"P[{bs}]"
            if flash:  # contiguous: the heads' matrices back to back, then the next batch's
                outer = self.slot(partial(_slot_product, self.slots, (rows, heads)))
                outer = self.slot(partial(self._operand, op, name, 3, outer))
                batch = f"gml::AttnBatch{{P[{bs}], P[{outer}]}}"
            q_ = "" if name == "y" else "const "
            if base_v is not val:
                self.ptr(base_v)  # its offset is needed by the plan
            lay[name] = (f"reinterpret_cast<{q_}{ct}*>(A + P[{o}])", f"P[{ld}]", f"P[{bs}]", batch)
        (qp2, qld, qbs, qb), (kp, kld, kbs, kb), (vp, vld, vbs, vb), (yp2, yld, ybs, yb) = (
            lay[n] for n in "qkvy"
        )
        with self.dead_if(self.never(lambda env: not decode(env))):
            if flash:  # a block per 64 query rows of a (batch, kv head), the keys in tiles
                # (and, where those blocks would not fill the GPU, per chunk of the keys,
                # the chunks' partials then combined: P[fsplit + 1] chunks of P[fsplit])
                per = "gml::ATTN_PREFILL_ROWS"
                kchunk, chunks = f"P[{fsplit}]", f"P[{fsplit + 1}]"
                dq, dv = shape_of(q.type)[-1], shape_of(v.type)[-1]
                self.emit(f"  if ({M} > 0 && {B} > 0) {{")
                self.emit(
                    f"    gml::attention_prefill<{ct}, {dq}, {dv}><<<dim3(unsigned(({M} + {per} - 1) / {per}), "
                    f"unsigned({B}), unsigned({chunks})), gml::ATTN_PREFILL_THREADS, 0, stream>>>({M}, {N}, "
                    f"P[{heads}], {qp2}, {qld}, {qb}, {kp}, {kld}, {kb}, {vp}, {vld}, {vb}, {yp2}, {yld}, "
                    f"{yb}, {alpha}, {bias}, {kchunk}, {chunks} > 1 ? {fpart_ptr} : nullptr);"
                )
                self.emit(
                    f"    if ({chunks} > 1) gml::attention_prefill_combine<{ct}, {dv}><<<dim3(unsigned(({M} + 7) / 8), "
                    f"unsigned({B})), gml::ATTN_PREFILL_COMBINE_THREADS, 0, stream>>>({M}, {chunks}, "
                    f"P[{heads}], {fpart_ptr}, {yp2}, {yld}, {yb});"
                )
                self.emit("  }")
            else:
                self.emit(
                    f"  if (int e = ctx->gemm(ctx, stream, {dt}, gml::DType::F32, true, {M}, {N}, {D}, "
                    f"{qp2}, {qld}, {qbs}, {kp}, {kld}, {kbs}, {s_ptr}, {N}, {M} * {N}, {B}, {alpha})) return e;"
                )
                self.softmax_scores(
                    N, f"{B} * {M}", s_ptr, p_ptr, ct, bias, lambda env: dims(env)[2], k
                )
                self.emit(
                    f"  if (int e = ctx->gemm(ctx, stream, {dt}, {dt}, false, {M}, {DV}, {N}, "
                    f"{p_ptr}, {N}, {M} * {N}, {vp}, {vld}, {vbs}, {yp2}, {yld}, {ybs}, {B}, 1.0f)) return e;"
                )
        self.emit("}")
        if not dead and d <= 64 and dv <= 64:
            self.chain_part = chains.Part(phases, 2, first, len(self.body), [(fused, "!=", 0)])

    def softmax_scores(
        self,
        n: str,
        rows: str,
        s: str,
        p: str,
        ct: str,
        bias: str,
        keys: Callable[[Env], int],
        k: SSAValue,
    ) -> None:
        """Attention's softmax over `rows` rows of `n` f32 scores into `p`: a warp a row,
        in registers, up to 1024 keys; a block a row beyond. Only the variant every bucket
        needs where there is one: the static bucket's, or the one for a static number of
        keys (k's rows: a dynamic batch); each is a template instantiation for nvcc."""
        form = self.sym[k][-2]
        static_n = keys(self.static) if self.static is not None else None
        if static_n is None and form.static:
            static_n = form.coef
        variants = [
            (
                f"{n} <= {32 * r}",
                f"gml::softmax_warp_rows<float, {ct}, {r}>"
                f"<<<unsigned(({rows} + gml::GEMV_COLS - 1) / gml::GEMV_COLS), gml::GEMV_THREADS, 0, stream>>>"
                f"({rows}, {n}, {s}, {p}, 1.0f, {bias});",
                32 * r,
            )
            for r in (4, 8, 16, 32)
        ]
        wide = (
            f"gml::softmax_rows<float, {ct}, false><<<unsigned({rows}), {THREADS}, 0, stream>>>"
            f"({n}, {s}, {p}, 1.0f, {bias});"
        )
        if static_n is not None:  # the one that bucket takes
            fits = [launch for _, launch, most in variants if static_n <= most]
            self.emit(f"  {fits[0] if fits else wide}")
            return
        for i, (cond, launch, _) in enumerate(variants):
            self.emit(f"  {'if' if i == 0 else 'else if'} ({cond}) {launch}")
        self.emit(f"  else {wide}")

    # ------------------------------------------------------------ attention operands in place
    def plan_attention_operands(self) -> None:
        """Before lowering: for each gml.sdpa, the slices, reshapes and permutes that only
        build its q/k/v from a wider tensor (a fused qkv projection), and the permute that
        only reorders its output. Where a bucket runs attention through cuBLAS, those copies
        are skipped: the GEMMs read and write the original buffers through strides."""
        for step, op in enumerate(self.fn.body.block.ops, start=1):
            if not isinstance(op, gml.SdpaOp) or op.mask is not None:
                continue
            for v in (op.query, op.key, op.value):
                while self._sole_user(v) in (op, *self.fold_chain_of(op)) and isinstance(
                    v.owner, gml.PermuteOp | gml.ReshapeOp | gml.SliceOp
                ):
                    if isinstance(v.owner, gml.SliceOp) and (v.owner.dyn_start or v.owner.dyn_end):
                        break
                    self.fold_chain[v.owner] = op
                    v = v.owner.operands[0]
            user = self._sole_user(op.result)
            if isinstance(user, gml.PermuteOp):
                self.fold_chain[user] = op
                self.fold_out[op] = user
                self.defined_at[user.result] = step  # the attention may write it

    def fold_chain_of(self, sdpa: gml.SdpaOp) -> list[Operation]:
        return [o for o, s in self.fold_chain.items() if s is sdpa]

    def _layout(
        self, v: SSAValue, sdpa: gml.SdpaOp, env: Env
    ) -> tuple[SSAValue, int, list[int]] | None:
        """(root value, element offset, strides) of `v` over its root's contiguous buffer,
        walking back through the chain of views `sdpa` folds."""
        op = v.owner
        if (
            isinstance(op, Operation)
            and self.fold_chain.get(op) is sdpa
            and op is not self.fold_out.get(sdpa)
        ):
            inner = self._layout(op.operands[0], sdpa, env)
            if inner is None:
                return None
            root, off, st = inner
            if isinstance(op, gml.PermuteOp):
                return root, off, [st[p] for p in op.dims.get_values()]
            if isinstance(op, gml.ReshapeOp):
                new = _view_strides(env.shapes[op.input], st, env.shapes[v])
                return None if new is None else (root, off, new)
            if isinstance(op, gml.SliceOp):
                d = op.dim.value.data % len(st)
                first, _, step = slice(
                    op.start.value.data, op.end.value.data, op.step.value.data
                ).indices(env.shapes[op.input][d])
                st = list(st)
                off += first * st[d]
                st[d] *= step
                return root, off, st
        if v in self.free:
            return None
        return v, 0, _contiguous_strides(env.shapes[v])

    def attention_fold(
        self, sdpa: gml.SdpaOp, env: Env
    ) -> dict[str, tuple[SSAValue, int, int, int, int]] | None:
        """_attention_fold, once per evaluation of the table (its ~40 slots a layer ask)."""
        key = ("attention_fold", sdpa)
        if key not in env.memo:
            env.memo[key] = self._attention_fold(sdpa, env)
        return env.memo[key]

    def _attention_fold(
        self, sdpa: gml.SdpaOp, env: Env
    ) -> dict[str, tuple[SSAValue, int, int, int, int]] | None:
        """Per operand (root, byte offset, leading dim, head stride, outer batch stride)
        where this bucket's attention reads q, k, v and writes its output in place; None:
        copy. cuBLAS walks the batches with one stride (then outer = heads x head stride);
        the flash kernel with two, so that it reads a fused qkv projection in place at any
        batch, not only at batch 1."""
        if (
            not switches.FOLD_ATTENTION
            or self._decode_attention(sdpa, env)
            or not self.fold_chain_of(sdpa)
        ):
            return None
        q, k = env.shapes[sdpa.query], env.shapes[sdpa.key]
        if q[-3] != k[-3]:  # grouped heads: rows (g, t) do not share one stride
            return None
        two = self._flash_prefill(sdpa)
        out: dict[str, tuple[SSAValue, int, int, int, int]] = {}
        for name, v in (("q", sdpa.query), ("k", sdpa.key), ("v", sdpa.value)):
            lay = self._layout(v, sdpa, env)
            if lay is None:
                return None
            root, off, st = lay
            batch = _batch_strides(env.shapes[v][:-2], st[:-2], two)
            if batch is None or st[-1] != 1:
                return None
            out[name] = (root, off * _itemsize(v), st[-2], *batch)
        perm = self.fold_out.get(sdpa)
        y = sdpa.result
        if perm is not None:
            cs = _contiguous_strides(env.shapes[perm.result])
            st = [0] * len(cs)
            for j, p in enumerate(perm.dims.get_values()):
                st[p] = cs[j]
            batch = _batch_strides(env.shapes[y][:-2], st[:-2], two)
            if batch is None or st[-1] != 1:
                return None
            out["y"] = (perm.result, 0, st[-2], *batch)
        else:
            s = env.shapes[y]
            out["y"] = (y, 0, s[-1], s[-1] * s[-2], s[-1] * s[-2] * s[-3])
        return out

    def _operand(self, sdpa: gml.SdpaOp, name: str, i: int, default: int, env: Env) -> int:
        """Where attention finds operand `name`: (byte offset, leading dim, head stride,
        outer batch stride)[i], in place when this bucket folds its views, else slot
        `default`."""
        f = self.attention_fold(sdpa, env)
        if f is None:
            return self.slots[default](env)
        root, off, ld, head, outer = f[name]
        return (env.offsets[root] + off, ld, head, outer)[i]

    def mask_bias(self, op: gml.SdpaOp, causal: str, n: str, tq: str) -> str:
        """A `gml::Masked` reading the mask broadcast over the scores' rows and keys."""
        mask, q = op.mask, op.query
        assert mask is not None
        rank = len(shape_of(q.type)) - 1  # the rows' dims: [batch.., heads, tq]

        def params(env: Env) -> list[int]:
            sq, sk = env.shapes[q], env.shapes[op.key]
            full = (*sq[:-1], sk[-2])  # [batch.., heads, tq, tk]
            st = _strides_in(env.shapes[mask], full)
            return [*index_params(rank, sq[:-1], [st[:-1]]), st[-1]]

        p = self.slots_of(params, 1 + 2 * rank + 1)
        return (
            f"gml::Masked<{_ct(mask)}, {rank}>{{{self.ptr(mask, const=True)}, gml::index_from<{rank}, 1>(P + {p}), "
            f"P[{p + 1 + 2 * rank}], gml::Causal{{{n}, {tq}}}, {causal}}}"
        )


def _last_dim(v: SSAValue, env: Env) -> int:
    return env.shapes[v][-1]


def _matrix_size(v: SSAValue, q: SSAValue, k: SSAValue, grouped: bool, env: Env) -> int:
    groups = env.shapes[q][-3] // env.shapes[k][-3] if grouped else 1
    return _numel(env.shapes[v][-2:]) * groups


def _prod(xs: Sequence[int]) -> int:
    return math.prod(xs)


def _view_strides(old: Shape, stride: Sequence[int], new: Shape) -> list[int] | None:
    """Strides of `new` viewing a tensor of shape `old` with `stride` without a copy, or
    None when it cannot (PyTorch's computeStride)."""
    if _numel(old) == 0:
        return _contiguous_strides(new)
    out = [0] * len(new)
    view_d = len(new) - 1
    base = stride[-1] if stride else 1
    tensor_numel = view_numel = 1
    for d in range(len(old) - 1, -1, -1):
        tensor_numel *= old[d]
        if d == 0 or (old[d - 1] != 1 and stride[d - 1] != tensor_numel * base):
            while view_d >= 0 and (view_numel < tensor_numel or new[view_d] == 1):
                out[view_d] = view_numel * base
                view_numel *= new[view_d]
                view_d -= 1
            if view_numel != tensor_numel:
                return None
            if d > 0:
                base, tensor_numel, view_numel = stride[d - 1], 1, 1
    return out if view_d == -1 else None


def _batch_stride(dims: Sequence[int], strides: Sequence[int]) -> int | None:
    """One stride walking all batch dims in order (size-1 dims skipped), or None."""
    live = [(n, s) for n, s in zip(dims, strides, strict=True) if n != 1]
    for (_, s0), (n1, s1) in zip(live, live[1:], strict=False):
        if s0 != n1 * s1:
            return None
    return live[-1][1] if live else 0


def _batch_strides(
    dims: Sequence[int], strides: Sequence[int], two: bool
) -> tuple[int, int] | None:
    """(head stride, outer stride) walking attention's batch dims [outer.., heads]: one
    stride for all where there is one (outer = heads x it); else, where `two`, the heads'
    own stride and one walking the outer dims; else None."""
    one = _batch_stride(dims, strides)
    if one is not None:
        return one, one * (dims[-1] if dims else 1)
    if not two or not dims:
        return None
    outer = _batch_stride(dims[:-1], strides[:-1])
    return None if outer is None else (strides[-1], outer)


def _slot_product(slots: list[Slot], which: Sequence[int], env: Env) -> int:
    """The product of these slots' values at a bucket."""
    return math.prod(slots[i](env) for i in which)
