# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv with Python 3.11+ on first use; nothing else needs to be installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo dev test test-cluster lint bench

demo: $(VENV)/.installed
	$(BIN)/fxbroker demo

dev: $(VENV)/.installed
	$(BIN)/fxbroker dev

test: $(VENV)/.installed
	$(BIN)/python -m pytest

# The end-to-end and fault suites again on Redis Cluster (issue 14). REDIS_CLUSTER_URL names a
# running cluster (`.ci/redis-cluster start DIR` starts one and prints its URL); each fault row
# starts a private cluster of its own (FXBROKER_TEST_REDIS=cluster, see tests/faults).
test-cluster: $(VENV)/.installed
	@test -n "$(REDIS_CLUSTER_URL)" || { echo "make test-cluster: set REDIS_CLUSTER_URL" >&2; exit 2; }
	REDIS_URL='$(REDIS_CLUSTER_URL)' FXBROKER_TEST_REDIS=cluster $(BIN)/python -m pytest tests/e2e tests/faults

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
