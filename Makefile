# Bootstraps .venv from nothing (only python3 and make are needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint format import evaluate bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/leti serve --host 127.0.0.1 --port 8000

test: $(STAMP)
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

lint: $(STAMP)
	$(BIN)/ruff check leti tests benchmarks
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format leti tests benchmarks
	$(BIN)/ruff check --fix leti tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
