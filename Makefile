VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
CONFIG ?= config/routes.yaml
PIP := $(PY) -m pip install -qq --disable-pip-version-check

.PHONY: run test lint bench bench-quick install test-deps python-version clean
.DEFAULT_GOAL := install

# AnyRouter proxy needs Python 3.11 or newer; say so in one line before anything else runs.
python-version:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "AnyRouter proxy needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) -V 2>/dev/null || echo "not found"). Try: make $(or $(MAKECMDGOALS),install) PYTHON=python3.12" >&2; \
	  exit 1; }

$(VENV)/.installed: pyproject.toml | python-version
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed pyproject.toml
	$(PIP) -e '.[test]'
	touch $@

install: python-version $(VENV)/.installed

run: python-version $(VENV)/.installed
	$(VENV)/bin/anyrouter-proxy serve --config $(CONFIG)

# The programs the suite drives for real (nginx, PostgreSQL, redis-server, promtool, wrk):
# installed when missing (apt-get), skipped when present.
test-deps:
	@scripts/install-test-deps.sh

test: python-version test-deps $(VENV)/.test-installed
	$(VENV)/bin/ruff check anyrouter_proxy tests
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

lint: python-version $(VENV)/.test-installed
	$(VENV)/bin/ruff check anyrouter_proxy tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) data build *.egg-info

# Benchmark (docs/performance.md): fake upstream + proxy pinned to separate cores, wrk +
# an SSE client; a Markdown table on stdout, JSON in bench/results/latest.json.
# BENCH_ARGS=--profile adds a py-spy profile of chat c16 (--profile SCENARIO: another; needs `$(VENV)/bin/pip install py-spy`).
bench: python-version $(VENV)/.installed
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: python-version $(VENV)/.installed
	$(PY) bench/run.py --quick $(BENCH_ARGS)
