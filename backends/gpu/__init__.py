"""What the GPU backends share: the HIP-compatible kernel header (include/gimlet/gpu/),
the code generator (codegen.py, its lower_*.py op families and switches.py) and
per-shape-bucket shapes and memory plans (shapes.py). The NVIDIA backend
(backends/nvidia/) builds and runs this code with nvcc and cuBLAS; a ROCm backend would
build the same sources with hipcc and hipBLAS."""
