# The GPU tests on a lent GPU machine, in the repo's root: the tests that need a GPU (the
# rest of these files run in CI) with 8 workers, the log in $OUT when set (the device
# tool's folder) or benchmarks/results/. Record each run in benchmarks/results/gpu_tests.md.
#   bash benchmarks/gpu_tests.sh [RUN]    e.g. bash benchmarks/gpu_tests.sh 43
. benchmarks/gpu_setup.sh || exit 1
log=${OUT:-benchmarks/results}/gpu_tests_h200_run${1:-N}.log
python3 -m pytest -q -rfEX -p no:logging -p no:cacheprovider -n 8 \
  tests/test_gpu_vector.py tests/test_gpu_inplace.py tests/test_gpu_backend.py \
  tests/test_gpu_chains.py tests/test_gpu_decode_early.py tests/test_gpu_units.py \
  tests/test_inprocess.py tests/test_staging.py tests/test_pipeline.py \
  -k "gpu or cuda or attention or decode or bucket or epilogue or odd_width or flash or \
padded or layer_norm or head or dynamic or overlap or unit or chain or early or cache or \
split or place or bound or prefetch or fold or vector" 2>&1 | tee "$log"
