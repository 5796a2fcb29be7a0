# mtd-cache: two commands set everything up on a fresh machine: `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mtd-installed
TORCH := torch==2.14.1 torchvision==0.29.1

# Workflow targets (`make help`): every knob below passes through to every target it applies to.
TASK ?= cifar10
STUDENT ?= resnet20
MODEL ?=
SEEDS ?= 0-5
POOL ?= 0-5
EPOCHS ?=
REPEATS ?= 3
WORKERS ?= 1
STUDENTS_PER_PROCESS ?=
THREADS ?=
DATA_DIR ?=
SET ?=
PRIMARY ?=
STUDENT_LAYERS ?=
AUGMENTED ?=
GLOVE ?=
TASKS ?=
DRY_RUN ?=
TFLOPS ?=
TRAIN_SUBSET ?=
MAX_LENGTH ?=
LR ?=
TEACHERS ?= cache/$(TASK)/teachers
STORE ?= cache/$(TASK)/store.h5
RUNS ?= runs
opt = $(if $(2),$(1) $(2))
sets = $(foreach s,$(SET),--set $(s))
paper_opts = --repeats $(REPEATS) --workers $(WORKERS) --seeds $(SEEDS) --pool $(POOL) $(call opt,--model,$(MODEL)) \
	$(call opt,--threads,$(THREADS)) \
	$(call opt,--data-dir,$(DATA_DIR)) $(call opt,--epochs,$(EPOCHS)) $(call opt,--tflops,$(TFLOPS)) $(sets) \
	$(if $(DRY_RUN),--dry-run)

.PHONY: demo test test-fast bench venv teachers augment cache sweep report paper clean help

help:
	@echo "Set-up:   make demo | make test | make test-fast (the tests not marked slow) | make bench"
	@echo "Workflow: make teachers | augment | cache | sweep | report | paper   (with KNOB=value ...)"
	@echo "  teachers  TASK MODEL SEEDS EPOCHS LR TRAIN_SUBSET MAX_LENGTH DATA_DIR SET TEACHERS   train seeded teachers"
	@echo "  augment   TASK GLOVE DATA_DIR                          TinyBERT's augmented training set"
	@echo "  cache     TASK PRIMARY STUDENT_LAYERS AUGMENTED TRAIN_SUBSET MAX_LENGTH DATA_DIR TEACHERS STORE   dump"
	@echo "  sweep     TASK STUDENT POOL REPEATS WORKERS STUDENTS_PER_PROCESS THREADS EPOCHS DATA_DIR SET DRY_RUN STORE RUNS"
	@echo "            (STUDENT=tinybert: R augmentation files and R stores first, store r for repeat r)"
	@echo "  report    RUNS: the report of RUNS into RUNS/report"
	@echo "  paper     TASKS REPEATS WORKERS MODEL SEEDS POOL EPOCHS DATA_DIR SET DRY_RUN TFLOPS: the paper's protocol"
	@echo "Knobs now: TASK=$(TASK) STUDENT=$(STUDENT) MODEL=$(MODEL) SEEDS=$(SEEDS) POOL=$(POOL) EPOCHS=$(EPOCHS)"
	@echo "  TEACHERS=$(TEACHERS) STORE=$(STORE) RUNS=$(RUNS) TRAIN_SUBSET=$(TRAIN_SUBSET) MAX_LENGTH=$(MAX_LENGTH) LR=$(LR)"
	@echo "  REPEATS=$(REPEATS) WORKERS=$(WORKERS) THREADS=$(THREADS) DATA_DIR=$(DATA_DIR) SET='$(SET)' DRY_RUN=$(DRY_RUN)"
	@echo "SET takes KEY=VALUE items separated by spaces: SET='lr=1e-4 temperature=4'"

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

test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

teachers: $(STAMP)
	$(BIN)/mtd-cache teachers --task $(TASK) --seeds $(SEEDS) $(call opt,--model,$(MODEL)) --out $(TEACHERS) \
		$(call opt,--epochs,$(EPOCHS)) $(call opt,--lr,$(LR)) $(call opt,--train-subset,$(TRAIN_SUBSET)) \
		$(call opt,--max-length,$(MAX_LENGTH)) $(call opt,--data-dir,$(DATA_DIR)) $(sets)

augment: $(STAMP)
	$(BIN)/mtd-cache augment --task $(TASK) $(call opt,--glove,$(GLOVE)) $(call opt,--data-dir,$(DATA_DIR))

cache: $(STAMP)
	$(BIN)/mtd-cache dump --task $(TASK) --teachers-dir $(TEACHERS) --out $(STORE) $(call opt,--primary,$(PRIMARY)) \
		$(call opt,--data-dir,$(DATA_DIR)) $(call opt,--student-layers,$(STUDENT_LAYERS)) \
		$(call opt,--augmented,$(AUGMENTED)) $(call opt,--train-subset,$(TRAIN_SUBSET)) \
		$(call opt,--max-length,$(MAX_LENGTH))

# TinyBERT as the paper runs it: R augmentation files (seeds 0..R-1), R stores, store r for repeat r.
sweep: $(STAMP)
ifeq ($(STUDENT),tinybert)
	$(BIN)/python bin/paper.py --tasks $(TASK) --students tinybert $(paper_opts)
else
	$(BIN)/mtd-sweep --store $(STORE) --student $(STUDENT) --pool $(POOL) --repeats $(REPEATS) --out $(RUNS) \
		--workers $(WORKERS) $(call opt,--threads,$(THREADS)) $(call opt,--epochs,$(EPOCHS)) \
		$(call opt,--students-per-process,$(STUDENTS_PER_PROCESS)) \
		$(call opt,--data-dir,$(DATA_DIR)) $(sets) $(if $(DRY_RUN),--dry-run)
endif

report: $(STAMP)
	$(BIN)/mtd-report $(RUNS) --out $(RUNS)/report

# Every task and student of the paper (GPU work): bin/paper.py lists each step; DRY_RUN=1 prints them all with
# their run counts and counted work (TFLOPS= for the time) and runs nothing. TASKS=mrpc,cola limits the tasks.
paper: $(STAMP)
	$(BIN)/python bin/paper.py $(call opt,--tasks,$(TASKS)) $(paper_opts)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
