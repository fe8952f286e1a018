# Two entry points a person needs (see README): `make demo` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python

.PHONY: demo test check lint types bench system-deps venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Debian packages the tests and benchmarks use for real (journald, systemd-analyze,
# Alertmanager, grep, ripgrep).
system-deps:
	scripts/system-deps

demo: venv
	$(PY) demo/run_demo.py

test: system-deps venv
	scripts/test

lint: venv
	$(VENV)/bin/ruff check detector tests bench demo
	$(VENV)/bin/ruff format --check detector tests bench demo

types: venv
	$(VENV)/bin/mypy detector

bench: system-deps venv
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis demo/run
