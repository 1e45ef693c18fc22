"""Persistent chains: a run of decode's kernels as one kernel with grid barriers (opt-in).

GPT-2's decode is ~70 kernels of a few microseconds each. A *chain* runs a stretch of
them as one persistent kernel (`gml::launch_chain`): each of its blocks takes its share
of one kernel's work, then all meet at a grid barrier (`gml::ChainSync`), then the next
kernel. On the H200 it was slower than the kernels launched one by one under PDL and a
CUDA graph (benchmarks/results/gpu_chain.md: a phase does what its kernel does alone,
then waits for its slowest block), so it is off unless asked for. A kernel whose body
the header or the generator writes against a sync policy (the decode GEMVs, split
attention and its combine) is a *phase*; codegen records, per lowered op, what its
phases are and what must hold at a shape bucket for them to stand for the op's host
code (`Part`). Here consecutive steps become chains:

* a step with a part, whose other lines are comments or single guarded launches, and a
  step of only such lines (a copy a view makes unnecessary at decode, a layer norm the
  GEMV computes itself) can be in a chain; anything else (a cuBLAS call, an
  unguarded kernel) ends it;
* where the function has one static bucket, a guarded launch that bucket takes ends the
  chain there; with dynamic dims it stays inside, under the chain's condition;
* the chain's condition (every part's and every guard's negation) is a slot of the
  parameter table, so each bucket decides once: the chain kernel, or the steps as they
  were (`gml::chained`).

`GIMLET_GPU_CHAIN=1` (switches.CHAIN) turns chains on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

# fewer phases than this stay kernels of their own: a chain costs its barrier state and
# one launch, and saves a boundary per phase after the first
MIN_PHASES = 2
# the phases' arguments are the chain kernel's parameters (32 KB at most; a phase's are
# 100-200 bytes): a longer run is cut into several chains
MAX_PHASES = 96

Cond = tuple[int, str, int]
"""P[slot] OP value, OP one of <=, ==, !=: what must hold at a bucket."""

_OPS: dict[str, Callable[[int, int], bool]] = {
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
# one guarded statement on one line: `if (P[12] > 0) kernel<<<...>>>(...);`, `if (P[55]) ...`
_GUARD = re.compile(r"^\s*if \(P\[(\d+)\](?: > (\d+))?\) (?!\{).*;$")


@dataclass
class Part:
    """What one lowered op runs inside a chain: its phases (`gml::phase<&Body>(runs,
    blocks, args...)`, evaluated on the host as its launches are), the kernels of its
    host code they stand for, the host lines they replace ([first, last) of the
    function's body) and what must hold at a bucket for that."""

    phases: list[str]
    kernels: int
    first: int
    last: int
    conds: list[Cond] = field(default_factory=list)


def guard(line: str) -> Cond | None:
    """The condition under which a guarded one-line launch does nothing."""
    m = _GUARD.match(line)
    if m is None:
        return None
    slot, above = int(m.group(1)), m.group(2)
    return (slot, "==", 0) if above is None else (slot, "<=", int(above))


def holds(conds: Sequence[Cond], params: Sequence[int] | Mapping[int, int]) -> bool:
    return all(_OPS[op](params[slot], value) for slot, op, value in conds)


@dataclass
class _Step:
    conds: list[Cond]
    phases: list[str]


def _classify(lines: Sequence[str], offset: int, part: Part | None) -> _Step | None:
    """A step's conditions and phases in a chain, or None where it ends one."""
    conds: list[Cond] = list(part.conds) if part else []
    for i, line in enumerate(lines):
        if part is not None and part.first <= offset + i < part.last:
            continue
        if line.lstrip().startswith("//"):
            continue
        c = guard(line)
        if c is None:
            return None
        conds.append(c)
    return _Step(conds, part.phases if part else [])


def find(
    steps: Sequence[Sequence[str]],
    offsets: Sequence[int],
    parts: Sequence[Part | None],
    static_params: Sequence[int] | None,
) -> list[tuple[int, int, list[Cond]]]:
    """Runs of steps [first, last] worth a chain, with their conditions."""
    out: list[tuple[int, int, list[Cond]]] = []
    run: list[tuple[int, _Step]] = []

    def close() -> None:
        while run and not run[-1][1].phases:  # guarded steps at either end stay outside
            run.pop()
        while run and not run[0][1].phases:
            run.pop(0)
        if sum(len(s.phases) for _, s in run) >= MIN_PHASES:
            conds = [c for _, s in run for c in s.conds]
            out.append((run[0][0], run[-1][0], conds))
        run.clear()

    for i, (lines, offset, part) in enumerate(zip(steps, offsets, parts, strict=True)):
        step = _classify(lines, offset, part)
        if step is not None and static_params is not None and not holds(step.conds, static_params):
            step = None  # the one bucket runs this step's host code: the chain ends here
        if step is None:
            close()
            continue
        if sum(len(s.phases) for _, s in run) + len(step.phases) > MAX_PHASES:
            close()
        run.append((i, step))
    close()
    return out


def wrap(lines: Sequence[str], slot: int) -> list[str]:
    """A chained step's host lines, run only where its bucket does not take the chain."""
    comments = [line for line in lines if line.lstrip().startswith("//")]
    code = [line for line in lines if not line.lstrip().startswith("//")]
    if not code:
        return list(lines)
    return [
        *comments,
        f"  if (!gml::chained(ctx, P[{slot}])) {{  // else the chain above ran this",
        *("  " + line for line in code),
        "  }",
    ]


def launch(
    steps: Sequence[Sequence[str]], parts: Sequence[Part | None], slot: int, blocks_per_sm: int
) -> list[str]:
    """The step that launches a chain over these steps: each part's phases, after its op
    comments (`// phase of gml....`: the `// gml.` lines begin an op's own host code)."""
    kernels = sum(p.kernels for p in parts if p is not None)
    phases: list[str] = []
    for step, part in zip(steps, parts, strict=True):
        if part is None:
            continue
        phases += [f"      // phase of {line.strip()[3:]}" for line in step if _op_comment(line)]
        phases += [f"      {p}," for p in part.phases]
    phases[-1] = phases[-1].removesuffix(",")
    return [
        f"  // chain: the {kernels} kernels below as phases of one persistent kernel",
        f"  if (gml::chained(ctx, P[{slot}])) {{",
        f"    if (int e = gml::launch_chain<{blocks_per_sm}>(ctx, stream,",
        *phases,
        "        )) return e;",
        "  }",
    ]


def _op_comment(line: str) -> bool:
    return line.lstrip().startswith("// gml.")
