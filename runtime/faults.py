"""Fault injection for the runtime's tests: `GIMLET_FAULT=DEVICE:ACTION@N`.

Before the Nth progress step (an interpreted op or a compiled part, counted from 0) that
device DEVICE runs, ACTION happens: `exit` (the worker process dies, exit status 1),
`raise` (a RuntimeError naming the step) or `sleep=SECONDS`. A worker process
(runtime/worker.py) and the in-process runtime (runtime/inprocess.py) read it the same
way; in one process `exit` does nothing, since it would end the caller."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass
class Fault:
    device: str
    action: str  # exit, raise or sleep
    at: int
    seconds: float = 0.0

    def check(self, count: int, what: str, may_exit: bool = True) -> None:
        """The fault, if step `count` (described by `what`) is the one it is for."""
        if count != self.at:
            return
        if self.action == "exit" and may_exit:
            os._exit(1)
        if self.action == "raise":
            raise RuntimeError(f"injected fault before {what}")
        if self.action == "sleep":
            time.sleep(self.seconds)


def from_env() -> Fault | None:
    """$GIMLET_FAULT as a Fault, or None where it is unset or names no action."""
    dev, _, rest = os.environ.get("GIMLET_FAULT", "").partition(":")
    if not dev or not rest:
        return None
    action, _, at = rest.partition("@")
    action, _, secs = action.partition("=")
    return Fault(dev, action, int(at or 0), float(secs or 0))
