# Two entry points: `make run` (full pipeline on the tiny preset) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install run test test-slow lint ui bench gpu-check clean

$(BIN)/nvila: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,qlora]'
	touch $(BIN)/nvila

install: $(BIN)/nvila

run: install
	$(BIN)/nvila pipeline run

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check .

ui: install
	$(BIN)/nvila ui

bench: install
	for b in bench/*.py; do case $$b in bench/gpu_check*) continue;; esac; $(BIN)/python $$b || exit 1; done

# One H100/H200-class GPU, <= 8 min: every GPU path, a table, bench/results/gpu_check.json (exit 2 without a GPU).
# Offline machine: PIP_NO_INDEX=1 PIP_FIND_LINKS=wheels/ make gpu-check (README: "GPU paths and make gpu-check").
gpu-check: install
	$(BIN)/python bench/gpu_check.py --probe
	$(BIN)/pip install -q --no-build-isolation -e '.[gpu]'
	$(BIN)/python bench/gpu_check.py

clean:
	rm -rf $(VENV) .prefect mlruns mlflow.db
