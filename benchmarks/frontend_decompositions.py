"""The frontend with and without run_decompositions: torch.export, then either the graph
as exported (gimlet's default when every node imports as it is, frontend/load.py:
as_exported) or torch's default decompositions first (what gimlet always did before),
then the import; for GPT-2 small and other model families at real sizes.

Each (model, mode) runs in a fresh process, `--repeats` times, modes alternating, so that
both pay the same first-call costs (torch.export's own imports, ~1 s here) and the same
machine load; the median of each phase is reported. Both modes must import the same IR
(printed with SSA names cleared, the names being the only thing the FX graph decides);
the script fails when they do not.

Run: `python benchmarks/frontend_decompositions.py [--repeats N] [--models a,b]`; the
table goes to stdout (paste it into benchmarks/results/compile_time.md with the command).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import results_io  # noqa: E402  (benchmarks/results_io.py: this script's folder is on sys.path)


def gpt2_small() -> tuple[Any, tuple[Any, ...]]:
    """Hugging Face GPT-2 small, 128 tokens (benchmarks/compile_time.py's model)."""
    from gpt2_small import model

    made = model()
    return made[0], made[1]


def gpt2_decode() -> tuple[Any, tuple[Any, ...]]:
    """GPT-2 small in plain torch, f16, one token over a 512-token KV cache: the decode
    program of benchmarks/gpu_gpt2.py."""
    from gpt import GPT
    from gpt_phases import Decode

    torch.manual_seed(0)
    gpt = GPT(vocab=50257, ctx=1024, d=768, heads=12, layers=12).half().eval()
    kv = torch.randn(12, 1, 12, 512, 64).half()
    return Decode(gpt).eval(), (torch.randint(0, 50257, (1, 1)), kv, kv.clone())


def llama() -> tuple[Any, tuple[Any, ...]]:
    """A Hugging Face Llama of GPT-2 small's size (12 layers, d=768, 12 heads), 128 tokens."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        use_cache=False,
    )
    return _Logits(transformers.LlamaForCausalLM(config)), (torch.randint(0, 32000, (1, 128)),)


def vit() -> tuple[Any, tuple[Any, ...]]:
    """Hugging Face ViT-B/16 (the default ViTConfig), one 224x224 image."""
    import transformers

    torch.manual_seed(0)
    model = transformers.ViTModel(transformers.ViTConfig(), add_pooling_layer=False)
    return _Hidden(model), (torch.randn(1, 3, 224, 224),)


class _Logits(nn.Module):
    """transformers returns a ModelOutput dataclass; the program returns the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, return_dict=True).logits


class _Hidden(_Logits):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, return_dict=True)[0]


MODELS = {"gpt2_small": gpt2_small, "gpt2_decode": gpt2_decode, "llama": llama, "vit": vit}
MODES = ("as-exported", "decomposed")


def child(name: str, mode: str) -> None:
    """One measurement: phases in seconds and a hash of the SSA-name-free IR, as JSON."""
    import warnings

    warnings.filterwarnings("ignore")
    from gimlet.frontend import load
    from gimlet.ir import print_ir

    model, inputs = MODELS[name]()
    if mode == "decomposed":
        load.as_exported = lambda ep: "decompositions forced"  # type: ignore[assignment]
    # as gimlet.compile and gimletc compile run it (the collector frozen meanwhile), but
    # without the export cache
    cpu = time.process_time()
    imported = load.frontend(model, inputs, cache=False)
    cpu = time.process_time() - cpu
    module = imported.module
    phases = {k: imported.phases[k] for k in ("export", "decompositions", "import")}
    for op in module.walk():
        for r in op.results:
            r.name_hint = None
    ir = hashlib.sha256(print_ir(module).encode()).hexdigest()[:16]
    ops = sum(1 for _ in module.walk())
    print(json.dumps({"phases": phases, "cpu": cpu, "ir": ir, "ops": ops}))


def run(name: str, mode: str) -> dict[str, Any]:
    return results_io.child_json([__file__, "--child", name, mode], f"{name} {mode}", 900)


def fmt(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(*a.child)
        return
    rows = []
    for name in a.models.split(","):
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
        for i in range(a.repeats):
            for mode in MODES if i % 2 == 0 else MODES[::-1]:
                runs[mode].append(run(name, mode))
                sys.stderr.write(f"[frontend_decompositions] {name} {mode}: {runs[mode][-1]}\n")
        irs = {r["ir"] for m in MODES for r in runs[m]}
        if len(irs) != 1:
            raise SystemExit(f"{name}: the two modes import different IR ({sorted(irs)})")
        med = {
            m: {k: statistics.median(r["phases"][k] for r in runs[m]) for k in runs[m][0]["phases"]}
            for m in MODES
        }
        for m in MODES:
            med[m]["cpu"] = statistics.median(r["cpu"] for r in runs[m])
        rows.append((name, runs[MODES[0]][0]["ops"], med))
    print("| model (gml ops) | mode | export | decompositions | import | total | total CPU |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, ops, med in rows:
        for m in MODES:
            ph = med[m]
            keys = ("export", "decompositions", "import")
            cells = " | ".join(fmt(ph[k]) for k in keys)
            total = sum(ph[k] for k in keys)
            print(f"| {name} ({ops}) | {m} | {cells} | **{fmt(total)}** | {fmt(ph['cpu'])} |")
    print(
        f"\nWall times, median of {a.repeats} fresh processes per row (total CPU: the "
        "process's CPU time over the whole frontend call); both modes import identical IR."
    )


if __name__ == "__main__":
    main()
