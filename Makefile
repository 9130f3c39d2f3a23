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

.PHONY: install demo test test-slow test-browser test-all lint bench bench-zoo bench-scale bench-attention bench-segaware
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/attnseg demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# the web page in a real browser: Playwright from PyPI drives Debian's chromium (no browser download works here)
test-browser: $(STAMP)
	test -x /usr/bin/chromium || apt-get install -y chromium
	$(BIN)/pip install -q -c constraints.txt -e '.[serve,browser]'
	$(BIN)/python -m pytest -q -m browser tests/browser

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow or browser"

lint: $(STAMP)
	$(BIN)/ruff check attnseg tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/engine_overhead.py
	$(BIN)/python benchmarks/inference_speed.py
	$(BIN)/python benchmarks/scale_cost.py
	$(BIN)/python benchmarks/memory_estimate.py --out runs/bench/memory_estimate.json
	$(BIN)/python benchmarks/serve_overhead.py --threads 2 --repeats 20 --out runs/bench/serve_overhead.json
	$(BIN)/python benchmarks/onnx_speed.py --threads 2 --repeats 20 --out runs/bench/onnx_speed.json

# docs/MODEL_ZOO.md: parameters, GFLOPs and CPU images/s of every registered model (~10 min on an idle machine)
bench-zoo: $(STAMP)
	$(BIN)/python benchmarks/model_zoo.py --threads 2 --repeats 3 --fresh

# the issue-3 tables (about 40 and 90 CPU minutes; finished runs are reused, interrupted ones resume)
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale_synthetic.py --threads 1 --prune --out runs/bench/scale_synthetic.json
	$(BIN)/python benchmarks/scale_camvid.py --threads 1 --iters 250 --set warmup_iters=25 --prune \
		--out runs/bench/scale_camvid.json

# the issue-4 figures: the attention blocks one by one (~20 min on an idle 2-core machine), then the CamVid table
# (5 blocks x 2 seeds x 120 steps, ~3 CPU hours: run the two seeds in two shells with --seeds 0 / --seeds 1 to halve it)
bench-attention: $(STAMP)
	$(BIN)/python benchmarks/attention_blocks.py --threads 2 --repeats 3 --warmup 1 --out runs/bench/attention_blocks.json
	$(BIN)/python benchmarks/attention_camvid.py --threads 1 --iters 120 --seeds 0,1 --set warmup_iters=12 --prune \
		--out runs/bench/attention_camvid.json

# the issue-5 figures (needs the densecrf extra and a trained FCN-8s in runs/cv_c: `attnseg train
# configs/camvid_fcn8s_resnet18.yaml run_dir=runs/cv_c`): operator cost, refinement table (~1 h), flow (~9 min),
# the segmentation-aware network against the plain one (2 seeds x 120 steps, ~1.5 CPU hours)
bench-segaware: $(STAMP)
	$(BIN)/python benchmarks/segaware_cost.py --threads 2 --out runs/bench/segaware_cost.json
	$(BIN)/python benchmarks/segaware_refine.py --base-run runs/cv_c --iters 150 --tune-images 20 --threads 1 \
		--out runs/bench/segaware_refine.json
	$(BIN)/python benchmarks/segaware_flow.py --threads 1 --out runs/bench/segaware_flow.json
	$(BIN)/python benchmarks/attention_camvid.py --threads 1 --iters 120 --seeds 0,1 --set warmup_iters=12 --prune \
		--variants none,segaware --out runs/bench/segaware_camvid.json
