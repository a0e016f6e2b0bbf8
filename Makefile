# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv with Python 3.11+ on first use; nothing else needs to be installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo dev test lint bench

demo: $(VENV)/.installed
	$(BIN)/fxbroker demo

dev: $(VENV)/.installed
	$(BIN)/fxbroker dev

test: $(VENV)/.installed
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(VENV)/.installed
	$(BIN)/python -m bench

# setuptools at the build-system floor: tests/test_packaging.py builds the wheel offline with it.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 'setuptools>=77'
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@
