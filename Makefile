# Courier: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export FLASK_APP := wsgi

.PHONY: run test lint image stack stack-test lock bench-pricing bench-estimate bench-offers bench-offers-realtime bench-transport venue-standin reference-partner clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps: reinstall only when the package metadata changes.
$(VENV)/.installed-run: setup.cfg pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: setup.cfg pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,train,postgres,distributed]'
	touch $@ $(VENV)/.installed-run

## lock: re-pin constraints.txt from a fresh virtualenv with every extra (run after changing setup.cfg)
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e '.[dev,train,postgres,distributed]'
	{ head -2 constraints.txt; .lock-venv/bin/pip freeze --all --exclude-editable | grep -v -e '^courier' -e '^pip=='; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv

## run: install, migrate, seed bundled data, serve on 127.0.0.1:8000 with gunicorn
run: $(VENV)/.installed-run
	$(BIN)/python config.py check
	COURIER_CONFIG_CHECKED=1 $(BIN)/flask db upgrade
	COURIER_CONFIG_CHECKED=1 $(BIN)/flask seed-venues
	COURIER_CONFIG_CHECKED=1 $(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

## test: install dev extras; lint (ruff, line length 120), type-check (mypy), import contracts (lint-imports:
## layers, no cycles; setup.cfg), then the whole suite with
## branch coverage (fails under 93%), on every core (PYTEST_WORKERS=0: in this process, e.g. for a debugger)
PYTEST_WORKERS ?= auto
test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --cov --cov-fail-under=93

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## venue-standin: serve the bundled venue snapshots like the upstream venue API (127.0.0.1:8081)
venue-standin: $(VENV)/.installed-run
	$(BIN)/python -m bench.venue_standin

## reference-partner: the reference partner alone, keep-alive, one uvicorn worker (127.0.0.1:8001)
reference-partner: $(VENV)/.installed-run
	$(BIN)/python -m services.offers.reference.server --port 8001

bench-pricing: $(VENV)/.installed-dev
	$(BIN)/python bench/bench_pricing.py

bench-estimate: $(VENV)/.installed-dev
	$(BIN)/python bench/bench_estimate.py

bench-offers: $(VENV)/.installed-dev
	$(BIN)/python bench/bench_offers.py

## image: the container image (docker, else podman); BASE=<image> where python:3.11-slim-bookworm cannot be pulled
BASE ?= python:3.11-slim-bookworm
image:
	$$(command -v docker >/dev/null && docker info >/dev/null 2>&1 && echo docker || echo podman) build --build-arg BASE=$(BASE) -t courier:latest .

## stack: the whole stack in podman on a machine without a registry (local Debian base and stand-ins), on :8080
stack:
	bash deploy/stack_test.sh --serve

## stack-test: build everything and prove the stack end to end (what .ci/run does after make test)
stack-test:
	bash deploy/stack_test.sh

clean:
	rm -rf $(VENV) instance .pytest_cache

bench-offers-realtime: $(VENV)/.installed-dev
	$(BIN)/python bench/bench_offers_realtime.py

## bench-transport: client CPU per partner call, our batch transport vs aiohttp (same server, same run)
bench-transport: $(VENV)/.installed-dev
	$(BIN)/python bench/bench_transport.py
