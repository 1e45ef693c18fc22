"""Placement: which device runs each op, and what that costs.

cluster.py (devices, links, routes), cluster_lang.py (`.cluster` files), presets.py
(`--target a+b+c`), target.py (a target spec or a module's `gml.target` -> its cluster),
cost.py (roofline per op), solvers.py (the problem, `evaluate`, greedy/MILP), dp.py (the
DP solver), comm_check.py (matched, deadlock-free transfers), schedule.py (the modelled
timeline), explain.py (`--explain`). The passes that act on these decisions live in passes/.

Nothing is imported here, so the runtime can resolve a target (target.py) without
loading the solvers.
"""
