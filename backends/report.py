"""The run report: what runs each segment of a bundle on this machine, and why that is not
what `gimletc compile` planned.

A segment's artefact (the manifest's `segments[i].artefact`) names the backend that
compiled it, but what runs it can still change twice: at compile time a backend that
cannot lower the segment leaves it to the interpreter (the artefact says why:
`fallback`), and at load time a backend whose toolchain is missing here hands its
segments to another executor (TensorRT without the `tensorrt` module runs the bundle's
CUDA parts; CUDA without a GPU runs the interpreter). `gimlet.load` and `gimletc run`
work this out once per load (`Loaded.report`, one line per segment on stderr), so a
fallback is never silent and a benchmark says what it measured.

A backend says what its `load` would do here through an optional `runs_here(artefact)
-> (executor kind, why)`, the same decision its `load` makes (backends/tensorrt). The
CUDA backend has none yet; its rule (no GPU: the interpreter, as its `load` does) is
`_cuda_here` below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

INTERPRETER = "interpreter"


@dataclass(frozen=True)
class SegmentRun:
    """One segment: the executor kind that runs it (`ran`: tensorrt, cuda, cpu-cxx or
    interpreter), the kind gimletc compile chose for it (`planned`), and why they differ
    (`why`, with `when`: "compile" or "load"; both "" when they do not)."""

    index: int
    device: str
    planned: str
    ran: str
    why: str = ""
    when: str = ""

    @property
    def fallback(self) -> bool:
        return self.ran != self.planned

    def __str__(self) -> str:
        line = f"seg{self.index} on {self.device}: {self.ran}"
        return f"{line}, not {self.planned}: {self.why}" if self.fallback else line


def _cuda_here(artefact: Mapping[str, Any]) -> tuple[str, str]:
    """What backends/nvidia/backend.py's `load` does: the interpreter without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return INTERPRETER, "no CUDA GPU on this machine"
    return "cuda", ""


_RULES: dict[str, Callable[[Mapping[str, Any]], tuple[str, str]]] = {"cuda": _cuda_here}


def runs_here(artefact: Mapping[str, Any]) -> tuple[str, str]:
    """(the executor kind that runs an artefact on this machine, why it is not the
    artefact's kind, or "")."""
    from gimlet.backends import get

    kind = artefact["kind"]
    rule = getattr(get(kind), "runs_here", None) or _RULES.get(kind)
    return rule(artefact) if rule is not None else (kind, "")


def run_report(manifest: Mapping[str, Any]) -> list[SegmentRun]:
    """One SegmentRun per segment of a bundle's manifest, as this machine runs it."""
    from gimlet.backends import get

    report = []
    for seg in manifest["segments"]:
        art = seg["artefact"]
        index, device = seg["index"], seg["device"]
        if "fallback" in art:  # the planned backend could not compile it
            planned = art["fallback_from"]
            why = f"{get(planned).label} could not compile it: {art['fallback']}"
            report.append(SegmentRun(index, device, planned, INTERPRETER, why, "compile"))
            continue
        ran, why = runs_here(art)
        report.append(SegmentRun(index, device, art["kind"], ran, why, "load" if why else ""))
    return report


def format_report(report: list[SegmentRun], prefix: str) -> str:
    """The report as lines `<prefix>: seg0 on cpu0: cpu-cxx`."""
    return "".join(f"{prefix}: {run}\n" for run in report)
