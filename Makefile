# Quick start: `make run` (set up + run the main job), `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[build,dev,serve,cli]'
	touch $(STAMP)

# onnxruntime-node for the JavaScript bundle test; --ignore-scripts because its install
# script downloads extra binaries (it fails offline, and the CPU build is in the package).
JS_STAMP := tests/js/node_modules/.package-lock.json
$(JS_STAMP): tests/js/package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund --prefix tests/js

run: $(STAMP)
	$(PY) -m edgetune.server

test: $(STAMP) $(JS_STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check src tests bench

bench: $(STAMP)
	$(PY) bench/train_step.py
	$(PY) bench/step_floor.py

clean:
	rm -rf $(VENV)
