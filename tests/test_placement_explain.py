"""`--explain` says which constraint decided each segment's device: a pin, the devices that
cannot run its ops, memory, or the modelled comparison (compute here vs on a faster device,
plus the transfers a move would re-route). Messages are checked exactly; the figures come
from the roofline cost model (compiler/placement/cost.py) and the preset datasheets."""

from __future__ import annotations

from pathlib import Path

import pytest

from gimlet.ir import parse
from gimlet.pass_manager import run_pipeline
from gimlet.placement.explain import build_report, to_text
from gimlet.placement.target import resolve

ROOT = Path(__file__).resolve().parents[1]

# Two 134 MB bf16 matmuls around a relu, with torch module paths for pins.
CHAIN = """
func.func @main(%x: tensor<1x8192xbf16>) -> tensor<1x8192xbf16> {
  %w = gml.param "w" : tensor<8192x8192xbf16>
  %v = gml.param "v" : tensor<8192x8192xbf16>
  %0 = gml.matmul %x, %w : (tensor<1x8192xbf16>, tensor<8192x8192xbf16>) -> tensor<1x8192xbf16> loc("h.0.fc"("model.py":3:0))
  %1 = gml.relu %0 : tensor<1x8192xbf16> loc("h.0.act"("model.py":4:0))
  %2 = gml.matmul %1, %v : (tensor<1x8192xbf16>, tensor<8192x8192xbf16>) -> tensor<1x8192xbf16> loc("h.1.fc"("model.py":5:0))
  func.return %2 : tensor<1x8192xbf16>
}
"""


def _whys(text: str, target: str, pins: str = "", objective: str = "latency") -> list[str]:
    module = parse(text)
    run_pipeline(
        module,
        f'place{{target="{target}" pins="{pins}" objective={objective}}},outline-segments,insert-comm',
    )
    report = build_report(module, resolve(target))
    assert f"  why: {report.segments[0].why}\n" in to_text(report)
    return [f"{s.device}: {s.why}" for s in report.segments]


def test_pinned_segment_names_the_pin() -> None:
    assert _whys(CHAIN, "h100+cpu", pins="h.0.act=cpu0") == [
        "gpu0: fastest for these ops (47.9 us vs 0.488 ms on cpu0)",
        "cpu0: pinned by --pin 'h.0.act=cpu0'",
        "gpu0: fastest for these ops (47.9 us vs 0.488 ms on cpu0)",
    ]
    assert _whys(CHAIN, "h100+cpu", pins="h.0.act=cpu0,h.1=cpu0")[1] == (
        "cpu0: pinned by --pin 'h.0.act=cpu0' and --pin 'h.1=cpu0'"
    )


def test_partly_pinned_segment_says_which_ops_were_not() -> None:
    assert _whys(CHAIN, "h100+cpu", pins="h.1=cpu0")[1] == (
        "cpu0: 1 of 2 ops pinned by --pin 'h.1=cpu0'; the others (gml.relu) were placed with them"
    )


def test_memory_names_the_device_and_the_bytes(tmp_path: Path) -> None:
    cluster = tmp_path / "small-fast-acc.cluster"
    cluster.write_text(
        'cluster "small-fast-acc"\n'
        "device cpu0 : cpu\n"
        "device acc0 : accelerator { peak_flops = { bf16: 500 TFLOPS }, "
        "mem_bandwidth = 10 TB/s, mem_capacity = 200 MB, host = cpu0 }\n"
    )
    # acc0 holds one of the two 134 MB weights; the other matmul stays on the host.
    assert _whys(CHAIN, str(cluster)) == [
        "cpu0: acc0 computes them in 24.9 us vs 0.490 ms here, but memory: acc0 would need "
        "268.44 MB of 199.97 MB (its 200.00 MB less 32.77 KB kept for activations)",
        "acc0: fastest for these ops (19.9 us vs 0.488 ms on cpu0)",
    ]


