"""Generate docs/ops.md and docs/passes.md from the code, so the docs cannot drift.

python -m gimlet.docgen docs/     # rewrite
python -m gimlet.docgen --check docs/   # fail if out of date (run by the tests)
"""

from __future__ import annotations

import inspect
import os
import sys

from xdsl.irdl import IRDLOperation

from gimlet.dialects.gml import GML
from gimlet.pass_manager import PASSES, summary


def _doc(cls: type) -> str:
    return inspect.cleandoc(cls.__doc__ or "").strip()


def ops_markdown() -> str:
    lines = [
        "# The `gml` dialect",
        "",
        "Generated from `dialects/gml.py` by `python -m gimlet.docgen docs/`; do not edit.",
        "",
        "All ops are value-semantic tensor ops on builtin `tensor<...>` types; `?` dims are",
        "sized at run time (ops that take a shape get one `index` operand per `?`).",
        "",
        "| op | summary |",
        "| --- | --- |",
    ]
    ops = sorted(GML.operations, key=lambda o: o.name)
    for op in ops:
        first = _doc(op).splitlines()[0] if _doc(op) else ""
        lines.append(f"| `{op.name}` | {first} |")
    for op in ops:
        assert issubclass(op, IRDLOperation)
        d = op.get_irdl_definition()
        lines += ["", f"## `{op.name}`", "", _doc(op) or "(no description)", ""]
        if d.operands:
            lines.append("Operands: " + ", ".join(f"`{n}`" for n, _ in d.operands))
        if d.properties:
            lines.append("Properties: " + ", ".join(f"`{n}`" for n in d.properties))
        if d.regions:
            lines.append("Regions: " + ", ".join(f"`{n}`" for n, _ in d.regions))
        if d.assembly_format:
            lines += ["", "```", f"{op.name} {d.assembly_format}", "```"]
    return "\n".join(lines) + "\n"


def passes_markdown() -> str:
    lines = [
        "# Passes",
        "",
        "Generated from `passes/` by `python -m gimlet.docgen docs/`; do not edit.",
        "`gimletc --list-passes` prints the same summaries.",
    ]
    for name, cls in PASSES.items():
        module = sys.modules[cls.__module__]
        body = (
            inspect.cleandoc(module.__doc__ or "") if module.__name__.startswith("gimlet") else ""
        )
        lines += ["", f"## `{name}`", "", summary(cls), ""]
        if body:
            lines += [body, ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    out = next((a for a in argv if not a.startswith("--")), "docs")
    stale = []
    for name, text in (("ops.md", ops_markdown()), ("passes.md", passes_markdown())):
        path = os.path.join(out, name)
        current = ""
        if os.path.exists(path):
            with open(path) as f:
                current = f.read()
        if current != text:
            stale.append(path)
            if not check:
                with open(path, "w") as f:
                    f.write(text)
    if check and stale:
        print(f"out of date: {', '.join(stale)}; run python -m gimlet.docgen docs/")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
