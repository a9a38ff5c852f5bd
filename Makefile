# One command each, from a fresh clone: `make run` serves the product, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run demo lint test bench lock clean

# the runtime alone (`make run`, `make demo`), or with the test and bench tools,
# at the versions pinned in requirements/ (the package itself with --no-deps:
# nothing unpinned comes in)
$(VENV)/.runtime: pyproject.toml requirements/runtime.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/runtime.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed: $(VENV)/.runtime requirements/dev.txt
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt
	touch $@

lock:  ## refresh requirements/*.txt: the newest versions pyproject.toml allows, in a scratch venv
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet .
	{ echo "# The runtime's dependencies, pinned: what \`make run\` installs (refresh: \`make lock\`)."; \
	  .lock-venv/bin/python -m pip freeze --exclude webhook-plugin; } > requirements/runtime.txt
	.lock-venv/bin/python -m pip install --quiet '.[test,bench]'
	{ echo "# The runtime's, test and bench dependencies, pinned: what \`make test\` and CI install (refresh: \`make lock\`)."; \
	  .lock-venv/bin/python -m pip freeze --exclude webhook-plugin; } > requirements/dev.txt
	rm -rf .lock-venv

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
