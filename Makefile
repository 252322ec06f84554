# agentops-operator: the commands a developer and CI run.
#
#   make up      start the local stack in the background (control plane, Redis, samples)
#   make down    stop it
#   make test    lint, type-check and run the whole test suite (what CI runs)
#   make bench   run every benchmarks/bench_*.py
#   make crds    regenerate deploy/crds/ from policies/models.py

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# apt-get needs root; use sudo when we are not root (CI runs as root and has no sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export DEBIAN_FRONTEND := noninteractive

.PHONY: help venv redis controlplane up down status lint typecheck pytest test bench crds

help:
	@sed -n 's/^#   //p' Makefile

# Reinstalled whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

redis:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (apt-get)"; \
	  $(SUDO) apt-get install -y --no-install-recommends redis-server \
	  || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends redis-server; }; }

# Builds kcp once into ~/.cache/agentops (minutes when cold); a no-op when the cache is current.
controlplane: venv
	@$(PY) -c 'from localstack.controlplane import ensure_binary; print("control plane binary:", ensure_binary())'

up: venv redis
	$(PY) -m localstack up

down: venv
	$(PY) -m localstack down

status: venv
	$(PY) -m localstack status

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

# pytest exits 5 when it collects nothing: that is a broken suite, not a pass.
pytest: venv redis controlplane
	@status=0; $(VENV)/bin/pytest $(PYTEST_ARGS) || status=$$?; \
	if [ $$status = 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$status

test: venv redis controlplane lint typecheck pytest

bench: venv redis controlplane
	@shopt -s nullglob; files=(benchmarks/bench_*.py); \
	if [ $${#files[@]} = 0 ]; then echo "no benchmarks/bench_*.py yet"; exit 0; fi; \
	for f in "$${files[@]}"; do echo "== $$f"; PYTHONPATH=. $(PY) "$$f"; done

crds: venv
	$(PY) -m localstack.crds
