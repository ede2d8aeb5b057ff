# Everything installs from this file and pyproject.toml; slow builds are cached outside the repo.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE_DIR ?= $(HOME)/.cache/rerank-operator
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)

export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: setup lint format test test-unit test-cluster test-node test-images control-plane node gitops images constraints cluster-up cluster-down demo bench clean

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
	@bash hack/actionlint.sh

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

# rerank-runtime, rerank-export, rerank-operator from the Dockerfiles (buildah; cached by input hash, see the README).
images:
	@bash hack/images.sh build

# Exact versions the images install: a freeze of the development venv (run after changing pyproject.toml).
constraints: setup
	@{ echo "# Exact versions every image installs (pip -c): two builds of one commit get the same packages."; \
	   echo "# Refresh: make constraints (a pip freeze of the development venv after make setup)."; \
	   $(BIN)/pip freeze --all --exclude-editable | grep -v -i '^rerank-operator=='; } > constraints.txt

test: setup lint control-plane node gitops images
	$(BIN)/pytest

test-unit: setup
	$(BIN)/pytest -m 'not cluster and not e2e and not node'

test-images: setup
	$(BIN)/pytest tests/images

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

# Every speed and memory figure into docs/benchmarks.md in one run (<= 20 min on 2 cores once the bench models
# are cached under $(CACHE_DIR)/bench-models). BENCH_QUICK=1: the CI smoke (MiniLM only, tiny workloads).
# Infinity, an anchor, lives in its own venv (hack/bench-venvs.sh); the full run installs it first.
BENCH_OUT ?= docs
OPERATOR_SCALE_MD := $(CACHE_DIR)/bench-operator-scale.md
bench: setup
	@set -e; args="--output-dir $(BENCH_OUT)"; \
	if [ -n "$(BENCH_QUICK)" ]; then args="$$args --quick"; \
	elif infinity=$$(bash hack/bench-venvs.sh); then args="$$args --infinity-bin $$infinity"; fi; \
	if [ -z "$(BENCH_QUICK)" ] && [ -f tests/bench/operator_scale.py ]; then \
	  rm -f $(OPERATOR_SCALE_MD); \
	  $(BIN)/python -m tests.bench.operator_scale --markdown $(OPERATOR_SCALE_MD) || true; \
	  if [ -f $(OPERATOR_SCALE_MD) ]; then args="$$args --include-markdown $(OPERATOR_SCALE_MD)"; fi; \
	fi; \
	echo "rerank-bench suite $$args"; \
	$(BIN)/rerank-bench suite $$args

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
