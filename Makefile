# Two commands matter: `make demo` and `make test`. Both set up everything they
# need on a fresh Debian/Ubuntu machine with Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: demo test lint bench venv clean system-deps

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "coexist needs Python 3.11 or newer ($(PYTHON) is $$($(PYTHON) -V 2>&1))"; exit 1; }
	@# Debian/Ubuntu ship venv without ensurepip unless python3-venv is installed.
	@$(PYTHON) -m venv $(VENV) || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y python3-venv && rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); \
		else echo "install python3-venv (sudo apt-get install python3-venv)"; exit 1; fi; }
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

# Server binaries the tests start themselves: tests/pg.py runs a throwaway PostgreSQL,
# tests/dovecot.py a throwaway Dovecot (IMAP); the report test opens the HTML report in
# Debian's headless Chromium through its chromedriver (tests/e2e/test_report_browser.py:
# nothing is downloaded at test time). Each package is installed only when missing.
APT_INSTALL = DEBIAN_FRONTEND=noninteractive apt-get install -y
define install_missing
	@if $(1); then \
		:; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update && $(APT_INSTALL) $(2); \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo -n apt-get update && sudo -n env $(APT_INSTALL) $(2); \
	else \
		echo "system-deps: $(2) missing and this user cannot install it;"; \
		echo "  run: sudo apt-get install $(2)   (its tests skip, or fail when CI=true)"; \
	fi
endef

system-deps:
	$(call install_missing,command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1,postgresql)
	$(call install_missing,PATH="$$PATH:/usr/sbin" command -v dovecot >/dev/null 2>&1 && PATH="$$PATH:/usr/sbin" command -v doveadm >/dev/null 2>&1,dovecot-core dovecot-imapd)
	$(call install_missing,command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1,chromium chromium-driver)

# Two pytest-xdist workers, each with its own session servers (see pyproject's dev extras).
test: venv lint system-deps
	$(VENV)/bin/pytest -q -n 2

bench: venv
	$(PY) bench/sandbox_bench.py
	$(PY) bench/provision_bench.py
	$(PY) bench/graph_mover_bench.py
	$(PY) bench/imap_bench.py
	$(PY) bench/ews_bench.py
	$(PY) bench/worker_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
