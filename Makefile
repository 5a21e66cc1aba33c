# tinyllm developer targets. `make help` lists them.

PYTHON ?= python3
SHARED_TOOLS ?= ../shared/tools

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

.PHONY: install
install: ## Build the Rust core (release) and install the package
	$(PYTHON) -m pip install .

.PHONY: install-test
install-test: ## Install the package with its test tools (pytest, mypy, ruff, ...)
	$(PYTHON) -m pip install '.[test]'

.PHONY: test
test: install-test test-rust test-python ## Install, then run every Rust and Python test

.PHONY: test-rust
test-rust: ## Rust unit and integration tests (engine, kernels, run.c's story)
	cargo test --workspace

.PHONY: test-python
test-python: ## Python tests of the installed package
	$(PYTHON) -m pytest tests

.PHONY: test-aarch64
test-aarch64: ## NEON kernels under qemu (with and without dotprod); installs cross tools
	$(SHARED_TOOLS)/aarch64-check.sh -p tinyllm-core --test kernels
	QEMU_CPU=cortex-a72 $(SHARED_TOOLS)/aarch64-check.sh -p tinyllm-core --test kernels

.PHONY: lint
lint: ## rustfmt, clippy -D warnings, ruff, mypy
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(PYTHON) -m ruff check python tests tools benches examples
	$(PYTHON) -m ruff format --check python tests tools benches examples
	$(PYTHON) -m mypy

.PHONY: fmt
fmt: ## Format Rust and Python sources
	cargo fmt --all
	$(PYTHON) -m ruff format python tests tools benches examples

.PHONY: bench
bench: ## Tokens/s and GB/s (set TINYLLM_RUNC=path/to/run.c's binary to compare)
	$(PYTHON) -m pytest benches

.PHONY: clean
clean: ## Remove build products and caches
	cargo clean
	rm -rf benches/.cache .pytest_cache .benchmarks .mypy_cache .ruff_cache
