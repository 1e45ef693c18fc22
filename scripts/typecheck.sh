#!/usr/bin/env bash
# mypy cannot follow setuptools' editable-install import hook that maps
# gimlet.* onto the top-level folders, so lay the package out as it is installed
# (symlinks, nothing copied) and check that.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck/gimlet
rm -rf build/typecheck && mkdir -p "$tree"
shopt -s nullglob
# compiler/ is the package root: its modules and its stage folders (frontend/, placement/)
for f in compiler/*.py; do ln -s "../../../$f" "$tree/$(basename "$f")"; done
for d in compiler/*/__init__.py; do d=$(dirname "$d"); ln -s "../../../$d" "$tree/$(basename "$d")"; done
for pkg in dialects passes backends runtime; do ln -s "../../../$pkg" "$tree/$pkg"; done
exec "${MYPY:-.venv/bin/mypy}" --no-incremental "$tree"
