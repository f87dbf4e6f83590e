# Quick start: `make run` (set up + run the main job), `make test` (set up + run the tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
# The torch the tests are run with (pyproject.toml declares a range), installed first and
# CPU-only: PyPI's Linux wheel pulls about 3 GB of CUDA libraries. A wheel of it that pip
# finds without an index (its find-links) is taken as it is; else the CPU wheel index.
TORCH := torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) --no-index --no-deps '$(TORCH)' 2>/dev/null || $(PIP) --index-url $(TORCH_INDEX) '$(TORCH)'
	$(PIP) -e '.[dev,ray]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/fedp13n run --config demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
