#!/usr/bin/env bash
# The wheels a lent GPU machine needs (benchmarks/gpu_wheels.txt) into .whl/, for its
# Python 3.12 on x86-64: run here, where pip reaches PyPI; .whl/ travels with the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
platforms=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${p}_x86_64")
done
grep -v '^#' benchmarks/gpu_wheels.txt | xargs python3 -m pip download -q --no-deps \
  --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl
ls .whl
