# The bundle's entry points. The first two are the README's: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed

.PHONY: install demo up stack test test-quick lint format lock bench browser clean distclean

## install: venv + the locked dependencies + this project (skipped when the lock is unchanged)
install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	@echo "installing the locked dependencies (first run only: a few minutes)"
	$(BIN)/uv pip sync --python $(BIN)/python --require-hashes requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

## demo: run the main job through a real, project-local Airflow, print a summary, stop
demo: install
	$(BIN)/python scripts/demo.py demo

## up: start the project-local Airflow and keep it running (UI on http://localhost:8080);
##     DEMO_PAUSED=1 keeps every DAG paused (nothing is scheduled until you unpause it)
up: install
	$(BIN)/python scripts/demo.py up $(if $(filter 1 true yes,$(DEMO_PAUSED)),--paused)

## stack: the docker-compose topology as processes (Celery workers, Postgres + Redis on 127.0.0.1, MLflow,
##        moto S3 + KMS; settings from config/stack.env); prints the URLs, Ctrl-C stops it
stack: install
	$(BIN)/python scripts/stack.py up

## test: lint (ruff, incl. AIR3 on dags/) and the whole test suite
test: install lint
	$(BIN)/python -m pytest

# the tests that need Python only (see the markers in pyproject.toml)
QUICK_TIER := not (postgres or redis or moto or mlflow_server or browser or airflow_procs or stack or slow)

## test-quick: the tests that need Python only (no PostgreSQL, Redis, moto, MLflow server, browser or
##             Airflow processes; any connection to PostgreSQL/Redis fails the test); a few minutes
test-quick: install
	MLOPS_TEST_NO_SERVICES=1 $(BIN)/python -m pytest -m "$(QUICK_TIER)"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff check --select AIR3 --preview dags/
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## lock: regenerate requirements.lock from requirements.txt (then `make install`)
lock:
	@test -x $(BIN)/uv || { $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install -q "uv==$(UV_VERSION)"; }
	$(BIN)/uv pip compile requirements.txt --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--generate-hashes -o requirements.lock

## browser: Debian's headless Chromium for the report/UI browser tests (skipped without it, except in CI)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@chromium --version 2>/dev/null | tail -1

## bench: the performance scripts (ratios measured in one run)
bench: install
	$(BIN)/python benchmarks/bench_dag_parse.py
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_train_dag.py
	$(BIN)/python benchmarks/bench_monitoring.py
	$(BIN)/python benchmarks/bench_calibration.py
	$(BIN)/python benchmarks/bench_audit.py
	$(BIN)/python benchmarks/bench_provenance.py
	$(BIN)/python benchmarks/bench_crypto.py
	$(BIN)/python benchmarks/bench_stack.py
	$(BIN)/python benchmarks/bench_local_preload.py
	$(BIN)/python benchmarks/bench_demo.py

clean:
	rm -rf .airflow var great_expectations/uncommitted .pytest_cache .ruff_cache

distclean: clean
	rm -rf $(VENV)
