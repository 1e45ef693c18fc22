"""Where a persistent chain's time goes (backends/gpu/chains.py, opt-in): GPT-2 small's
decode (fp16, batch 1, 512-token cache, as benchmarks/gpu_gpt2.py) compiled with the
chain on and GIMLET_GPU_CHAIN_TRACE's printing on, called three times. The chain kernel
prints, for its first and last block, each phase's clock64() cycles to its barrier,
after it, and to arrive; the last call's are summarised at the end.

Run on a machine with an NVIDIA GPU (the H200, through the device tool):
    python benchmarks/gpu_chain_trace.py > trace.log
benchmarks/results/gpu_chain.md reads run 1 (gpu_chain_trace_run1.log).
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))

from gpt_phases import Decode  # noqa: E402
from gpu_gpt2 import decode_inputs, gimlet_fn, gpt2_small  # noqa: E402


def main() -> None:
    dev = torch.device("cuda")
    gpt = gpt2_small(dev)
    args = decode_inputs(dev)
    g, _, _ = gimlet_fn(Decode(gpt).eval(), args, {"CHAIN": True, "CHAIN_TRACE": True})
    for _ in range(3):
        g(*args)
    torch.cuda.synchronize()  # the device's printf lines come out here, on stdout


def summarise(log: str) -> None:
    """Per block, the median cycles of each part of a phase in the last call."""
    rows = [
        tuple(int(x) for x in re.findall(r"-?\d+", line))
        for line in log.splitlines()
        if line.startswith("chain trace:")
    ]
    per_call = 2 * len({r[1] for r in rows})  # two blocks print each phase
    for block in sorted({r[0] for r in rows[-per_call:]}):
        mine = [r for r in rows[-per_call:] if r[0] == block]
        parts = ("to barrier", "after it", "arrive")
        medians = [statistics.median(r[2 + i] for r in mine) for i in range(3)]
        print(
            f"block {block}: "
            + ", ".join(f"{p} {m:.0f}" for p, m in zip(parts, medians, strict=True))
        )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        summarise(Path(sys.argv[1]).read_text())
    else:
        main()
