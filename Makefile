# vca-gen: `make demo` runs the whole job on the embedded demo; `make test` runs the test suite;
# `make docs` regenerates the tables of README.md and docs/ from the code; `make lint` runs ruff (lint + format check), mypy and the import-layer contract (`make format` applies
# ruff's fixes and formatting). All build .venv from nothing when it is missing or stale (pyproject.toml /
# constraints.txt changed); demo and test also fetch the offline assets; re-running is a no-op when nothing changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ASSETS_STAMP := .assets/.fetched
PYTEST_ARGS ?=
LINT_PATHS := vca_gen tests bench scripts *.py

.PHONY: all venv assets test test-fast lint format demo bench docs clean-venv

all: test

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

$(ASSETS_STAMP): scripts/fetch_assets.py $(STAMP)
	$(PY) scripts/fetch_assets.py
	@touch $(ASSETS_STAMP)

assets: $(ASSETS_STAMP)

test: $(STAMP) $(ASSETS_STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

test-fast: $(STAMP) $(ASSETS_STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(PY) -m mypy vca_gen
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(PY) -m ruff check --fix $(LINT_PATHS)
	$(PY) -m ruff format $(LINT_PATHS)

demo: $(STAMP) $(ASSETS_STAMP)
	$(PY) -m vca_gen.apps.demo

bench: $(STAMP) $(ASSETS_STAMP)
	$(PY) bench/attention.py
	$(PY) bench/samplers.py
	$(PY) bench/train_throughput.py
	$(PY) bench/sampling.py
	$(PY) bench/extraction.py

docs: $(STAMP)
	$(PY) scripts/gen_docs.py

clean-venv:
	rm -rf $(VENV)
