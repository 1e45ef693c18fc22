"""Lower a `func.func` (or a `gml.segment`) of gml ops to one readable C++ function.

Every tensor is a `gml::Tensor<T>` (contiguous, shared ownership so reshapes alias);
`index` values are `int64_t`. Elementwise ops and `gml.fusion` groups become one loop
nest each: rows of the broadcast result spread over cores with OpenMP, the last dim an
`omp simd` inner loop whose operands are read at compile-time-known unit or zero
stride. Everything else calls a kernel of the runtime (`include/gimlet/cpu/*.h`). Each op
is preceded by a comment naming it and its `file.py:LINE`, so a user can map any line
of the generated file back to the model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
from xdsl.dialects import arith, func
from xdsl.dialects.builtin import (
    BFloat16Type,
    DenseIntOrFPElementsAttr,
    Float16Type,
    Float32Type,
    Float64Type,
    IndexType,
    IntegerAttr,
    IntegerType,
    Signedness,
    TensorType,
)
from xdsl.ir import Attribute, Block, Operation, SSAValue

from gimlet.dialects import gml
from gimlet.dialects.shapes import DYN, shape_of
from gimlet.errors import UnsupportedOpError, describe_location, module_path
from gimlet.ir import external_operands

ENTRY = "gimlet_main"
RUNTIME_INCLUDE = "gimlet/cpu_runtime.h"  # the runtime header (include/ beside this file)
# kernels of the less common ops, included only by programs that use them
EXTRA_INCLUDE = "gimlet/cpu/pad_pool_reduce.h"


# 16-bit floats: stored as their bits (`gml::bf16`/`gml::f16`), computed in float
HALF = {"gml::bf16": np.dtype(ml_dtypes.bfloat16), "gml::f16": np.dtype(np.float16)}


def ctype(elt: Attribute) -> str | None:
    """The C++ scalar type holding an IR element type, or None when unsupported."""
    if isinstance(elt, Float32Type):
        return "float"
    if isinstance(elt, BFloat16Type):
        return "gml::bf16"
    if isinstance(elt, Float16Type):
        return "gml::f16"
    if isinstance(elt, Float64Type):
        return "double"
    if isinstance(elt, IntegerType):
        width, unsigned = elt.width.data, elt.signedness.data == Signedness.UNSIGNED
        if width == 1:
            return "bool"
        if width in (8, 16, 32, 64):
            return f"{'u' if unsigned else ''}int{width}_t"
    return None


def _elt(v: SSAValue) -> Attribute:
    assert isinstance(v.type, TensorType)
    return v.type.element_type


def _ct(v: SSAValue) -> str:
    t = ctype(_elt(v))
    assert t is not None
    return t


def compute_type(ct: str) -> str:
    """The C++ type values of storage type `ct` are computed in (f16/bf16: float)."""
    return "float" if ct in HALF else ct


def _vt(v: SSAValue) -> str:
    return compute_type(_ct(v))


def where(op: Operation) -> str:
    """`module.path (file.py:LINE)` for comments and error messages."""
    loc = describe_location(op.location)
    path = module_path(op.location)
    parts = [p for p in (path, f"({loc})" if loc else None) if p]
    return " ".join(parts) if parts else "(no location)"


def literal(value: float, ct: str) -> str:
    """A C++ literal of type `ct` for `value` (inf/nan spelled out, floats round-trip)."""
    if ct in HALF:  # its bits, rounded as torch does: through float
        bits = int(np.array([value], np.float32).astype(HALF[ct]).view(np.uint16)[0])
        return f"{ct}{{{bits:#06x}}}"
    if ct == "bool":
        return "true" if value else "false"
    if ct in ("float", "double"):
        if math.isnan(value):
            return f"std::numeric_limits<{ct}>::quiet_NaN()"
        if math.isinf(value):
            sign = "-" if value < 0 else ""
            return f"{sign}std::numeric_limits<{ct}>::infinity()"
        text = repr(float(value))
        return f"{text}f" if ct == "float" else text
    return f"{ct}({int(value)}LL)" if ct != "int64_t" else f"int64_t({int(value)}LL)"


# scalar expressions of the elementwise ops; {0}, {1}, {2} are operands, {T} the type
_UNARY: dict[type[Operation], str] = {
    gml.NegOp: "-{0}",
    gml.ExpOp: "gml::vexp({0})",
    gml.LogOp: "std::log({0})",
    gml.SqrtOp: "std::sqrt({0})",
    gml.RsqrtOp: "{T}(1) / std::sqrt({0})",
    gml.AbsOp: "std::abs({0})",
    gml.TanhOp: "gml::vtanh({0})",
    gml.SigmoidOp: "gml::sigmoid({0})",
    gml.ReluOp: "({0} < {T}(0) ? {T}(0) : {0})",
    gml.SinOp: "std::sin({0})",
    gml.CosOp: "std::cos({0})",
    gml.ErfOp: "gml::verf({0})",
    gml.ReciprocalOp: "{T}(1) / {0}",
    gml.NotOp: "!{0}",
    gml.SiluOp: "{0} / ({T}(1) + gml::vexp(-{0}))",
}
_BINARY: dict[type[Operation], str] = {
    gml.AddOp: "{0} + {1}",
    gml.SubOp: "{0} - {1}",
    gml.MulOp: "{0} * {1}",
    gml.DivOp: "gml::floordiv({0}, {1})",
    gml.PowOp: "gml::ipow({0}, {1})",
    gml.MaximumOp: "gml::maxnan({0}, {1})",
    gml.MinimumOp: "gml::minnan({0}, {1})",
    gml.AndOp: "({0} & {1})",
    gml.OrOp: "({0} | {1})",
    gml.EqOp: "{0} == {1}",
    gml.NeOp: "{0} != {1}",
    gml.LtOp: "{0} < {1}",
    gml.LeOp: "{0} <= {1}",
    gml.GtOp: "{0} > {1}",
    gml.GeOp: "{0} >= {1}",
}
_ARITH: dict[type[Operation], str] = {
    arith.AddiOp: "{0} + {1}",
    arith.SubiOp: "{0} - {1}",
    arith.MuliOp: "{0} * {1}",
    arith.FloorDivSIOp: "gml::floordiv<int64_t>({0}, {1})",
    arith.DivSIOp: "{0} / {1}",
    arith.RemSIOp: "{0} % {1}",
    arith.MaxSIOp: "std::max<int64_t>({0}, {1})",
    arith.MinSIOp: "std::min<int64_t>({0}, {1})",
    arith.CeilDivSIOp: "-gml::floordiv<int64_t>(-{0}, {1})",
}
_REDUCE = {
    gml.SumOp: "Sum",
    gml.MeanOp: "Mean",
    gml.AmaxOp: "Max",
    gml.AminOp: "Min",
    gml.AnyOp: "Any",
}
# ops whose operands and result must be f32 (their kernels are written for float);
# f16/bf16 operands are widened to f32 for them and the result rounded back
_F32_ONLY = (
    gml.MatmulOp,
    gml.SdpaOp,
    gml.ConvOp,
    gml.LayerNormOp,
    gml.BatchNormOp,
    gml.SoftmaxOp,
    gml.LogSoftmaxOp,
    gml.Pool2dOp,
    gml.AdaptiveAvgPool2dOp,
    gml.ErfOp,
    gml.GeluOp,
)
_F32_OK = ("float", *HALF)
_DATA_OPS = (
    gml.ParamOp,
    gml.ConstantOp,
    gml.DimOp,
    gml.FullOp,
    gml.ArangeOp,
    gml.ReshapeOp,
    gml.ExpandOp,
    gml.PermuteOp,
    gml.SliceOp,
    gml.ConcatOp,
    gml.EmbeddingOp,
    gml.GatherOp,
    gml.IndexOp,
    gml.CumsumOp,
    gml.ReduceOp,
    gml.PadOp,
    gml.ArgReduceOp,
    gml.FusionOp,
    *_F32_ONLY,
)


# ops that only name or reshape values: not worth a profiling tick
_UNTIMED: tuple[type[Operation], ...] = (
    gml.ParamOp,
    gml.DimOp,
    gml.ReshapeOp,
    arith.ConstantOp,
    *_ARITH,
)


def _is_elementwise(op: Operation) -> bool:
    return isinstance(op, gml.ELEMENTWISE)


def unsupported(ops: Sequence[Operation]) -> list[str]:
    """One line per op the backend cannot lower: op name, location and why."""
    problems: list[str] = []
    for top in ops:
        for op in top.walk():
            why = _why_unsupported(op)
            if why:
                problems.append(f"{op.name} at {where(op)}: {why}")
    return problems


def _why_unsupported(op: Operation) -> str | None:
    if isinstance(op, gml.YieldOp | func.ReturnOp | arith.ConstantOp) or type(op) in _ARITH:
        return None
    if not (_is_elementwise(op) or isinstance(op, _DATA_OPS)):
        return "no CPU lowering for this op"
    for v in [*op.operands, *op.results]:
        if isinstance(v.type, IndexType):
            continue
        if not isinstance(v.type, TensorType):
            return f"unsupported type {v.type}"
        if ctype(v.type.element_type) is None:
            return f"unsupported element type {v.type.element_type} (the CPU backend supports f32, f16, bf16, f64, integers and i1)"
        if len(shape_of(v.type)) > 8:
            return "rank above 8"
    if isinstance(op, _F32_ONLY):
        for v in op.operands:
            if isinstance(v.type, TensorType) and ctype(v.type.element_type) not in _F32_OK:
                if isinstance(op, gml.SdpaOp) and v is op.mask:
                    continue
                return f"{op.name} is implemented for f32, f16 and bf16 only, got {v.type.element_type}"
    if isinstance(op, gml.ConvOp) and len(shape_of(op.input.type)) != 4:
        return "only 2-d convolution is supported"
    if isinstance(op, gml.IndexOp) and any(_ct(v) not in ("int64_t",) for v in op.indices):
        return "only i64 index tensors are supported (no boolean masks)"
    if (
        isinstance(op, gml.Pool2dOp | gml.AdaptiveAvgPool2dOp)
        and DYN in shape_of(op.results[0].type)[2:]
    ):
        return "pooling with a dynamic output size"
    return None


# C++ keywords and the generated function's own locals, never used for values
_RESERVED = frozenset(
    [
        "and",
        "or",
        "not",
        "xor",
        "bitand",
        "bitor",
        "compl",
        "auto",
        "bool",
        "break",
        "case",
        "catch",
        "char",
        "class",
        "const",
        "continue",
        "default",
        "delete",
        "do",
        "double",
        "else",
        "enum",
        "explicit",
        "extern",
        "false",
        "float",
        "for",
        "friend",
        "goto",
        "if",
        "inline",
        "int",
        "long",
        "namespace",
        "new",
        "operator",
        "private",
        "protected",
        "public",
        "register",
        "return",
        "short",
        "signed",
        "sizeof",
        "static",
        "struct",
        "switch",
        "template",
        "this",
        "throw",
        "true",
        "try",
        "typedef",
        "typename",
        "union",
        "unsigned",
        "using",
        "virtual",
        "void",
        "volatile",
        "while",
        "std",
        "gml",
        "inputs",
        "in_shapes",
        "weights",
        "outputs",
        "out_shapes",
        "err",
        "err_len",
        "ex",
        "dom",
        "inner",
        "rows",
        "r",
        "r0",
        "r1",
        "j",
        "t",
        "prof",
        "prof_names",
        "prof_totals",
    ]
)


def _ident(hint: str | None, used: set[str], prefix: str) -> str:
    base = re.sub(r"[^0-9A-Za-z_]", "_", hint or "") or "t"
    name = f"{prefix}{base}"
    n = 1
    while name in used:
        n += 1
        name = f"{prefix}{base}_{n}"
    used.add(name)
    return name


@dataclass
class _Epilogue:
    """Ops after a matmul/conv that its kernel applies to each output block in place.

    Each folded op's result is the kernel's buffer under another name (`aliases`); a
    reshape between them stays an ordinary (aliasing) reshape."""

    folded: list[Operation] = field(default_factory=list)
    aliases: dict[SSAValue, SSAValue] = field(default_factory=dict)  # result -> its input
    bias: SSAValue | None = None  # matmul: added along the last dim
    batch_norm: gml.BatchNormOp | None = None  # conv: folded into a per-channel affine
    act: str = "None"  # gml::Act


def _sole_user(v: SSAValue) -> Operation | None:
    """The one op reading `v` (a gml.fusion when the reader is one of its members)."""
    uses = list(v.uses)
    if len(uses) != 1:
        return None
    op = uses[0].operation
    parent = op.parent_op()
    return parent if isinstance(parent, gml.FusionOp) else op


def _act(op: Operation) -> str | None:
    if isinstance(op, gml.ReluOp):
        return "Relu"
    if isinstance(op, gml.GeluOp):
        return "GeluTanh" if op.approximate.data == "tanh" else "GeluErf"
    return None


def _f32(v: SSAValue) -> bool:
    return isinstance(v.type, TensorType) and isinstance(v.type.element_type, Float32Type)


def _match_epilogue(
    op: Operation, ready: dict[SSAValue, int], at: int, keep: set[SSAValue]
) -> _Epilogue | None:
    """The bias add / batch norm / activation after matmul or conv `op` (at index `at`)
    that its kernel can apply: each value it overwrites has only the next op of the
    chain as reader and is no program output; operands the epilogue reads exist before
    `op` runs. Order: [batch norm (conv)], [bias add (matmul)], [activation]."""
    v = op.results[0]
    if not _f32(v):
        return None
    shape = shape_of(v.type)
    ep = _Epilogue()

    def sole(cur: SSAValue) -> Operation | None:
        return None if cur in keep else _sole_user(cur)

    def bias_of(m: Operation, cur: SSAValue) -> SSAValue | None:
        if not isinstance(op, gml.MatmulOp) or not isinstance(m, gml.AddOp) or cur is not v:
            return None
        if shape_of(m.results[0].type) != shape or DYN in shape[-1:]:
            return None
        other = m.rhs if m.lhs is cur else m.lhs
        if other is cur or not _f32(other):
            return None
        bshape = shape_of(other.type)
        ok = len(bshape) >= 1 and bshape[-1] == shape[-1] and all(d == 1 for d in bshape[:-1])
        return other if ok and ready.get(other, at + 1) < at else None

    def step(m: Operation, cur: SSAValue) -> tuple[SSAValue | None, str | None]:
        """(bias, act) if `m` continues the chain from `cur`, else (None, None)."""
        if ep.act != "None":
            return None, None
        act = _act(m) if m.operands[0] is cur else None
        return (bias_of(m, cur) if ep.bias is None and act is None else None), act

    cur = v
    user = sole(cur)
    if (
        isinstance(op, gml.ConvOp)
        and isinstance(user, gml.BatchNormOp)
        and user.input is v
        and all(ready.get(x, at + 1) < at for x in user.operands[1:])
    ):
        ep.batch_norm = user
        ep.folded.append(user)
        ep.aliases[user.results[0]] = cur
        cur = user.results[0]
        user = sole(cur)
    while user is not None:
        if isinstance(user, gml.ReshapeOp) and ep.act == "None":
            cur = user.results[0]  # stays a reshape: the epilogue runs before it reads
            user = sole(cur)
            continue
        if isinstance(user, gml.FusionOp):  # all of its members, or none
            members = [m for m in user.body.block.ops if not isinstance(m, gml.YieldOp)]
            term = user.body.block.last_op
            inner, found = cur, []
            for m in members:
                bias, act = step(m, inner)
                if (bias is None and act is None) or len(list(inner.uses)) != 1:
                    break
                found.append((bias, act))
                inner = m.results[0]
            else:
                if isinstance(term, gml.YieldOp) and list(term.values) == [inner]:
                    for bias, act in found:
                        ep.bias, ep.act = bias or ep.bias, act or ep.act
                    ep.folded.append(user)
                    ep.aliases[user.results[0]] = cur
            break
        bias, act = step(user, cur)
        if bias is None and act is None:
            break
        ep.bias, ep.act = bias or ep.bias, act or ep.act
        ep.folded.append(user)
        ep.aliases[user.results[0]] = cur
        cur = user.results[0]
        user = sole(cur)
    return ep if ep.folded else None


@dataclass
class _Emitter:
    lines: list[str] = field(default_factory=list)
    names: dict[SSAValue, str] = field(default_factory=dict)
    used: set[str] = field(default_factory=lambda: set(_RESERVED))
    params: list[str] = field(default_factory=list)
    folded: set[Operation] = field(default_factory=set)
    epilogues: dict[Operation, _Epilogue] = field(default_factory=dict)
    aliases: dict[SSAValue, SSAValue] = field(default_factory=dict)  # same C++ variable
    indent: str = "  "

    def emit(self, text: str) -> None:
        for line in text.split("\n"):
            self.lines.append(self.indent + line if line else "")

    def root(self, v: SSAValue) -> SSAValue:
        """The value whose C++ variable holds `v` (an epilogue wrote `v` in place)."""
        while v in self.aliases:
            v = self.aliases[v]
        return v

    def name(self, v: SSAValue, prefix: str = "") -> str:
        v = self.root(v)
        if v not in self.names:
            self.names[v] = _ident(v.name_hint, self.used, prefix)
        return self.names[v]

    def shape_expr(self, v: SSAValue, dyn: Sequence[SSAValue]) -> str:
        """A `gml::Shape` of `v`'s type with `?` dims taken from index values `dyn`."""
        sizes = iter(dyn)
        dims = [self.name(next(sizes)) if d == DYN else str(d) for d in shape_of(v.type)]
        return "gml::shape({" + ", ".join(dims) + "})"


