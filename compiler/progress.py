"""Progress lines for long steps: shown on a terminal, silent in CI and pipes."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def step(what: str, enabled: bool | None = None) -> Iterator[None]:
    show = sys.stderr.isatty() if enabled is None else enabled
    start = time.perf_counter()
    if show:
        sys.stderr.write(f"gimletc: {what}...")
        sys.stderr.flush()
    try:
        yield
    finally:
        if show:
            sys.stderr.write(f" {time.perf_counter() - start:.2f}s\n")
