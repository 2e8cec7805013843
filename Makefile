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
