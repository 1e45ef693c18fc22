"""torch's OpInfo samples through gimlet: interpreter and C++ backend against torch eager.

One test per (dtype, group of ops) so pytest-xdist spreads them; each exports every
op's samples as one program per op and compiles a few C++ libraries for the whole
group (see opinfo_suite.py). All of it takes ~4 CPU-minutes (2 on `make test`'s two
workers); GIMLET_OPINFO_DTYPES=f32 narrows a local run. A test fails on any sample gimlet gets wrong or rejects without
an UnsupportedOpError naming the op, and when the outcomes differ from
docs/op_coverage.json, the table docs/ops.md is rendered from (refresh both with
`python tests/opinfo_suite.py --write && python -m gimlet.docgen docs/`).
"""

from __future__ import annotations

import os

import pytest
from opinfo_suite import (
    BACKENDS,
    COVERAGE_FILE,
    FLOATS,
    OPS,
    load_coverage,
    run_group,
    supports,
)

CASES = [(dtype, group) for dtype in FLOATS for group in OPS] + [("i64", "elementwise")]


DTYPES = os.environ.get("GIMLET_OPINFO_DTYPES", "f32,f16,bf16,i64").split(",")


@pytest.mark.parametrize(("dtype", "group"), CASES, ids=[f"{d}-{g}" for d, g in CASES])
def test_opinfo_samples_match_torch(dtype: str, group: str) -> None:
    if dtype not in DTYPES:
        pytest.skip(f"GIMLET_OPINFO_DTYPES={','.join(DTYPES)}")
    names = [n for n in OPS[group] if supports(n, dtype)]
    results = run_group(names, dtype)
    failures = [f for r in results for f in r.failures()]
    assert not failures, f"{len(failures)} samples wrong:\n" + "\n".join(failures)

    stored = load_coverage()["ops"]
    drift = []
    for r in results:
        have = stored.get(r.op, {}).get("dtypes", {}).get(dtype)
        if have != r.summary():
            drift.append(f"{r.op} {dtype}: recorded {have}, now {r.summary()}")
    assert not drift, (
        f"op coverage differs from {COVERAGE_FILE.name} (refresh it with "
        "`python tests/opinfo_suite.py --write && python -m gimlet.docgen docs/`):\n"
        + "\n".join(drift)
    )


def test_every_listed_op_is_recorded() -> None:
    stored = load_coverage()["ops"]
    missing = [n for names in OPS.values() for n in names if n not in stored]
    assert not missing, f"not in {COVERAGE_FILE.name}: {missing}"
    assert load_coverage()["backends"] == list(BACKENDS)
