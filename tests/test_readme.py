"""The README's shell examples, run exactly as written.

Every `$ ` line of a ```sh block is one command (a trailing backslash continues it on
the next line); the lines after it, up to the next command, are what the README shows
it printing. Each command runs with bash in a scratch directory that sees the
checkout's `.venv` and `examples/` (so `out/` and `b/` land there, not in the
checkout), in order, so that `run out/` finds what `compile -o out/` wrote. A command
must exit 0, and every shown output line without an elision (`...`) must appear in
what it printed. Commands that need what this machine lacks are skipped by name, with
the reason (SKIPS).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# command prefix -> why it cannot run here (none at present: torchrun runs CPU workers)
SKIPS: dict[str, str] = {}


@dataclass
class Example:
    line: int  # 1-based line of the `$ ` in README.md
    command: str
    shown: list[str] = field(default_factory=list)


def examples(text: str) -> list[Example]:
    out: list[Example] = []
    in_sh = False
    current: Example | None = None
    continued = False
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_sh = line.strip() == "```sh" and not in_sh
            current, continued = None, False
            continue
        if not in_sh:
            continue
        if continued and current is not None:
            current.command += "\n" + line
            continued = line.rstrip().endswith("\\")
        elif line.startswith("$ "):
            current = Example(n, line[2:])
            out.append(current)
            continued = line.rstrip().endswith("\\")
        elif current is not None and line.strip():
            current.shown.append(line)
    return out


def _expected(shown: str) -> str | None:
    """The part of a shown output line that must appear verbatim (None: elided)."""
    text = re.sub(r"\s+#.*$", "", shown).strip()  # a trailing comment explains, not shows
    return None if not text or "..." in text else text


README = (ROOT / "README.md").read_text()
EXAMPLES = examples(README)


def test_readme_has_shell_examples() -> None:
    commands = [e.command for e in EXAMPLES]
    assert any(c.startswith(".venv/bin/gimletc compile examples/mlp.py:model") for c in commands)
    # the 30-second example runs on the inputs `compile` kept, not a file nobody made
    assert ".venv/bin/gimletc run out/" in [c.split("#")[0].strip() for c in commands]


def test_readme_examples_run_as_written(tmp_path: Path) -> None:
    """One test, in README order: later commands read what earlier ones wrote (pytest-xdist
    would spread separate tests over workers)."""
    for name in (".venv", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = dict(os.environ)
    # `torchrun` as an activated virtualenv has it; the examples use no GPU
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["CUDA_VISIBLE_DEVICES"] = ""
    for example in EXAMPLES:
        if any(example.command.startswith(prefix) for prefix in SKIPS):
            continue
        proc = subprocess.run(
            ["bash", "-c", example.command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        printed = proc.stdout + proc.stderr
        where = f"README.md:{example.line}: {example.command}"
        assert proc.returncode == 0, f"{where}\n{printed}"
        for shown in example.shown:
            want = _expected(shown)
            if want is not None:
                assert want in printed, f"{where}\nshows {want!r}; printed:\n{printed}"
