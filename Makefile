# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv once;
# re-running them reuses it (the stamp only goes stale when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.pole-installed
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-all lint bench install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(TORCH)
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pole demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest

test-all: $(STAMP)
	$(VENV)/bin/pytest -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(VENV)/bin/python bench/random_walk.py
	$(VENV)/bin/python bench/make_cams.py
	$(VENV)/bin/python bench/api_load.py --baseline
