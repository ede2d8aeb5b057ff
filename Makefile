# Everything installs from this file and pyproject.toml; slow builds are cached outside the repo.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE_DIR ?= $(HOME)/.cache/rerank-operator
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)

export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: setup lint format test test-unit test-cluster test-node control-plane node gitops cluster-up cluster-down demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[all,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

control-plane:
	@bash hack/control-plane.sh build

# kubelet, kube-proxy, kube-scheduler, containerd, CoreDNS, pause image (cached) + runc/CNI/iptables (apt-get)
node:
	@bash hack/node.sh build

# Flux's source-controller and kustomize-controller for the gitops tier (first time only; also installs git).
gitops:
	@bash hack/gitops.sh build

test: setup lint control-plane node gitops
	$(BIN)/pytest

test-unit: setup
	$(BIN)/pytest -m 'not cluster and not e2e and not node'

test-cluster: setup control-plane gitops
	$(BIN)/pytest -m 'cluster or e2e'

test-node: setup control-plane node
	$(BIN)/pytest -m node

# NODE=1: also a real node (kubelet, containerd, CNI, kube-proxy, scheduler, CoreDNS); needs root
cluster-up: setup control-plane $(if $(NODE),node)
	@$(BIN)/python -m tests.support.controlplane up $(if $(NODE),--node)

cluster-down: setup
	@$(BIN)/python -m tests.support.controlplane down

demo: setup
	@bash hack/demo.sh

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
