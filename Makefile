# `make demo` and `make test` work on a fresh machine: they create .venv and install gimlet.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test lint typecheck pytest lit bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is pinned below 2.14 in pyproject.toml so pip takes the local CPU wheel.
	$(BIN)/python -m pip install -q -e '.[dev]'
	# oneDNN for the CPU backend's convolutions: Debian's libdnnl-dev, installed when root
	# (CI); elsewhere `sudo apt-get install libdnnl-dev`, or the backend uses im2col + BLAS.
	@if [ ! -e /usr/include/oneapi/dnnl/dnnl.hpp ] && [ "$$(id -u)" = 0 ] \
		&& command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libdnnl-dev; fi
	# hipcc (Debian's ROCm 5.2) when root: a test builds the generated GPU code for ROCm;
	# without it that test is skipped, so a failed install only says so
	@if ! command -v hipcc >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q hipcc rocm-device-libs \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q hipcc rocm-device-libs; } \
		|| echo "setup: hipcc not installed; the ROCm build test will be skipped"; }; fi
	touch $@

demo: setup
	$(BIN)/gimletc compile examples/gpt.py:model -o demo-out --dump-dir demo-out-passes --timing
	$(BIN)/gimletc run demo-out --inputs examples/gpt_inputs.npz
	@echo "IR: demo-out/model.mlir   per-pass dumps: demo-out-passes/"
	# The same model split over three CPU worker processes (gloo), each segment generated C++.
	$(BIN)/gimletc compile examples/gpt.py:model -o demo-cpus --target examples/three_cpus.cluster \
		--pin 'h.0=cpu1,h.1=cpu2,ln_f=cpu2,lm_head=cpu2'
	$(BIN)/gimletc run demo-cpus --inputs examples/gpt_inputs.npz --trace demo-cpus.trace.json
	@echo "C++ per segment: demo-cpus/cpu/*.cpp   trace (chrome://tracing, ui.perfetto.dev): demo-cpus.trace.json"
	# Heterogeneous placement: prefill on a B200, decode on an SRAM accelerator, KV cache between.
	$(BIN)/gimletc compile examples/gpt_phases.py:serve -o demo-bundle --target b200+sram+cpu \
		--pin 'prefill=gpu0,decode=acc0' --explain --graph demo-bundle/partition.dot

test: setup lint typecheck pytest lit

lint: setup
	$(BIN)/ruff check compiler dialects passes backends runtime tests benchmarks examples
	$(BIN)/ruff format --check compiler dialects passes backends runtime tests benchmarks examples
	# the C++ (and CUDA) sources of the backends, formatted as .clang-format says
	find backends \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) -print0 \
		| xargs -0 -r $(BIN)/clang-format --dry-run --Werror

typecheck: setup
	MYPY=$(BIN)/mypy scripts/typecheck.sh

pytest: setup
	# A private basetemp: pytest prunes old /tmp/pytest-of-$$USER dirs, which breaks
	# concurrent runs (another checkout's tests) that share the default location.
	$(BIN)/python -m pytest -n 2 --basetemp=$(CURDIR)/build/pytest tests

lit: setup
	$(BIN)/lit -sv tests/lit

bench: setup
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python benchmarks/frontend_scaling.py
	$(BIN)/python benchmarks/placement_solvers.py
	$(BIN)/python benchmarks/calibrate_h100.py   # predictions vs the saved H100 measurements
	$(BIN)/python benchmarks/cpu_backend.py      # C++ backend vs torch eager vs onnxruntime
	$(BIN)/python benchmarks/runtime_overhead.py # workers, channels vs raw torch.distributed
	$(BIN)/python benchmarks/tensorrt_onnx.py    # TensorRT backend's ONNX vs torch.onnx.export

clean:
	rm -rf $(VENV) demo-out demo-out-passes demo-bundle demo-cpus demo-cpus.trace.json build
