# Two entry points on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run server test test-fast conformance bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[dev,embedded,otel]'
	touch $@

install: $(VENV)/.installed

## The main job: worker runtime with the handlers example, embedded Redis and the HTTP endpoint.
run: install
	$(BIN)/ojs-run handlers_example

## The broker alone (HTTP endpoint + scheduler loops).
server: install
	$(BIN)/ojs-server

# Tests run side by side in 3 worker processes (pytest-xdist): most of them wait on processes,
# sockets and clocks rather than on the CPU, so 3 overlap well even on 2 cores. Each test module
# is one unit (its module-scoped servers start once), handed out in the order tests/conftest.py
# sorts them: the conformance module first, then the modules with slow tests.
XDIST := -n 3 --dist loadfile --no-loadscope-reorder

## Everything: unit, integration, fuzz and the conformance levels.
test: install
	$(BIN)/python -m pytest -q $(XDIST)

## Without the conformance levels.
test-fast: install
	$(BIN)/python -m pytest -q $(XDIST) -m "not conformance"

## The conformance levels alone, with a per-level report.
conformance: install
	$(BIN)/python -m pytest -q -m conformance

bench: install
	$(BIN)/python -m benchmarks.http_throughput

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

## ojs side by side with BullMQ, dramatiq, arq, SAQ, Celery and RQ (installs the peers under
## ~/.cache/ojs-bench; minutes; never part of `make test`). ARGS="--jobs 2000 --reps 1" to shorten.
.PHONY: bench-peers
bench-peers: install
	$(BIN)/python -m benchmarks run $(ARGS)
