# Quick start: `make run` (set up + run the main job), `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[build,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m edgetune.examples.quickstart

test: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check src tests bench

bench: $(STAMP)
	$(PY) bench/train_step.py

clean:
	rm -rf $(VENV)
