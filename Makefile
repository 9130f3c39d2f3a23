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

.PHONY: install demo test test-slow test-all lint bench bench-scale
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
	$(BIN)/python benchmarks/scale_cost.py

# the issue-3 tables (about 40 and 90 CPU minutes; finished runs are reused, interrupted ones resume)
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale_synthetic.py --threads 1 --prune --out runs/bench/scale_synthetic.json
	$(BIN)/python benchmarks/scale_camvid.py --threads 1 --iters 250 --set warmup_iters=25 --prune \
		--out runs/bench/scale_camvid.json
