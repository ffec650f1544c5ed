# Bootstraps .venv from nothing (only python3 and make are needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What serving needs (the package and its dependencies), and that plus the dev extras (test
# and lint tools). Both are editable installs: the bundled models are read from models/.
STAMP := $(VENV)/.installed-serve
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: serve test lint format import evaluate bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

$(DEV_STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP) $(STAMP)

serve: $(STAMP)
	$(BIN)/leti serve --host 127.0.0.1 --port 8000

test: $(DEV_STAMP)
	$(BIN)/ruff check leti tests benchmarks
	$(BIN)/ruff format --check leti tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# Regenerate the committed reports (needs ../shared; `leti import` first).
import: $(STAMP)
	$(BIN)/leti import mobile-ml-benchmark ../shared/data/mobile-ml-benchmark

evaluate: $(STAMP)
	$(BIN)/leti evaluate

bench: $(STAMP)
	$(BIN)/python benchmarks/kernel_matching.py
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/service_bench.py

lint: $(DEV_STAMP)
	$(BIN)/ruff check leti tests benchmarks
	$(BIN)/lint-imports

format: $(DEV_STAMP)
	$(BIN)/ruff format leti tests benchmarks
	$(BIN)/ruff check --fix leti tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
