# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install attnseg, train and evaluate on synthetic scenes (a few CPU minutes)
#   make test   create .venv, install attnseg with test tools, run the default test suite (< 10 min on 2 cores)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

.PHONY: install demo test test-slow test-all lint bench
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/attnseg demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check attnseg tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/engine_overhead.py
	$(BIN)/python benchmarks/inference_speed.py
