"""GPU lowering of elementwise ops and gml.fusion groups (one generated kernel each),
data movement (reshape, permute, expand, slice, concat, fills, embedding, indexing,
cumsum) and the row-wise norms (softmax, layer norm); reductions, gather and padding are
tensor_ops.py's. Split from codegen.py for size; it builds on lower_attention.py, which
says where attention reads a view in place (so the copy is skipped) or a KV concat's
pieces (so the concat is not built)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from xdsl.ir import Operation, SSAValue

from gimlet.backends.cpu.codegen import _scalar_expr, ctype
from gimlet.dialects import gml
from gimlet.dialects.shapes import DYN, shape_of
from gimlet.ir import external_operands

from . import switches, vectorize
from .lower_attention import AttentionLowering
from .lower_base import (
    _DTYPE,
    HALF,
    THREADS,
    Env,
    _broadcast,
    _contiguous_strides,
    _ct,
    _itemsize,
    _numel,
    _strides_in,
    _vt,
    index_params,
)


class TensorLowering(AttentionLowering):
    """Elementwise kernels, data movement and norms."""

    # ------------------------------------------------------------ elementwise
    def _group(self, op: Operation) -> tuple[list[Operation], list[SSAValue], list[SSAValue]]:
        """(members, yielded values, results) of an elementwise op or gml.fusion."""
        if isinstance(op, gml.FusionOp):
            members = [m for m in op.body.block.ops if not isinstance(m, gml.YieldOp)]
            term = op.body.block.last_op
            assert isinstance(term, gml.YieldOp)
            return members, list(term.values), list(op.results)
        return [op], list(op.results), list(op.results)

    def _body(
        self, members: Sequence[Operation], val: dict[SSAValue, str], indent: str, prefix: str = "s"
    ) -> list[str]:
        """Scalar code for the members, given their external operands' values."""
        lines = []
        for j, m in enumerate(members):
            r = m.results[0]
            ct = _vt(m.operands[0]) if m.operands else _vt(r)
            if isinstance(m, gml.WhereOp):
                ct = _vt(m.lhs)
            expr = _scalar_expr(m, [val[v] for v in m.operands], ct)
            if _ct(r) in HALF:  # each member rounds its result, as the ops one by one would
                expr = f"gml::rounded<{_ct(r)}>({expr})"
            lines.append(f"{indent}const {_vt(r)} {prefix}{j} = {expr};  // {m.name}")
            val[r] = f"{prefix}{j}"
        return lines

    def elementwise(self, op: Operation) -> None:
        members, yielded, results = self._group(op)
        for v in [v for m in members for v in (*m.operands, *m.results)]:
            if ctype(v.type.element_type) is None:  # type: ignore[attr-defined]
                raise self.refuse(op, f"unsupported element type {v.type}")
        externals = external_operands(members)
        member_results = [m.results[0] for m in members]
        rank = max((len(shape_of(r.type)) for r in member_results), default=0)
        k = len(externals) + len(results)

        def params(env: Env) -> list[int]:
            dom = _broadcast([env.shapes[r] for r in member_results])
            st = [_strides_in(env.shapes[v], dom) for v in [*externals, *yielded]]
            return index_params(rank, dom, st)

        ix = self.slots_of(params, 1 + rank * (1 + k))
        n = self.slot(lambda env: _numel(_broadcast([env.shapes[r] for r in member_results])))
        # a result smaller than the domain is stored once per element; one that is the
        # domain at every bucket (dynamic dims proven equal: symdims.py) needs no check
        dom = tuple(self.sym.broadcast([self.sym[r] for r in member_results]))
        once = [self.sym[y] != dom for y in yielded]
        # V elements a thread where the bucket's shapes allow it (vectorize.py): a slot
        # holding V or 1, none where no bucket (the one static bucket) would take it
        wide = vectorize.width(_itemsize(x) for x in [*externals, *results])
        width = partial(_vector_width, params, rank, len(externals), len(results), wide)
        vec = rank > 0 and not any(once) and not self.never(lambda env: width(env) > 1)
        per_thread = self.slot(width) if vec else None
        args = [f"const {_ct(v)}* __restrict__ p{i}" for i, v in enumerate(externals)]
        args += [f"{_ct(r)}* __restrict__ q{i}" for i, r in enumerate(results)]
        head = f"int64_t n, {'int64_t width, ' if vec else ''}gml::Index<{rank}, {k}> ix"
        lines = [f"__global__ void KERNEL({head}, {', '.join(args)}) {{"]
        if vec:
            elem = {x: f"x{i}[e]" for i, x in enumerate(externals)}
            body = self._body(members, elem, "        ")
            lines += vectorize.loop(
                wide, rank, [_vt(x) for x in externals], [_vt(y) for y in yielded], body,
                [elem[y] for y in yielded],
            )  # fmt: skip
        lines += [
            "  GML_FOR(i, n) {",
            f"    int64_t off[{max(k, 1)}];",
            "    gml::offsets(ix, i, off);",
        ]
        val: dict[SSAValue, str] = {}
        for i, v in enumerate(externals):
            val[v] = f"x{i}"
            lines.append(f"    const {_vt(v)} x{i} = gml::load(p{i} + off[{i}]);")
        lines += self._body(members, val, "    ")
        for i, y in enumerate(yielded):
            store = f"gml::store(q{i} + off[{len(externals) + i}], {val[y]});"
            if once[i]:
                store = f"if (gml::first_along_broadcast(ix, i, {len(externals) + i})) {store}"
            lines.append(f"    {store}")
        lines += ["  }", "}"]
        name = self.kernel("\n".join(lines))
        self.comment(members)
        ptrs = [self.ptr(v, const=True) for v in externals] + [self.ptr(r) for r in results]
        index = f"gml::index_from<{rank}, {k}>(P + {ix})"
        if per_thread is None:
            self.launch(name, n, f"P[{n}], {index}, {', '.join(ptrs)}")
            return
        each = f"P[{per_thread}]"
        self.launch(name, n, f"P[{n}], {each}, {index}, {', '.join(ptrs)}", per_thread=each)

    # ------------------------------------------------------------ data movement
    def reshape(self, op: gml.ReshapeOp) -> None:
        self.views.append((op.result, op.input, lambda env: 0))  # every arena value is contiguous

    def copy(
        self,
        op: Operation,
        src: SSAValue,
        out: SSAValue,
        params: Callable[[Env], list[int]],
        rank: int,
        base: int | None = None,
        need: int | None = None,
    ) -> None:
        """out (contiguous) = src read through the strides params(env) gives (an Index
        over out's shape: [src strides, out strides]); skipped where `need` is 0."""
        ix = self.slots_of(params, 1 + rank * 3)
        n = self.slot(lambda env: _numel(env.shapes[out]))
        src_ptr = self.ptr(src, const=True) + (f" + P[{base}]" if base is not None else "")
        self.comment([op])
        sdpa = self.fold_chain.get(op)
        if sdpa is not None:  # attention may read (or write) through strides instead
            own = self.slots[need] if need is not None else (lambda env: 1)
            need = self.slot(lambda env: 0 if self.attention_fold(sdpa, env) else own(env))
        cond = f"if (P[{need}]) " if need is not None else ""
        self.emit(
            f"{cond}gml::copy_strided<{_ct(out)}, {rank}><<<gml::blocks_for(P[{n}], {THREADS}), {THREADS}, 0, stream>>>"
            f"(P[{n}], gml::index_from<{rank}, 2>(P + {ix}), {src_ptr}, {self.ptr(out)});"
        )

    def permute(self, op: gml.PermuteOp) -> None:
        perm = list(op.dims.get_values())
        x, y = op.input, op.result

        def params(env: Env) -> list[int]:
            src = _contiguous_strides(env.shapes[x])
            out = env.shapes[y]
            return index_params(len(perm), out, [[src[p] for p in perm], _contiguous_strides(out)])

        def same_bytes(env: Env) -> int | None:  # only size-1 dims move: a view
            moved = [p for p in perm if env.shapes[x][p] != 1]
            return 0 if moved == sorted(moved) else None

        self.copy(op, x, y, params, len(perm), need=self.view(y, x, same_bytes))

    def expand(self, op: gml.ExpandOp) -> None:
        x, y = op.input, op.result
        rank = len(shape_of(y.type))

        def params(env: Env) -> list[int]:
            out = env.shapes[y]
            return index_params(
                rank, out, [_strides_in(env.shapes[x], out), _contiguous_strides(out)]
            )

        def same_bytes(env: Env) -> int | None:
            return 0 if _numel(env.shapes[x]) == _numel(env.shapes[y]) else None

        self.copy(op, x, y, params, rank, need=self.view(y, x, same_bytes))

    def slice(self, op: gml.SliceOp) -> None:
        x, y = op.input, op.result
        rank = len(shape_of(x.type))
        d = op.dim.value.data % rank

        def bounds(env: Env) -> tuple[int, int]:
            start = env.ints[op.dyn_start] if op.dyn_start else op.start.value.data
            end = env.ints[op.dyn_end] if op.dyn_end else op.end.value.data
            first, _, step = slice(start, end, op.step.value.data).indices(env.shapes[x][d])
            return first, step

        def base(env: Env) -> int:
            return bounds(env)[0] * _contiguous_strides(env.shapes[x])[d]

        def params(env: Env) -> list[int]:
            st = _contiguous_strides(env.shapes[x])
            st[d] *= bounds(env)[1]
            out = env.shapes[y]
            return index_params(rank, out, [st, _contiguous_strides(out)])

        def contiguous(env: Env) -> int | None:  # a block of whole rows: a view
            s = env.shapes[x]
            one_block = _numel(s[:d]) == 1 or _numel(s[d + 1 :]) == 0
            return (
                base(env) if one_block and (bounds(env)[1] == 1 or env.shapes[y][d] <= 1) else None
            )

        self.copy(op, x, y, params, rank, self.slot(base), need=self.view(y, x, contiguous))

    def concat(self, op: gml.ConcatOp) -> None:
        """One launch for all inputs: each output element finds its input."""
        y = op.result
        rank = len(shape_of(y.type))
        d = op.dim.value.data % rank
        xs = list(op.inputs)
        if len(xs) > 8:
            raise self.refuse(op, "concatenating more than 8 tensors")

        def params(env: Env) -> list[int]:
            s = env.shapes[y]
            outer, inner = _numel(s[:d]), _numel(s[d + 1 :])
            sizes = [env.shapes[x][d] for x in xs]
            return [outer, s[d], inner, *sizes]

        p = self.slots_of(params, 3 + len(xs))
        n = self.slot(lambda env: _numel(env.shapes[y]))
        user = self._sole_user(y)
        if (
            isinstance(user, gml.SdpaOp)
            and y in (user.key, user.value)
            and self._kv_pieces(user, y) != [y]
        ):
            # the decode attention kernel reads the pieces in place: no copy there
            n = self.slot(partial(self._concat_size, user, y))
        ptrs = ", ".join(self.ptr(x, const=True) for x in xs)
        sizes = ", ".join(f"P[{p + 3 + i}]" for i in range(len(xs)))
        self.comment([op])
        self.launch(
            f"gml::concat_mid<{_ct(y)}, {len(xs)}>",
            n,
            f"P[{p}], P[{p + 1}], P[{p + 2}], gml::Pieces<{_ct(y)}, {len(xs)}>{{{{{ptrs}}}, {{{sizes}}}}}, {self.ptr(y)}",
        )

    def _concat_size(self, sdpa: gml.SdpaOp, y: SSAValue, env: Env) -> int:
        """A concat's element count, 0 where the decode attention reads its pieces."""
        return 0 if self._decode_attention(sdpa, env) else _numel(env.shapes[y])

    def full(self, op: gml.FullOp) -> None:
        self._fill(op, op.value.value.data, 0.0)

    def arange(self, op: gml.ArangeOp) -> None:
        self._fill(op, op.start.value.data, op.step.value.data)

    def _fill(self, op: Operation, start: float, step: float) -> None:
        y = op.results[0]
        n = self.slot(lambda env: _numel(env.shapes[y]))
        self.comment([op])
        self.launch(
            f"gml::arange<{_ct(y)}>", n, f"P[{n}], {float(start)!r}, {float(step)!r}, {self.ptr(y)}"
        )

    def embedding(self, op: gml.EmbeddingOp) -> None:
        w, idx, y = op.weight, op.indices, op.result
        p = self.slots_of(
            lambda env: [_numel(env.shapes[idx]), env.shapes[w][1], env.shapes[w][0]], 3
        )
        total = self.slot(lambda env: _numel(env.shapes[y]))
        self.comment([op])
        self.launch(
            f"gml::embedding<{_ct(y)}, {_ct(idx)}>",
            total,
            f"P[{p}], P[{p + 1}], P[{p + 2}], {self.ptr(w, const=True)}, {self.ptr(idx, const=True)}, {self.ptr(y)}",
            per_thread=f"gml::vec_width<{_ct(y)}>(P[{p + 1}])",  # 16 bytes where rows allow
        )

    def index(self, op: gml.IndexOp) -> None:
        x, y = op.input, op.result
        dims = list(op.dims.get_values())
        idx = list(op.indices)
        if any(_ct(i) == "bool" for i in idx) or dims != list(range(dims[0], dims[0] + len(dims))):
            raise self.refuse(op, "indexing with a boolean mask or on non-adjacent dims")
        it = _ct(idx[0])
        if any(_ct(i) != it for i in idx):
            raise self.refuse(op, "index tensors of different integer types")
        k, d0, d1 = len(idx), dims[0], dims[-1] + 1
        rank = max(len(shape_of(i.type)) for i in idx)

        def params(env: Env) -> list[int]:
            s, dom = env.shapes[x], _broadcast([env.shapes[i] for i in idx])
            xs = _contiguous_strides(s)
            return [
                _numel(env.shapes[y]), _numel(dom), _numel(s[d1:]), _numel(s[d0:]),
                *index_params(rank, dom, [_strides_in(env.shapes[i], dom) for i in idx]),
                *(s[d] for d in dims), *(xs[d] for d in dims),
            ]  # fmt: skip

        p = self.slots_of(params, 4 + 1 + rank * (1 + k) + 2 * k)
        ts = p + 5 + rank * (1 + k)
        ptrs = ", ".join(self.ptr(i, const=True) for i in idx)
        self.comment([op])
        rows = ", ".join(f"P[{ts + j}]" for j in range(k))
        strides = ", ".join(f"P[{ts + k + j}]" for j in range(k))
        self.launch(
            f"gml::gather_nd<{_ct(y)}, {it}, {rank}, {k}>",
            p,
            f"P[{p}], P[{p + 1}], P[{p + 2}], P[{p + 3}], gml::index_from<{rank}, {k}>(P + {p + 4}), "
            f"gml::IndexTensors<{it}, {k}>{{{{{ptrs}}}, {{{rows}}}, {{{strides}}}}}, {self.ptr(x, const=True)}, {self.ptr(y)}",
        )

    def cumsum(self, op: gml.CumsumOp) -> None:
        x, y = op.input, op.result
        rank = len(shape_of(x.type))
        d = op.dim.value.data % max(rank, 1)

        def split(env: Env) -> list[int]:
            s = env.shapes[x] or (1,)
            return [_numel(s[:d]), s[d], _numel(s[d + 1 :])]

        p = self.slots_of(split, 3)
        outer = self.slot(lambda env: split(env)[0] * split(env)[2])
        self.comment([op])
        self.launch(
            f"gml::cumsum_mid<{_ct(x)}, {_ct(y)}>",
            outer,
            f"P[{p}], P[{p + 1}], P[{p + 2}], {self.ptr(x, const=True)}, {self.ptr(y)}",
        )

    # ------------------------------------------------------------ norms (reductions: tensor_ops.py)
    def softmax(self, op: gml.SoftmaxOp | gml.LogSoftmaxOp) -> None:
        x, y = op.input, op.result
        rank = len(shape_of(x.type))
        if rank == 0 or op.dim.value.data % rank != rank - 1:
            raise self.refuse(op, "softmax over a dim other than the last")
        p = self.slots_of(lambda env: [env.shapes[x][-1], _numel(env.shapes[x][:-1])], 2)
        log = "true" if isinstance(op, gml.LogSoftmaxOp) else "false"
        self.comment([op])
        self.emit(
            f"gml::softmax_rows<{_ct(x)}, {_ct(y)}, {log}><<<unsigned(P[{p + 1}]), {THREADS}, 0, stream>>>"
            f"(P[{p}], {self.ptr(x, const=True)}, {self.ptr(y)}, 1.0f, gml::NoBias{{}});"
        )

    def layer_norm(self, op: gml.LayerNormOp) -> None:
        x, y = op.input, op.result
        nd = op.ndim.value.data

        def split(env: Env) -> list[int]:
            s = env.shapes[x]
            return [_numel(s[len(s) - nd :]), _numel(s[: len(s) - nd])]

        p = self.slots_of(split, 2)
        n, rows = f"P[{p}]", f"P[{p + 1}]"
        w = self.ptr(op.weight, const=True) if op.weight else "nullptr"
        b = self.ptr(op.bias, const=True) if op.bias else "nullptr"
        args = f"{self.ptr(x, const=True)}, {w}, {b}, {self.ptr(y)}, {op.eps.value.data!r}f"
        self.comment([op])
        mm = self._normalized_by(op)
        # where the GEMV normalizes its rows itself (decode: up to 4 rows; nd is 1 there, so
        # they are its rows), this kernel is not needed; no launch for no rows either
        cond = f"if ({rows} > {4 if mm else 0})"
        # a row in registers (one read of x) up to LN_ROWS[-1] elements of a static width,
        # the smallest variant that holds it (each is a template instantiation for nvcc)
        ct = _ct(x)
        width = shape_of(x.type)[len(shape_of(x.type)) - nd :]
        row = next(
            (
                r
                for r in switches.LN_ROWS
                if ct in _DTYPE and DYN not in width and _numel(width) <= r
            ),
            None,
        )
        if row is None:
            self.emit(
                f"{cond} gml::layer_norm_rows<{ct}><<<unsigned({rows}), {THREADS}, 0, stream>>>"
                f"({n}, {args});"
            )
            return
        self.emit(
            f"{cond} gml::layer_norm_reg<{ct}, {row}><<<gml::layer_norm_blocks<{row}>({rows}), "
            f"gml::LN_THREADS, 0, stream>>>({rows}, {n}, {args});"
        )

    def _normalized_by(self, ln: gml.LayerNormOp) -> gml.MatmulOp | None:
        """The x @ W that may normalize its rows itself (its GEMV), when `ln` (over the last
        dim, weights known at load) feeds only it, possibly through a reshape."""
        if ln.ndim.value.data != 1 or any(
            v is not None and v not in self.free for v in (ln.weight, ln.bias)
        ):
            return None
        user = self._sole_user(ln.result)
        if isinstance(user, gml.ReshapeOp):
            user = self._sole_user(user.result)
        if not isinstance(user, gml.MatmulOp) or user.rhs not in self.free:
            return None
        a = user.lhs
        if a is not ln.result and not (
            isinstance(a.owner, gml.ReshapeOp) and a.owner.input is ln.result
        ):
            return None
        k = shape_of(ln.input.type)[-1]
        if (
            k < 0
            or shape_of(a.type)[-1] != k
            or len(shape_of(user.rhs.type)) != 2
            or _ct(a) not in _DTYPE
        ):
            return None
        # every warp re-reads the row to normalize it: worth it while that is small next
        # to the weight (not for a vocabulary-sized head)
        return user if shape_of(user.rhs.type)[1] <= 16384 else None


def _vector_width(
    params: Callable[[Env], list[int]], rank: int, operands: int, results: int, v: int, env: Env
) -> int:
    """An elementwise kernel's elements a thread at a bucket (vectorize.per_thread)."""
    return vectorize.per_thread(params(env), rank, operands, results, v)
