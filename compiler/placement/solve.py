"""The placement solvers by name: greedy and the exact MILP (solvers.py), the DP (dp.py).

A module of its own so that dp.py, which builds on solvers.py's problem and scoring, is
not imported back by it.
"""

from __future__ import annotations

from gimlet.errors import UserError
from gimlet.placement.dp import dp
from gimlet.placement.solvers import SOLVERS, Problem, check_memory, greedy, milp


def solve(p: Problem, solver: str = "dp", time_limit: float = 60.0) -> list[int]:
    """An assignment of p's nodes to devices by `solver`; refused when it does not fit."""
    if solver not in SOLVERS:
        raise UserError(f"unknown placement solver '{solver}'; choose from {', '.join(SOLVERS)}")
    if not p.nodes:
        return []
    assign = {"greedy": greedy, "dp": dp, "milp": lambda q: milp(q, time_limit)}[solver](p)
    check_memory(p, assign)
    return assign
