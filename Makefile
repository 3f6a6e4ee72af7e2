# Two commands for a newcomer: `make run` (the whole pipeline on the built-in synthetic
# faces) and `make test`. Both set up what is missing first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
# DVC gets a virtualenv of its own: its hydra dependency pins antlr4 4.9, while Dagster's
# asset-selection parser needs 4.13 (see ../shared/DESIGN.md, known pitfalls).
DVC_VENV := .venv-dvc
DVC_VERSION := 3.67.1
DVC := $(CURDIR)/$(DVC_VENV)/bin/dvc
# The GPU build of TensorFlow when an NVIDIA driver is present.
comma := ,
EXTRAS := dev$(if $(shell command -v nvidia-smi 2>/dev/null),$(comma)gpu,)
# Stage commands in dvc.yaml call `cvae`: the project's bin comes first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
DAGSTER_HOME := $(CURDIR)/.dagster
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: setup run test ui bench clean

setup: $(VENV)/.installed $(DVC_VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(VENV)/bin/pip install $(PIP_FLAGS) -e ".[$(EXTRAS)]"
	touch $@

$(DVC_VENV)/.installed: Makefile
	test -x $(DVC_VENV)/bin/python || $(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/pip install $(PIP_FLAGS) "dvc==$(DVC_VERSION)"
	touch $@

# The whole pipeline through DVC, so dvc.lock records every stage.
run: setup
	$(DVC) repro

# Test files run side by side, one per worker (--dist loadfile keeps a file's module
# fixtures in one process): most of the suite is single-threaded Python and subprocess
# start-up, so two workers on two cores take 9.4 min where one took 15.5.
PYTEST_WORKERS ?= auto
test: setup
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile

# The Dagster UI (webserver and daemon) on 127.0.0.1, with a persistent DAGSTER_HOME.
ui: setup
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp orchestration/dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	DAGSTER_HOME=$(DAGSTER_HOME) $(VENV)/bin/dagster dev -m orchestration.definitions --host 127.0.0.1 --port 3000

$(VENV)/.bench-installed: $(VENV)/.installed
	$(VENV)/bin/pip install $(PIP_FLAGS) -e ".[$(EXTRAS),bench]"
	touch $@

# Speed and memory, measured side by side (benchmarks/): figures, not pass/fail.
bench: setup $(VENV)/.bench-installed
	$(VENV)/bin/python benchmarks/data_pipeline.py
	$(VENV)/bin/python benchmarks/training_throughput.py

clean:
	rm -rf $(VENV) $(DVC_VENV)
