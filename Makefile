# Two commands do everything on a fresh machine with Python 3.11+ and make:
#   make run    create .venv, install, serve on :5000 with embedded defaults
#   make test   create .venv, install with test extras, run the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test system-deps test-mongo bench lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/python -m api

# Debian packages the tests drive for real: a browser for the upload page and a
# NATS server. Installed when missing and we may (root, or sudo); elsewhere those
# tests skip locally with the reason, and fail in CI (CI=true).
DEBIAN_PACKAGES = chromium chromium-driver nats-server
SYSTEM_COMMANDS = chromium chromedriver nats-server

system-deps:
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "note: missing$$missing; install $(DEBIAN_PACKAGES) (or your system's equivalents)"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "note: missing$$missing; run: sudo apt-get install $(DEBIAN_PACKAGES)"; exit 0; fi; \
	echo "installing $(DEBIAN_PACKAGES) (missing:$$missing)"; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null

test: system-deps $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check pipeline api tests
	$(BIN)/ruff format --check pipeline api tests

format: $(VENV)/.installed-test
	$(BIN)/ruff format pipeline api tests
	$(BIN)/ruff check --fix pipeline api tests

clean:
	rm -rf $(VENV) data .pytest_cache

# The record store's contract suite against a real MongoDB (the compose file's).
# Needs a Docker engine; the build machines have none, so CI runs SQLite + mongomock.
MONGODB_TEST_URI ?= mongodb://localhost:27017/?directConnection=true
test-mongo: $(VENV)/.installed-test
	docker compose up -d --wait mongo
	MONGODB_URI='$(MONGODB_TEST_URI)' $(BIN)/python -m pytest tests/contract -k mongodb

# Throughput, latency and memory against the compute floor (issue 7); not a test.
# BENCH_ARGS="--sizes 1000" for a quick run. Results: bench-results/bench-*.json
$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

bench: $(VENV)/.installed-bench
	$(BIN)/python -m tests.bench $(BENCH_ARGS)
