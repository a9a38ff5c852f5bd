# One command each, from a fresh clone: `make run` serves the product, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run demo lint test bench clean

# the runtime alone (`make run`, `make demo`), or with the test and bench tools
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed: $(VENV)/.runtime
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

run: $(VENV)/.runtime  ## serve the reference chat runtime on 127.0.0.1:8000 (SQLite)
	$(BIN)/webhook-plugin serve $(ARGS)

demo: $(VENV)/.runtime  ## play a conversation and watch signed webhooks of every type arrive
	$(BIN)/webhook-plugin demo

lint: $(VENV)/.installed  ## ruff, mypy --strict and the import contracts
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy --strict src/webhook_plugin
	$(BIN)/lint-imports

test: lint  ## the lint, then the whole test suite, asyncio and trio
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed  ## every benchmark, with ratios against same-run baselines
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist src/*.egg-info