def test_transfers_decide_for_latency() -> None:
    relu = """
    func.func @main(%x: tensor<1048576xf32>) -> tensor<1048576xf32> {
      %0 = gml.relu %x : tensor<1048576xf32> loc("act"("model.py":3:0))
      func.return %0 : tensor<1048576xf32>
    }
    """
    # 4 MB in and out over PCIe cost more than the H100 saves on a relu.
    assert _whys(relu, "h100+cpu") == [
        "cpu0: gpu0 computes them in 6.2 us vs 32.4 us here, but moving them there costs "
        "more: 0.177 ms more in transfers, latency +0.150 ms"
    ]


def test_bottleneck_decides_for_throughput() -> None:
    three = (ROOT / "tests/lit/passes/place/objective-throughput.mlir").read_text()
    assert _whys(three, "b200+h100+cpu", objective="throughput") == [
        "gpu0: fastest for these ops (23.7 us vs 48.0 us on gpu1)",
        "gpu1: gpu0 computes them in 23.7 us vs 48.0 us here, but moving them there costs "
        "more: the busiest device would take 76.1 us vs 54.7 us now",
        "gpu0: fastest for these ops (14.3 us vs 25.7 us on gpu1)",
    ]


def test_capability_names_what_the_other_device_lacks() -> None:
    softmax = """
    func.func @main(%x: tensor<64x4096xf32>, %w: tensor<4096x4096xf32>) -> tensor<64x4096xf32> {
      %0 = gml.matmul %x, %w : (tensor<64x4096xf32>, tensor<4096x4096xf32>) -> tensor<64x4096xf32>
      %1 = gml.softmax %0 dim 1 : tensor<64x4096xf32>
      func.return %1 : tensor<64x4096xf32>
    }
    """
    target = str(ROOT / "tests/lit/inputs/matmul-only-acc.cluster")
    assert _whys(softmax, target) == [
        "cpu0: only cpu0 can run these ops (acc0 does not support gml.softmax)"
    ]


@pytest.mark.parametrize("objective", ["energy", "cost"])
def test_energy_and_cost_say_the_change_per_request(objective: str) -> None:
    whys = _whys(CHAIN, "h100+cpu", objective=objective)
    assert all(w.startswith("gpu0: fastest for these ops") for w in whys), whys


def test_gain_compares_the_placement_with_each_device_scored_the_same_way() -> None:
    """The headline's latency is the placement's own score, and each device alone is scored
    as a placement is (the input from the host and the result back included): gpu0 alone
    costs its compute plus both host transfers, not its compute alone."""
    from gimlet.placement.cost import op_cost, op_time
    from gimlet.placement.solvers import build_problem, evaluate, single_device_latency

    module = parse(CHAIN)
    cluster = resolve("h100+cpu")
    problem = build_problem(module, cluster)
    alone = single_device_latency(problem)
    gpu = cluster.devices["gpu0"]
    compute = sum(op_time(op_cost(op), gpu) for op in problem.nodes)
    moved = 2 * cluster.transfer_time("cpu0", "gpu0", 8192 * 2)  # x in, the result out
    assert alone["gpu0"] == pytest.approx(compute + moved, rel=1e-12)
    on_gpu = [problem.devices.index("gpu0")] * len(problem.nodes)
    assert alone["gpu0"] == evaluate(problem, on_gpu).latency
    run_pipeline(
        module, 'place{target="h100+cpu" pins="h.0.act=cpu0"},outline-segments,insert-comm'
    )
    report = build_report(module, cluster)
    assert report.single_device_s["gpu0"] == pytest.approx(alone["gpu0"], rel=1e-12)
    assert report.modelled_latency_s == module.attributes["gml.modelled_latency_s"].value.data
    assert report.gain_over_best_single == pytest.approx(
        alone["gpu0"] / report.modelled_latency_s, rel=1e-12
    )
