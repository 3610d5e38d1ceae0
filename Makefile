# Two commands do everything on a fresh machine with Python 3.11+ and make:
#   make run    create .venv, install, serve on :5000 with embedded defaults
#   make test   create .venv, install with test extras, run the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test system-deps secantusdb test-mongo bench lint format clean

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

# SecantusDB: a MongoDB wire-protocol server the tests start on loopback (the
# record store's MongoDB leg, the tests with several API processes). A test tool
# only (GPL-2.0, beta): its own venv, run as a subprocess, never imported.
SECANTUS_VENV ?= .venv-secantus
SECANTUSDB     = secantusdb>=0.7.0b3,<0.8

$(SECANTUS_VENV)/.installed:
	$(PYTHON) -m venv $(SECANTUS_VENV)
	$(SECANTUS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SECANTUS_VENV)/bin/python -m pip install --quiet '$(SECANTUSDB)'
	touch $@

secantusdb: $(SECANTUS_VENV)/.installed

test: system-deps $(VENV)/.installed-test $(SECANTUS_VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check pipeline api tests
	$(BIN)/ruff format --check pipeline api tests

format: $(VENV)/.installed-test
	$(BIN)/ruff format pipeline api tests
	$(BIN)/ruff check --fix pipeline api tests

clean:
	rm -rf $(VENV) $(SECANTUS_VENV) data .pytest_cache

# The MongoDB tests against a real mongod instead of SecantusDB: the contract
# suite's mongodb leg, and the tests with several API processes on one store.
#   MONGODB_URI='mongodb://host:27017/?replicaSet=rs0' make test-mongo
#   make test-mongo MONGO_COMPOSE=1   the compose file's mongo (needs Docker)
MONGO_TESTS  ?= tests/contract tests/integration/test_sharing.py
MONGO_SELECT ?= mongodb or test_sharing.py
test-mongo: $(VENV)/.installed-test
	@if [ -n "$(MONGO_COMPOSE)" ]; then docker compose -f docker-compose.yml -f docker-compose.mongo-test.yml up -d --wait mongo; fi
	@if [ -n "$(MONGO_COMPOSE)" ]; then . ./.env; fi; \
	uri="$${MONGODB_URI:-$(if $(MONGO_COMPOSE),mongodb://$$MONGO_ROOT_USER:$$MONGO_ROOT_PASSWORD@127.0.0.1:27017/?directConnection=true&authSource=admin)}"; \
	if [ -z "$$uri" ]; then echo "set MONGODB_URI to a real mongod (or MONGO_COMPOSE=1)"; exit 2; fi; \
	MONGODB_URI="$$uri" $(BIN)/python -m pytest $(MONGO_TESTS) -k '$(MONGO_SELECT)' $(PYTEST_ARGS)

# Throughput against the compute floor (issue 7) and fair sharing between
# requests (issue 11); not a test. Quick runs: BENCH_ARGS="--legs throughput --sizes 1000"
# or BENCH_ARGS="--legs fairness --fairness-big 3000". Results: bench-results/bench-*.json
$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

bench: $(VENV)/.installed-bench
	$(BIN)/python -m tests.bench $(BENCH_ARGS)
