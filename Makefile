# Set-up, run, test. On a fresh Debian machine `make run` and `make test` are all it takes:
# both create .venv, install torch and the project, and fetch the Fashion-MNIST package if they can.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build pip finds first on these machines; a bare `torch` would pull a multi-GB CUDA build.
TORCH_VERSION ?= 2.13.0
# Elsewhere, https://download.pytorch.org/whl/cpu gives the CPU build (PyPI's Linux wheel is CUDA).
TORCH_INDEX_URL ?=
DATASET_DIR ?= /usr/share/datasets/fashion-mnist
DATASET_PACKAGE ?= dataset-fashion-mnist
# The browser tests/test_dashboard_browser.py drives (Debian's package and command are both chromium).
CHROMIUM_PACKAGE ?= chromium
# What `make run` starts: the API with an in-process worker, on SQLite under ./data (migrated at
# start-up) and the bundled GHN. SERVE_CMD=info only prints what this installation has.
SERVE_CMD ?= serve
PYTEST_ARGS ?=
# Stamp of a finished install: redone when the project's metadata changes, instant otherwise.
INSTALLED := $(VENV)/.installed

.PHONY: help setup dataset browser run test lint bench clean distclean

help:
	@echo "make run        set up (.venv, torch $(TORCH_VERSION), project, dataset), then run: nas-service $(SERVE_CMD)"
	@echo "make test       set up, then pytest -q and ruff check ."
	@echo "make lint       ruff check ."
	@echo "make bench      run every bench/*.py (results in bench/results/)"
	@echo "make clean      remove caches and build outputs (make distclean also removes $(VENV))"

# Debian's python3 lacks ensurepip until python3-venv is installed.
$(BIN)/python:
	@echo "+ $(PYTHON) -m venv $(VENV)"; \
	if ! $(PYTHON) -m venv $(VENV); then \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing python3-venv"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	    $(PYTHON) -m venv $(VENV); \
	  else \
	    echo "error: '$(PYTHON) -m venv' failed; on Debian: sudo apt-get install python3-venv" >&2; \
	    exit 1; \
	  fi; \
	fi

# torch first and pinned: installed by the project's range instead, pip would choose a CUDA build.
$(INSTALLED): pyproject.toml nas_service/version.py | $(BIN)/python
	$(BIN)/python -m pip install $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL) )"torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

# Never fatal: without the data, everything but training and scoring still works.
dataset:
	@if [ -d "$(DATASET_DIR)" ]; then \
	  exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "$(DATASET_DIR) is missing: installing the Debian package $(DATASET_PACKAGE)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DATASET_PACKAGE); } \
	    || echo "warning: could not install $(DATASET_PACKAGE); continuing without Fashion-MNIST" >&2; \
	else \
	  echo "note: $(DATASET_DIR) is missing. Install it with" >&2; \
	  echo "  sudo apt-get install $(DATASET_PACKAGE)" >&2; \
	  echo "or point NAS_DATASETS_DIR at a folder holding fashion-mnist/. Continuing without it." >&2; \
	fi

# Never fatal: without chromium, only the dashboard's browser tests skip (they fail under CI).
# A prerequisite of `test` only: `make run` has no use for a browser.
browser:
	@if command -v $(CHROMIUM_PACKAGE) >/dev/null; then \
	  exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "chromium is missing: installing the Debian package $(CHROMIUM_PACKAGE) (dashboard browser tests)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CHROMIUM_PACKAGE); } \
	    || echo "warning: could not install $(CHROMIUM_PACKAGE); the dashboard browser tests will skip" >&2; \
	else \
	  echo "note: chromium is missing, so the dashboard browser tests will skip. Install it with" >&2; \
	  echo "  sudo apt-get install $(CHROMIUM_PACKAGE)" >&2; \
	fi

setup: $(INSTALLED) dataset

run: setup
	$(BIN)/nas-service $(SERVE_CMD)

# Both checks always run; the first failure decides the exit status. pytest's status 5
# ("no tests collected") is non-zero, so an empty run fails like any other.
test: setup browser
	@status=0; \
	echo "+ pytest -q$(if $(PYTEST_ARGS), $(PYTEST_ARGS))"; \
	$(BIN)/pytest -q $(PYTEST_ARGS) || status=$$?; \
	if [ "$$status" = 5 ]; then echo "error: pytest collected no tests" >&2; fi; \
	echo "+ ruff check ."; \
	$(BIN)/ruff check . || { [ "$$status" != 0 ] || status=1; }; \
	exit $$status

lint: $(INSTALLED)
	$(BIN)/ruff check .

bench: setup
	@mkdir -p bench/results
	@scripts="$(wildcard bench/*.py)"; \
	if [ -z "$$scripts" ]; then echo "no bench/*.py scripts"; exit 0; fi; \
	for script in $$scripts; do \
	  echo "+ python $$script"; \
	  $(BIN)/python "$$script"; \
	done

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
