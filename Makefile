# One entry point for chores. Every target sets up what it needs, and only once:
# the virtualenv is created when missing, and the package is (re)installed only when
# pyproject.toml is newer than the stamp file kept inside .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PY_PATHS := src tests

# Extra arguments: `make run ARGS='--config dispatchd.yaml'`, `make test PYTEST_ARGS='-m "not slow"'`.
ARGS ?=
PYTEST_ARGS ?=
# The suite runs in parallel processes, one test file to a process (most tests wait on
# servers and subprocesses; one process per core halves the time). TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help run test lint fmt bench bench-peers example clean install install-dev

help:
	@echo "make run    start dispatchd serve (API on 127.0.0.1:8600, operations on :8601)"
	@echo "make test   install the dev dependencies and run every test"
	@echo "make lint   ruff check, ruff format --check, mypy (strict) on src"
	@echo "make fmt    format and auto-fix with ruff"
	@echo "make bench  run the benchmark scripts in bench/"
	@echo "make bench-peers  dispatchd beside Celery (ARGS=--postgres: beside pgqueuer)"
	@echo "make example  the broker, a runner around a small agent, three tasks (examples/quickstart)"
	@echo "make clean  remove the virtualenv, caches and build output (keeps .dispatchd/)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e .
	@touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[dev]'
	@touch $@ $(RUN_STAMP)

install: $(RUN_STAMP)

install-dev: $(DEV_STAMP)

run: $(RUN_STAMP)
	$(BIN)/dispatchd serve $(ARGS)

example: $(RUN_STAMP)
	$(BIN)/python examples/quickstart/demo.py

test: $(DEV_STAMP)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check $(PY_PATHS)
	$(BIN)/ruff format --check $(PY_PATHS)
	$(BIN)/mypy src

fmt: $(DEV_STAMP)
	$(BIN)/ruff check --fix $(PY_PATHS)
	$(BIN)/ruff format $(PY_PATHS)

# Each bench/*.py is a script of its own (files starting with `_` are helpers); soak.py
# runs for half an hour and is run by hand (bench/README.md).
bench: $(DEV_STAMP)
	@found=0; \
	for script in bench/*.py; do \
		[ -f "$$script" ] || continue; \
		case "$$(basename "$$script")" in _*|soak.py) continue;; esac; \
		found=1; \
		echo "== $$script"; \
		$(BIN)/python "$$script" || exit 1; \
	done; \
	if [ $$found = 0 ]; then echo "no benchmark scripts in bench/ yet"; fi

# dispatchd beside Celery and pgqueuer (bench/peers/README.md). The peers go into a
# virtualenv of their own, bench/peers/.venv, made by the script; Celery's broker is Debian's
# redis-server, installed here when missing and we are root. ARGS='--quick', '--postgres'.
bench-peers: $(DEV_STAMP)
	@if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; } || exit 1; \
		else \
			echo "redis-server is missing: run 'sudo apt-get install -y redis-server' (or ARGS='--peers dispatchd')"; \
			exit 1; \
		fi; \
	fi
	$(BIN)/python bench/peers/peers.py $(ARGS)

clean:
	rm -rf $(VENV) bench/peers/.venv build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find src tests bench -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
	find src -maxdepth 1 -name '*.egg-info' -type d -exec rm -rf {} + 2>/dev/null || true
