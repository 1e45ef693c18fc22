#!/usr/bin/env bash
# mypy cannot follow setuptools' editable-install import hook that maps
# gimlet.* onto the top-level folders, so lay the package out as it is installed
# (symlinks, nothing copied) and check that.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck/gimlet
rm -rf build/typecheck && mkdir -p "$tree"
for f in compiler/*.py; do ln -s "../../../$f" "$tree/$(basename "$f")"; done
for pkg in dialects passes backends; do ln -s "../../../$pkg" "$tree/$pkg"; done
ln -s "../../../compiler/runtime" "$tree/runtime"
exec "${MYPY:-.venv/bin/mypy}" --no-incremental "$tree"
