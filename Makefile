# dicom-node: the two commands that set everything up on a fresh machine.
#   make run   - create .venv, install, start the node on conf/node.toml (SCP 127.0.0.1:11112, state in ./var)
#   make test  - create .venv, install test extras and the Debian peers it can, run pytest on SQLite and
#                (at the same time) the tests whose nodes store something on PostgreSQL
#   make test-postgresql - the tests whose nodes store something, again with the index on a throwaway PostgreSQL
#   make lint  - ruff and mypy (configured in pyproject.toml), as CI runs them
#   make viewer - fetch the OHIF viewer (npm) and serve it on 127.0.0.1:3000 against the running node
#   make smoke - a fresh venv with the runtime install only serves: /readyz, C-ECHO, SIGTERM (.ci/smoke.sh)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run test test-postgresql lint smoke install install-test peers viewer bench-ingest clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e ".[test]"
	touch $@ $(VENV)/.installed-run

install: $(VENV)/.installed-run

install-test: $(VENV)/.installed-test

run: install
	$(VENV)/bin/dicom-node serve

peers:
	@bash tests/peers/install_debian_peers.sh
	@bash tests/peers/install_ohif.sh
	@bash tests/peers/install_object_peers.sh
	@bash tests/peers/setup_triton.sh || echo "peers: Triton server not set up; its tests skip (or fail when DICOM_NODE_REQUIRE_PEERS=1)"

test: install-test peers
	PY=$(PY) bash tests/run_both_backends.sh

# The PostgreSQL pass (issue 18): tests/pg_peer.py starts a throwaway PostgreSQL 15 cluster, puts
# every node the tests configure on it and keeps only the tests that reach a node's index (touches_index).
test-postgresql: install-test peers
	DICOM_NODE_TEST_BACKEND=postgresql $(PY) -m pytest

# mypy reads its targets (dicom_node, inference) and plugins from pyproject.toml.
lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

viewer: install
	@bash tests/peers/install_ohif.sh
	$(VENV)/bin/dicom-node viewer

smoke:
	PYTHON=$(PYTHON) bash .ci/smoke.sh

bench-ingest: install
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) var .pytest_cache
