# Everything a user or CI runs. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/tnews_lora_vs_full.yaml

.PHONY: help venv test test-fast run-local lint

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

venv: $(VENV)/.installed ## create or update the local virtual environment (pinned packages)

test: venv ## run every test, the slow full-size ones included (offline)
	$(PY) -m pytest -ra

test-fast: venv ## run the tests without the slow full-size ones
	$(PY) -m pytest -ra -m "not slow"

run-local: venv ## run the job in the venv: make run-local CONFIG=configs/x.yaml
	$(PY) -m job run --config $(CONFIG)

lint: venv ## ruff lint and format check
	$(VENV)/bin/ruff check job tests
	$(VENV)/bin/ruff format --check job tests
