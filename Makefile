# Portico: every target a developer or CI needs. `make` lists them.
CARGO ?= cargo

.DEFAULT_GOAL := help
.PHONY: help build run test lint fmt bench controlplane

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

build: ## Build every binary (debug)
	$(CARGO) build --workspace --bins

run: build ## Start the quickstart: two echo backends and a gateway on http://127.0.0.1:8080
	./deploy/examples/quickstart/run.sh target/debug

test: controlplane ## Run every test: unit, compile tables, end-to-end, and against a real control plane
	$(CARGO) build --workspace --bins
	PORTICO_BIN_DIR=$(CURDIR)/target/debug $(CARGO) test --workspace --no-fail-fast

controlplane: ## Build the test control plane (kube-apiserver, etcd, kube-controller-manager) from the Go modules
	cd tests/controlplane && CGO_ENABLED=0 go build -o ../../target/controlplane/controlplane .

lint: ## rustfmt check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

bench: controlplane ## Route matching at 10,000 routes, memory per route, config propagation on the test control plane
	$(CARGO) bench -p portico-dataplane --bench router --bench memory
	$(CARGO) build --release --workspace --bins
	PORTICO_BIN_DIR=$(CURDIR)/target/release $(CARGO) bench -p portico-tests --bench propagation
