"""Every `from gimlet... import name` in the tests names something that exists. The GPU
tests run only on a lent GPU machine, so a module split that moves a name would
otherwise be found there, at device time (run 44: test_gpu_backend imported
DECODE_TARGET_BLOCKS from codegen after it moved to switches)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_gimlet_name_a_test_imports_exists() -> None:
    missing = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gimlet")):
                continue
            module = importlib.import_module(str(node.module))
            for alias in node.names:
                if hasattr(module, alias.name):
                    continue
                try:  # a submodule: `from gimlet.backends import nvidia`
                    importlib.import_module(f"{node.module}.{alias.name}")
                except ImportError:
                    missing.append(f"{path.name}:{node.lineno}: {node.module}.{alias.name}")
    assert missing == []
