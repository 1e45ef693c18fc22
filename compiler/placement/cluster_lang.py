"""`.cluster` files: describe the machines a model is placed on, in a small text language.

Presets (`--target h100+cpu`) cover stock hardware; a `.cluster` file says what presets
cannot: overridden figures, a part with no preset, which devices hang off which host, and
the links between them. The grammar is parsed with lark (LALR, positions kept) and every
mistake is reported as `file:line:col: message`, so a user can fix the file without reading
this code. Syntax, units and rules: docs/cluster-language.md.

    cluster "h100-and-friends"
    device cpu0 : cpu
    device gpu0 : h100 { host = cpu0, backend = tensorrt }
    link gpu0 <-> cpu0 : pcie { bandwidth = 55 GB/s, latency = 12 us }
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from gimlet.errors import UserError
from gimlet.placement.cluster import ALL_OPS, KINDS, LINK_KINDS, Cluster, Device, Link
from gimlet.placement.presets import ALIASES, LINK_DEFAULTS, PRESETS, lookup, target

GRAMMAR = r"""
start: _NL? (_stmt _NL)*
_stmt: cluster_stmt | device_stmt | link_stmt
cluster_stmt: "cluster" STRING
device_stmt: "device" NAME ":" NAME block?
link_stmt: "link" NAME "<->" NAME ":" NAME block?
block: "{" _NL? (field (_sep field)* _sep?)? "}"
field: NAME "=" _value
_value: quantity | dict | list | NAME | STRING | STAR
quantity: NUMBER UNIT?
dict: "{" _NL? (entry (_sep entry)* _sep?)? "}"
entry: NAME ":" _value
list: "[" _NL? (_item (_sep _item)* _sep?)? "]"
_item: NAME | STAR
_sep: "," _NL? | _NL

