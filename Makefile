# The two quick-start commands (README): `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH_VENV ?= .venv-torch

.PHONY: setup setup-test run smoke lint test test-slow test-torch bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

setup: $(BIN)/python
	$(BIN)/pip install -q -e .

setup-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

# Train and evaluate PyramidFlow on the built-in dataset (about 3 minutes on 2 idle CPU cores).
run: setup
	$(BIN)/python -m experiments.main --config=configs/pyramidflow.py --workdir=runs/pyramidflow

smoke: setup
	$(BIN)/python -m experiments.main --config=configs/pyramidflow.py:smoke --workdir=runs/pyramidflow_smoke

# Lint and format check (ruff, configured in pyproject.toml).
lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The default test suite (torch-free), after the lint.
test: lint
	$(BIN)/python -m pytest -q

test-slow: setup-test
	$(BIN)/python -m pytest -q -m slow

# Converter parity against the upstream torch models (needs the [torch] extra: CPU torch, ~1 GB).
test-torch:
	test -x $(TORCH_VENV)/bin/python || ($(PYTHON) -m venv $(TORCH_VENV) && $(TORCH_VENV)/bin/pip install -q -U pip)
	$(TORCH_VENV)/bin/pip install -q --no-cache-dir -e '.[test,torch]'
	$(TORCH_VENV)/bin/python -m pytest -q -m torch tests/backbones tests/third_party tests/models/test_optim.py

bench: setup
	$(BIN)/python benchmarks/pyramidflow_speed.py
