"""Where a benchmark's results go: benchmarks/results/STEM.{json,md}, and copies in $OUT
(the device tool's folder that comes back from a GPU machine) when it is set."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def save(stem: str, data: Any, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown)
    out = os.environ.get("OUT")
    if out:
        for suffix in (".json", ".md"):
            shutil.copy(RESULTS / f"{stem}{suffix}", Path(out) / f"{stem}{suffix}")
