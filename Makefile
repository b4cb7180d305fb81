# Two commands matter: `make demo` and `make test`. Both set up everything they
# need on a fresh Debian/Ubuntu machine with Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: demo test lint bench venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/coexist demo

lint: venv
	$(VENV)/bin/ruff check coexist tests bench
	$(VENV)/bin/ruff format --check coexist tests bench
	$(VENV)/bin/mypy

test: venv lint
	$(VENV)/bin/pytest -q

bench: venv
	$(PY) bench/sandbox_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
