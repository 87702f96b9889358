# Two commands on a fresh machine: `make demo` and `make test`. Nothing but python3 and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SDK2_VENV ?= .venv-sdk2

.PHONY: demo test test-fast test-sdk2 fuzz lint typecheck check bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[demo]'
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@ $(VENV)/.demo-installed

$(SDK2_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SDK2_VENV)
	$(SDK2_VENV)/bin/python -m pip install -q --upgrade pip
	$(SDK2_VENV)/bin/python -m pip install -q -e '.[dev]' 'mistralai>=2,<3'
	@touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/mistral-ratelimit demo

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q
	$(MAKE) test-sdk2

# The same SDK integration tests against the newest mistralai 2.x (httpx line).
test-sdk2: $(SDK2_VENV)/.installed
	$(SDK2_VENV)/bin/python -m pytest -q -m sdk

test-fast: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q -x -m 'not realclock and not redis and not sdk'

# Fresh random examples for every property test (`make test` replays fixed ones).
PROPERTY_TESTS := $(shell grep -l '@given' tests/test_*.py)
fuzz: $(VENV)/.dev-installed
	HYPOTHESIS_PROFILE=explore $(BIN)/python -m pytest -q -p no:cacheprovider $(PROPERTY_TESTS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

check: lint typecheck test

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(SDK2_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
