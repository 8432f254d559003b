# Two commands set everything up on a fresh machine with Python 3.11 and make:
#   make demo   -> creates .venv, installs ppml, runs the whole lifecycle on the bundled data
#   make test   -> creates .venv, installs the dev extras, runs the test suite (PostgreSQL tests included)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: install install-dev demo test test-fast lint ui bench bench-anonymization bench-training bench-serving clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	# torch first, pinned: the CPU build lies on disk; an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	touch $@

$(VENV)/.installed: $(VENV)/.base pyproject.toml constraints.txt
	$(PIP) -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/ppml demo

test: install-dev
	$(VENV)/bin/pytest

test-fast: install-dev
	$(VENV)/bin/pytest -m "not slow"

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

ui: install
	$(VENV)/bin/ppml ui

bench: bench-anonymization bench-training bench-serving

bench-anonymization: install-dev
	$(PY) bench/anonymization_bench.py

bench-training: install-dev
	$(PY) bench/training_bench.py

bench-serving: install-dev
	$(PY) bench/serving_bench.py

clean:
	rm -rf .ppml
