VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= config/routes.yaml

.PHONY: run test lint bench install dev clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/anyrouter-proxy serve --config $(CONFIG)

test: $(VENV)/.test-installed
	$(VENV)/bin/ruff check anyrouter_proxy tests
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check anyrouter_proxy tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) data build *.egg-info

# Benchmark (issue 9): fake upstream + proxy pinned to separate cores, wrk + an SSE client;
# a Markdown table on stdout, JSON in bench/results/latest.json. BENCH_ARGS=--profile adds
# a py-spy profile of chat c16 (needs `$(VENV)/bin/pip install py-spy`).
.PHONY: bench-quick
bench: $(VENV)/.installed
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: $(VENV)/.installed
	$(PY) bench/run.py --quick $(BENCH_ARGS)