STAR: "*"
NAME: /[A-Za-z_][A-Za-z0-9_.]*/
UNIT: /(\$\/h|[A-Za-z\u00b5]+(\/[A-Za-z]+)?)(?![\w.])/
NUMBER: /[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?/
STRING: /"[^"\n]*"/
COMMENT: /#[^\n]*/
_NL: (/\r?\n[\t ]*/ | COMMENT)+
%ignore /[\t \f]+/
%ignore COMMENT
"""

# Element types a device may list in `dtypes` or key `peak_flops` by.
DTYPES = ("f64", "f32", "f16", "bf16", "i64", "i32", "i16", "i8", "u8", "i1")


_DECIMAL = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}
_BYTES = {"B": 1.0} | {f"{p}B": f for p, f in (_DECIMAL | _BINARY).items()}
_FLOPS = {"": 1.0, "G": 1e9, "T": 1e12, "P": 1e15}
# What each kind of figure may be written in, as unit -> SI factor.
UNITS: dict[str, dict[str, float]] = {
    "compute": {f"{p}FLOPS": f for p, f in _FLOPS.items()}
    | {f"{p}FLOP/s": f for p, f in _FLOPS.items()}
    | {"TOPS": 1e12, "POPS": 1e15},
    "bandwidth": {f"{k}/s": v for k, v in _BYTES.items()},
    "size": _BYTES,
    "time": {"s": 1.0, "ms": 1e-3, "us": 1e-6, "\u00b5s": 1e-6, "ns": 1e-9},
    "power": {"W": 1.0, "kW": 1e3},
    "price": {"$/h": 1.0},
}
_EXAMPLES = {
    "compute": "989 TFLOPS",
    "bandwidth": "3.35 TB/s",
    "size": "80 GB",
    "time": "5 us",
    "power": "700 W",
    "price": "2.5 $/h",
}

# field -> what its value is: a UNITS key, or peak_flops / dtypes / ops / device / string.
DEVICE_FIELDS = {
    "peak_flops": "peak_flops",
    "mem_bandwidth": "bandwidth",
    "mem_capacity": "size",
    "launch_overhead": "time",
    "dtypes": "dtypes",
    "ops": "ops",
    "power": "power",
    "price": "price",
    "host": "device",
    "model": "string",
    "backend": "backend",
}
LINK_FIELDS = {"bandwidth": "bandwidth", "latency": "time"}
REQUIRED = ("peak_flops", "mem_bandwidth", "mem_capacity")
# Language field name -> Device attribute, where they differ.
_ATTR = {"power": "power_w", "price": "price_per_hour"}

_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "UNIT": "a unit",
    "STRING": 'a "string"',
    "_NL": "end of line",
}


class ClusterFileError(UserError):
    """A mistake at a place in a `.cluster` file; the message starts `file:line:col:`."""

    def __init__(self, filename: str, line: int, column: int, message: str) -> None:
        super().__init__(f"{filename}:{line}:{column}: {message}")
        self.filename, self.line, self.column, self.detail = filename, line, column, message


@cache
def _parser() -> Lark:
    return Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    pattern = _parser().get_terminal(name).pattern
    return f"'{pattern.value}'" if isinstance(pattern, PatternStr) else name.lower()


@dataclass(frozen=True)
class _Quantity:
    number: Token
    unit: Token | None


_Value = Token | _Quantity | Tree[Token]


def _is(value: _Value, token_type: str) -> bool:
    return isinstance(value, Token) and value.type == token_type


class _Reader:
    """Turns one parse tree into a Cluster, checking everything lark cannot."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def error(self, at: Token | Tree[Token] | _Quantity, message: str) -> ClusterFileError:
        if isinstance(at, _Quantity):
            at = at.number
        if isinstance(at, Tree):
            return ClusterFileError(self.filename, at.meta.line, at.meta.column, message)
        return ClusterFileError(self.filename, at.line or 0, at.column or 0, message)

    # values ---------------------------------------------------------------------------

    def value(self, node: Token | Tree[Token]) -> _Value:
        if isinstance(node, Tree) and node.data == "quantity":
            number, *unit = node.children
            assert isinstance(number, Token)
            return _Quantity(number, unit[0] if unit and isinstance(unit[0], Token) else None)
        return node

    def quantity(self, field: str, dim: str, value: _Value) -> float:
        units = UNITS[dim]
        accepted = ", ".join(units)
        if not isinstance(value, _Quantity):
            raise self.error(value, f"{field} expects a {dim} such as {_EXAMPLES[dim]}")
        if value.unit is None:
            raise self.error(value.number, f"{field} needs a unit; accepted: {accepted}")
        if value.unit not in units:
            hint = _did_you_mean(value.unit, units)
            raise self.error(
                value.unit, f"bad unit '{value.unit}' for {field}{hint}; accepted: {accepted}"
            )
        number = float(value.number)
        if number <= 0:
            raise self.error(
                value.number, f"{field} must be positive, got {value.number} {value.unit}"
            )
        # Decimal arithmetic so `12 us` is exactly the float 12e-6.
        return float(Decimal(str(value.number)) * Decimal(repr(units[value.unit])))

    def names(self, field: str, value: _Value) -> list[Token]:
        """The items of a `[a, b]` list, or a lone `*`."""
        if _is(value, "STAR"):
            assert isinstance(value, Token)
            return [value]
        if not (isinstance(value, Tree) and value.data == "list"):
            raise self.error(value, f"{field} expects a list such as [f32, bf16]")
        return [t for t in value.children if isinstance(t, Token)]

    def dtype(self, tok: Token) -> str:
        if tok not in DTYPES:
            hint = _did_you_mean(str(tok), DTYPES)
            raise self.error(tok, f"unknown dtype '{tok}'{hint}; dtypes: {', '.join(DTYPES)}")
        return str(tok)

    def op(self, tok: Token, known: frozenset[str]) -> str:
        if tok == ALL_OPS:
            return ALL_OPS
        name = str(tok) if "." in tok else f"gml.{tok}"
        if name not in known:
            hint = _did_you_mean(name, sorted(known))
            raise self.error(tok, f"unknown op '{tok}'{hint}; ops are gml op names or *")
        return name

    def backend(self, value: _Value, kind: str) -> tuple[str, str]:
        """`backend = OPTION`: (the option, where it was chosen) for a device of `kind`."""
        from gimlet.placement.backend_ops import BACKEND_OPTIONS

        options = BACKEND_OPTIONS.get(kind, ("interpreter",))
        if not _is(value, "NAME"):
            raise self.error(value, f"backend expects a backend name such as {options[0]}")
        assert isinstance(value, Token)
        if value not in options:
            hint = _did_you_mean(str(value), options)
            raise self.error(
                value,
                f"unknown backend '{value}' for {kind} devices{hint}; "
                f"backends for {kind}: {', '.join(options)}",
            )
        return str(value), f"backend = {value} at {self.filename}:{value.line}"

    def peak_flops(self, value: _Value) -> dict[str, float]:
        if not (isinstance(value, Tree) and value.data == "dict"):
            raise self.error(value, "peak_flops expects a map such as { bf16: 989 TFLOPS }")
        peaks: dict[str, float] = {}
        for entry in value.children:
            assert isinstance(entry, Tree)
            key, raw = entry.children
            assert isinstance(key, Token)
            peaks[self.dtype(key)] = self.quantity(f"peak_flops.{key}", "compute", self.value(raw))
        if not peaks:
            raise self.error(value, "peak_flops needs at least one dtype")
        return peaks

    def fields(
        self, block: Tree[Token] | None, allowed: dict[str, str], what: str
    ) -> dict[str, tuple[Token, _Value]]:
        """The `name = value` pairs of a block, each name checked against `allowed`."""
        found: dict[str, tuple[Token, _Value]] = {}
        for field in block.children if block is not None else []:
            assert isinstance(field, Tree)
            name, raw = field.children
            assert isinstance(name, Token)
            if name not in allowed:
                hint = _did_you_mean(str(name), allowed)
                raise self.error(
                    name, f"unknown field '{name}' for a {what}{hint}; fields: {', '.join(allowed)}"
                )
            if name in found:
                raise self.error(
                    name, f"field '{name}' given twice (first at line {found[name][0].line})"
                )
            found[str(name)] = (name, self.value(raw))
        return found

    # statements -----------------------------------------------------------------------

    def device(self, stmt: Tree[Token]) -> tuple[Device, Token | None]:
        """The device a `device` statement declares, and the token naming its host."""
        name, kind, *rest = stmt.children
        assert isinstance(name, Token) and isinstance(kind, Token)
        block = rest[0] if rest and isinstance(rest[0], Tree) else None
        given = self.fields(block, DEVICE_FIELDS, "device")
        base = lookup(kind)
        if base is None and kind.lower() not in KINDS:
            hint = _did_you_mean(kind.lower(), [*PRESETS, *ALIASES, *KINDS])
            raise self.error(
                kind,
                f"unknown device kind or preset '{kind}'{hint}; "
                f"kinds: {', '.join(KINDS)}; presets: {', '.join(PRESETS)}",
            )
        missing = [f for f in REQUIRED if f not in given]
        if base is None and missing:
            raise self.error(
                name,
                f"device '{name}' is missing {', '.join(missing)} "
                f"(required for kind '{kind}' without a preset)",
            )
        attrs: dict[str, Any] = {}
        known_ops: frozenset[str] | None = None
        for field, (_, value) in given.items():
            dim = DEVICE_FIELDS[field]
            if dim == "peak_flops":
                attrs["peak_flops"] = {
                    **(base.peak_flops if base else {}),
                    **self.peak_flops(value),
                }
            elif dim == "dtypes":
                attrs["dtypes"] = frozenset(self.dtype(t) for t in self.names(field, value))
            elif dim == "ops":
                if known_ops is None:
                    from gimlet.dialects.gml import GML

                    known_ops = frozenset(op.name for op in GML.operations)
                attrs["ops"] = frozenset(self.op(t, known_ops) for t in self.names(field, value))
            elif dim == "device":
                if not _is(value, "NAME"):
                    raise self.error(value, f"{field} expects a device name such as cpu0")
                attrs["host"] = str(value)
            elif dim == "backend":
                device_kind = base.kind if base is not None else kind.lower()
                attrs["backend"], attrs["backend_from"] = self.backend(value, device_kind)
            elif dim == "string":
                if not _is(value, "STRING"):
                    raise self.error(value, f'{field} expects a "string"')
                attrs["model"] = str(value)[1:-1]
            else:
                attrs[_ATTR.get(field, field)] = self.quantity(field, dim, value)
        if base is not None:
            device = replace(base, name=str(name), **attrs)
        else:
            device = Device(name=str(name), kind=kind.lower(), **attrs)
        host = given.get("host")
        return device, host[1] if host and isinstance(host[1], Token) else None

    def link(self, stmt: Tree[Token], devices: dict[str, Device], links: list[Link]) -> Link:
        a, b, kind, *rest = stmt.children
        assert isinstance(a, Token) and isinstance(b, Token) and isinstance(kind, Token)
        for end in (a, b):
            self.known_device(end, devices)
        if a == b:
            raise self.error(b, f"link from '{a}' to itself")
        earlier = next((link for link in links if link.connects(a, b)), None)
        if earlier is not None:
            raise self.error(a, f"second link between '{a}' and '{b}'")
        if kind not in LINK_KINDS:
            hint = _did_you_mean(str(kind), LINK_KINDS)
            raise self.error(
                kind, f"unknown link kind '{kind}'{hint}; link kinds: {', '.join(LINK_KINDS)}"
            )
        block = rest[0] if rest and isinstance(rest[0], Tree) else None
        given = self.fields(block, LINK_FIELDS, "link")
        figures: dict[str, float] = {}
        for field, dim in LINK_FIELDS.items():
            if field in given:
                figures[field] = self.quantity(field, dim, given[field][1])
            elif kind in LINK_DEFAULTS:
                figures[field] = LINK_DEFAULTS[kind][0 if field == "bandwidth" else 1]
            else:
                raise self.error(
                    kind, f"{kind} link {a} <-> {b} needs {field} ({kind} links have no default)"
                )
        return Link(str(a), str(b), figures["bandwidth"], figures["latency"], str(kind))

    def known_device(self, tok: Token, devices: dict[str, Device]) -> Device:
        if tok not in devices:
            hint = _did_you_mean(str(tok), devices)
            declared = ", ".join(devices) or "none"
            raise self.error(tok, f"unknown device '{tok}'{hint}; devices: {declared}")
        return devices[tok]

    def cluster(self, tree: Tree[Token]) -> Cluster:
        name = "" if self.filename == "<cluster>" else Path(self.filename).stem
        named: Token | None = None
        devices: dict[str, Device] = {}
        declared_at: dict[str, Token] = {}
        hosts: list[tuple[Device, Token]] = []
        link_stmts: list[Tree[Token]] = []
        for stmt in tree.children:
            assert isinstance(stmt, Tree)
            if stmt.data == "cluster_stmt":
                (string,) = stmt.children
                assert isinstance(string, Token)
                if named is not None:
                    raise self.error(string, f"cluster named twice (first at line {named.line})")
                named, name = string, string[1:-1]
            elif stmt.data == "device_stmt":
                device, host = self.device(stmt)
                tok = stmt.children[0]
                assert isinstance(tok, Token)
                if device.name in devices:
                    first = declared_at[device.name].line
                    raise self.error(
                        tok, f"duplicate device '{tok}' (first declared at line {first})"
                    )
                devices[device.name], declared_at[device.name] = device, tok
                if host is not None:
                    hosts.append((device, host))
            else:
                link_stmts.append(stmt)
        for device, host in hosts:  # hosts may be declared after the devices they serve
            if host == device.name:
                raise self.error(host, f"device '{host}' cannot be its own host")
            kind = self.known_device(host, devices).kind
            if kind != "cpu":
                raise self.error(host, f"host '{host}' is not a cpu (its kind is {kind})")
        if not devices:
            raise ClusterFileError(self.filename, 1, 1, "no devices declared")
        links: list[Link] = []
        for stmt in link_stmts:
            links.append(self.link(stmt, devices, links))
        return Cluster(devices, links, name=name)


