# One command sets up everything and runs the tests (`make test`), one the demo (`make demo`).
# Both create .venv if missing and install the pinned CPU torch before the rest.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup test lint typecheck pytest demo policy policy-worlds policy-prequal results bench docs clean

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, pinned: the CPU build on disk; an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev,sweep]'
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest -n 2 --dist loadfile

test: lint typecheck pytest

demo: setup
	$(BIN)/rl-lb demo

# Reproduces the shipped policy (fixed seeds and configs, four stages and a tempering; see
# docs/training.md). Stage 4 starts from stage 3's export (its actor, a new critic) on the prequal
# picker; the tempering scales stage 4's scores, chosen on worlds no stage trained on.
policy: setup
	rm -rf runs/shipped-stage1 runs/shipped-stage2 runs/shipped-stage3 runs/shipped-prequal \
		runs/shipped-temper
	$(BIN)/rl-lb train --config training/configs/shipped.toml --out runs/shipped-stage1
	$(BIN)/rl-lb train --config training/configs/shipped-finetune.toml --out runs/shipped-stage2 \
		--resume "$$(ls runs/shipped-stage1/*/best.zip)"
	$(BIN)/rl-lb train --config training/configs/shipped-stage3.toml --out runs/shipped-stage3 \
		--resume "$$(ls runs/shipped-stage2/*/best.zip)"
	$(BIN)/rl-lb train --config training/configs/shipped-prequal.toml --out runs/shipped-prequal \
		--init "$$(ls -d runs/shipped-stage3/*/policy)"
	$(BIN)/python -m training.temper "$$(ls -d runs/shipped-prequal/*/policy)" \
		--out runs/shipped-temper --record-cache --export rl_lb/policies/shipped

# The retrain on generated worlds (issue 17), on top of `make policy`'s stage 3 (run `make
# policy` first): tried on 4 December 2026 and not shipped (docs/training.md says why).
policy-worlds: setup
	rm -rf runs/shipped-stage4
	$(BIN)/rl-lb train --config training/configs/shipped-worlds.toml --out runs/shipped-stage4 \
		--resume "$$(ls runs/shipped-stage3/*/best.zip)"

results: setup
	$(BIN)/python -m training.results --seeds 10

# The generated tables of docs/proxy.md and docs/scenarios.md (tests compare them with the code).
docs: setup
	$(BIN)/python -m lab.docs_blocks

bench: setup
	$(BIN)/python benchmarks/pickers.py
	$(BIN)/python benchmarks/sim_throughput.py
	$(BIN)/python benchmarks/policy_inference.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
