# Quick start: `make run` (set up + run the main job), `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
SYSTEM_STAMP := $(VENV)/.installed-system
# What the tests need from the system: real data (Fashion-MNIST), the browser for the
# page's end-to-end tests, Node.js for the JavaScript runtime test.
# (Node.js counts as present when `npm` runs, however it was installed.)
# espeak-ng and flite speak the words of the speech tests; sox mixes their noise.
SYSTEM_PACKAGES := dataset-fashion-mnist chromium espeak-ng flite sox fortunes fortunes-min

.PHONY: run test lint bench clean system

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar on --upgrade pip

# Running needs the runtime, the converter (the default bundle is built on first
# start) and the web app; not the test tools.
$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --progress-bar on -e '.[build,serve,cli,audio,text]'
	touch $@

$(TEST_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --progress-bar on -e '.[build,serve,cli,audio,text,fleet,dev]'
	touch $@ $(RUN_STAMP)

# System packages: installed with apt-get when run as root, else the exact command is
# printed and the target fails, so a test never fails or skips for want of them.
system: $(SYSTEM_STAMP)
$(SYSTEM_STAMP): Makefile | $(VENV)/bin/python
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" \
	    || missing="$$missing $$p"; done; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "the tests need these system packages:$$missing"; \
	    echo "install them with: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
	touch $@

# onnxruntime-node for the JavaScript bundle test; --ignore-scripts because its install
# script downloads extra binaries (it fails offline, and the CPU build is in the package).
JS_STAMP := tests/js/node_modules/.package-lock.json
$(JS_STAMP): tests/js/package-lock.json | $(SYSTEM_STAMP)
	npm ci --ignore-scripts --no-audit --no-fund --prefix tests/js

# onnxruntime-web and @huggingface/tokenizers (text bundles) for edgetune.js (the page
# personalizes in the tab), served by the server from src/edgetune/server/web/node_modules.
# Without npm `make run` still runs: the page then says why and keeps the server mode.
WEB_DIR := src/edgetune/server/web
WEB_STAMP := $(WEB_DIR)/node_modules/.package-lock.json
WEB_NPM := $(if $(shell command -v npm),$(WEB_STAMP))
$(WEB_STAMP): $(WEB_DIR)/package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund --prefix $(WEB_DIR)

run: $(RUN_STAMP) $(WEB_NPM)
	$(PY) -m edgetune.server

test: $(TEST_STAMP) $(SYSTEM_STAMP) $(JS_STAMP) $(WEB_STAMP)
	$(PY) -m ruff check src tests bench
	EDGETUNE_REQUIRE_ALL=1 $(PY) -m pytest

lint: $(TEST_STAMP)
	$(PY) -m ruff check src tests bench

bench: $(TEST_STAMP)
	$(PY) bench/train_step.py
	$(PY) bench/step_floor.py

clean:
	rm -rf $(VENV) tests/js/node_modules $(WEB_DIR)/node_modules
