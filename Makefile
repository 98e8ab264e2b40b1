# Consent Stream: developer and CI entry points.
# Everything runs non-interactively (CI=true, no stdin). The local stack (Kafka KRaft +
# Redis on loopback) is deploy/local/stack.py, configured by deploy/local/stack.toml.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STACK_PY := deploy/local/stack.py
# `up` runs with the venv's python so topics are created with confluent_kafka's AdminClient;
# the other subcommands are stdlib-only and work before the venv exists.
STACK := $(PYTHON) $(STACK_PY)
# Prefix for recipe lines that need the service settings (CONSENT_STREAM_BOOTSTRAP_SERVERS,
# CONSENT_STREAM_REDIS_URL, CONSENT_STREAM_PARTITIONS) in their environment.
WITH_STACK_ENV = stack_env="$$($(STACK) env)"; eval "$$stack_env";
PYTEST_ARGS ?=
# Options of `consent-stream demo` for `make run`, e.g. RUN_ARGS="--subjects 5000 --rate 500".
RUN_ARGS ?=

.PHONY: help venv stack stop status env test lint run bench reset clean distclean

help:
	@echo "make venv    - create $(VENV) and pip install -e '.[dev]' (reused until pyproject.toml changes)"
	@echo "make stack   - install what is missing, start Kafka + Redis on loopback, create topics"
	@echo "make stop    - stop the stack (only the processes it started)"
	@echo "make status  - what runs, ports, log files"
	@echo "make env     - the export lines of the service settings"
	@echo "make lint    - ruff check + mypy"
	@echo "make test    - lint, stack, then the whole pytest suite against it"
	@echo "make run     - the main job: stack, workers, simulated partners, a realistic workload,"
	@echo "               progress, then a summary; exit 0 only if every request settled"
	@echo "               options: make run RUN_ARGS=\"--subjects 5000 --rate 500\" (see"
	@echo "               $(VENV)/bin/consent-stream demo --help)"
	@echo "make bench   - the benchmark (docs/benchmarks.md): ceilings, pipeline, latency, memory"
	@echo "make reset   - stop the stack and delete its data (keeps the Kafka jar cache)"
	@echo "make clean   - reset + delete Python caches; distclean also deletes $(VENV) and .stack"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

stack: venv
	$(VPY) $(STACK_PY) up
	$(WITH_STACK_ENV) $(VENV)/bin/consent-stream --log-level WARNING acl sync

stop:
	$(STACK) down

status:
	$(STACK) status || true

env:
	@$(STACK) env

lint: venv
	$(VPY) -m ruff check .
	$(VPY) -m mypy

test: lint stack
	$(WITH_STACK_ENV) $(VPY) -m pytest $(PYTEST_ARGS) tests

run: stack
	$(WITH_STACK_ENV) $(VENV)/bin/consent-stream --log-level WARNING demo $(RUN_ARGS)

bench: stack
	$(WITH_STACK_ENV) $(VPY) bench/run.py $(BENCH_ARGS)

reset:
	$(STACK) reset

clean: reset
	rm -rf .mypy_cache .ruff_cache .pytest_cache ./*.egg-info
	find . -path ./$(VENV) -prune -o -path ./.stack -prune -o -path ./.git -prune \
		-o -type d -name __pycache__ -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV) .stack
