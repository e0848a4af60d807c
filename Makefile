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

# the order seed of `make test` (pytest-randomly): a new one each run, `make test SEED=N` replays one
ifndef SEED
SEED := $(shell $(PYTHON) -c 'import random; print(random.randrange(10**6))')
endif

## the test suite, the whole-workflow test and the rehearsal of paper.yaml included (what CI runs)
test: setup
	@echo "make test: random order seed $(SEED) (replay: make test SEED=$(SEED))"
	$(BIN)/pytest -x -q --randomly-seed=$(SEED) --durations=30

test-fast: setup
	$(BIN)/pytest -x -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/bench_foga.py

clean-results:
	rm -rf results .snakemake
