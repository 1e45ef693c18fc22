"""Generate docs/ops.md (with the OpInfo coverage table of docs/op_coverage.json),
docs/passes.md and the layer picture in docs/architecture.md from the code, so the
docs cannot drift.

python -m gimlet.docgen docs/     # rewrite
python -m gimlet.docgen --check docs/   # fail if out of date (run by the tests)
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from typing import Any

from xdsl.irdl import IRDLOperation

from gimlet.dialects.gml import GML
from gimlet.layering import LAYERS, contents, layer_graph
from gimlet.pass_manager import PASSES, summary


def _doc(cls: type) -> str:
    return inspect.cleandoc(cls.__doc__ or "").strip()


COVERAGE_FILE = "op_coverage.json"  # beside ops.md; written by tests/opinfo_suite.py --write
BACKEND_NAMES = {"interpreter": "interpreter", "cpp": "C++"}


def _coverage(out: str) -> dict[str, Any] | None:
    path = os.path.join(out, COVERAGE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return dict(json.load(f))


def coverage_markdown(cov: dict[str, Any]) -> list[str]:
    """The op x backend x dtype table of docs/op_coverage.json."""
    ops = cov["ops"]
    order = ("f32", "f16", "bf16", "i64")
    dtypes = [d for d in order if any(d in e["dtypes"] for e in ops.values())]
    backends = cov["backends"]
    tol = ", ".join(f"{k} {r:g}/{a:g}" for k, (r, a) in cov["tolerances"].items())
    lines = [
        "",
        "## Coverage: torch's OpInfo samples",
        "",
        f"Rendered from `{COVERAGE_FILE}`, which `python tests/opinfo_suite.py --write` "
        f"records from torch {cov['torch']}'s OpInfo database: for each OpInfo below, up to "
        f"{cov['max_samples']} samples per dtype (its reference inputs: the samples, then "
        "edge cases such as empty, 0-d, inf and nan) run through gimlet and are compared "
        f"with torch eager (rtol/atol: {tol}). `tests/test_opinfo.py` fails on any other "
        "outcome and when this table drifts.",
        "",
        "A cell is samples passed / samples run; a sample not passed was refused with an "
        "`UnsupportedOpError` naming the op (the reasons follow the table). Samples torch "
        "itself cannot run or export are not counted; `-` is a dtype the OpInfo does not "
        "support (integer-only ops run in i64).",
        "",
    ]
    head = [f"{BACKEND_NAMES.get(b, b)} {d}" for b in backends for d in dtypes]
    lines += ["| OpInfo | group | " + " | ".join(head) + " |"]
    lines += ["| --- | --- |" + " --- |" * len(head)]
    totals: dict[tuple[str, str], list[int]] = {}
    reasons: dict[tuple[str, str], list[str]] = {}
    for name, entry in ops.items():
        cells = []
        for b in backends:
            for d in dtypes:
                cell = entry["dtypes"].get(d, {}).get(b)
                if cell is None:
                    cells.append("-")
                    continue
                run = cell["pass"] + cell["refused"]
                cells.append(f"{cell['pass']}/{run}" if run else "no sample")
                total = totals.setdefault((b, d), [0, 0])
                total[0] += cell["pass"]
                total[1] += run
                for why in cell["reasons"]:
                    column = f"{BACKEND_NAMES.get(b, b)} {d}"
                    reasons.setdefault((name, why), []).append(column)
        lines.append(f"| `{name}` | {entry['group']} | " + " | ".join(cells) + " |")
    sums = [totals.get((b, d), [0, 0]) for b in backends for d in dtypes]
    lines.append(f"| all {len(ops)} | | " + " | ".join(f"{p}/{n}" for p, n in sums) + " |")
    lines += ["", "Refused:", ""]
    for (name, why), where in sorted(reasons.items()):
        lines.append(f"- `{name}` ({', '.join(where)}): {why}")
    return lines


def ops_markdown(coverage: dict[str, Any] | None = None) -> str:
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
    if coverage:  # which torch ops (and samples) reach these, per backend and dtype
        lines += coverage_markdown(coverage)
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


LAYERS_BEGIN = "<!-- begin layers: generated by python -m gimlet.docgen docs/; do not edit -->"
LAYERS_END = "<!-- end layers -->"


def layers_markdown() -> str:
    """The folders and their import arrows, as a Mermaid graph (GitHub draws it). An
    arrow A --> B: A imports B; arrows implied by a longer path are left out."""
    graph = layer_graph()
    reduced = {
        a: {b for b in bs if not any(b in _reach(graph, c) for c in bs - {b})}
        for a, bs in graph.items()
    }
    lines = [LAYERS_BEGIN, "```mermaid", "flowchart TD"]
    for layer, _, folder in LAYERS:
        names = contents(layer)
        what = f"{folder} ({layer})" if folder == "compiler/" else folder
        inside = f"<br/>{', '.join(names)}" if names else ""
        lines.append(f'    {layer}["{what}{inside}"]')
    for layer, _, _ in LAYERS:
        lines += [f"    {layer} --> {b}" for b in sorted(reduced[layer])]
    return "\n".join([*lines, "```", LAYERS_END])


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for b in graph[todo.pop()] - seen:
            seen.add(b)
            todo.append(b)
    return seen | {start}


def _splice(current: str, block: str) -> str:
    """`current` with the text between the layer markers replaced by `block`."""
    head, sep, rest = current.partition(LAYERS_BEGIN)
    if not sep or LAYERS_END not in rest:
        raise SystemExit(f"docs/architecture.md lacks the markers {LAYERS_BEGIN} ... {LAYERS_END}")
    return head + block + rest.partition(LAYERS_END)[2]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    out = next((a for a in argv if not a.startswith("--")), "docs")
    stale = []
    coverage = _coverage(out)
    generated = {
        "ops.md": lambda: ops_markdown(coverage),
        "passes.md": passes_markdown,
        "architecture.md": None,
    }
    for name, make in generated.items():
        path = os.path.join(out, name)
        current = ""
        if os.path.exists(path):
            with open(path) as f:
                current = f.read()
        text = make() if make else _splice(current, layers_markdown())
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
