"""Placement solvers, segment outlining, comm insertion and overlap, end to end.

Solvers are checked on hand-built problems (where the optimum is known) and
against each other; the partitioned programs are checked by running them on the
reference interpreter (sends and receives simulated) against the original.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from conftest import imported
from gimlet.dialects import comm, gml
from gimlet.dtypes import torch_to_numpy
from gimlet.errors import UserError, VerificationError
from gimlet.interpreter import run
from gimlet.ir import main_func, parse, print_ir
from gimlet.pass_manager import run_pipeline, verify_program
from gimlet.placement.cluster import Cluster, Device, Link
from gimlet.placement.dp import dp
from gimlet.placement.solvers import Problem, evaluate, greedy, is_free, milp

G = 1e9


def _cluster(n: int = 3) -> Cluster:
    devs = {f"d{i}": Device(f"d{i}", "cpu", {"f32": 1e12}, 100 * G, 1000 * G) for i in range(n)}
    links = [Link(f"d{i}", f"d{j}", 10 * G, 1e-5) for i in range(n) for j in range(i + 1, n)]
    return Cluster(devs, links)


def _problem(time: np.ndarray, edges, weights=None, capacity=None, objective="latency") -> Problem:
    n, D = time.shape
    cluster = _cluster(D)
    lat = np.full((D, D), 1e-5)
    inv = np.full((D, D), 1 / (10 * G))
    np.fill_diagonal(lat, 0)
    np.fill_diagonal(inv, 0)
    return Problem(
        cluster,
        list(cluster.devices),
        [None] * n,
        time,  # type: ignore[list-item]
        np.zeros(n) if weights is None else np.asarray(weights, float),
        edges,
        [],
        [],
        np.full(D, 1e18) if capacity is None else np.asarray(capacity, float),
        0,
        lat,
        inv,
        np.ones(D),
        objective,
    )


def _chain(n: int, D: int, seed: int) -> Problem:
    rng = np.random.default_rng(seed)
    time = rng.uniform(1e-4, 1e-3, (n, D))
    edges = [(i, [i + 1], float(rng.uniform(1e5, 1e7))) for i in range(n - 1)]
    return _problem(time, edges)


def test_dp_is_optimal_on_chains() -> None:
    for seed in range(5):
        p = _chain(12, 3, seed)
        best = evaluate(p, milp(p)).objective
        assert evaluate(p, dp(p)).objective == pytest.approx(best, rel=1e-6)
        assert evaluate(p, greedy(p)).objective >= best - 1e-12


def test_dp_stages_respect_memory() -> None:
    time = np.array([[1.0, 2.0]] * 4)
    p = _problem(
        time, [(i, [i + 1], 1.0) for i in range(3)], weights=[5, 5, 5, 5], capacity=[10, 100]
    )
    assign = dp(p)
    assert sum(5 for a in assign if a == 0) <= 10
    assert assign == [0, 0, 1, 1] or assign == [1, 1, 0, 0] or assign.count(0) <= 2


def test_dp_fills_binding_memory_like_the_milp() -> None:
    """Memory binds: fast d0 holds about half the weights; dp's labelled recurrence (a DP over
    memory states) must pack it as well as the exact MILP, within 1%, and always fit."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        n = 30
        time = np.column_stack([rng.uniform(1e-4, 1e-3, n), rng.uniform(2e-3, 5e-3, n)])
        weights = rng.uniform(1, 10, n) * (rng.uniform(size=n) < 0.5)
        edges = [(i, [i + 1], float(rng.uniform(1e5, 1e6))) for i in range(n - 1)]
        p = _problem(time, edges, weights=weights, capacity=[weights.sum() / 2, 1e18])
        got, best = dp(p), milp(p)
        assert evaluate(p, got).memory[0] <= weights.sum() / 2
        assert evaluate(p, got).objective <= evaluate(p, best).objective * 1.01


