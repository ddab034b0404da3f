# Two entry points: `make run` (full pipeline on the tiny preset) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
LOCK := requirements.lock
# Where the CPU build of torch lies as a wheel (this machine image has it; elsewhere point WHEELS at a folder holding
# torch-2.13.0+cpu, or at https://download.pytorch.org/whl/cpu).
WHEELS ?= /opt/wheels
FIND := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS),--extra-index-url $(WHEELS) --index-strategy unsafe-best-match)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install lock run test test-slow lint ui bench gpu-check clean

# The environment is exactly the lock: `uv pip sync` installs every pinned version and removes anything else. It
# compiles the bytecode at install: with PYTHONDONTWRITEBYTECODE set (as on our machines) every process would
# otherwise compile torch and transformers from source again, about 20 s per process on 2 cores.
$(BIN)/nvila: $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	test -x $(UV) || $(BIN)/pip install -q uv==0.13.8
	$(UV) pip sync -q --compile-bytecode --python $(BIN)/python $(FIND) $(LOCK)
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	touch $(BIN)/nvila

install: $(BIN)/nvila

# Refresh the lock from pyproject.toml's ranges (then `make test`, and commit requirements.lock with the change).
lock:
	test -x $(UV) || { test -x $(BIN)/python || $(PY) -m venv $(VENV); $(BIN)/pip install -q uv==0.13.8; }
	$(UV) pip compile -q pyproject.toml --extra dev --extra qlora $(FIND) --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-header --annotation-style line -o $(LOCK)

run: install
	$(BIN)/nvila pipeline run

test: install
	$(BIN)/python -m pytest -q --durations=15

test-slow: install
	$(BIN)/python -m pytest -q -m slow --durations=20

lint: install
	$(BIN)/ruff check .

ui: install
	$(BIN)/nvila ui

bench: install
	for b in bench/*.py; do case $$b in bench/gpu_check*) continue;; esac; $(BIN)/python $$b || exit 1; done

# One H100/H200-class GPU, <= 8 min: every GPU path, a table, bench/results/gpu_check.json (exit 2 without a GPU).
# The lock's torch is the CPU build: this swaps in the CUDA build of the same version (PyPI's Linux wheel) and adds
# the gpu extra. Offline: UV_OFFLINE=1 make gpu-check WHEELS=... GPU_WHEELS=... (README: GPU paths and make gpu-check).
GPU_FIND := $(if $(GPU_WHEELS),--no-index --find-links $(GPU_WHEELS),)
gpu-check: install
	command -v nvidia-smi >/dev/null || { echo "gpu-check: no CUDA GPU on this machine (no nvidia-smi)" >&2; exit 2; }
	$(UV) pip install -q --python $(BIN)/python $(GPU_FIND) --reinstall-package torch \
		"torch==$$($(BIN)/python -c 'import torch; print(torch.__version__.split("+")[0])')"
	$(BIN)/python bench/gpu_check.py --probe
	$(UV) pip install -q --python $(BIN)/python $(GPU_FIND) --no-build-isolation -e '.[gpu]'
	$(BIN)/python bench/gpu_check.py

clean:
	rm -rf $(VENV) .prefect .nvila mlruns mlflow.db mlartifacts
