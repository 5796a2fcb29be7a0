# mtd-cache: two commands set everything up on a fresh machine: `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mtd-installed
TORCH := torch==2.14.1 torchvision==0.29.1

TASK ?= digits
STUDENT ?= resnet8
CACHE ?= cache
RUNS ?= runs

.PHONY: demo test bench teachers cache sweep report paper clean help

help:
	@echo "make demo | test | bench | teachers TASK=.. | cache TASK=.. | sweep TASK=.. STUDENT=.. | report"

# The virtual environment is rebuilt only when the project's dependencies change.
$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python bin/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/store_read.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