def test_dp_throughput_matches_milp_when_devices_interleave() -> None:
    """Throughput on a chain whose best pipeline visits a device more than once."""
    for seed in range(4):
        p = _chain(16, 3, seed)
        p.objective = "throughput"
        best = evaluate(p, milp(p)).objective
        assert evaluate(p, dp(p)).objective <= best * 1.01


def test_unsupported_ops_never_placed() -> None:
    time = np.array([[1e-3, np.inf], [np.inf, 1e-3], [1e-3, 1e-3]])
    p = _problem(time, [(0, [1], 1e3), (1, [2], 1e3)])
    for solve in (greedy, dp, milp):
        a = solve(p)
        assert a[0] == 0 and a[1] == 1


def test_throughput_objective_balances_stages() -> None:
    time = np.full((8, 2), 1e-3)
    p = _problem(time, [(i, [i + 1], 1e3) for i in range(7)], objective="throughput")
    for solve in (dp, milp):
        a = solve(p)
        assert a.count(0) == 4 and a.count(1) == 4, a


def test_energy_objective_prefers_frugal_device() -> None:
    time = np.array([[1e-3, 2e-3]] * 3)
    p = _problem(time, [(0, [1], 1e3), (1, [2], 1e3)], objective="energy")
    p.weight_of = np.array([700.0, 100.0])  # the slow device draws much less power
    assert dp(p) == [1, 1, 1] and milp(p) == [1, 1, 1]


# ------------------------------------------------------------ on real models ---

PIPELINE = 'place{{target="{t}" solver="{s}" pins="{p}"}},outline-segments,insert-comm'


def _partition(name: str, target: str, solver: str = "dp", pins: str = "", overlap: bool = True):
    imp = imported(name)
    module = parse(print_ir(imp.module))
    run_pipeline(module, "canonicalize,fuse-elementwise")
    spec = PIPELINE.format(t=target, s=solver, p=pins) + (",overlap-comm" if overlap else "")
    run_pipeline(module, spec)
    return imp, module


