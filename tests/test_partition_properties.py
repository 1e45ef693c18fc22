"""Property test: any placement of any generated graph computes what the graph computes.

Hypothesis draws a random DAG of gml ops (elementwise, matmul, reductions, reshapes,
weights, several outputs) and a random device for every op; outlining, comm insertion and
overlap must leave the values unchanged, the transfer check must pass, and the IR must
round-trip.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gimlet.interpreter import run
from gimlet.ir import parse, print_ir
from gimlet.pass_manager import run_pipeline, verify_program

DEVICES = ["cpu0", "cpu1", "cpu2"]
T = "tensor<4x4xf32>"


@st.composite
def graphs(draw: st.DrawFn) -> tuple[str, dict[str, np.ndarray]]:
    n = draw(st.integers(2, 14))
    lines = [
        'builtin.module attributes {gml.target = "examples/three_cpus.cluster"} {',
        f"  func.func @main(%a: {T}, %b: {T}) -> ({T}, {T}) {{",
        f'    %w = gml.param "w" : {T}',
    ]
    values = ["%a", "%b", "%w"]
    for i in range(n):
        kind = draw(st.sampled_from(["add", "mul", "matmul", "relu", "tanh", "sum", "reshape"]))
        x = draw(st.sampled_from(values))
        y = draw(st.sampled_from(values))
        dev = draw(st.sampled_from(DEVICES))
        attr = f'{{gml.device = "{dev}"}}'
        v = f"%v{i}"
        if kind in ("add", "mul", "matmul"):
            lines.append(f"    {v} = gml.{kind} {x}, {y} {attr} : ({T}, {T}) -> {T}")
        elif kind in ("relu", "tanh"):
            lines.append(f"    {v} = gml.{kind} {x} {attr} : {T}")
        elif kind == "sum":
            lines.append(f"    {v}s = gml.sum {x} [1] keepdim true {attr} : {T} to tensor<4x1xf32>")
            lines.append(f"    {v} = gml.expand {v}s {attr} : tensor<4x1xf32> to {T}")
        else:
            lines.append(f"    {v}r = gml.reshape {x} {attr} : {T} to tensor<16xf32>")
            lines.append(f"    {v} = gml.reshape {v}r {attr} : tensor<16xf32> to {T}")
        values.append(v)
    out1 = draw(st.sampled_from(values[3:]))
    lines += [f"    func.return {out1}, {values[-1]} : {T}, {T}", "  }", "}"]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    weights = {"w": rng.standard_normal((4, 4)).astype(np.float32)}
    return "\n".join(lines), weights


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_any_placement_preserves_values(graph: tuple[str, dict[str, np.ndarray]]) -> None:
    text, weights = graph
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((4, 4)).astype(np.float32) for _ in range(2)]
    module = parse(text)
    want = run(module, inputs, weights)
    run_pipeline(module, "outline-segments,insert-comm,overlap-comm")
    verify_program(module)
    assert parse(print_ir(module)).is_structurally_equivalent(module)
    got = run(module, inputs, weights)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
