# p2p-exchange: every target installs what it needs (virtualenv, packages, stubs, Consul, grpcurl).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/exchange/v1/*.proto)
STUBS := exchange/v1/exchange_pb2.py
CONSUL_STAMP := .cache/consul/path

.PHONY: install proto consul test test-unit lint bench cluster-up cluster-down cluster-status clean

install: $(STAMP) $(STUBS)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

proto: $(STUBS)

$(STUBS): $(PROTOS) $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	@touch $@

consul: $(CONSUL_STAMP)

$(CONSUL_STAMP): scripts/ensure-consul.sh
	bash scripts/ensure-consul.sh

test: install consul
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) -m pip install --quiet -e '.[bench]' || echo "some benchmark peers could not be installed; they will be reported as skipped"
	$(PY) -m bench

cluster-up: install consul
	$(PY) -m exchange.devcluster up

cluster-down: install
	$(PY) -m exchange.devcluster down

cluster-status: install
	$(PY) -m exchange.devcluster status

clean:
	rm -rf $(VENV) .cache .cluster exchange/v1/*_pb2*.py exchange/v1/*_pb2.pyi
