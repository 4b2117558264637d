# Two commands on a fresh machine:  make pipeline   and   make test
# Both create .venv from the pinned lock (once: the stamp file makes a second call a no-op).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# No telemetry from any tool, and room for Prefect's local server to start on 2 cores.
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export ORT_DISABLE_TELEMETRY := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Offline unless you say otherwise: `HF_HUB_OFFLINE=0 make pipeline` lets a Hub `init:` download.
HF_HUB_OFFLINE ?= 1
export HF_HUB_OFFLINE
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
# Stages run `python -m stages.<name>`: that must be the venv's python.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: pipeline experiment test lint setup clean lock

setup: $(STAMP)

# torch first, by its exact version: its build differs per machine (the CPU wheel here, CUDA
# on Linux, Metal on macOS), so it is the one package without hashes in the lock. Then the
# lock with --require-hashes: pip refuses any file whose sha256 it does not list. --no-deps:
# the lock is the whole set (pip 23.2 in hash mode would re-resolve pins others ask for with
# extras and fail); pip check proves nothing is missing. The project is its own call.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

# Rewrite requirements.lock from pyproject.toml + requirements.in (needs uv 0.13.9).
lock:
	scripts/lock.sh

# DVC needs a git repository and its .dvc/ folder (committed); a copy without git gets both.
.PHONY: .dvc-ready
.dvc-ready: $(STAMP)
	@git rev-parse --git-dir >/dev/null 2>&1 || git init --quiet
	@test -d .dvc || $(BIN)/dvc init --quiet

pipeline: $(STAMP) .dvc-ready
	$(BIN)/dvc repro

# A preset from presets/ as a DVC experiment, through the Prefect flow: make experiment PRESET=gpt-10m
PRESET ?= gpt-10m
experiment: $(STAMP) .dvc-ready
	$(BIN)/python -m pipelines.flow presets/$(PRESET).yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy bardlet

test: $(STAMP) .dvc-ready lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV)
