# The two commands: `make run` starts the whole system, `make test` runs every test. Both set themselves up.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The locks (`make lock`): dev.lock is what `make` installs (every extra and the dev tools); each image installs its
# own service's lock (docker/*.Dockerfile), compiled against dev.lock so that it pins the same versions.
LOCK := requirements/dev.lock
LOCKS := $(LOCK) requirements/api.lock requirements/sink.lock requirements/inference.lock
LOCK_ARGS ?=
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-unknown-linux-gnu $(LOCK_ARGS) pyproject.toml
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
AUDIT_ARGS ?=
TYPED := pipeline_core kafka_local producer_api results_sink inference_consumer classify_cli launcher \
	docker_local benchmarks/capacity.py benchmarks/store_bench.py

.PHONY: help run promote docker-up docker-down test test-fast check audit lock bench bench-guarantees bench-store capacity lint typecheck jars clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# The pinned, hash-checked set from the lock, then the project itself (editable) with no dependencies of its own.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

lock: $(STAMP)  ## re-resolve requirements/*.lock from pyproject.toml, keeping pins (LOCK_ARGS=--upgrade raises all)
	$(UV_COMPILE) --extra dev -c requirements/constraints.txt -o $(LOCK)
	$(UV_COMPILE) --extra api -c $(LOCK) -o requirements/api.lock
	$(UV_COMPILE) --extra sink --extra postgres -c $(LOCK) -o requirements/sink.lock
	$(UV_COMPILE) --extra inference -c $(LOCK) -o requirements/inference.lock

audit: $(STAMP)  ## pip-audit the locks for known vulnerabilities (asks PyPI; ~20 s; AUDIT_ARGS=--strict)
	$(PY) scripts/locks.py audit $(AUDIT_ARGS) $(LOCKS)

jars: $(STAMP)  ## fetch Apache Kafka's jars with Maven into ~/.cache (once)
	@$(PY) -m kafka_local --fetch-only >/dev/null

run: $(STAMP)  ## run the whole system: local broker, API :8000, consumers, sink :8001 (Ctrl-C stops)
	@scripts/ensure-system-packages.sh run
	@$(MAKE) --no-print-directory jars
	$(PY) -m launcher

promote:  ## under `SHADOW_MODEL_NAME=... make run`: make the shadow model the primary, nothing lost (docs/operations.md)
	@kill -USR1 $$(cat $${DATA_DIR:-var}/launcher.pid) && echo "promotion asked for; the make run log shows each step"

docker-up: $(STAMP) jars  ## the system in Docker: build what is missing (no registry needed), start, wait until healthy
	@scripts/ensure-system-packages.sh docker
	$(PY) -m docker_local up

docker-down:  ## remove the Docker deployment's containers and network (VOLUMES=1 deletes its data too)
	$(PY) -m docker_local down $(if $(VOLUMES),--volumes)

test: $(STAMP)  ## lint, format and type checks, the lock audit, then the whole test suite (real broker, model, photos, PostgreSQL, Chromium)
	@scripts/ensure-system-packages.sh test
	@$(MAKE) --no-print-directory check
	@$(MAKE) --no-print-directory audit
	@$(MAKE) --no-print-directory jars
	$(PY) -m pytest $(PYTEST_ARGS)

check: $(STAMP)  ## locks match pyproject.toml, ruff check, ruff format --check, mypy --strict: make test runs it first
	$(PY) scripts/locks.py check $(LOCKS)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy $(TYPED) scripts/locks.py

test-fast: $(STAMP)  ## unit tests only (no broker, no model; the runtime and handlers on fake clients)
	$(PY) -m pytest -m "not slow and not broker" tests/pipeline_core tests/launcher tests/unit $(PYTEST_ARGS)

bench: $(STAMP) jars  ## measure the pipeline against the model's own ceiling; writes docs/benchmarks/ (~6 min)
	$(PY) -m benchmarks.pipeline_bench

bench-guarantees: $(STAMP) jars  ## what exactly-once costs against at-least-once; writes docs/benchmarks/guarantees.* (~4 min)
	$(PY) -m benchmarks.guarantee_bench

bench-store: $(STAMP) jars  ## the results stores' write and NOTIFY rates, SSE memory per stream; writes docs/benchmarks/store.* (~1 min)
	$(PY) -m benchmarks.store_bench

capacity: $(STAMP)  ## the capacity model for 1,000-100,000 images/s from the benchmarks' results; writes docs/scaling.md
	$(PY) -m benchmarks.capacity

lint: $(STAMP)  ## ruff
	$(PY) -m ruff check .

typecheck: $(STAMP)  ## mypy --strict
	$(PY) -m mypy $(TYPED) scripts/locks.py

clean:  ## remove the virtual environment and caches (the Kafka jars stay in ~/.cache)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
