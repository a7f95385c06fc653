# One command to a first synced table (`make run`), one to the tests (`make test`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-slow test-all lint bench schemas clean bytecode

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	cd examples/transactions && ../../$(BIN)/connector run
	cd examples/transactions && ../../$(BIN)/python ../show.py warehouse.duckdb
	@echo
	@echo "The dashboard: cd examples/transactions && ../../$(BIN)/connector serve"
	@echo "then open the login URL it prints (http://127.0.0.1:8765/login?token=...)."

# `slow` tests (see pyproject.toml) run in `test-slow`; CI runs both
# Each test's worker processes import the runtime afresh; with PYTHONDONTWRITEBYTECODE set
# (as on CI machines) they would compile it every time, as an installed package never does.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q connector_runtime destinations > /dev/null

test: bytecode
	$(BIN)/pytest -m "not slow"
	@echo "make test skips the tests marked slow: make test-slow runs them (CI runs both)"

test-slow: bytecode
	$(BIN)/pytest -m slow

test-all: bytecode
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sync.py
	$(BIN)/python benchmarks/bench_stream.py
	$(BIN)/python benchmarks/bench_celery.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

schemas: $(STAMP)
	$(BIN)/python -m connector_runtime.schemas schemas
