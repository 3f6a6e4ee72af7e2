# Two commands for a newcomer: `make run` (the whole pipeline on the built-in synthetic
# faces) and `make test`. Both set up what is missing first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
# uv installs exactly what uv.lock (and dvc-requirements.txt) pin, so that two set-ups a
# month apart train the same model; it is itself pinned, in a virtualenv of its own.
UV_VERSION := 0.13.9
UV_VENV := .venv-uv
UV := $(CURDIR)/$(UV_VENV)/bin/uv
# DVC gets a virtualenv of its own: its hydra dependency pins antlr4 4.9, while Dagster's
# asset-selection parser needs 4.13 (see docs/pipeline.md). Its pins are in
# dvc-requirements.txt (`make lock` writes both lock files).
DVC_VENV := .venv-dvc
DVC_VERSION := 3.67.1
# DVC's S3 remote (`dvc push` to S3 or any S3-compatible store, docs/deploy.md)
DVC_S3_VERSION := 3.3.0
DVC := $(CURDIR)/$(DVC_VENV)/bin/dvc
# The test tools and the team deployment's libraries (docs/deploy.md); the GPU build of
# TensorFlow when an NVIDIA driver is present.
EXTRAS := --extra dev --extra deploy$(if $(shell command -v nvidia-smi 2>/dev/null), --extra gpu,)
# Stage commands in dvc.yaml call `cvae`: the project's bin comes first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
DAGSTER_HOME := $(CURDIR)/.dagster
PIP_FLAGS := --quiet --disable-pip-version-check
UV_FLAGS := --quiet --python $(PYTHON)
# Installs compile every module to bytecode once: Python would otherwise compile TensorFlow's
# thousands of modules afresh in each process wherever PYTHONDONTWRITEBYTECODE is set, which
# doubles the start of every `cvae` command and of every pipeline stage (docs/pipeline.md).
UV_INSTALL := --compile-bytecode

.PHONY: setup lock run test ui studio bench clean

# .venv/bin/dvc links to DVC's own virtualenv: with .venv activated, `dvc repro` works
setup: $(VENV)/.installed $(DVC_VENV)/.installed
	ln -sfn ../../$(DVC_VENV)/bin/dvc $(VENV)/bin/dvc

$(UV):
	test -x $(UV_VENV)/bin/python || $(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/pip install $(PIP_FLAGS) "uv==$(UV_VERSION)"

$(VENV)/.installed: pyproject.toml uv.lock Makefile | $(UV)
	$(UV) sync $(UV_FLAGS) $(UV_INSTALL) --locked $(EXTRAS)
	touch $@

$(DVC_VENV)/.installed: dvc-requirements.txt Makefile | $(UV)
	test -x $(DVC_VENV)/bin/python || $(UV) venv $(UV_FLAGS) $(DVC_VENV)
	$(UV) pip sync --quiet $(UV_INSTALL) --python $(DVC_VENV)/bin/python dvc-requirements.txt
	touch $@

# Re-pin after changing pyproject.toml's dependencies or DVC_VERSION.
lock: $(UV)
	$(UV) lock $(UV_FLAGS)
	printf 'dvc==$(DVC_VERSION)\ndvc-s3==$(DVC_S3_VERSION)\n' | $(UV) pip compile $(UV_FLAGS) --universal --generate-hashes \
		--custom-compile-command "make lock" - -o dvc-requirements.txt

# The whole pipeline through DVC, so dvc.lock records every stage.
run: setup
	$(DVC) repro

# Test files run side by side, one per worker (--dist loadfile keeps a file's module
# fixtures in one process): two workers on two cores take 9.4 min where one took 15.5; a
# third made the whole suite slower (29.3 min against 26.9), its pipelines competing for CPU.
# Files are handed out in the order tests/conftest.py sets (the slow ones first), not
# xdist's default of the files with the most tests first.
PYTEST_WORKERS ?= auto
test: setup
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The Dagster UI (webserver and daemon) on 127.0.0.1, with a persistent DAGSTER_HOME. Its
# dagster.yaml follows the environment: SQLite there by default, PostgreSQL and S3 step logs
# when DAGSTER_PG_HOST and CVAE_LOGS_S3_BUCKET are set (orchestration/instance.py).
ui: setup
	$(VENV)/bin/python -m orchestration.instance $(DAGSTER_HOME)
	DAGSTER_HOME=$(DAGSTER_HOME) $(VENV)/bin/dagster dev -m orchestration.definitions --host 127.0.0.1 --port 3000

# The face studio on http://127.0.0.1:8765 for the production model (after `make run`).
studio: setup
	$(VENV)/bin/cvae studio

$(VENV)/.bench-installed: $(VENV)/.installed
	$(UV) sync $(UV_FLAGS) $(UV_INSTALL) --locked $(EXTRAS) --extra bench
	touch $@

# Speed and memory, measured side by side (benchmarks/): figures, not pass/fail.
bench: setup $(VENV)/.bench-installed
	$(VENV)/bin/python benchmarks/data_pipeline.py
	$(VENV)/bin/python benchmarks/training_throughput.py
	$(VENV)/bin/python benchmarks/cpu_speedups.py

clean:
	rm -rf $(VENV) $(DVC_VENV) $(UV_VENV)
