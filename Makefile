# hyperv-operator — entry points. `make` alone lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
KUBECTL ?= kubectl
IMG ?= hyperv-operator:0.1.0
NAMESPACE ?= hyperv-operator-system

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n\n"} /^[a-zA-Z_-]+:.*##/ { printf "  %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

.PHONY: system-deps
system-deps: ## Debian packages: MIT KDC for the tests, Kerberos headers for gssapi/krb5 (idempotent)
	@bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	@bash scripts/install-system-deps.sh
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

.PHONY: venv
venv: $(STAMP) ## Create/update the virtual environment (pinned dependencies)

.PHONY: control-plane
control-plane: venv ## Build kube-apiserver, kubectl and etcd from Go modules (cached per machine)
	$(VPY) -m hyperv_operator.envtest.build

.PHONY: lint
lint: venv ## ruff + mypy (strict)
	$(VENV)/bin/ruff check operator tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# `make test` runs the suite in TEST_WORKERS pytest-xdist workers. Most of an integration test's time is
# spent waiting for the operator and the simulated host (requeue timers, a clock running x60), not
# computing, so more workers than cores pays off. Each worker starts its own stack on first use (control
# plane, simulated host, operator, KDC: random ports, own temp dirs), and `--dist loadfile` keeps each
# file's tests together, in order, on one worker (module stacks are built once, files that rely on their
# order keep it); files are handed out in collection order, which tests/conftest.py starts with the
# longest files (--no-loadscope-reorder: xdist would otherwise start with the files that have the most
# tests, and the long single-test files would run alone at the end). TEST_WORKERS=0 runs everything in
# one process, as before.
TEST_WORKERS ?= 3
PYTEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

.PHONY: test-unit
test-unit: venv ## Unit tests (no servers)
	$(VENV)/bin/pytest -q tests/unit

.PHONY: test-integration
test-integration: venv system-deps control-plane ## Integration tests: real kube-apiserver + etcd, simulated Hyper-V host over WinRM
	$(VENV)/bin/pytest -q $(PYTEST_PARALLEL) -m integration tests

.PHONY: test
test: venv system-deps lint control-plane ## Everything: lint, unit and integration tests (TEST_WORKERS=3 in parallel)
	$(VENV)/bin/pytest -q $(PYTEST_PARALLEL) tests

.PHONY: test-e2e
test-e2e: test-integration ## Alias: the end-to-end suite is the integration suite

.PHONY: demo
demo: venv control-plane ## Control plane + simulated host with a 9 GB base + operator + one VM per strategy
	$(VPY) -m hyperv_operator.demo

.PHONY: run
run: venv ## Run the operator against the current kubeconfig (standalone: with `make install`, no Deployment running)
	$(VPY) -m hyperv_operator.cli run --standalone

.PHONY: simulate
simulate: venv ## Serve a simulated Hyper-V host over WinRM on loopback
	$(VPY) -m hyperv_operator.simulator.serve

.PHONY: install
install: ## Install the CRDs into the current kubeconfig's cluster
	@k="$(KUBECTL)"; command -v "$$k" >/dev/null || k="$$($(VPY) -m hyperv_operator.envtest.build --print-dir)/kubectl"; set -x; "$$k" apply --server-side -k crds/

.PHONY: uninstall
uninstall: ## Remove the CRDs (and with them every VirtualMachine object)
	@k="$(KUBECTL)"; command -v "$$k" >/dev/null || k="$$($(VPY) -m hyperv_operator.envtest.build --print-dir)/kubectl"; set -x; "$$k" delete --ignore-not-found -k crds/

.PHONY: deploy
deploy: ## Deploy CRDs, RBAC and the operator Deployment (kustomize)
	@k="$(KUBECTL)"; command -v "$$k" >/dev/null || k="$$($(VPY) -m hyperv_operator.envtest.build --print-dir)/kubectl"; set -x; "$$k" apply --server-side -k crds/ && "$$k" wait --for=condition=Established --timeout=60s crd/clusterkopfpeerings.kopf.dev && "$$k" apply --server-side -k manifests/

.PHONY: undeploy
undeploy: ## Remove what deploy created
	@k="$(KUBECTL)"; command -v "$$k" >/dev/null || k="$$($(VPY) -m hyperv_operator.envtest.build --print-dir)/kubectl"; set -x; "$$k" delete --ignore-not-found -k manifests/

.PHONY: build-installer
build-installer: ## Write dist/install.yaml (CRDs + RBAC + Deployment)
	@mkdir -p dist
	@k="$(KUBECTL)"; command -v "$$k" >/dev/null || k="$$($(VPY) -m hyperv_operator.envtest.build --print-dir)/kubectl"; set -x; "$$k" kustomize manifests/ > dist/install.yaml.tmp && mv dist/install.yaml.tmp dist/install.yaml
	@echo "wrote dist/install.yaml"

.PHONY: docker-build
docker-build: ## Build the operator image (needs a Docker engine)
	docker build -t $(IMG) .

.PHONY: docker-lint
docker-lint: venv ## Lint the Dockerfile with hadolint
	$(VENV)/bin/hadolint Dockerfile

BENCH_SCALE ?= small

.PHONY: bench
bench: venv control-plane ## Operator vs a sequential pypsrp script, one table (BENCH_SCALE=tiny|small|full|latency|quick-fleet|fleet100|fleet1000)
	$(VPY) -m hyperv_operator.bench --scale $(BENCH_SCALE)

.PHONY: bench-roundtrips
bench-roundtrips: venv ## WinRM round trips per strategy against the simulated host (no Kubernetes)
	$(VPY) -m hyperv_operator.bench_roundtrips

.PHONY: clean
clean: ## Remove the virtual environment and caches (not the control-plane build cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache dist