def _foldable_transpose(op: Operation) -> bool:
    """A permute swapping the last two dims only: matmul reads it as a BLAS transpose."""
    if not isinstance(op, gml.PermuteOp):
        return False
    dims = [int(d) for d in op.dims.get_values()]
    n = len(dims)
    return n >= 2 and dims == [*range(n - 2), n - 1, n - 2]


def generate(
    body: Block, inputs: Sequence[SSAValue], outputs: Sequence[SSAValue], title: str
) -> tuple[str, list[str]]:
    """C++ source for `body`, and the weight names its `gml.param`s read, in ABI order."""
    ops = [op for op in body.ops if not isinstance(op, func.ReturnOp | gml.YieldOp)]
    problems = unsupported(ops)
    if problems:
        raise UnsupportedOpError("the CPU backend cannot compile:\n  " + "\n  ".join(problems))
    e = _Emitter()
    # permutes whose every reader is a matmul are never materialized
    for op in ops:
        if (
            _foldable_transpose(op)
            and op.results[0].uses
            and all(isinstance(u.operation, gml.MatmulOp) for u in op.results[0].uses)
        ):
            e.folded.add(op)
    # bias adds, batch norms and activations done by the matmul/conv kernel before them
    keep_out = set(outputs)
    ready: dict[SSAValue, int] = {v: -1 for v in inputs}
    for i, op in enumerate(ops):
        for r in op.results:
            ready[r] = i
    for i, op in enumerate(ops):
        if isinstance(op, gml.MatmulOp | gml.ConvOp) and op not in e.folded:
            ep = _match_epilogue(op, ready, i, keep_out)
            if ep is not None:
                e.epilogues[op] = ep
                e.folded.update(ep.folded)
                e.aliases.update(ep.aliases)
    # where each value is last read at the top level, to release buffers early
    last_use: dict[SSAValue, int] = {}
    for i, op in enumerate(ops):
        for inner in op.walk():
            for v in inner.operands:
                last_use[e.root(v)] = i
                # a folded transpose is read through its input by the matmul
                if isinstance(v.owner, gml.PermuteOp) and v.owner in e.folded:
                    last_use[v.owner.operands[0]] = i
    keep = {e.root(v) for v in outputs}
    top_level = set(inputs) | {r for op in ops for r in op.results}

    e.emit(f"// {title}")
    e.emit(f"// inputs: {len(inputs)}, outputs: {len(outputs)}")
    for i, v in enumerate(inputs):
        ct = _ct(v)
        dims = ", ".join("-1" if d == DYN else str(d) for d in shape_of(v.type))
        name = e.name(v, "in_")
        rank = len(shape_of(v.type))
        e.emit(
            f"auto {name} = gml::view<{ct}>(inputs[{i}], gml::shape_from(in_shapes[{i}], {rank}));"
        )
        e.emit(f'gml::check_shape({name}.shape, {{{dims}}}, "input {i}");')
    e.emit("gml::ProfileRun prof(prof_totals);  // per-op timing when GIMLET_CPU_PROFILE is set")
    prof_names: list[str] = []
    for i, op in enumerate(ops):
        e.emit("")
        e.emit(f"// {op.name}  {where(op)}")
        _emit_op(e, op)
        dead = [
            v
            for v in {e.root(v) for inner in op.walk() for v in inner.operands}
            if last_use.get(v) == i
            and v not in keep
            and isinstance(v.type, TensorType)
            and v in top_level
            and v in e.names
            and not (isinstance(v.owner, gml.PermuteOp) and v.owner in e.folded)
        ]
        for v in sorted(dead, key=lambda v: e.names[v]):
            e.emit(f"{e.names[v]} = {{}};  // last use")
        if not isinstance(op, _UNTIMED) and op not in e.folded:
            e.emit(f"prof.tick({len(prof_names)});")
            prof_names.append(f"{op.name}  {where(op)}".replace("\\", "/").replace('"', "'"))
    e.emit("")
    e.emit("// results")
    for k, v in enumerate(outputs):
        e.emit(f"gml::emit_output({e.name(v)}, outputs, out_shapes, {k});")

    body_text = "\n".join(e.lines)
    names = ",\n".join(f'    "{n}"' for n in prof_names) or '    ""'
    source = (
        f"// Generated by gimlet's CPU backend: {title}.\n"
        "// Each block is one gml op, commented with its module path and source line.\n"
        f'#include "{RUNTIME_INCLUDE}"\n'
        + (f'#include "{EXTRA_INCLUDE}"\n' if any(_uses_extra(op) for op in ops) else "")
        + "\n"
        "// what each `prof.tick(i)` times (see gml::Profile)\n"
        f"static const char* const prof_names[] = {{\n{names}\n}};\n"
        f"static gml::Profile prof_totals(prof_names, {max(len(prof_names), 1)});\n\n"
        f'extern "C" int {ENTRY}(const void* const* inputs, const int64_t* const* in_shapes,\n'
        "                       const void* const* weights, void** outputs, int64_t* out_shapes,\n"
        "                       char* err, int64_t err_len) {\n"
        "  try {\n"
        f"{_indent(body_text)}\n"
        "  } catch (const std::exception& ex) {\n"
        '    std::snprintf(err, size_t(err_len), "%s", ex.what());\n'
        "    return 1;\n"
        "  }\n"
        "  return 0;\n"
        "}\n"
    )
    return source, e.params


