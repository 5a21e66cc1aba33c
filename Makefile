# tinyllm developer targets. `make help` lists them.

PYTHON ?= python3
SHARED_TOOLS ?= ../shared/tools
WHEEL_ARCHES ?= x86_64 aarch64
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 15
# Empty: every target of fuzz/ (cd fuzz && cargo fuzz list)
FUZZ_TARGETS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

.PHONY: install
install: ## Build the Rust core (release) and install the package
	$(PYTHON) -m pip install .

.PHONY: install-test
install-test: ## Install the package with its test tools, and the Metal emulator as a device
	MATURIN_PEP517_ARGS="--features pyo3/abi3-py310,metal-emulator" $(PYTHON) -m pip install '.[test]'

.PHONY: test
test: install-test test-rust test-python ## Install, then run every Rust and Python test

.PHONY: test-rust
test-rust: ## Rust unit and integration tests (engine, kernels, run.c's story, the GPU on the Metal emulator)
	tools/need-clang.sh
	cargo test --workspace

.PHONY: test-python
test-python: ## Python tests of the installed package
	tools/need-clang.sh
	$(PYTHON) -m pytest tests --durations=20

.PHONY: test-aarch64
test-aarch64: ## NEON kernels under qemu (with and without dotprod); installs cross tools
	$(SHARED_TOOLS)/aarch64-check.sh -p tinyllm-core --test kernels
	QEMU_CPU=cortex-a72 $(SHARED_TOOLS)/aarch64-check.sh -p tinyllm-core --test kernels

.PHONY: wheel
wheel: ## Linux wheels (manylinux2014, abi3 for CPython 3.10+) into dist/ (WHEEL_ARCHES)
	tools/wheel.sh $(WHEEL_ARCHES)

.PHONY: test-wheel
test-wheel: ## Install dist/'s x86_64 wheel in a fresh venv with no Rust on PATH, and run it
	TINYLLM_WHEEL="$$(ls -t dist/tinyllm-*_x86_64.whl | head -n 1)" $(PYTHON) -m pytest tests/test_wheel.py

.PHONY: test-wheel-aarch64
test-wheel-aarch64: ## Run dist/'s aarch64 wheel under qemu (Debian's arm64 Python; NEON, dotprod)
	tools/wheel_aarch64_check.sh

.PHONY: soak
soak: ## One model from 8 threads for SOAK_MINUTES (default 10): outputs vs serial, memory over time
	$(PYTHON) tools/soak.py --minutes $(or $(SOAK_MINUTES),10)

.PHONY: fuzz
fuzz: ## Each fuzz target for FUZZ_SECONDS (default 600), one after the other
	tools/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

.PHONY: fuzz-smoke
fuzz-smoke: ## Each fuzz target for FUZZ_SMOKE_SECONDS (default 15; CI)
	tools/fuzz.sh $(FUZZ_SMOKE_SECONDS) $(FUZZ_TARGETS)

.PHONY: fuzz-replay
fuzz-replay: ## Run the saved findings (fuzz/regressions/<target>/) once each
	tools/fuzz.sh replay $(FUZZ_TARGETS)

.PHONY: lint
lint: ## rustfmt, clippy -D warnings (the fuzz crate, and the core for macOS too), the Metal kernels' cast lint, ruff, mypy
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p tinyllm-python --features metal-emulator -- -D warnings
	tools/need-clang.sh
	cargo run -q -p tinyllm-metal-emu --example compile_library
	cargo fmt --manifest-path fuzz/Cargo.toml --all -- --check
	cargo clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings
	$(MAKE) lint-apple
	$(PYTHON) -m ruff check python tests tools benches examples
	$(PYTHON) -m ruff format --check python tests tools benches examples
	$(PYTHON) -m mypy

# The macOS-only code (the Metal layer, crates/core/src/gpu/metal.rs) cannot be
# built here, but it can be type-checked and linted: apple-check.sh rebuilds std
# for aarch64-apple-darwin from Debian's sources, installing rustc-web, cargo-web,
# rust-web-src and rust-web-clippy with apt the first time (~1 min; as root).
# The first check builds std and takes ~1.5 min on 2 cores (tests included:
# ~20 s of it); later ones take seconds (cache: crates/core/target/apple-check).
.PHONY: lint-apple
lint-apple: ## clippy -D warnings on the core as built for macOS (aarch64-apple-darwin); installs Debian's rustc-web
	$(SHARED_TOOLS)/apple-check.sh clippy crates/core --all-targets -- -D warnings

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
	rm -rf dist fuzz/target fuzz/corpus fuzz/artifacts
	rm -rf benches/.cache .pytest_cache .benchmarks .mypy_cache .ruff_cache
