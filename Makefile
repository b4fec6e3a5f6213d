# The two commands: `make run` starts the whole system, `make test` runs every test. Both set themselves up.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
TYPED := pipeline_core kafka_local producer_api results_sink inference_consumer classify_cli launcher

.PHONY: help run test test-fast check bench bench-guarantees lint typecheck jars clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

jars: $(STAMP)  ## fetch Apache Kafka's jars with Maven into ~/.cache (once)
	@$(PY) -m kafka_local --fetch-only >/dev/null

run: $(STAMP)  ## run the whole system: local broker, API :8000, consumers, sink :8001 (Ctrl-C stops)
	@scripts/ensure-system-packages.sh run
	@$(MAKE) --no-print-directory jars
	$(PY) -m launcher

test: $(STAMP)  ## lint, format and type checks, then the whole test suite (real broker, model, photos, PostgreSQL, Chromium)
	@scripts/ensure-system-packages.sh test
	@$(MAKE) --no-print-directory check
	@$(MAKE) --no-print-directory jars
	$(PY) -m pytest $(PYTEST_ARGS)

check: $(STAMP)  ## ruff check, ruff format --check and mypy --strict: what make test runs first
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy $(TYPED)

test-fast: $(STAMP)  ## unit tests only (no broker, no model; the runtime and handlers on fake clients)
	$(PY) -m pytest -m "not slow and not broker" tests/pipeline_core tests/launcher tests/unit $(PYTEST_ARGS)

bench: $(STAMP) jars  ## measure the pipeline against the model's own ceiling; writes docs/benchmarks/ (~5 min)
	$(PY) -m benchmarks.pipeline_bench

bench-guarantees: $(STAMP) jars  ## what exactly-once costs against at-least-once; writes docs/benchmarks/guarantees.* (~4 min)
	$(PY) -m benchmarks.guarantee_bench

lint: $(STAMP)  ## ruff
	$(PY) -m ruff check .

typecheck: $(STAMP)  ## mypy --strict
	$(PY) -m mypy $(TYPED)

clean:  ## remove the virtual environment and caches (the Kafka jars stay in ~/.cache)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