def _uses_extra(op: Operation) -> bool:
    """Whether `op` calls a kernel of EXTRA_INCLUDE."""
    if isinstance(op, gml.PadOp | gml.ArgReduceOp | gml.VarOp):
        return True
    if isinstance(op, gml.MaxPool2dOp):
        return tuple(op.window_dilation()) != (1, 1)
    if isinstance(op, gml.AvgPool2dOp):
        return not op.count_include_pad.value.data or op.divisor_override is not None
    return False


def _indent(text: str) -> str:
    return "\n".join("  " + line if line else "" for line in text.split("\n"))


def _int_prop(attr: IntegerAttr) -> int:
    return int(attr.value.data)


def _ints(attr: object) -> list[int]:
    return [int(v) for v in attr.get_values()]  # type: ignore[attr-defined]


def _emit_op(e: _Emitter, op: Operation) -> None:  # noqa: C901 - one case per op
    if op in e.folded:
        if isinstance(op, gml.PermuteOp):
            e.emit("// folded into the matmul that reads it (a BLAS transpose)")
        else:
            e.emit("// folded into the matmul/conv above: its epilogue applies this in place")
        return
    if _is_elementwise(op) or isinstance(op, gml.FusionOp):
        _emit_elementwise(e, op)
        return
    if isinstance(op, arith.ConstantOp):
        value = op.value
        assert isinstance(value, IntegerAttr)
        e.emit(f"const int64_t {e.name(op.result, 'i_')} = {int(value.value.data)};")
        return
    if type(op) in _ARITH:
        args = [e.name(v) for v in op.operands]
        expr = _ARITH[type(op)].format(*args)
        e.emit(f"const int64_t {e.name(op.results[0], 'i_')} = {expr};")
        return
    ep = e.epilogues.get(op)
    res = op.results[0]
    out = e.name(res, "" if res.name_hint else op.name.split(".")[-1] + "_")
    ct = _ct(res) if isinstance(res.type, TensorType) else "int64_t"
    vt = compute_type(ct)
    rank = len(shape_of(res.type)) if isinstance(res.type, TensorType) else 0
    a = [e.name(v) for v in op.operands]

    def wide(v: SSAValue) -> str:
        """Operand `v` for an f32 kernel: an f16/bf16 tensor is widened for the call."""
        half = isinstance(v.type, TensorType) and _ct(v) in HALF
        return f"gml::widen({e.name(v)})" if half else e.name(v)

    def rnd(expr: str) -> str:
        """An f32 kernel's result, rounded to the f16/bf16 result type."""
        return f"gml::narrow<{ct}>({expr})" if ct in HALF else expr

    w = [wide(v) for v in op.operands]
    if isinstance(op, gml.ParamOp):
        k = len(e.params)
        e.params.append(op.param_name.data)
        e.emit(
            f"auto {out} = gml::view<{ct}>(weights[{k}], {e.shape_expr(res, [])});"
            f'  // "{op.param_name.data}"'
        )
    elif isinstance(op, gml.ConstantOp):
        _emit_constant(e, op, out, ct)
    elif isinstance(op, gml.DimOp):
        e.emit(f"const int64_t {out} = {a[0]}.shape.d[{_int_prop(op.index)}];")
    elif isinstance(op, gml.FullOp):
        fill = literal(op.value.value.data, ct)
        e.emit(f"auto {out} = gml::full<{ct}>({e.shape_expr(res, op.dynamic_sizes())}, {fill});")
    elif isinstance(op, gml.ArangeOp):
        (n,) = shape_of(res.type)
        size = e.name(op.dynamic_sizes()[0]) if n == DYN else str(n)
        start, step = op.start.value.data, op.step.value.data
        e.emit(f"auto {out} = {rnd(f'gml::arange<{vt}>({size}, {start!r}, {step!r})')};")
    elif isinstance(op, gml.ReshapeOp):
        e.emit(f"auto {out} = gml::reshape({a[0]}, {e.shape_expr(res, op.dynamic_sizes())});")
    elif isinstance(op, gml.ExpandOp):
        e.emit(f"auto {out} = gml::expand({a[0]}, {e.shape_expr(res, op.dynamic_sizes())});")
    elif isinstance(op, gml.PermuteOp):
        perm = ", ".join(str(d) for d in _ints(op.dims))
        e.emit(f"auto {out} = gml::permute({a[0]}, {{{perm}}});")
    elif isinstance(op, gml.SliceOp):
        dim = _int_prop(op.dim) % max(rank, 1)
        lo = e.name(op.dyn_start) if op.dyn_start else str(_int_prop(op.start))
        hi = e.name(op.dyn_end) if op.dyn_end else str(_int_prop(op.end))
        e.emit(f"auto {out} = gml::slice({a[0]}, {dim}, {lo}, {hi}, {_int_prop(op.step)});")
    elif isinstance(op, gml.ConcatOp):
        dim = _int_prop(op.dim) % max(rank, 1)
        e.emit(f"auto {out} = gml::concat<{ct}>({{{', '.join(a)}}}, {dim});")
    elif isinstance(op, gml.EmbeddingOp):
        e.emit(f"auto {out} = gml::embedding({a[0]}, {a[1]});")
    elif isinstance(op, gml.GatherOp):
        dim = _int_prop(op.dim) % max(rank, 1)
        e.emit(f"auto {out} = gml::gather({a[0]}, {a[1]}, {dim});")
    elif isinstance(op, gml.IndexOp):
        dims = ", ".join(str(d) for d in _ints(op.dims))
        e.emit(
            f"auto {out} = gml::index<{ct}>({a[0]}, {{{', '.join(a[1:])}}}, {{{dims}}}, {rank});"
        )
    elif isinstance(op, gml.CumsumOp):
        dim = _int_prop(op.dim) % max(rank, 1)
        call = f"gml::cumsum<{_vt(op.input)}, {vt}>({_as_1d(w[0], rank)}, {dim})"
        e.emit(f"auto {out} = {_from_1d(rnd(call), rank)};")
    elif isinstance(op, gml.PadOp):
        low, high = ", ".join(map(str, _ints(op.low))), ", ".join(map(str, _ints(op.high)))
        fill = literal(op.value.value.data, ct)
        e.emit(f"auto {out} = gml::pad<{ct}>({a[0]}, {{{low}}}, {{{high}}}, {fill});")
    elif isinstance(op, gml.ArgReduceOp):
        src_rank = len(shape_of(op.input.type))
        # -1: over the flattened input (no dim, or a 0-d input's only element)
        dim = -1 if op.dim is None or src_rank == 0 else _int_prop(op.dim) % src_rank
        is_max = "true" if isinstance(op, gml.ArgmaxOp) else "false"
        keep = "true" if op.keepdim.value.data else "false"
        e.emit(f"auto {out} = gml::argreduce({w[0]}, {is_max}, {dim}, {keep});")
    elif isinstance(op, gml.VarOp):
        src_rank = len(shape_of(op.input.type))
        dims = ", ".join(str(d % src_rank) for d in _ints(op.dims) if src_rank)
        keep = "true" if op.keepdim.value.data else "false"
        correction = op.correction.value.data
        call = f"gml::var<{_vt(op.input)}, {vt}>({w[0]}, {{{dims}}}, {keep}, {correction!r})"
        e.emit(f"auto {out} = {rnd(call)};")
    elif isinstance(op, gml.ReduceOp):
        src_rank = len(shape_of(op.input.type))
        dims = ", ".join(str(d % max(src_rank, 1)) for d in _ints(op.dims) if src_rank)
        keep = "true" if op.keepdim.value.data else "false"
        kind = _REDUCE[type(op)]
        call = f"gml::reduce<{_vt(op.input)}, {vt}>({w[0]}, gml::Red::{kind}, {{{dims}}}, {keep})"
        e.emit(f"auto {out} = {rnd(call)};")
    elif isinstance(op, gml.MatmulOp):
        operands = []
        for v in (op.lhs, op.rhs):
            owner = v.owner
            if isinstance(owner, Operation) and _foldable_transpose(owner):
                operands += [wide(owner.operands[0]), "true"]
            else:
                operands += [wide(v), "false"]
        operands.append(str(rank))
        if ep:
            bias = f"{e.name(ep.bias)}.data" if ep.bias else "nullptr"
            operands += [bias, f"gml::Act::{ep.act}"]
            e.emit(f"// + epilogue: {_describe(ep)}")
        call = f"gml::matmul({', '.join(operands)})"
        e.emit(f"auto {out} = {rnd(call)};")
    elif isinstance(op, gml.SoftmaxOp | gml.LogSoftmaxOp):
        dim = _int_prop(op.dim) % max(rank, 1)
        log = "true" if isinstance(op, gml.LogSoftmaxOp) else "false"
        call = f"gml::softmax({_as_1d(w[0], rank)}, {dim}, {log})"
        e.emit(f"auto {out} = {_from_1d(rnd(call), rank)};")
    elif isinstance(op, gml.LayerNormOp):
        lw = f"{wide(op.weight)}.data" if op.weight else "nullptr"
        lb = f"{wide(op.bias)}.data" if op.bias else "nullptr"
        call = (
            f"gml::layer_norm<float>({w[0]}, {lw}, {lb}, {_int_prop(op.ndim)}, "
            f"{op.eps.value.data!r})"
        )
        e.emit(f"auto {out} = {rnd(call)};")
    elif isinstance(op, gml.BatchNormOp):
        stats = ", ".join(f"{x}.data" for x in w[1:])
        call = f"gml::batch_norm<float>({w[0]}, {stats}, {op.eps.value.data!r})"
        e.emit(f"auto {out} = {rnd(call)};")
    elif isinstance(op, gml.SdpaOp):
        causal = "true" if op.is_causal.value.data else "false"
        scale = repr(op.scale.value.data) if op.scale is not None else 'std::nan("")'
        if op.mask is None:
            mask, mt = "nullptr", "float"
        elif _ct(op.mask) in HALF:
            mask, mt = f"gml::addr({wide(op.mask)})", "float"
        else:
            mask, mt = f"&{e.name(op.mask)}", _ct(op.mask)
        qkv = ", ".join(w[:3])
        e.emit(f"auto {out} = {rnd(f'gml::sdpa<{mt}>({qkv}, {mask}, {causal}, {scale})')};")
    elif isinstance(op, gml.ConvOp):
        stride, pad, dil = _ints(op.stride), _ints(op.padding), _ints(op.dilation)
        bias = f"{wide(op.bias)}.data" if op.bias else "nullptr"
        mul, add, act = "nullptr", bias, ep.act if ep else "None"
        if ep:
            e.emit(f"// + epilogue: {_describe(ep)}")
        if ep and ep.batch_norm:
            bn = ep.batch_norm
            affine = f"{out}_bn"
            stats = ", ".join(f"{e.name(x)}.data" for x in bn.operands[1:])
            channels = f"{a[1]}.shape.d[0]"
            e.emit(
                f"const auto {affine} = gml::fold_batch_norm({bias}, {stats}, "
                f"{bn.eps.value.data!r}, {channels});"
            )
            mul, add = f"{affine}.mul.data()", f"{affine}.add.data()"
        call = (
            f"gml::conv2d({w[0]}, {w[1]}, {mul}, {add}, gml::Act::{act}, "
            f"{stride[0]}, {stride[1]}, {pad[0]}, {pad[1]}, {dil[0]}, {dil[1]}, "
            f"{_int_prop(op.groups)})"
        )
        e.emit(f"auto {out} = {rnd(call)};")
    elif isinstance(op, gml.Pool2dOp):
        kn, st, pd = _ints(op.kernel), _ints(op.stride), _ints(op.padding)
        oh, ow = shape_of(res.type)[2:]
        is_max = "true" if isinstance(op, gml.MaxPool2dOp) else "false"
        dil = list(op.window_dilation())
        include, divisor = True, 0
        if isinstance(op, gml.AvgPool2dOp):
            include = bool(op.count_include_pad.value.data)
            divisor = op.divisor_override.value.data if op.divisor_override is not None else 0
        if dil == [1, 1] and include and not divisor:
            call = (
                f"gml::pool2d<{vt}>({w[0]}, {is_max}, {kn[0]}, {kn[1]}, {st[0]}, {st[1]}, "
                f"{pd[0]}, {pd[1]}, {oh}, {ow})"
            )
        else:  # dilated windows or another divisor: the general kernel
            call = (
                f"gml::pool2d_general<{vt}>({w[0]}, {is_max}, {kn[0]}, {kn[1]}, {st[0]}, "
                f"{st[1]}, {pd[0]}, {pd[1]}, {dil[0]}, {dil[1]}, "
                f"{'true' if include else 'false'}, {divisor}, {oh}, {ow})"
            )
        e.emit(f"auto {out} = {rnd(call)};")
    elif isinstance(op, gml.AdaptiveAvgPool2dOp):
        oh, ow = shape_of(res.type)[2:]
        e.emit(f"auto {out} = {rnd(f'gml::adaptive_avg_pool2d<{vt}>({w[0]}, {oh}, {ow})')};")
    else:  # pragma: no cover - `unsupported` rejects everything else first
        raise UnsupportedOpError(f"{op.name} at {where(op)}: no CPU lowering")


