# agentops-operator: the commands a developer and CI run.
#
#   make up            start the local stack in the background (control plane, Redis, samples)
#   make down          stop it
#   make test          lint (ruff, import contracts), type-check and run the whole test suite (what CI runs)
#   make cluster-up    a cluster with a real node (containerd, kubelet), the product installed
#                      with `kubectl apply -k`, and the samples applied
#   make cluster-down  stop it
#   make images        build the images (product, Redis, CoreDNS, pause) without a registry
#   make bench         run every benchmarks/bench_*.py
#   make crds          regenerate deploy/crds/ (and the chart's copy) from contracts/resources.py

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

.PHONY: help venv redis node-packages controlplane images helm up down status cluster-up cluster-down \
	cluster-status lint typecheck pytest test bench crds

# What the real node and the image build need from Debian (checked by command, installed once).
NODE_PACKAGES := containerd runc containernetworking-plugins iptables conntrack iproute2 \
	debootstrap buildah debian-archive-keyring

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

node-packages:
	@missing=""; \
	for tool in containerd ctr runc iptables conntrack ip debootstrap buildah; do \
	  command -v $$tool >/dev/null || PATH=$$PATH:/usr/sbin:/sbin command -v $$tool >/dev/null || missing=1; done; \
	test -x /usr/lib/cni/bridge || missing=1; \
	test -f /usr/share/keyrings/debian-archive-keyring.gpg || missing=1; \
	if [ -n "$$missing" ]; then \
	  echo "installing $(NODE_PACKAGES) (apt-get)"; \
	  $(SUDO) apt-get install -y --no-install-recommends $(NODE_PACKAGES) \
	  || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $(NODE_PACKAGES); }; fi

# Builds kcp once into ~/.cache/agentops (minutes when cold); a no-op when the cache is current.
controlplane: venv
	@$(PY) -c 'from localstack.controlplane import ensure_binary; print("control plane binary:", ensure_binary())'

# Builds CoreDNS and pause (Go) and the images (debootstrap + buildah); cached by their inputs.
images: venv node-packages
	@$(PY) -c 'from localstack.images import ensure_images; print(*ensure_images(), sep="\n")'

helm: venv
	@$(PY) -m localstack.helm

up: venv redis
	$(PY) -m localstack up

down: venv
	$(PY) -m localstack down

status: venv
	$(PY) -m localstack status

cluster-up: venv node-packages controlplane images
	$(PY) -m localstack.cluster up

cluster-down: venv
	$(PY) -m localstack.cluster down

cluster-status: venv
	$(PY) -m localstack.cluster status

# The import contracts are in pyproject.toml ([tool.importlinter]); the graph takes a fraction of a
# second to build, so no cache directory is kept.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: venv
	$(VENV)/bin/mypy

# pytest exits 5 when it collects nothing: that is a broken suite, not a pass.
pytest: venv redis node-packages controlplane images helm
	@status=0; $(VENV)/bin/pytest $(PYTEST_ARGS) || status=$$?; \
	if [ $$status = 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$status

test: venv redis controlplane lint typecheck pytest

bench: venv redis node-packages controlplane images
	@shopt -s nullglob; files=(benchmarks/bench_*.py); \
	if [ $${#files[@]} = 0 ]; then echo "no benchmarks/bench_*.py yet"; exit 0; fi; \
	for f in "$${files[@]}"; do echo "== $$f"; PYTHONPATH=. $(PY) "$$f"; done

crds: venv
	$(PY) -m localstack.crds
