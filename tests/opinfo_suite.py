"""Differential op coverage from torch's own OpInfo database.

For every OpInfo that exercises an ATen op gimlet converts (`OPS`), the first
`MAX_SAMPLES` samples torch.export accepts are compiled by gimlet and run on the
reference interpreter and on the C++ CPU backend, in f32 and (where the OpInfo
supports them) f16 and bf16, and compared with torch eager at `TOLERANCES`.

Every sample ends in one of these outcomes per backend:

- `pass`: same shapes, dtypes and values (within tolerance) as torch;
- `refused`: gimlet raised an `UnsupportedOpError` whose message names the op
  (`aten.x` or `gml.x`), the one acceptable way to say no;
- `fail`: anything else (a wrong shape, dtype or value, an internal exception, a
  refusal that names nothing): the suite fails on it.

Samples torch itself cannot run eagerly, or that torch.export rejects, are not
gimlet's business and are only counted (`skipped`).

Speed: exporting and decomposing costs ~0.3 s per program, mostly fixed, so all
samples of one (op, dtype) are exported as ONE program (a module calling the op once
per sample) and split again per sample only when that program is refused or fails.
The C++ backend compiles the programs of several ops into one library (LIBRARY_OPS),
through its content-addressed cache: an unchanged program is a file lookup.

`python tests/opinfo_suite.py --write` reruns everything and rewrites
`docs/op_coverage.json`, from which `python -m gimlet.docgen docs/` renders the
coverage table of docs/ops.md; tests/test_opinfo.py fails when either drifts.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parent.parent
COVERAGE_FILE = ROOT / "docs" / "op_coverage.json"

# OpInfo names (name or name.variant) whose samples exercise an ATen op gimlet
# converts or that an inference model family needs, grouped for the table.
OPS: dict[str, list[str]] = {
    "elementwise": [
        "abs",
        "neg",
        "exp",
        "log",
        "sqrt",
        "rsqrt",
        "tanh",
        "sigmoid",
        "sin",
        "cos",
        "erf",
        "reciprocal",
        "logical_not",
        "nn.functional.relu",
        "nn.functional.silu",
        "nn.functional.gelu",
        "clamp",
        "clamp_min",
        "clamp_max",
        "nn.functional.hardtanh",
        "add",
        "sub",
        "rsub",
        "mul",
        "div.no_rounding_mode",
        "div.floor_rounding",
        "div.trunc_rounding",
        "pow",
        "maximum",
        "minimum",
        "bitwise_and",
        "bitwise_or",
        "logical_and",
        "logical_or",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "where",
        "to",
        "clone",
        "contiguous",
    ],
    "shape": [
        "view",
        "reshape",
        "unsqueeze",
        "squeeze",
        "squeeze.multiple",
        "flatten",
        "expand",
        "permute",
        "t",
        "transpose",
        "slice",
        "select",
        "split",
        "split.list_args",
        "split_with_sizes",
        "cat",
        "constant_pad_nd",
        "nn.functional.pad.constant",
    ],
    "indexing": [
        "nn.functional.embedding",
        "gather",
        "__getitem__",
        "index_select",
        "cumsum",
    ],
    "constructors": [
        "full",
        "full_like",
        "zeros_like",
        "ones_like",
        "scalar_tensor",
        "arange",
    ],
    "reductions": [
        "sum",
        "mean",
        "amax",
        "amin",
        "any",
        "argmax",
        "var",
        "var.unbiased",
    ],
    "nn": [
        "mm",
        "bmm",
        "matmul",
        "addmm",
        "addmm.decomposed",
        "nn.functional.linear",
        "softmax",
        "softmax.with_dtype",
        "log_softmax",
        "log_softmax.with_dtype",
        "native_layer_norm",
        "nn.functional.layer_norm",
        "nn.functional.scaled_dot_product_attention",
        "nn.functional.conv2d",
        "nn.functional.batch_norm",
        "nn.functional.max_pool2d",
        "nn.functional.avg_pool2d",
        "nn.functional.adaptive_avg_pool2d",
    ],
}
BACKENDS = ("interpreter", "cpp")
DTYPES = {
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "i64": torch.int64,  # only for ops without a floating-point sample (bitwise_and, ...)
}
FLOATS = ("f32", "f16", "bf16")
MAX_SAMPLES = 12
# (rtol, atol) per result dtype. The interpreter computes in f32/f64 where torch's CPU
# kernels use other summation orders; f16/bf16 results may differ by one rounding
# step, which is 2**-10 and 2**-7 relative.
TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}
# an error message must name what it refuses: an ATen overload or a gml op
_NAMES_OP = re.compile(r"\baten\.\w+|\bgml\.\w+")


def all_ops() -> list[str]:
    return [name for group in OPS.values() for name in group]


def opinfo(name: str) -> Any:
    from torch.testing._internal.common_methods_invocations import op_db

    for op in op_db:
        full = op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")
        if full == name:
            return op
    raise KeyError(f"no OpInfo named {name}")


# ----------------------------------------------------------------- samples ---


TENSOR = object()  # marks where a sample's tensors go among its pytree leaves


@dataclass
class Sample:
    index: int
    spec: Any  # pytree spec of (input, args, kwargs)
    consts: list[Any]  # pytree leaves, TENSOR where a tensor input goes
    tensors: list[torch.Tensor]
    expected: list[torch.Tensor] = field(default_factory=list)

    def call(self, fn: Callable[..., Any], tensors: Sequence[torch.Tensor]) -> list[Any]:
        it = iter(tensors)
        leaves = [next(it) if c is TENSOR else c for c in self.consts]
        inp, args, kwargs = pytree.tree_unflatten(leaves, self.spec)
        return list(pytree.tree_leaves(fn(inp, *args, **kwargs)))


class Batch(torch.nn.Module):
    """One program running the op once per sample: one export for all of them."""

    def __init__(self, fn: Callable[..., Any], samples: Sequence[Sample]):
        super().__init__()
        self.fn, self.samples = fn, list(samples)

    def forward(self, *tensors: torch.Tensor) -> tuple[Any, ...]:
        outs: list[Any] = []
        at = 0
        for s in self.samples:
            outs += s.call(self.fn, tensors[at : at + len(s.tensors)])
            at += len(s.tensors)
        return tuple(outs)

    def inputs(self) -> list[torch.Tensor]:
        return [t for s in self.samples for t in s.tensors]


def samples_for(op: Any, dtype: torch.dtype) -> tuple[list[Sample], Counter[str]]:
    """The first MAX_SAMPLES samples torch runs eagerly to tensor results."""
    torch.manual_seed(0)
    skipped: Counter[str] = Counter()
    out: list[Sample] = []
    # reference inputs: the OpInfo's samples, then edge cases (empty, 0-d, inf/nan)
    for i, s in enumerate(op.reference_inputs("cpu", dtype, requires_grad=False)):
        if len(out) == MAX_SAMPLES:
            break
        leaves, spec = pytree.tree_flatten((s.input, s.args, s.kwargs))
        tensors = [x.detach().clone() for x in leaves if isinstance(x, torch.Tensor)]
        consts = [TENSOR if isinstance(x, torch.Tensor) else x for x in leaves]
        sample = Sample(i, spec, consts, tensors)
        try:
            with torch.no_grad():
                results = sample.call(op.op, [t.clone() for t in tensors])
        except Exception:
            skipped["torch eager error"] += 1
            continue
        if not results or not all(isinstance(r, torch.Tensor) for r in results):
            skipped["non-tensor result"] += 1
            continue
        if any(r.is_complex() or r.dtype not in _KNOWN for r in [*results, *tensors]):
            skipped["dtype gimlet has no type for"] += 1
            continue
        sample.expected = [r.detach().clone() for r in results]
        out.append(sample)
    return out, skipped


_KNOWN = {
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
}


# ---------------------------------------------------------------- outcomes ---


@dataclass
class Outcome:
    status: str  # pass | refused | fail | skipped
    detail: str = ""


@dataclass
class OpResult:
    op: str
    dtype: str
    skipped: Counter[str] = field(default_factory=Counter)
    # backend -> sample index -> outcome
    outcomes: dict[str, dict[int, Outcome]] = field(default_factory=dict)

    def record(self, backend: str, sample: Sample, outcome: Outcome) -> None:
        self.outcomes.setdefault(backend, {})[sample.index] = outcome

    def failures(self) -> list[str]:
        return [
            f"{self.op} {self.dtype} {backend} sample {i}: {o.detail}"
            for backend, by_sample in self.outcomes.items()
            for i, o in sorted(by_sample.items())
            if o.status == "fail"
        ]

    def summary(self) -> dict[str, Any]:
        """Per backend: samples passed and refused (with the reasons); samples skipped."""
        out: dict[str, Any] = {b: self.cell(b) for b in BACKENDS}
        out["skipped"] = dict(sorted(self.skipped.items()))
        return out

    def cell(self, backend: str) -> dict[str, Any]:
        """What the coverage table says for this op, dtype and backend."""
        by_sample = self.outcomes.get(backend, {})
        counts = Counter(o.status for o in by_sample.values())
        reasons = sorted({o.detail for o in by_sample.values() if o.status == "refused"})
        return {"pass": counts["pass"], "refused": counts["refused"], "reasons": reasons}


def _refusal(e: BaseException) -> Outcome:
    from gimlet.errors import UnsupportedOpError

    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    if isinstance(e, UnsupportedOpError):
        # `file:line: unsupported op aten.x` -> the reason without the location
        reason = re.sub(r"^\S+:\d+: ", "", first)
        if "cannot compile:" in first and len(text.splitlines()) > 1:
            # the CPU backend lists one `gml.op at LOC: why` per op
            reason = re.sub(r" at .*?: ", ": ", text.splitlines()[1].strip(), count=1)
        if _NAMES_OP.search(reason):
            return Outcome("refused", reason)
        return Outcome("fail", f"refusal names no op: {first}")
    return Outcome("fail", f"{type(e).__name__}: {first}")


def _compare(got: Sequence[np.ndarray], expected: Sequence[torch.Tensor]) -> Outcome:
    from gimlet.dtypes import torch_to_numpy

    if len(got) != len(expected):
        return Outcome("fail", f"{len(got)} results, torch has {len(expected)}")
    for k, (g, t) in enumerate(zip(got, expected, strict=True)):
        want = torch_to_numpy(t)
        g = np.asarray(g)
        if g.shape != want.shape or g.dtype != want.dtype:
            return Outcome(
                "fail", f"result {k}: {g.dtype} {g.shape}, torch has {want.dtype} {want.shape}"
            )
        if t.dtype in TOLERANCES:
            rtol, atol = TOLERANCES[t.dtype]
            a, b = g.astype(np.float64), want.astype(np.float64)
            close = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
            if not close.all():
                bad = np.argwhere(~close)[0]
                where = tuple(int(i) for i in bad)
                return Outcome(
                    "fail",
                    f"result {k}: {(~close).sum()} of {close.size} values differ, e.g. at "
                    f"{where}: {a[where]!r} vs torch {b[where]!r} (rtol {rtol}, atol {atol})",
                )
        elif not np.array_equal(g, want):
            return Outcome("fail", f"result {k}: values differ from torch")
    return Outcome("pass")


# ----------------------------------------------------------------- running ---


@dataclass
class Program:
    """One exported, imported and piped batch of samples of one op."""

    op: Any
    samples: list[Sample]
    module: Any
    weights: dict[str, np.ndarray]

    def inputs(self) -> list[np.ndarray]:
        from gimlet.dtypes import torch_to_numpy

        return [torch_to_numpy(t) for s in self.samples for t in s.tensors]

    def n_outputs(self) -> int:
        return sum(len(s.expected) for s in self.samples)


def _compile(op: Any, samples: list[Sample]) -> Program:
    from gimlet.frontend import decompose, import_program
    from gimlet.ir import verify
    from gimlet.pass_manager import DEFAULT_PIPELINE, run_pipeline

    batch = Batch(op.op, samples)
    ep = torch.export.export(batch, tuple(t.clone() for t in batch.inputs()))
    module, weights = import_program(decompose(ep))
    verify(module, after="import")
    run_pipeline(module, DEFAULT_PIPELINE)
    return Program(op, samples, module, weights)


def _split(samples: Sequence[Sample], outs: Sequence[Any]) -> list[list[Any]]:
    parts, at = [], 0
    for s in samples:
        parts.append(list(outs[at : at + len(s.expected)]))
        at += len(s.expected)
    return parts


def _programs(op: Any, samples: list[Sample], result: OpResult) -> list[Program]:
    """Programs covering every sample gimlet compiles: one batch, else one per sample.
    A sample refused or failing here is recorded for every backend."""
    if not samples:
        return []
    try:
        return [_compile(op, samples)]
    except Exception as e:
        if len(samples) > 1:
            return [p for s in samples for p in _programs(op, [s], result)]
        error = e
    (s,) = samples
    try:  # torch.export's own refusals are not gimlet's
        torch.export.export(Batch(op.op, [s]), tuple(t.clone() for t in s.tensors))
    except Exception:
        result.skipped["torch.export error"] += 1
        return []
    for backend in BACKENDS:
        result.record(backend, s, _refusal(error))
    return []


Runner = Callable[[Program], list[np.ndarray]]


def _run(prog: Program, result: OpResult, backend: str, runner: Runner) -> None:
    """Run `prog` and compare per sample; a program that raises is retried one sample
    at a time so that the error lands on the sample that caused it."""
    try:
        outs = runner(prog)
    except Exception as e:
        if len(prog.samples) > 1:
            for s in prog.samples:
                _run(_compile(prog.op, [s]), result, backend, runner)
            return
        result.record(backend, prog.samples[0], _refusal(e))
        return
    for s, got in zip(prog.samples, _split(prog.samples, outs), strict=True):
        result.record(backend, s, _compare(got, s.expected))


def run_interpreter(prog: Program) -> list[np.ndarray]:
    from gimlet.interpreter import run

    return run(prog.module, prog.inputs(), prog.weights)


def run_cpp(prog: Program) -> list[np.ndarray]:
    from gimlet.backends.cpu import compile_module

    return compile_module(prog.module, opt=CPP_OPT)(prog.inputs(), prog.weights)


CPP_OPT = "-O1"


# g++ takes ~1.5 s per library to parse the runtime headers, but its time on one
# function grows faster than the function: a library holds programs up to this many
# top-level ops (a few dozen samples), which keeps each compile to seconds
LIBRARY_OPS = 120


def _run_cpp_merged(progs: list[tuple[Program, OpResult]]) -> None:
    """The programs the C++ backend accepts, a few per library; a failing library is
    retried one program (then one sample) at a time to find the culprit."""
    from gimlet.backends.cpu.codegen import unsupported

    chunk: list[tuple[Program, OpResult]] = []
    size = 0
    for prog, result in progs:
        ops = list(prog.module.body.block.first_op.body.block.ops)
        if unsupported(ops):
            _run(prog, result, "cpp", run_cpp)  # refused: per sample, without compiling
            continue
        if chunk and size + len(ops) > LIBRARY_OPS:
            _run_library(chunk)
            chunk, size = [], 0
        chunk.append((prog, result))
        size += len(ops)
    if chunk:
        _run_library(chunk)


def _run_library(accepted: list[tuple[Program, OpResult]]) -> None:
    from gimlet.backends.cpu import compile_function

    try:
        fn, weights = merge([p for p, _ in accepted])
        outs = compile_function(fn, opt=CPP_OPT)(
            [x for p, _ in accepted for x in p.inputs()], weights
        )
    except Exception as e:
        # some program fails (or gimlet crashes) in C++: each program alone says which
        print(f"opinfo: one library failed ({type(e).__name__}: {str(e)[:200]})", file=sys.stderr)
        for prog, result in accepted:
            _run(prog, result, "cpp", run_cpp)
        return
    at = 0
    for prog, result in accepted:
        n = prog.n_outputs()
        mine = outs[at : at + n]
        at += n
        for s, got in zip(prog.samples, _split(prog.samples, mine), strict=True):
            result.record("cpp", s, _compare(got, s.expected))


def merge(progs: Sequence[Program]) -> tuple[Any, dict[str, np.ndarray]]:
    """One func.func running every program side by side (arguments and results
    concatenated in order; each program's weights renamed apart)."""
    from xdsl.dialects import func
    from xdsl.ir import Block, Region

    from gimlet.dialects import gml

    arg_types, result_types, body_ops, returned = [], [], [], []
    block = Block()
    weights: dict[str, np.ndarray] = {}
    for k, prog in enumerate(progs):
        fn = prog.module.clone().body.block.first_op
        assert isinstance(fn, func.FuncOp)
        inner = fn.body.block
        for arg in inner.args:
            new = block.insert_arg(arg.type, len(block.args))
            arg.replace_all_uses_with(new)
            arg_types.append(arg.type)
        for op in list(inner.ops):
            op.detach()
            if isinstance(op, func.ReturnOp):
                returned += list(op.operands)
                result_types += [v.type for v in op.operands]
                op.erase(safe_erase=False)
                continue
            if isinstance(op, gml.ParamOp):
                name = f"p{k}.{op.param_name.data}"
                weights[name] = prog.weights[op.param_name.data]
                op.properties["name"] = gml.StringAttr(name)
            body_ops.append(op)
    block.add_ops(body_ops)
    block.add_op(func.ReturnOp(*returned))
    return func.FuncOp("main", (arg_types, result_types), Region(block)), weights


def run_op(name: str, dtype_name: str, backends: Sequence[str] = BACKENDS) -> OpResult:
    """Every backend on one op (C++ as one library per op: see run_group for speed)."""
    return run_group([name], dtype_name, backends)[0]


def run_group(
    names: Sequence[str], dtype_name: str, backends: Sequence[str] = BACKENDS
) -> list[OpResult]:
    results, for_cpp = [], []
    for name in names:
        op = opinfo(name)
        result = OpResult(name, dtype_name)
        results.append(result)
        if not supports(name, dtype_name):
            continue
        samples, result.skipped = samples_for(op, DTYPES[dtype_name])
        for prog in _programs(op, samples, result):
            if "interpreter" in backends:
                _run(prog, result, "interpreter", run_interpreter)
            if "cpp" in backends:
                for_cpp.append((prog, result))
    if for_cpp:
        _run_cpp_merged(for_cpp)
    return results


def supports(name: str, dtype_name: str) -> bool:
    return dtype_name in dtypes_for(name)


def dtypes_for(name: str) -> list[str]:
    """The floating-point dtypes the OpInfo runs on the CPU; i64 for an integer-only op."""
    on_cpu = opinfo(name).supported_dtypes("cpu")
    floats = [d for d in FLOATS if DTYPES[d] in on_cpu]
    return floats or (["i64"] if torch.int64 in on_cpu else [])


# ------------------------------------------------------------------- table ---


def coverage(results: Sequence[OpResult]) -> dict[str, Any]:
    """The JSON document docs/op_coverage.json holds; docgen renders it into docs/ops.md."""
    group_of = {name: group for group, names in OPS.items() for name in names}
    ops: dict[str, Any] = {}
    for r in results:
        entry = ops.setdefault(r.op, {"group": group_of[r.op], "dtypes": {}})
        entry["dtypes"][r.dtype] = r.summary()
    return {
        "max_samples": MAX_SAMPLES,
        "tolerances": {str(k).removeprefix("torch."): v for k, v in TOLERANCES.items()},
        "torch": torch.__version__.split("+")[0],
        "backends": list(BACKENDS),
        "ops": ops,
    }


def run_all(
    dtypes: Sequence[str] = tuple(DTYPES), backends: Sequence[str] = BACKENDS
) -> list[OpResult]:
    """Every group of OPS in every dtype, as tests/test_opinfo.py runs them."""
    results = []
    for dtype_name in dtypes:
        for group in OPS.values():
            names = [n for n in group if supports(n, dtype_name)]
            if names:
                results += run_group(names, dtype_name, backends)
    return results


def load_coverage() -> dict[str, Any]:
    if not COVERAGE_FILE.exists():
        return {"ops": {}}
    return dict(json.loads(COVERAGE_FILE.read_text()))


def main(argv: list[str]) -> int:
    """`--write`: rerun everything and rewrite docs/op_coverage.json (then run
    `python -m gimlet.docgen docs/`). Else print the outcomes for the ops named."""
    names = [a for a in argv if not a.startswith("--")]
    if "--write" in argv:
        results = run_all()
    else:
        results = []
        for name in names or all_ops():
            for dtype_name in dtypes_for(name):
                results += run_group([name], dtype_name)
    failures = [f for r in results for f in r.failures()]
    for r in results:
        cells = {b: r.cell(b) for b in BACKENDS}
        print(f"{r.op:45} {r.dtype:5} {cells} {dict(r.skipped)}", flush=True)
    for f in failures:
        print("FAIL", f)
    if "--write" in argv and not failures:
        COVERAGE_FILE.write_text(json.dumps(coverage(results), indent=1, sort_keys=True) + "\n")
        print(f"wrote {COVERAGE_FILE}; now run python -m gimlet.docgen docs/")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
