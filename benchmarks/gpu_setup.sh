# Source this on a lent GPU machine, in the repo's root, before a GPU benchmark or test:
# it installs the carried wheels (.whl/, made by scripts/gpu_wheels.sh) into /tmp/site and
# gimlet itself (editable, no dependencies: torch, numpy and the rest are the machine's).
#   . benchmarks/gpu_setup.sh && python benchmarks/gpu_gpt2.py --quick --only decode
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
  || return 1
export PYTHONPATH=/tmp/site:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || return 1
nvidia-smi --query-gpu=index,name,clocks.sm,clocks.max.sm --format=csv,noheader
