"""torch.export graph (core ATen) -> gml dialect.

Each FX node is converted by the function registered for its ATen overload in
`CONVERTERS` (registry.py; the converters themselves are in converters.py). Result types come from the node's FakeTensor metadata, so dynamic
dims stay `?`; their run-time sizes are rebuilt from the sympy expressions
torch attached (`s0*2` -> `gml.dim` + `arith.muli`) instead of from the
graph's SymInt nodes, which keeps the IR free of Python-level arithmetic.
Weights become `gml.param` ops naming a tensor in the returned weight map.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import sympy
import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind
from torch.utils._sympy.functions import FloorDiv
from xdsl.builder import Builder, InsertPoint
from xdsl.dialects import arith, func
from xdsl.dialects.builtin import (
    DictionaryAttr,
    FileLineColLoc,
    IndexType,
    IntAttr,
    ModuleOp,
    NameLoc,
    StringAttr,
    TensorType,
    UnknownLoc,
)
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue

from gimlet.dialects import gml
from gimlet.errors import UnsupportedOpError, UserError, with_location
from gimlet.frontend import converters as _converters  # noqa: F401  (fills CONVERTERS)
from gimlet.frontend.registry import ASSERTIONS, CONVERTERS, meta_type, supported_ops

_TORCH_DIR = os.path.dirname(torch.__file__)


def source_location(node: torch.fx.Node) -> Attribute:
    """The innermost frame of the node's stack trace outside torch itself.

    Wrapped in a NameLoc holding the torch module path when there is one, so
    later passes (and `--pin`) can refer to `layers.0.attn`.
    """
    loc: Attribute = UnknownLoc()
    frames = re.findall(r'File "([^"]+)", line (\d+)', node.meta.get("stack_trace") or "")
    user = [f for f in frames if not f[0].startswith(_TORCH_DIR)] or frames
    if user:
        path, line = user[-1]
        rel = os.path.relpath(path)
        loc = FileLineColLoc(
            StringAttr(path if rel.startswith("..") else rel), IntAttr(int(line)), IntAttr(0)
        )
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        module = list(stack.values())[-1][0]
        if module:
            return NameLoc(StringAttr(module), loc)
    return loc


@dataclass
class Importer:
    ep: ExportedProgram
    builder: Builder
    values: dict[torch.fx.Node, Any] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    symbols: dict[sympy.Symbol, tuple[SSAValue, int]] = field(default_factory=dict)
    sym_cache: dict[Any, SSAValue] = field(default_factory=dict)
    const_cache: dict[tuple[float, str], SSAValue] = field(default_factory=dict)
    location: Attribute = field(default_factory=UnknownLoc)

    # -- emission helpers ---------------------------------------------------

    def emit(self, op: Operation) -> SSAValue:
        op.location = self.location  # type: ignore[assignment]
        self.builder.insert(op)
        return op.results[0] if op.results else None  # type: ignore[return-value]

    def value(self, arg: Any) -> SSAValue:
        if isinstance(arg, torch.fx.Node):
            v = self.values.get(arg)
            if v is None:
                raise UserError(f"value {arg.name} is used but was not imported")
            return v
        raise UserError(f"expected a tensor operand, got {arg!r}")

    def scalar(self, value: float | bool, element_type: Attribute) -> SSAValue:
        key = (float(value), str(element_type))
        if key not in self.const_cache:
            attr = gml.dense(TensorType(element_type, []), [value])
            self.const_cache[key] = self.emit(gml.ConstantOp(attr))
        return self.const_cache[key]

    def as_type(self, arg: Any, element_type: Attribute) -> SSAValue:
        """A tensor operand (cast if needed) or a Python scalar as a 0-d constant."""
        if isinstance(arg, torch.fx.Node):
            v = self.value(arg)
            assert isinstance(v.type, TensorType)
            return (
                v if v.type.element_type == element_type else self.emit(gml.CastOp(v, element_type))
            )
        return self.scalar(arg, element_type)

    def sizes(self, t: TensorType, val: Any) -> list[SSAValue]:
        """`index` values for each dynamic dim of a result (from its symbolic shape)."""
        return [self.sym(d) for d in val.shape if not isinstance(d, int)]

    def sym(self, d: Any) -> SSAValue:
        expr = d.node.expr if isinstance(d, torch.SymInt) else sympy.sympify(d)
        if expr in self.sym_cache:
            return self.sym_cache[expr]
        if isinstance(expr, sympy.Integer):
            v = self.emit(arith.ConstantOp.from_int_and_width(int(expr), IndexType()))
        elif isinstance(expr, sympy.Symbol):
            if expr not in self.symbols:
                raise UserError(f"symbolic size {expr} is not the size of any input")
            tensor_value, index = self.symbols[expr]
            v = self.emit(gml.DimOp(tensor_value, index))
        elif isinstance(expr, sympy.Mul | sympy.Add):
            combine = arith.MuliOp if isinstance(expr, sympy.Mul) else arith.AddiOp
            args = [self.sym(a) for a in expr.args]
            v = args[0]
            for a in args[1:]:
                v = self.emit(combine(v, a))
        elif isinstance(expr, FloorDiv):
            v = self.emit(arith.FloorDivSIOp(self.sym(expr.args[0]), self.sym(expr.args[1])))
        else:
            raise UserError(f"unsupported symbolic size expression {expr}")
        self.sym_cache[expr] = v
        return v

    # -- graph walk ---------------------------------------------------------

    def run(self) -> None:
        live = _live(self.ep.graph)
        for node in self.ep.graph.nodes:
            if node.op == "call_function" and node in live:
                self.location = source_location(node)
                result = self.convert(node)
                if isinstance(result, SSAValue) and result.name_hint is None:
                    result.name_hint = node.name  # `%addmm_3` reads back to the FX graph
                self.values[node] = result
            elif node.op == "output":
                outs = [self.value(a) for a in node.args[0]]
                self.emit(func.ReturnOp(*outs))

    def convert(self, node: torch.fx.Node) -> Any:
        target = node.target
        if target in ASSERTIONS:
            return None
        if target is operator.getitem:
            parts, index = self.values[cast(torch.fx.Node, node.args[0])], cast(int, node.args[1])
            if not isinstance(parts, tuple) or parts[index] is None:
                raise UnsupportedOpError(
                    with_location(
                        self.location,
                        f"output {index} of {node.args[0].target} is not supported"  # type: ignore[union-attr]
                        " (gimlet imports inference graphs)",
                    )
                )
            return parts[index]
        if isinstance(node.meta.get("val"), torch.SymInt | int):
            return None  # size arithmetic: rebuilt from sympy when a consumer needs it
        conv = CONVERTERS.get(target)
        if conv is None:
            raise UnsupportedOpError(
                with_location(self.location, f"unsupported op {target}")
                + "\nsupported ops: "
                + ", ".join(supported_ops())
            )
        return conv(self, node)


def _live(graph: torch.fx.Graph) -> set[torch.fx.Node]:
    """The nodes the outputs depend on. A graph taken as exported (load.as_exported) still
    holds the values nothing uses, which run_decompositions' retrace would have dropped;
    the imported IR leaves them out either way. Nodes the importer would skip anyway
    (assertions) are among the dead ones; no graph it takes mutates anything."""
    out = next(n for n in reversed(graph.nodes) if n.op == "output")
    live, stack = {out}, [out]
    while stack:
        for arg in stack.pop().all_input_nodes:
            if arg not in live:
                live.add(arg)
                stack.append(arg)
    return live


def import_program(ep: ExportedProgram) -> tuple[ModuleOp, dict[str, np.ndarray]]:
    """Import an ExportedProgram that load.decompose returned (decomposed, or as exported
    when every node imports as it is); returns the module and its weights."""
    user_inputs = []
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            user_inputs.append(spec.arg.name)  # type: ignore[union-attr]
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    arg_types = [meta_type(placeholders[name].meta["val"]) for name in user_inputs]
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    result_types = [meta_type(a.meta["val"]) for a in out_node.args[0]]

    block = Block(arg_types=arg_types)
    imp = Importer(ep, Builder(InsertPoint.at_end(block)))
    for name, arg in zip(user_inputs, block.args, strict=True):
        node = placeholders[name]
        imp.values[node] = arg
        arg.name_hint = name
        for i, d in enumerate(node.meta["val"].shape):
            if isinstance(d, torch.SymInt) and isinstance(d.node.expr, sympy.Symbol):
                imp.symbols.setdefault(d.node.expr, (arg, i))
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            continue
        node = placeholders[spec.arg.name]  # type: ignore[union-attr]
        target = spec.target
        assert target is not None
        data = ep.state_dict[target] if target in ep.state_dict else ep.constants[target]
        if not isinstance(data, torch.Tensor):
            raise UserError(f"unsupported non-tensor constant {target}")
        imp.weights[target] = _to_numpy(data)
        imp.values[node] = imp.emit(gml.ParamOp(target, meta_type(node.meta["val"])))
        imp.values[node].name_hint = node.name
    imp.run()

    fn = func.FuncOp("main", (arg_types, result_types), Region(block))
    inputs = [placeholders[n] for n in user_inputs]
    fn.arg_attrs = _arg_attrs(inputs)  # type: ignore[assignment]
    module = ModuleOp([fn])
    bounds = _dim_bounds(ep, inputs)
    if bounds:
        module.attributes[DIMS_ATTR] = bounds
    return module, imp.weights


# The dynamic dims' torch.export bounds, kept for backends that need ranges (TensorRT's
# optimization profiles, backends/tensorrt/profile.py): each input's `gml.dims` names its
# `?` dims in order, and the module's `gml.dims` gives each name {min, max, example}
# (max left out when unbounded; example: the size the model was exported with).
DIMS_ATTR = "gml.dims"


def _arg_attrs(nodes: Sequence[torch.fx.Node]) -> Any:
    from xdsl.dialects.builtin import ArrayAttr

    attrs = []
    for node in nodes:
        entry: dict[str, Attribute] = {"gml.name": StringAttr(node.name)}
        dyn = [d.node.expr for d in node.meta["val"].shape if isinstance(d, torch.SymInt)]
        if dyn:  # "" for a dim torch gave as an expression rather than a symbol
            names = [str(e) if isinstance(e, sympy.Symbol) else "" for e in dyn]
            entry[DIMS_ATTR] = ArrayAttr([StringAttr(n) for n in names])
        attrs.append(DictionaryAttr(entry))
    return ArrayAttr(attrs)


def _dim_bounds(ep: ExportedProgram, nodes: Sequence[torch.fx.Node]) -> DictionaryAttr | None:
    from torch.utils._sympy.numbers import int_oo
    from xdsl.dialects.builtin import IntegerAttr, i64

    out: dict[str, Attribute] = {}
    for node in nodes:
        for d in node.meta["val"].shape:
            if not isinstance(d, torch.SymInt) or not isinstance(d.node.expr, sympy.Symbol):
                continue
            r = ep.range_constraints.get(d.node.expr)
            if r is None or str(d.node.expr) in out:
                continue
            entry: dict[str, Attribute] = {"min": IntegerAttr(int(r.lower), i64)}
            if r.upper not in (int_oo, sympy.oo):
                entry["max"] = IntegerAttr(int(r.upper), i64)
            if isinstance(d.node.hint, int):  # none where the program was saved and loaded
                entry["example"] = IntegerAttr(d.node.hint, i64)
            out[str(d.node.expr)] = DictionaryAttr(entry)
    return DictionaryAttr(out) if out else None


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    from gimlet.dtypes import torch_to_numpy

    return torch_to_numpy(t.detach())
