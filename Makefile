# Two entry points on a fresh machine: `make demo` and `make test` (see README.md).
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo

.PHONY: demo test lint install install-dev bench clean-demo

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip

# Stamps make re-runs cheap: pip runs again only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/daguerre samples $(DEMO)/originals
	$(BIN)/daguerre restore $(DEMO)/originals $(DEMO)/restored \
		--catalog sqlite:///$(abspath $(DEMO))/catalog.sqlite --collection demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(VENV)/.installed-dev lint
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/bench_demo.py

clean-demo:
	rm -rf $(DEMO)
