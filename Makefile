# Quickstart targets (README): `make run` and `make test` each set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup run test test-fast bench clean-results

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[test]'
	touch $@

## run the whole workflow on the embedded default (config/config.yaml)
run: setup
	$(BIN)/snakemake --cores $(CORES)

## the test suite, the whole-workflow test included (what CI runs)
test: setup
	$(BIN)/pytest -x -q

test-fast: setup
	$(BIN)/pytest -x -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/bench_foga.py

clean-results:
	rm -rf results .snakemake
