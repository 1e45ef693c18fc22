"""A generated GPU program as several translation units, so nvcc builds it on several cores.

One nvcc process is serial (preprocess, cudafe++, cicc, ptxas, host compiler: GPT-2
decode's 2.8 s on one core); about 1 s of it is what every process pays before its first
kernel, the rest is compiling the kernels and their launches. So the
generated file is cut into *units*: every kernel, generated (`k3`) or a template of the
header (`gml::copy_strided<...>`), is defined or instantiated in exactly one unit, together
with the launch statements that use it, wrapped in host functions (`gml_step_N`); the
entry point (last) calls those functions in program order, and keeps inline what launches
no kernel (cuBLAS calls). Launching a `__global__` function from the translation unit
that defines it needs no relocatable device code, so the units link as plain objects.

It stays one readable file: the units are sections marked by `UNIT_MARK` lines, and the
whole file is also a valid single translation unit (a step function is declared again
before the entry, which C++ allows), which is how a small program, hipcc, or a reader
take it. backends/nvidia/build.py cuts it with `cut` and compiles groups of sections
(`merge`) in parallel, each prefixed with `#line` so that nvcc's errors name the
generated file and its line.

The cut is a function of the program alone (never of this machine's core count): the
bundle records the source's digest, and the machine that runs it regenerates and
compares it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

UNIT_MARK = "// ==== unit"
ENTRY_MARK = "// ==== entry"
STEP_PARAMS = "const gml::Ctx* ctx, char* A, void* const* W, const int64_t* P, gmlStream_t stream"
# Below this many kernels (generated ones plus distinct header templates launched) the
# program stays one unit: each extra nvcc process costs ~0.7 s of CPU (~1 s of wall)
# before it compiles a kernel (the CUDA headers, cudafe++, the host compiler), while one
# of GPT-2's kernels takes 0.05-0.4 s.
MIN_KERNELS = 6

_PDL = re.compile(r"launch_pdl\(\s*([A-Za-z_][\w:]*(?:<[^()]*?>)?)\s*,")
CHAIN_KERNEL = "gml::chain_kernel"  # what gml::launch_chain<B>(ctx, stream, phases...) launches
_IDENT_TAIL = re.compile(r"[A-Za-z_][\w:]*$")


def instantiations(text: str) -> set[str]:
    """The kernels a piece of host code launches, as written: `k3`, `k1<1>`,
    `gml::copy_strided<gml::f16, 3>`."""
    found = set(_PDL.findall(text))
    if "gml::launch_chain<" in text:
        found.add(CHAIN_KERNEL)
    for m in re.finditer("<<<", text):
        i = end = m.start()
        while i > 0 and text[i - 1].isspace():
            i -= 1
        if i > 0 and text[i - 1] == ">":  # template arguments: skip them, balanced
            depth = 0
            while i > 0:
                i -= 1
                depth += {">": 1, "<": -1}.get(text[i], 0)
                if depth == 0:
                    break
        ident = _IDENT_TAIL.search(text[:i])
        if ident:
            found.add(text[ident.start() : end].strip())
    return found


def launched(text: str) -> set[str]:
    """The kernels a piece of host code launches, by template name (`k3`,
    `gml::copy_strided`): every instantiation of a template goes to one unit, so none is
    compiled twice."""
    return {k.split("<", 1)[0] for k in instantiations(text)}


def weight(text: str) -> float:
    """A section's share of device compilation, for balancing units: the kernels it
    instantiates; a section with none (the entry) still costs its host code."""
    return 0.25 + len(instantiations(text))


@dataclass
class Step:
    """The host lines one op (or fused group) lowered to, and what they launch."""

    lines: list[str]
    kernels: set[str]


def arrange(
    head: Sequence[str],
    kernels: Sequence[tuple[str, str]],
    steps: Sequence[Sequence[str]],
    entry_open: Sequence[str],
    entry_close: Sequence[str],
) -> str:
    """The program's source: `kernels` are (name, definition); `steps` the entry's body,
    op by op. One unit (the entry with the steps inline) when it has few kernels, else
    a unit per group of kernels that some step launches together."""
    parts = [Step(list(lines), launched("\n".join(lines))) for lines in steps]
    # kernels launched by one step share a unit (a GEMV's row-count variants, decode
    # attention's split and combine): union-find over template names
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        while parent.setdefault(k, k) != k:
            k = parent[k]
        return k

    for s in parts:
        together = sorted(s.kernels)
        for k in together:
            parent[find(k)] = find(together[0])
    if len(parent) < MIN_KERNELS or len({find(k) for k in parent}) < 2:
        body = [line for s in parts for line in s.lines]
        return _join([*head, *(k + "\n" for _, k in kernels), *entry_open, *body, *entry_close])
    # units in order of first launch, so the file reads roughly in program order
    order: dict[str, int] = {}
    for s in parts:
        for k in sorted(s.kernels):
            order.setdefault(find(k), len(order))
    definitions: dict[int, list[str]] = {i: [] for i in range(len(order))}
    homeless: list[str] = []  # defined but launched only where no bucket goes
    for name, text in kernels:
        root = find(name) if name in parent else None
        (definitions[order[root]] if root in order else homeless).append(text + "\n")
    members: dict[int, list[str]] = {i: [] for i in range(len(order))}
    for k in sorted(parent):
        if find(k) in order:
            members[order[find(k)]].append(k)
    functions: dict[int, list[str]] = {i: [] for i in range(len(order))}
    calls: list[str] = []
    declarations: list[str] = []
    run: list[str] = []  # consecutive steps of one unit become one function
    notes: list[str] = []  # their ops, repeated at the call: the entry reads as the program
    run_unit = -1

    def flush() -> None:
        if run:
            name = f"gml_step_{len(declarations)}"
            declarations.append(f"int {name}({STEP_PARAMS});")
            functions[run_unit] += [f"int {name}({STEP_PARAMS}) {{", *run, "  return 0;", "}", ""]
            calls.extend(notes)
            calls.append(f"  if (int e = {name}(ctx, A, W, P, stream)) return e;")
            run.clear()
            notes.clear()

    for s in parts:
        if not s.kernels and all(line.lstrip().startswith("//") for line in s.lines):
            if run:  # only comments (an op that became a view): the run goes on
                run.extend(s.lines)
                notes.extend(_note(line) for line in s.lines)
            else:
                calls.extend(s.lines)
            continue
        unit = order[find(min(s.kernels))] if s.kernels else -1
        if unit != run_unit:
            flush()
            run_unit = unit
        if unit < 0:
            calls.extend(s.lines)  # no kernel (a cuBLAS call): stays in the entry
        else:
            run.extend(s.lines)
            notes.extend(_note(line) for line in s.lines if line.lstrip().startswith("//"))
    flush()
    out = list(head)
    n = len(order)
    for i in range(n):
        out.append(f"{UNIT_MARK} {i + 1} of {n}: {', '.join(members[i])} ====")
        out += [*definitions[i], *functions[i]]
    out.append(f"{ENTRY_MARK}: calls each unit's steps in program order ====")
    out += [*homeless, *declarations, "", *entry_open, *calls, *entry_close]
    return _join(out)


def _note(comment: str) -> str:
    """A step's op comment as the entry repeats it (`// runs gml.add ...`): not the
    `// gml.` that begins an op's own lines, which readers and tests look for."""
    return comment.replace("// ", "// runs ", 1)