def _as_1d(x: str, rank: int) -> str:
    """A 0-d operand as one element of rank 1, for kernels that take a dim."""
    return f"gml::reshape({x}, gml::shape({{1}}))" if rank == 0 else x


def _from_1d(x: str, rank: int) -> str:
    return f"gml::reshape({x}, gml::shape({{}}))" if rank == 0 else x


def _describe(ep: _Epilogue) -> str:
    return ", ".join(f"{m.name} {where(m)}" for m in ep.folded)


def _emit_constant(e: _Emitter, op: gml.ConstantOp, out: str, ct: str) -> None:
    value = op.value
    assert isinstance(value, DenseIntOrFPElementsAttr)
    values = [float(x) for x in value.get_values()]
    shape = e.shape_expr(op.result, [])
    if len(values) == 1:
        e.emit(f"auto {out} = gml::full<{ct}>({shape}, {literal(values[0], ct)});")
        return
    data = ", ".join(literal(x, ct) for x in values)
    arr = f"{out}_data"
    e.emit(f"static const {ct} {arr}[] = {{{data}}};")
    e.emit(f"auto {out} = gml::view<{ct}>({arr}, {shape});")


# ---------------------------------------------------------------- elementwise loops


def _static_broadcast(shapes: Sequence[Sequence[int]]) -> list[int]:
    rank = max((len(s) for s in shapes), default=0)
    out: list[int] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        fixed = [d for d in dims if d not in (1, DYN)]
        out.append(fixed[0] if fixed else DYN if DYN in dims else 1)
    return out


