# mtd-cache: two commands set everything up on a fresh machine: `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mtd-installed
TORCH := torch==2.14.1 torchvision==0.29.1

# Workflow targets: make teachers TASK=mrpc DATA_DIR=glue_data; make augment TASK=mrpc GLOVE=glove.txt;
# make cache TASK=mrpc PRIMARY=0-5 STUDENT_LAYERS=4 (states of TinyBERT-4L's layer map, the last layer
# included: one store serves DistilBERT and TinyBERT; AUGMENTED=file to cache an augmented set);
# make sweep TASK=mrpc STUDENT=tinybert; make report; make paper DRY_RUN=1.
TASK ?= cifar10
STUDENT ?= resnet20
MODEL ?=
SEEDS ?= 0-5
PRIMARY ?=
STUDENT_LAYERS ?=
AUGMENTED ?=
GLOVE ?=
DATA_DIR ?=
REPEATS ?= 3
WORKERS ?= 1
DRY_RUN ?=
STORE = cache/$(TASK)/store.h5
opt = $(if $(2),$(1) $(2))

.PHONY: demo test bench venv teachers augment cache sweep report paper clean help

help:
	@echo "make demo | test | bench | teachers TASK=.. | augment TASK=.. | cache TASK=.. | sweep TASK=.. STUDENT=.. | report | paper"

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
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

teachers: $(STAMP)
	$(BIN)/mtd-cache teachers --task $(TASK) --seeds $(SEEDS) $(call opt,--model,$(MODEL)) $(call opt,--data-dir,$(DATA_DIR))

augment: $(STAMP)
	$(BIN)/mtd-cache augment --task $(TASK) $(call opt,--glove,$(GLOVE)) $(call opt,--data-dir,$(DATA_DIR))

cache: $(STAMP)
	$(BIN)/mtd-cache dump --task $(TASK) $(call opt,--primary,$(PRIMARY)) $(call opt,--data-dir,$(DATA_DIR)) \
		$(call opt,--student-layers,$(STUDENT_LAYERS)) $(call opt,--augmented,$(AUGMENTED))

sweep: $(STAMP)
	$(BIN)/mtd-sweep --store $(STORE) --student $(STUDENT) --repeats $(REPEATS) --workers $(WORKERS) \
		$(call opt,--data-dir,$(DATA_DIR)) $(if $(DRY_RUN),--dry-run)

report: $(STAMP)
	$(BIN)/mtd-report runs --out runs/report

# Every task and student of the paper (GPU work); DRY_RUN=1 prints each plan and its estimated cost.
paper: $(STAMP)
	$(MAKE) sweep TASK=cifar10 STUDENT=resnet20
	@for task in mrpc cola sst-2; do for student in distilbert tinybert; do \
		$(MAKE) --no-print-directory sweep TASK=$$task STUDENT=$$student || exit 1; done; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
