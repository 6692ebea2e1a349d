# wardgate: `make run` starts the gateway, `make test` runs every test. Both do all set-up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN_DIR := .bin
OPA_VERSION := v1.22.3
export PATH := $(CURDIR)/$(BIN_DIR):$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test setup opa node chromium policy-test clean bench soak fuzz

setup: $(VENV)/.installed opa

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test]'
	@touch $@

opa:
	@OPA_VERSION=$(OPA_VERSION) BIN_DIR=$(BIN_DIR) scripts/install-opa.sh

node: tests/node/node_modules/.installed

tests/node/node_modules/.installed: tests/node/package.json tests/node/package-lock.json
	@cd tests/node && npm ci --silent --no-audit --no-fund
	@touch $@

# The audit web page is tested in headless Chromium (Debian's package), installed only if missing.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { echo "installing chromium from Debian ..." >&2; export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; } \
	  || echo "chromium is missing: the audit page test will skip (fail under CI=true)" >&2; }

run: setup
	@$(VENV)/bin/wardgate up

policy-test: setup
	@$(VENV)/bin/wardgate policy test

test: setup node chromium
	@scripts/postgres.sh $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The side-by-side proxy benchmark (docs/benchmarks.md); squid is the reference forward proxy.
BENCH_ARGS ?= --workers-check
bench: setup
	@command -v squid >/dev/null || test -x /usr/sbin/squid || apt-get install -y -q squid
	@$(PY) -m pip install -q -e '.[test,bench]'
	@scripts/postgres.sh $(PY) bench/run.py $(BENCH_ARGS)
# Not part of `make test`: ten minutes of load on loopback while OPA, PostgreSQL and the audit
# database go away and come back (bench/soak.py; summary in .soak/summary.md, exit 1 on a violation).
SOAK_MINUTES ?= 10
soak: setup
	@scripts/postgres.sh $(PY) bench/soak.py --minutes $(SOAK_MINUTES)

# The fuzz targets for longer than the seconds they get in `make test`.
FUZZ_EXAMPLES ?= 5000
fuzz: setup
	@WARDGATE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/fuzz/test_fuzz_parsers.py

clean:
	rm -rf $(VENV) $(BIN_DIR) tests/node/node_modules
