"""Front-end cost of gimlet: GPT-2 small end to end, and how each stage scales with graph size.

What is measured, and why:

1. GPT-2 small (`examples/gpt.py:gpt2_small`, 12 layers, d=768) through the real CLI
   (`gimletc compile ... -o OUT` in a subprocess, so Python start-up and `import torch` count),
   plus an in-process breakdown of the same work: model construction, torch.export,
   run_decompositions, import_program, verify, the DEFAULT_PIPELINE passes, print_ir,
   parse-back and saving the weights. The issue's goal is GPT-2 small end to end in under 3 s;
   the report says plainly whether that is met and where the time goes.
2. Scaling with graph size, to catch a stage that is worse than n log n before a big model does:
   - `torch`: an nn.Module whose exported graph is a long chain of tiny addmm/relu/add layers
     (1k..10k gml ops), through torch.export and run_decompositions (torch's cost, reported
     apart) and then gimlet's import, verify, passes, print and parse-back;
   - `ir`: gml IR text generated directly (permute/matmul/add/mul/reshape units on 4x8
     tensors, 1k..10k ops), which isolates gimlet's own cost: parse, verify, each pass, print;
   - `ir-eltwise`: one unbroken chain of elementwise add/mul ops, the worst case for
     fuse-elementwise (it all becomes one fusion group); kept small because it is quadratic.
   Each stage gets its time per op at each size and its log-log slope from the smallest to the
   largest size (a least-squares fit over all sizes, steadier than two end points on a busy
   machine; ~1 is linear, <= 1.1 counts as "no worse than n log n"). A gimlet stage
   over that is profiled with cProfile at the two smallest sizes; call counts do not depend on
   machine load, so a function called ~n^2 times is named as the cause (file:line:function and
   its caller), and a stage whose call counts all grow linearly is reported as not algorithmic.

Scaling times are CPU time of this process (time.process_time): the machine may be shared, and
wall time would charge a stage for other processes. GPT-2 stages report wall and CPU time. The
passes are run the way run_pipeline runs them (build_pipeline, then apply and verify each pass),
so that each pass and each verification can be timed on its own. Objects alive before a timed
stage are frozen out of the garbage collector (`gc.freeze`), so a stage is not charged for
rescanning the heap left by earlier sizes.

Run `python benchmarks/frontend_scaling.py [--quick]`. Progress goes to stderr, the tables to
stdout, and results to benchmarks/results/frontend_scaling.{json,md} (`--quick`: smaller sizes,
written to frontend_scaling_quick.{json,md}).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import json
import math
import os
import pstats
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import results_io  # benchmarks/results_io.py: this script's folder is on sys.path
import torch
from torch.export import ExportedProgram
from xdsl.dialects.builtin import ModuleOp

from gimlet.artifacts import WEIGHTS_FILE, save_weights
from gimlet.frontend.importer import import_program
from gimlet.frontend.load import decompose, export, load_factory
from gimlet.ir import context, parse, print_ir, verify
from gimlet.pass_manager import DEFAULT_PIPELINE, build_pipeline

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GPT2_SPEC = "examples/gpt.py:gpt2_small"
GOAL_S = 3.0
SLOPE_LIMIT = 1.1  # a log-log slope above this is treated as worse than n log n
TORCH_STAGES = ("torch.export", "run_decompositions")
SIZES = {  # kind -> (full sizes, --quick sizes), in target gml ops
    "ir": ([1000, 2000, 5000, 10000], [500, 1000, 2000]),
    "ir-eltwise": ([500, 1000, 2000], [250, 500, 1000]),
    "torch": ([1000, 2000, 5000, 10000], [500, 1000, 2000]),
}
# Diagnoses of culprits this benchmark has found (matched on the function's location).
KNOWN_FIXES = {
    "passes/fuse_elementwise.py": (
        "`_groups` re-checks every use of every member of the candidate group (and rebuilds "
        "`set(g)`) each time it extends a group, so an elementwise chain of length L costs "
        "O(L^2). Suggested fix: keep each group's member set incrementally plus a `closed` flag, "
        "set when an op that uses a member is scanned and does not join the group (or a use is "
        "outside the block); a closed group can never be extended again, so the check is O(1)."
    ),
}
T = TypeVar("T")
Loader = Callable[[], ModuleOp]
_START = time.perf_counter()


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.perf_counter() - _START:6.1f}s] {msg}\n")
    sys.stderr.flush()


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """(result, wall s, CPU s) of one call; objects alive before it are frozen out of GC."""
    gc.collect()
    gc.freeze()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        return result, time.perf_counter() - wall, time.process_time() - cpu
    finally:
        gc.unfreeze()


def fmt_s(seconds: float) -> str:
    if abs(seconds) >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.1f} ms" if abs(seconds) < 0.01 else f"{seconds * 1e3:.0f} ms"


def machine_info() -> dict[str, Any]:
    return results_io.machine_info("xdsl")


# ------------------------------------------------------------------ gimlet's stages ---


@dataclass
class StageRun:
    cpu: dict[str, float] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)
    n_ops: int = 0
    profiles: dict[str, pstats.Stats] = field(default_factory=dict)


def _in_target(stage: str, target: str) -> bool:
    """Whether `stage` (a raw stage name) is part of the reported stage `target`."""
    if target == "pipeline":
        return stage.startswith(("pass:", "verify:"))
    if target == "verify-after-passes":
        return stage.startswith("verify:")
    return stage == target


def _summarize(raw: dict[str, float]) -> dict[str, float]:
    """Fold the per-pass `verify:*` times into `verify-after-passes` and add `pipeline`."""
    passes = {k: v for k, v in raw.items() if k.startswith("pass:")}
    after = sum(v for k, v in raw.items() if k.startswith("verify:"))
    out = {k: v for k, v in raw.items() if k in ("import", "parse", "verify")}
    out |= {"pipeline": sum(passes.values()) + after, **passes, "verify-after-passes": after}
    return out | {k: v for k, v in raw.items() if k in ("print", "parse-back")}


def gimlet_stages(load: Loader, load_name: str, profile: Collection[str] = ()) -> StageRun:
    """Time load (import or parse), verify, each pass and its verification, print, parse-back.

    Stages inside a reported stage named in `profile` run under cProfile; their stats come
    back in `profiles` (and print/parse-back are skipped when no profiled stage needs them).
    Parse-back is skipped when the load was a parse.
    """
    run = StageRun()
    profilers: dict[str, cProfile.Profile] = {}

    def stage(name: str, fn: Callable[[], T]) -> T:
        target = next((t for t in profile if _in_target(name, t)), None)
        if target is not None:
            prof = profilers.setdefault(target, cProfile.Profile())
            fn = functools.partial(prof.runcall, fn)
        result, run.wall[name], run.cpu[name] = timed(fn)
        return result

    module = stage(load_name, load)
    run.n_ops = sum(1 for _ in module.walk())
    stage("verify", lambda: verify(module))
    ctx = context()
    for p in build_pipeline(DEFAULT_PIPELINE):  # what run_pipeline does, one step at a time
        stage(f"pass:{p.name}", functools.partial(p.apply, ctx, module))
        stage(f"verify:{p.name}", functools.partial(verify, module, after=p.name))
    if not profile or {"print", "parse-back"} & set(profile):
        text = stage("print", lambda: print_ir(module))
    if load_name != "parse" and (not profile or "parse-back" in profile):
        stage("parse-back", lambda: parse(text))
    run.cpu, run.wall = _summarize(run.cpu), _summarize(run.wall)
    run.profiles = {t: pstats.Stats(p) for t, p in profilers.items()}
    return run


def headline(times: dict[str, float]) -> float:
    """Sum of the top-level stages (per-pass rows are already inside `pipeline`)."""
    return sum(v for k, v in times.items() if not k.startswith(("pass:", "verify-after")))


# ---------------------------------------------------------------------------- GPT-2 ---


def bench_gpt2_cli() -> dict[str, float]:
    """Wall time of `gimletc compile` as a subprocess, and of Python + imports alone."""
    gimletc = Path(sys.executable).with_name("gimletc")
    cli = [str(gimletc)] if gimletc.exists() else [sys.executable, "-m", "gimlet.cli"]
    imports = "import gimlet.cli, gimlet.frontend"
    startup = timed(lambda: subprocess.run([sys.executable, "-c", imports], check=True))[1]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [*cli, "compile", GPT2_SPEC, "-o", os.path.join(tmp, "out")]
        done, wall, _ = timed(lambda: subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True))
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return {"cli_wall": wall, "startup_and_imports": startup}


def bench_gpt2_inprocess() -> tuple[dict[str, tuple[float, float]], int]:
    """stage -> (wall s, CPU s) for the in-process equivalent of `gimletc compile`."""
    (model, inputs, dyn), *build = timed(lambda: load_factory(str(ROOT / GPT2_SPEC)))
    ep, *t_export = timed(lambda: export(model, inputs, dyn))
    ep, *t_decomp = timed(lambda: decompose(ep))
    weights: dict[str, Any] = {}

    def do_import() -> ModuleOp:
        module, w = import_program(ep)
        weights.update(w)
        return module

    run = gimlet_stages(do_import, "import")
    with tempfile.TemporaryDirectory() as tmp:
        _, *t_save = timed(lambda: save_weights(os.path.join(tmp, WEIGHTS_FILE), weights))
    pairs: dict[str, Any] = {"model construction": build, "torch.export": t_export}
    pairs |= {"run_decompositions": t_decomp}
    pairs |= {k: (run.wall[k], run.cpu[k]) for k in run.wall} | {"save weights": t_save}
    return {k: (v[0], v[1]) for k, v in pairs.items()}, run.n_ops


# ------------------------------------------------------------------ synthetic inputs ---


class Chain(torch.nn.Module):
    """`layers` x (addmm, relu, add with alpha) on a 4x8 tensor.

    Three FX nodes per layer import as five gml ops (matmul, add, relu, mul, add), which
    keeps torch's share of the run time down.
    """

    def __init__(self, layers: int):
        super().__init__()
        self.layers = layers
        self.w = torch.nn.Parameter(torch.randn(8, 8))
        self.b = torch.nn.Parameter(torch.randn(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.layers):
            x = torch.add(x, torch.relu(torch.addmm(self.b, x, self.w)), alpha=0.5)
        return x


def torch_graph(n_ops: int) -> tuple[ExportedProgram, dict[str, float]]:
    """A decomposed ExportedProgram that imports to ~n_ops ops, and torch's CPU time for it."""
    model = Chain(max(1, (n_ops - 7) // 5))
    ep, _, t_export = timed(lambda: export(model, (torch.randn(4, 8),)))
    ep, _, t_decomp = timed(lambda: decompose(ep))
    return ep, {"torch.export": t_export, "run_decompositions": t_decomp}


def _module_text(body: list[str], result: str, t: str) -> str:
    head = ["builtin.module {", f"  func.func @main(%x0: {t}) -> {t} {{"]
    tail = [f"    func.return {result} : {t}", "  }", "}"]
    return "\n".join(head + body + tail) + "\n"


def ir_text(n_ops: int) -> str:
    """gml IR with ~n_ops ops: a chain of (permute, matmul, add, mul, reshape, reshape) units.

    The add's result is declared `?x8` (infer-shapes refines it), the permutes of the one
    weight are identical (cse merges them), add+mul fuse, and the reshape pairs cancel
    (canonicalize), so every pass of the default pipeline has work proportional to n.
    """
    t, d, w = "tensor<4x8xf32>", "tensor<?x8xf32>", "tensor<8x8xf32>"
    body = [f'    %w = gml.param "w" : {w}', "    %s = gml.constant dense<5.0e-01> : tensor<f32>"]
    units = max(1, (n_ops - 6) // 6)
    for i in range(units):
        body += [
            f"    %t{i} = gml.permute %w [1, 0] : {w} to {w}",
            f"    %m{i} = gml.matmul %x{i}, %t{i} : ({t}, {w}) -> {t}",
            f"    %a{i} = gml.add %m{i}, %x{i} : ({t}, {t}) -> {d}",
            f"    %u{i} = gml.mul %a{i}, %s : ({d}, tensor<f32>) -> {d}",
            f"    %r{i} = gml.reshape %u{i} : {d} to tensor<8x4xf32>",
            f"    %x{i + 1} = gml.reshape %r{i} : tensor<8x4xf32> to {t}",
        ]
    return _module_text(body, f"%x{units}", t)


def eltwise_text(n_ops: int) -> str:
    """gml IR with ~n_ops ops: one unbroken chain of alternating gml.add / gml.mul."""
    t = "tensor<4x8xf32>"
    n = max(1, n_ops - 3)
    body = [
        f"    %x{i + 1} = gml.{'mul' if i % 2 else 'add'} %x{i}, %x0 : ({t}, {t}) -> {t}"
        for i in range(n)
    ]
    return _module_text(body, f"%x{n}", t)


def make_input(kind: str, n: int) -> tuple[Loader, dict[str, float]]:
    """A function building the module for `kind` at ~n ops, and torch's time to prepare it."""
    if kind == "torch":
        ep, torch_times = torch_graph(n)
        return lambda: import_program(ep)[0], torch_times
    text = ir_text(n) if kind == "ir" else eltwise_text(n)
    return lambda: parse(text), {}


# ------------------------------------------------------------------------- analysis ---


def slope(ns: list[int], ts: list[float]) -> float:
    """Least-squares slope of log t against log n (with two points: the slope between them)."""
    if min(ts) <= 0 or len(set(ns)) < 2:
        return float("nan")
    xs, ys = [math.log(n) for n in ns], [math.log(t) for t in ts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return cov / sum((x - mx) ** 2 for x in xs)


def _where(key: tuple[str, int, str]) -> str:
    file, line, fn = key
    if file == "~":
        return fn  # a builtin
    for base in (str(ROOT), *sys.path):
        if base and file.startswith(base + os.sep):
            file = os.path.relpath(file, base)
            break
    return f"{file}:{line}:{fn}"


def growth_rows(
    small: pstats.Stats, n_small: int, large: pstats.Stats, n_large: int
) -> list[dict[str, Any]]:
    """Per function: calls and own time at both sizes, their slopes, and the main caller."""
    sizes = [n_small, n_large]
    small_stats: dict[Any, Any] = small.stats  # type: ignore[attr-defined]
    rows = []
    for key, (_, calls, own, _, callers) in large.stats.items():  # type: ignore[attr-defined]
        _, calls_s, own_s, _, _ = small_stats.get(key, (0, 0, 0.0, 0.0, {}))
        caller = max(callers.items(), key=lambda kv: kv[1][3])[0] if callers else None
        rows.append(
            {
                "function": _where(key),
                "called_by": _where(caller) if caller else "",
                "own_s": [own_s, own],
                "own_slope": slope(sizes, [own_s, own]),
                "calls": [calls_s, calls],
                "calls_slope": slope(sizes, [calls_s, calls]),
            }
        )
    return rows


def diagnose(rows: list[dict[str, Any]], total_large: float) -> tuple[str, list[dict[str, Any]]]:
    """A verdict and the culprit functions: those called ~n^1.3+ times that cost >= 2%."""
    heavy = [r for r in rows if r["own_s"][1] >= 0.02 * total_large]
    culprits = sorted((r for r in heavy if r["calls_slope"] > 1.3), key=lambda r: -r["own_s"][1])[
        :3
    ]
    if not culprits:
        top = max((r["calls_slope"] for r in heavy), default=float("nan"))
        note = (
            "every function's call count grows linearly (largest slope among functions with "
            f">= 2% of the time: {top:.2f}), so the growth is not algorithmic: machine load, GC "
            "or cache effects"
        )
        return note, sorted(heavy, key=lambda r: -r["own_s"][1])[:3]
    where = {c["function"] for c in culprits} | {c["called_by"] for c in culprits}
    fixes = [v for k, v in KNOWN_FIXES.items() if any(k in w for w in where)]
    c = culprits[0]
    note = f"algorithmic: `{c['function']}` (called by `{c['called_by']}`) runs "
    note += f"~n^{c['calls_slope']:.1f} times. " + " ".join(fixes)
    return note.strip(), culprits


def run_scaling(kind: str, sizes: list[int]) -> tuple[dict[str, Any], dict[int, Loader]]:
    """CPU time of each stage at each size; loaders kept for the two smallest sizes."""
    loaders: dict[int, Loader] = {}
    rows: list[dict[str, Any]] = []
    load_name = "import" if kind == "torch" else "parse"
    for i, n in enumerate(sizes):
        load, torch_times = make_input(kind, n)
        run = gimlet_stages(load, load_name)
        rows.append({"ops": run.n_ops, "cpu": torch_times | run.cpu, "wall": run.wall})
        if i < 2:
            loaders[run.n_ops] = load  # others are dropped: they would only grow the heap
        torch_s = fmt_s(sum(torch_times.values()))
        log(f"{kind} n={run.n_ops}: torch {torch_s}, gimlet {fmt_s(headline(run.cpu))} (CPU)")
    ns = [r["ops"] for r in rows]
    fits = {}
    for stage in rows[0]["cpu"]:
        ts = [r["cpu"][stage] for r in rows]
        fits[stage] = {
            "us_per_op": [1e6 * t / n for t, n in zip(ts, ns, strict=True)],
            "cpu_s": ts,
            "wall_s": [r["wall"].get(stage) for r in rows],
            "slope": slope(ns, ts),
            "at_most_nlogn": bool(slope(ns, ts) <= SLOPE_LIMIT),
        }
    return {"ops": ns, "targets": sizes, "load_stage": load_name, "stages": fits}, loaders


def profile_superlinear(
    kind: str, result: dict[str, Any], loaders: dict[int, Loader]
) -> list[dict[str, Any]]:
    """cProfile every super-linear gimlet stage at the two smallest sizes and diagnose it."""
    stages = result["stages"]
    flagged = [s for s, f in stages.items() if not f["at_most_nlogn"] and s not in TORCH_STAGES]
    if not flagged:
        return []
    # Profilers do not nest: when parts of the pipeline are flagged, profile those parts.
    parts = [s for s in flagged if s.startswith("pass:") or s == "verify-after-passes"]
    targets = [s for s in flagged if not (s == "pipeline" and parts)]
    (n0, load0), (n1, load1) = loaders.items()
    log(f"{kind}: profiling {', '.join(targets)} at {n0} and {n1} ops")
    small = gimlet_stages(load0, result["load_stage"], targets).profiles
    large = gimlet_stages(load1, result["load_stage"], targets).profiles
    findings = []
    for target in targets:
        totals = [small[target].total_tt, large[target].total_tt]  # type: ignore[attr-defined]
        rows = growth_rows(small[target], n0, large[target], n1)
        note, culprits = diagnose(rows, totals[1])
        log(f"{kind}: {target}: {note[:90]}")
        findings.append(
            {
                "kind": kind,
                "stage": target,
                "slope": stages[target]["slope"],
                "profiled_at": [n0, n1],
                "profiled_cpu_s": totals,
                "verdict": note,
                "functions": culprits,
            }
        )
    return findings


# ---------------------------------------------------------------------------- report ---


def markdown(report: dict[str, Any]) -> str:
    m, g = report["machine"], report["gpt2"]
    wall = {k: v[0] for k, v in g["stages"].items()}
    torch_side = g["startup_and_imports"] + sum(
        wall[k] for k in ("model construction", *TORCH_STAGES)
    )
    gimlet_side = sum(wall[k] for k in ("import", "verify", "pipeline", "print", "save weights"))
    out = [
        "# gimlet front-end scaling",
        "",
        f"{m['date']} · {m['cpu']} · {m['nproc']} CPUs · Python {m['python']} · "
        f"torch {m['torch']} · xDSL {m['xdsl']} · gimlet {m['gimlet']} · load average "
        f"{m['loadavg_start']:.1f} at start, {m['loadavg_end']:.1f} at end",
        "",
        f"## GPT-2 small ({g['ops']} ops after import)",
        "",
        f"`gimletc compile {GPT2_SPEC}` wall time: **{g['cli_wall']:.2f} s**. "
        f"Goal < {GOAL_S:.0f} s: **{'met' if g['goal_met'] else 'NOT met'}**. "
        f"Python start-up + imports alone take {g['startup_and_imports']:.2f} s; with model "
        f"construction, torch.export and run_decompositions that is {torch_side:.2f} s outside "
        f"gimlet, against {gimlet_side:.2f} s in gimlet (import, verify, passes, print, weights).",
        "",
        "| in-process stage | wall | CPU |",
        "|---|---:|---:|",
    ]
    out += [f"| {k} | {fmt_s(w)} | {fmt_s(c)} |" for k, (w, c) in g["stages"].items()]
    total_w, total_c = g["inprocess_total"]
    out.append(f"| **sum** (top-level rows) | **{fmt_s(total_w)}** | **{fmt_s(total_c)}** |")
    for kind, res in report["scaling"].items():
        ns = res["ops"]
        out += [
            "",
            f"## Scaling: `{kind}` (CPU µs per op; log-log slope fitted over {ns[0]}..{ns[-1]} ops)",
            "",
            "| stage | " + " | ".join(f"{n} ops" for n in ns) + " | at max | slope | ≤ n log n |",
            "|---|" + "---:|" * (len(ns) + 3),
        ]
        for stage, fit in res["stages"].items():
            per_op = " | ".join(f"{u:.1f}" for u in fit["us_per_op"])
            ok = "yes" if fit["at_most_nlogn"] else "**NO**"
            last, sl = fmt_s(fit["cpu_s"][-1]), f"{fit['slope']:.2f}"
            out.append(f"| {stage} | {per_op} | {last} | {sl} | {ok} |")
    out += ["", "## Super-linear gimlet stages", ""]
    if not report["superlinear"]:
        out.append(f"None: every gimlet stage has slope ≤ {SLOPE_LIMIT}.")
    for f in report["superlinear"]:
        (a, b), (p0, p1) = f["profiled_at"], f["profiled_cpu_s"]
        out.append(
            f"- `{f['kind']}` **{f['stage']}** (slope {f['slope']:.2f}); under cProfile "
            f"{fmt_s(p0)} → {fmt_s(p1)} at {a} → {b} ops. {f['verdict']}"
        )
        pipe = report["scaling"][f["kind"]]["stages"]["pipeline"]
        if f["stage"].startswith("pass:") and not pipe["at_most_nlogn"]:
            out[-1] += f" It makes `pipeline` super-linear too (slope {pipe['slope']:.2f})."
        for c in f["functions"]:
            out.append(
                f"  - `{c['function']}` (called by `{c['called_by']}`): calls "
                f"{c['calls'][0]} → {c['calls'][1]} (slope {c['calls_slope']:.2f}), own time "
                f"{fmt_s(c['own_s'][0])} → {fmt_s(c['own_s'][1])}"
            )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, a quick sanity run")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    report: dict[str, Any] = {"machine": machine_info(), "quick": args.quick}
    log(f"GPT-2 small: gimletc compile {GPT2_SPEC} (subprocess)")
    cli = bench_gpt2_cli()
    log(f"CLI wall {cli['cli_wall']:.2f}s (start-up + imports {cli['startup_and_imports']:.2f}s)")
    log("GPT-2 small: in-process breakdown")
    stages, n_ops = bench_gpt2_inprocess()
    report["gpt2"] = cli | {
        "ops": n_ops,
        "stages": stages,
        "inprocess_total": [headline({k: v[i] for k, v in stages.items()}) for i in (0, 1)],
        "goal_s": GOAL_S,
        "goal_met": cli["cli_wall"] < GOAL_S,
    }
    report["scaling"], report["superlinear"] = {}, []
    for kind, (full, quick) in SIZES.items():
        sizes = quick if args.quick else full
        log(f"scaling on `{kind}` input: {sizes}")
        result, loaders = run_scaling(kind, sizes)
        report["scaling"][kind] = result
        report["superlinear"] += profile_superlinear(kind, result, loaders)
    report["machine"]["loadavg_end"] = os.getloadavg()[0]

    text = markdown(report)
    print(text)
    stem = "frontend_scaling_quick" if args.quick else "frontend_scaling"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(text)
    log(f"wrote {RESULTS / stem}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
