# p2p-exchange: every target installs what it needs (virtualenv, packages, stubs, Consul, Prometheus, grpcurl).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/exchange/v1/*.proto)
STUBS := exchange/v1/exchange_pb2.py
CONSUL_STAMP := .cache/consul/path
PROMETHEUS_STAMP := .cache/prometheus/path

.PHONY: install proto consul prometheus browser hygiene test test-unit lint client-sync bench chaos cluster-up cluster-down cluster-status clean

# make chaos CHAOS_ARGS='--seed 7 --orders 10000 --duration 300'
CHAOS_ARGS ?= --duration 120

install: $(STAMP) $(STUBS)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing Python packages into $(VENV) (log: $(VENV)/install.log)"
	@$(PY) -m pip install --upgrade pip > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@$(PY) -m pip install -e '.[dev]' >> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@touch $@

proto: $(STUBS)

$(STUBS): $(PROTOS) $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	@touch $@

consul: $(CONSUL_STAMP)

$(CONSUL_STAMP): scripts/ensure-consul.sh scripts/debian-package.sh
	bash scripts/ensure-consul.sh

# Prometheus and promtool (Debian's package, into .cache/prometheus/): the demo's Prometheus, and make test's
# checks of deploy/prometheus/ (promtool check config, promtool test rules) and its integration test
prometheus: $(PROMETHEUS_STAMP)

$(PROMETHEUS_STAMP): scripts/ensure-prometheus.sh scripts/debian-package.sh
	bash scripts/ensure-prometheus.sh

# First, before anything is installed: a tracked symlink out of the repository or a path of one machine
# breaks every fresh clone (python3 and git only).
hygiene:
	$(PYTHON) -m devtools.repo_hygiene

# The web console's tests drive a real browser: Debian's chromium and chromium-driver, installed with apt-get where
# this runs as root (as CI does); elsewhere it says what to install (the tests then skip, except in CI).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver (apt-get) for the web console's browser tests"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium chromium-driver > /dev/null 2>&1 || \
		{ apt-get update -q > /dev/null && apt-get install -y -q chromium chromium-driver > /dev/null; }; \
	else \
		echo "the web console's browser tests need Chromium and its driver: sudo apt-get install chromium" \
			"chromium-driver (Debian, Ubuntu); without them they are skipped (in CI they fail)"; \
	fi

test: hygiene install consul prometheus browser
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

# ruff and mypy over the whole tree: product, devtools/, bench/, tests/, examples/ ([tool.mypy] in pyproject.toml)
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m devtools.unasync --check

# The sync client is generated from the asyncio one: exchange/client/sync.py from aio.py (devtools/unasync.py).
# Run after editing aio.py and commit both; `make lint` and tests/unit/test_client_sync.py fail while it is stale.
client-sync:
	$(PYTHON) -m devtools.unasync

bench: install
	@for peer in lightmatchingengine liquibook; do \
		$(PY) -m pip install $$peer >> $(VENV)/install.log 2>&1 || \
			echo "benchmark peer $$peer could not be installed; it will be reported as skipped"; \
	done
	$(PY) -m bench

chaos: install consul
	$(PY) -m devtools.chaos $(CHAOS_ARGS)

# make cluster-up TLS=1: mutual TLS on every gRPC connection (certificates under .cluster/tls/)
# make cluster-up HA=1: 3 Consul servers, 2 Sequencer replicas on the log replicated in Consul, 3 nodes
cluster-up: install consul prometheus
	$(PY) -m devtools.demo up $(if $(filter 1,$(TLS)),--tls) $(if $(filter 1,$(HA)),--ha)

cluster-down: install
	$(PY) -m devtools.demo down

cluster-status: install
	$(PY) -m devtools.demo status

clean:
	rm -rf $(VENV) .cache .cluster exchange/v1/*_pb2*.py exchange/v1/*_pb2.pyi
