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

# A tool in a virtualenv of its own, never a project dependency: $(call tool_venv,DIR,REQUIREMENT)
define tool_venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet '$(2)'
	touch $(1)/.installed
endef

$(SECANTUS_VENV)/.installed:
	$(call tool_venv,$(SECANTUS_VENV),$(SECANTUSDB))

secantusdb: $(SECANTUS_VENV)/.installed

# Two pytest processes (pytest-xdist; most tests wait on subprocesses, sleeps and
# sockets, so two share the 2 cores well), each test module whole on one of them
# (its shared fixtures start once); then, alone, the tests marked `timing`, which
# assert how soon something happens and would count the other process's load.
# Exit status 5 is "nothing selected": a PYTEST_ARGS subset may leave one part empty.
TEST_WORKERS ?= 2
test: typecheck system-deps $(VENV)/.installed-test $(SECANTUS_VENV)/.installed
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope -m 'not timing' $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/python -m pytest -m timing $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The layers that start no server (unit, the API through Falcon's TestClient, the
# record store contract on SQLite), in about 30 s: for the edit-test loop.
.PHONY: test-fast
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m 'not integration' tests/unit tests/api tests/contract $(PYTEST_ARGS)

# mypy over pipeline/, api/ and tests/ (the `files` of [tool.mypy] in pyproject.toml, which
# configures it): 30-50 s from a fresh clone (2 cores; tests/ adds about 30%), under a
# second once .mypy_cache/ holds the last run.
.PHONY: typecheck
typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

lint: typecheck $(VENV)/.installed-test
	$(BIN)/ruff check pipeline api tests
	$(BIN)/ruff format --check pipeline api tests

format: $(VENV)/.installed-test
	$(BIN)/ruff format pipeline api tests
	$(BIN)/ruff check --fix pipeline api tests

clean:
	rm -rf $(VENV) $(SECANTUS_VENV) $(IMG2DATASET_VENV) data .pytest_cache .mypy_cache

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

# Throughput against the compute floor (issue 7), fair sharing between requests
# (issue 11), output formats and resizing against img2dataset (issue 13); not a
# test. All legs: ~40 min on 2 cores. Quick runs: BENCH_ARGS="--legs throughput --sizes 1000",
# "--legs fairness --fairness-big 3000", "--legs formats,resize512" (4 min); every leg
# and flag in tests/bench/__main__.py. Results: bench-results/bench-*.json
$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

# img2dataset, the resize512 leg's reference (issue 13): a bench tool only, in its
# own venv (it pulls OpenCV, albumentations, wandb...), run as a subprocess.
IMG2DATASET_VENV ?= .venv-img2dataset
IMG2DATASET       = img2dataset>=1.47,<2

$(IMG2DATASET_VENV)/.installed:
	$(call tool_venv,$(IMG2DATASET_VENV),$(IMG2DATASET))

bench: $(VENV)/.installed-bench $(IMG2DATASET_VENV)/.installed
	$(BIN)/python -m tests.bench --img2dataset-venv $(IMG2DATASET_VENV) $(BENCH_ARGS)
