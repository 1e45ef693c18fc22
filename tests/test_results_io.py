"""benchmarks/results_io.py's timeline arithmetic on a hand-made trace (the GPU part
needs a GPU; what it computes from the trace does not)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from results_io import call_timeline  # noqa: E402


def _k(name: str, ts: float, dur: float, cat: str = "kernel") -> dict[str, Any]:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


def test_call_timeline_spans_busy_time_and_early_starts() -> None:
    """Two calls of three events each: in the first, b starts 2 us before a ends (a
    kernel started early), then a 3 us gap before the copy; the second has no overlap.
    CPU events and other categories are not the GPU's."""
    events: list[dict[str, Any]] = [
        _k("a", 0, 10),
        _k("b", 8, 4),  # starts before a ends: 2 us overlap
        _k("copy", 15, 5, cat="gpu_memcpy"),
        _k("a", 100, 10),
        _k("b", 111, 4),
        _k("copy", 116, 4, cat="gpu_memcpy"),
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 1, "dur": 50},
        {"ph": "M", "name": "process_name"},
    ]
    got = call_timeline(events, 2)
    assert got["events_per_call"] == 3
    # spans 20 and 20; busy 17 (0-12, 15-20) and 18 (100-110, 111-115, 116-120); the sum
    # of durations 19 (the 2 us counted twice) and 18
    assert (got["span_us"], got["busy_us"], got["sum_us"]) == (20, 17.5, 18.5)
    assert got["started_early"] == 0.5  # median of 1 and 0
    assert got["kernels"]["a"] == {"count_per_call": 1.0, "mean_us": 10.0, "step_us": 0.0}
    assert got["kernels"]["copy"]["mean_us"] == 4.5
    # ends 10, 12, 20 and 110, 115, 120: b's steps 2 and 5, the copy's 8 and 5
    assert (got["kernels"]["b"]["step_us"], got["kernels"]["copy"]["step_us"]) == (3.5, 6.5)
    assert list(got["kernels"]) == ["a", "copy", "b"]  # by total time


def test_clock_summary_medians_per_gpu_and_skips_what_does_not_parse() -> None:
    from results_io import clock_summary

    lines = [
        "0, 1980, 450.5, 40",
        "1, 1755, 690.0, 61",
        "0, 1830, 700.1, 44",
        "0, 1980, 500.0, 42",
        "1, [N/A], 10, 10",  # a sample nvidia-smi could not read
        "",
    ]
    got = clock_summary(lines)
    assert got == {
        "0": {"sm_mhz": 1980.0, "min_sm_mhz": 1830.0, "power_w": 500.0, "temp_c": 42.0,
              "samples": 3},
        "1": {"sm_mhz": 1755.0, "min_sm_mhz": 1755.0, "power_w": 690.0, "temp_c": 61.0,
              "samples": 1},
    }  # fmt: skip