@pytest.mark.parametrize(
    "name", ["mlp", "cnn", "gpt", "llama_block", "hf_gpt2", "hf_llama", "hf_bert", "hf_vit"]
)
def test_partitioned_program_computes_the_same_values(name: str) -> None:
    imp = imported(name)
    module = parse(print_ir(imp.module))
    fn = main_func(module)
    ops = [o for o in fn.body.block.ops if o.dialect_name() == "gml" and not is_free(o)]
    rng = random.Random(0)
    devices = ["cpu0", "cpu1", "cpu2"]
    for op in ops:  # a deliberately scattered placement: many cuts, many transfers
        op.attributes["gml.device"] = gml.StringAttr(rng.choice(devices))
    for op in fn.body.block.ops:
        if op.dialect_name() == "arith" or isinstance(op, gml.DimOp):
            op.attributes["gml.device"] = gml.StringAttr("cpu0")
    module.attributes["gml.target"] = gml.StringAttr("examples/three_cpus.cluster")
    run_pipeline(module, "outline-segments,insert-comm,overlap-comm")
    text = print_ir(module)
    assert "comm.isend" in text and "comm.irecv" in text
    assert parse(text).is_structurally_equivalent(module)
    got = run(module, [torch_to_numpy(t) for t in imp.inputs], imp.weights)
    for g, want in zip(got, imp.expected, strict=True):
        np.testing.assert_allclose(g, want.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_solver_placement_on_gpt_runs_and_explains() -> None:
    from gimlet.placement.explain import build_report, to_dot, to_json, to_text
    from gimlet.placement.target import resolve

    imp, module = _partition("gpt", "h100+cpu", pins="h.1=cpu0")
    got = run(module, [torch_to_numpy(t) for t in imp.inputs], imp.weights)
    np.testing.assert_allclose(got[0], imp.expected[0].detach().numpy(), rtol=1e-4, atol=1e-5)
    report = build_report(module, resolve("h100+cpu"))
    devices = {s.device for s in report.segments}
    assert "cpu0" in devices
    text = to_text(report)
    assert "segment 0 on" in text and "why:" in text and "gain over the best single device" in text
    assert '"segments"' in to_json(report)
    assert to_dot(report).startswith("digraph gimlet {")


def test_one_transfer_per_tensor_per_destination() -> None:
    _, module = _partition(
        "mlp", "examples/three_cpus.cluster", pins="fc1=cpu1,fc2=cpu2", overlap=False
    )
    sends = [o for o in module.walk() if isinstance(o, comm.SendOp)]
    keys = [(id(o.value), o.peer.data) for o in sends]
    assert len(keys) == len(set(keys))
    channels = [o.channel.value.data for o in sends]
    assert len(channels) == len(set(channels))


def test_overlap_reports_modelled_time_before_and_after() -> None:
    _, module = _partition("gpt", "h100+cpu", pins="h.1=cpu0")
    before = module.attributes["gml.modelled_s_before_overlap"].value.data  # type: ignore[attr-defined]
    after = module.attributes["gml.modelled_s_after_overlap"].value.data  # type: ignore[attr-defined]
    assert 0 < after <= before


def test_pin_to_unknown_device_and_no_match() -> None:
    with pytest.raises(UserError, match="--pin h.0=gpu9: unknown device; devices: gpu0, cpu0"):
        _partition("gpt", "h100+cpu", pins="h.0=gpu9")
    with pytest.raises(UserError, match="--pin nothing.here=gpu0 matches no op"):
        _partition("gpt", "h100+cpu", pins="nothing.here=gpu0")


def test_model_that_fits_nowhere_names_the_overflow(tmp_path) -> None:
    f = tmp_path / "tiny.cluster"
    f.write_text(
        'cluster "tiny"\n'
        "device cpu0 : cpu { mem_capacity = 1 KB }\n"
        "device acc0 : accelerator { peak_flops = { f32: 1 TFLOPS }, mem_bandwidth = 1 TB/s, "
        "mem_capacity = 2 KB, host = cpu0 }\n"
    )
    with pytest.raises(UserError, match="no placement fits|model does not fit"):
        _partition("mlp", str(f))


def test_mismatched_channels_are_verifier_errors() -> None:
    text = """
    builtin.module attributes {gml.target = "examples/three_cpus.cluster"} {
      func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
        comm.send %x to "cpu1" channel 0 via "pcie" : tensor<4xf32>
        %r = gml.segment "cpu1"() : () -> tensor<4xf32> {
          %y = comm.recv from "cpu0" channel 0 via "pcie" : tensor<8xf32>
          %z = gml.constant dense<1.0> : tensor<4xf32>
          gml.yield %z : tensor<4xf32>
        }
        func.return %r : tensor<4xf32>
      }
    }
    """
    with pytest.raises(
        VerificationError, match="channel 0 sends tensor<4xf32> but receives tensor<8xf32>"
    ):
        verify_program(parse(text))


def test_deadlock_is_a_verifier_error() -> None:
    text = """
    builtin.module attributes {gml.target = "examples/three_cpus.cluster"} {
      func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
        %a = comm.recv from "cpu1" channel 1 via "pcie" : tensor<4xf32>
        comm.send %x to "cpu1" channel 0 via "pcie" : tensor<4xf32>
        gml.segment "cpu1"() : () -> () {
          %y = comm.recv from "cpu0" channel 0 via "pcie" : tensor<4xf32>
          gml.yield
        }
        gml.segment "cpu1"() : () -> () {
          %z = gml.constant dense<1.0> : tensor<4xf32>
          comm.send %z to "cpu0" channel 1 via "pcie" : tensor<4xf32>
          gml.yield
        }
        func.return %a : tensor<4xf32>
      }
    }
    """
    with pytest.raises(
        VerificationError,
        match="transfers deadlock: cpu0 waits at recv channel 1; cpu1 waits at recv channel 0",
    ):
        verify_program(parse(text))