def _join(lines: Sequence[str]) -> str:
    return "\n".join(lines) + "\n"


@dataclass
class Section:
    """A stretch of the generated file: its first line (1-based) and its text."""

    first_line: int
    text: str


def cut(source: str) -> tuple[str, list[Section]]:
    """(head, sections) of a generated file: what precedes the first unit mark (the
    include), then each unit and the entry; a file without marks is one section."""
    lines = source.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith((UNIT_MARK, ENTRY_MARK))]
    if not starts:
        return "", [Section(1, source)]
    head = "".join(lines[: starts[0]])
    bounds = [*starts, len(lines)]
    return head, [
        Section(a + 1, "".join(lines[a:b])) for a, b in zip(bounds, bounds[1:], strict=False)
    ]


def merge(
    head: str, sections: Sequence[Section], groups: int, path: str, weight: Sequence[float]
) -> list[str]:
    """`sections` as at most `groups` translation units, balanced by `weight` (largest
    first onto the lightest unit); each section preceded by a `#line` naming `path`, so
    a compiler error points into the generated file. One group: the file itself."""
    if groups <= 1 or len(sections) <= 1:
        return [head + "".join(s.text for s in sections)]
    bins: list[tuple[float, list[int]]] = [(0.0, []) for _ in range(min(groups, len(sections)))]
    for i in sorted(range(len(sections)), key=lambda i: -weight[i]):
        k = min(range(len(bins)), key=lambda b: bins[b][0])
        bins[k] = (bins[k][0] + weight[i], [*bins[k][1], i])
    return [
        head
        + "".join(
            f'#line {sections[i].first_line} "{path}"\n{sections[i].text}' for i in sorted(members)
        )
        for _, members in bins
    ]
