"""What a wheel of gimlet holds: every source file a backend compiles on the user's machine
(C++ and CUDA headers, runtimes) is package data, so a non-editable install builds too."""

from __future__ import annotations

import fnmatch
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_native_source_under_a_package_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs, data = config["package-dir"], config["package-data"]
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    missing = []
    for path in tracked:
        if path.endswith(".py") or not path.startswith(("backends/", "runtime/", "compiler/")):
            continue
        # the innermost package whose folder holds the file ships it, if a glob names it
        owner = max(
            (pkg for pkg, d in dirs.items() if path.startswith(d + "/")),
            key=lambda pkg: len(dirs[pkg]),
        )
        rel = path[len(dirs[owner]) + 1 :]
        if not any(fnmatch.fnmatch(rel, g) for g in data.get(owner, [])):
            missing.append(path)
    assert missing == []
