# Portico: every target a developer or CI needs. `make` lists them.
CARGO ?= cargo

.DEFAULT_GOAL := help
.PHONY: help build run test lint fmt bench controlplane redis crds crds-check

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

build: ## Build every binary (debug)
	$(CARGO) build --workspace --bins

run: build ## Start the quickstart: two echo backends and a gateway on http://127.0.0.1:8080
	./deploy/examples/quickstart/run.sh target/debug

test: controlplane redis ## Run every test: unit, compile tables, end-to-end, and against a real control plane
	$(CARGO) build --workspace --bins
	PORTICO_BIN_DIR=$(CURDIR)/target/debug $(CARGO) test --workspace --no-fail-fast

redis: ## Install redis-server (Debian's package, unpacked into target/tools/redis) for global rate-limit tests
	./tests/tools/redis.sh > /dev/null

controlplane: ## Build the test control plane (kube-apiserver, etcd, kube-controller-manager) from the Go modules
	cd tests/controlplane && CGO_ENABLED=0 go build -o ../../target/controlplane/controlplane .

lint: crds-check ## rustfmt check, clippy with warnings denied, generated CRDs up to date
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

crds: ## Regenerate crds/yaml/ from the Rust types in crds/src
	rm -f crds/yaml/*.yaml
	$(CARGO) run -q -p portico-crds --bin crdgen -- crds/yaml

crds-check: ## Fail when crds/yaml/ is not what `make crds` writes
	rm -rf target/crds-check
	$(CARGO) run -q -p portico-crds --bin crdgen -- target/crds-check > /dev/null
	@diff -r crds/yaml target/crds-check > /dev/null || { diff -ru crds/yaml target/crds-check; echo "crds/yaml is stale: run make crds and commit the result"; exit 1; }

fmt: ## Format the code
	$(CARGO) fmt --all

bench: controlplane redis ## Portico vs nginx, HAProxy, Envoy; scale; propagation; writes docs/benchmarks.md
	./tests/bench/tools.sh
	rm -rf target/bench-report
	$(CARGO) bench -p portico-dataplane --bench router --bench memory
	$(CARGO) build --release --workspace --bins
	PORTICO_BIN_DIR=$(CURDIR)/target/release $(CARGO) bench -p portico-tests --bench compare
	PORTICO_BIN_DIR=$(CURDIR)/target/release $(CARGO) bench -p portico-tests --bench propagation
	mkdir -p docs
	./tests/bench/report.sh > docs/benchmarks.md
	@echo "wrote docs/benchmarks.md"