def _scalar_expr(op: Operation, args: list[str], ct: str) -> str:
    if isinstance(op, gml.GeluOp):
        x = args[0]
        if op.approximate.data == "tanh":
            return f"gml::gelu_tanh({x})"
        return f"gml::gelu_erf({x})"
    if isinstance(op, gml.ClampOp):
        x = args[0]
        if op.min is not None:
            x = f"gml::maxnan<{ct}>({x}, {literal(op.min.value.data, ct)})"
        if op.max is not None:
            x = f"gml::minnan<{ct}>({x}, {literal(op.max.value.data, ct)})"
        return x
    if isinstance(op, gml.WhereOp):
        return f"({args[0]} ? {args[1]} : {args[2]})"
    if isinstance(op, gml.CastOp):  # to f16/bf16: to float here, rounded by the caller
        return f"static_cast<{_vt(op.results[0])}>({args[0]})"
    if isinstance(op, gml.DivOp) and ct in ("float", "double"):
        return f"{args[0]} / {args[1]}"
    if isinstance(op, gml.PowOp) and ct in ("float", "double"):
        return f"std::pow({args[0]}, {args[1]})"
    if isinstance(op, gml.AndOp | gml.OrOp) and ct == "bool":
        sym = "&&" if isinstance(op, gml.AndOp) else "||"
        return f"({args[0]} {sym} {args[1]})"
    template = _UNARY.get(type(op)) or _BINARY.get(type(op))
    if template is None:
        raise UnsupportedOpError(f"{op.name} at {where(op)}: no scalar lowering")
    return template.format(*args, T=ct)