def _syntax_error(err: UnexpectedInput, text: str, filename: str) -> ClusterFileError:
    line, column = err.line, err.column
    if isinstance(err, UnexpectedCharacters):
        found = f"character '{text[err.pos_in_stream or 0]}'"
        expected = set(err.allowed or ())
    elif isinstance(err, UnexpectedToken | UnexpectedEOF):
        token = err.token
        expected = set(getattr(err, "accepts", None) or err.expected or ())
        if token.type == "$END":
            found = "end of file"
            line, column = text.count("\n") + 1, len(text) - text.rfind("\n")
        elif token.type == "_NL":
            found = "end of line"
        else:
            found = f"'{token}'"
    else:
        found, expected = "input", set()
    words = sorted({_describe_terminal(t) for t in expected if t != "$END"})
    message = f"unexpected {found}" + (f"; expected {' or '.join(words)}" if words else "")
    return ClusterFileError(filename, line if line > 0 else 1, column if column > 0 else 1, message)


def parse_cluster(text: str, filename: str = "<cluster>") -> Cluster:
    """Parse the text of a `.cluster` file; mistakes raise ClusterFileError (a UserError)."""
    try:
        tree = _parser().parse(text + "\n")
    except UnexpectedInput as err:
        raise _syntax_error(err, text, filename) from None
    return _Reader(filename).cluster(tree)


def load_cluster(path: str | os.PathLike[str]) -> Cluster:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise UserError(f"cannot read cluster file '{path}': {err.strerror}") from None
    return parse_cluster(text, str(path))


def resolve_target(spec: str) -> Cluster:
    """`--target`: a `.cluster` file path, or a preset spec such as `2xh100+cpu`."""
    if spec.endswith(".cluster") or os.sep in spec or os.path.isfile(spec):
        return load_cluster(spec)
    return target(spec)


__all__ = [
    "DTYPES",
    "UNITS",
    "ClusterFileError",
    "load_cluster",
    "parse_cluster",
    "resolve_target",
]
