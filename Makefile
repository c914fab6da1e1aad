# Quick start: `make demo` (the whole pipeline on a small MuJoCo session), `make demo-arm` (the same on the Franka
# Panda reach task, fine-tuned on its robot twin) and `make test` (the test suite).
# Both create .venv when missing. torch==2.13.0 is installed first: it is a CPU wheel on this project's machines,
# and installing it before the project keeps pip from resolving `torch` to a multi-GB CUDA build.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-arm test test-fast lint format bench-data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	MUJOCO_GL=egl $(BIN)/acalign demo

demo-arm: $(STAMP)
	MUJOCO_GL=egl $(BIN)/acalign demo --task arm

# Two workers (the CI machine's two cores): most integration tests wait on real-time sessions, so they overlap well.
# Tests that share fixed resources carry an xdist_group mark and run on one worker.
test: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadgroup --durations=25

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not integration and not smoke"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The learning benchmark's medium datasets, made from the behaviour snapshots shipped under policies/behaviour
# (minutes; bit for bit the halfcheetah-medium-d4rl of docs/results.md, the hopper-medium made there 2026-12-07 and the
# walker2d-medium made there 2026-12-08 from a 300k-step behaviour run).
# medium-replay needs each env's full behaviour run, trained once under runs/ (20-50 min) by
# `acalign collect --env ENV --policy sac --kind medium-replay --name NAME`.
bench-data: $(STAMP)
	MUJOCO_GL=egl $(BIN)/acalign collect --env HalfCheetah-v5 --policy sac --kind medium --name halfcheetah-medium-d4rl \
		--runs-dir policies
	MUJOCO_GL=egl $(BIN)/acalign collect --env Hopper-v5 --policy sac --kind medium --name hopper-medium \
		--runs-dir policies
	MUJOCO_GL=egl $(BIN)/acalign collect --env Walker2d-v5 --policy sac --kind medium --name walker2d-medium \
		--runs-dir policies

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