def _emit_elementwise(e: _Emitter, op: Operation) -> None:
    """One loop nest for an elementwise op or a whole gml.fusion group."""
    if isinstance(op, gml.FusionOp):
        members = [m for m in op.body.block.ops if not isinstance(m, gml.YieldOp)]
        term = op.body.block.last_op
        assert isinstance(term, gml.YieldOp)
        yielded = list[SSAValue](term.values)
        results = list[SSAValue](op.outputs)
        e.emit("// fuses: " + ", ".join(f"{m.name} {where(m)}" for m in members))
    else:
        members = [op]
        yielded = list[SSAValue](op.results)
        results = list[SSAValue](op.results)
    externals = external_operands(members)
    static = _static_broadcast([shape_of(r.type) for m in members for r in m.results])
    rank = len(static)
    tag = e.name(results[0])
    # run-time shapes of every member result, and the loop domain
    sh: dict[SSAValue, str] = {v: f"{e.name(v)}.shape" for v in externals}
    lines: list[str] = ["{"]
    for m in members:
        r = m.results[0]
        s = f"sh_{e.name(r)}"
        rr = len(shape_of(r.type))
        lines.append(
            f"  const gml::Shape {s} = gml::broadcast({rr}, {{{', '.join(sh[v] for v in m.operands)}}});"
        )
        sh[r] = s
    dom_parts = ", ".join(sh[m.results[0]] for m in members)
    lines.append(f"  const gml::Shape dom = gml::broadcast({rank}, {{{dom_parts}}});")
    for i, v in enumerate(externals):
        lines.append(f"  int64_t st{i}[gml::MAXR];")
        lines.append(f"  gml::bstrides({sh[v]}, dom, st{i});")
    for k, (y, r) in enumerate(zip(yielded, results, strict=True)):
        lines.append(f"  {e.name(r)} = gml::empty<{_ct(r)}>({sh[y]});")
        lines.append(f"  int64_t so{k}[gml::MAXR];")
        lines.append(f"  gml::bstrides({sh[y]}, dom, so{k});")

    def inner_bcast(v: SSAValue) -> bool:
        s = shape_of(v.type)
        return rank > 0 and static[-1] != 1 and (len(s) == 0 or s[-1] == 1)

    for v in externals:
        if not inner_bcast(v):
            lines.append(f'  gml::check_inner({sh[v]}, dom, "{tag}");')
    lines.append("  const int64_t inner = dom.inner(), rows = inner ? dom.numel() / inner : 0;")
    lines.append("  gml::parallel_for(rows, inner, [&](int64_t r0, int64_t r1) {")
    lines.append("  for (int64_t r = r0; r < r1; ++r) {")
    for i, v in enumerate(externals):
        lines.append(
            f"    const {_ct(v)}* __restrict__ p{i} = {e.name(v)}.data + gml::row_offset(r, dom, st{i});"
        )
    guarded: list[bool] = []
    for k, (y, r) in enumerate(zip(yielded, results, strict=True)):
        lines.append(
            f"    {_ct(r)}* __restrict__ q{k} = {e.name(r)}.data + gml::row_offset(r, dom, so{k});"
        )
        # a result smaller than the domain is written by the first row/column only
        full = list(shape_of(y.type)) == static
        guarded.append(not full)
        if not full:
            lines.append(f"    const bool w{k} = gml::row_first(r, dom, so{k});")
    lines.append("#pragma omp simd")
    lines.append("    for (int64_t j = 0; j < inner; ++j) {")
    val: dict[SSAValue, str] = {}
    # f16/bf16 values are loaded as float, and each member's result is rounded to its
    # type, so the loop computes what the ops would one by one (and torch, per op)
    for i, v in enumerate(externals):
        load = f"p{i}[0]" if inner_bcast(v) else f"p{i}[j]"
        val[v] = f"gml::f32({load})" if _ct(v) in HALF else load
    for m in members:
        r = m.results[0]
        ct = _vt(m.operands[0]) if m.operands else _vt(r)
        if isinstance(m, gml.WhereOp):
            ct = _vt(m.lhs)
        expr = _scalar_expr(m, [val[v] for v in m.operands], ct)
        if _ct(r) in HALF:
            expr = f"gml::rounded<{_ct(r)}>({expr})"
        name = f"s_{e.name(r)}"
        lines.append(f"      const {_vt(r)} {name} = {expr};  // {m.name}")
        val[r] = name
    for k, (y, _r) in enumerate(zip(yielded, results, strict=True)):
        at = "q{k}[0]" if inner_bcast(y) else "q{k}[j]"
        value = f"gml::to_half<{_ct(y)}>({val[y]})" if _ct(y) in HALF else val[y]
        store = f"{at.format(k=k)} = {value};"
        if guarded[k]:
            cond = f"w{k} && (so{k}[dom.rank - 1] != 0 || j == 0)" if rank else f"w{k}"
            store = f"if ({cond}) {store}"
        lines.append(f"      {store}")
    lines.append("    }")
    lines.append("  }")
    lines.append("  });")
    lines.append("}")
    for r in results:
        e.emit(f"gml::Tensor<{_ct(r)}> {e.name(r)};")
    e.emit("\n".join(lines))
