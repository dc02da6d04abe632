# marketflow — the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON   ?= python3
LOCAL    := .local
TOOLS    := $(LOCAL)/tools
UV       := $(TOOLS)/bin/uv
VENV     := $(LOCAL)/venv
DBT_VENV := $(LOCAL)/dbt-venv
export DBT_SEND_ANONYMOUS_USAGE_STATS := False

.PHONY: help install system-packages ui demo down status test lint dbt-parse lock clean faults bench env

help:
	@echo "make demo    start the local stack (Postgres, MongoDB, exchange emulator, Airflow) and"
	@echo "             backfill the bundled real candles through Airflow into the marts;"
	@echo "             EXECUTOR=celery for the docker-compose topology (Redis, PgBouncer, 2 Celery workers)"
	@echo "make down    stop everything make demo started (data is kept in .local/state)"
	@echo "make test    unit + integration + dbt + DAG tests on their own throwaway services"
	@echo "make faults  every fault-injection case, then the long scenarios (a fresh deploy on Airflow)"
	@echo "make bench   benchmarks against the machine's limits and a peer (bench/results/latest.md);"
	@echo "             QUICK=1 for smaller sizes (10 min instead of <= 60)"
	@echo "make lint    ruff"
	@echo "make ui      (re)build the Markets page (ui/ -> plugins/marketflow/api/ui_dist; make install runs it)"
	@echo "make lock    regenerate the pinned requirements*.txt from pyproject.toml and requirements-*.in"
	@echo "             (keeps the current pins where they still fit; UPGRADE=1 moves every pin to the newest)"
	@echo "make env     .env for docker compose with generated secrets (never overwrites an existing .env)"
	@echo "make clean   remove .local (virtualenvs and all local data)"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==0.13.8

# Airflow side (with the test tools) and dbt in separate virtualenvs: their pins conflict.
# The Airflow side gets marketflow itself (plugins/marketflow, with the `marketflow` command) and the
# exchange emulator (a test tool, exchange_emulator/) as editable installs on top of the pins.
# --compile-bytecode: every Airflow task and dbt run is a new interpreter; without .pyc files
# (uv writes none by default, and PYTHONDONTWRITEBYTECODE stops Python from caching them) each one
# compiles its imports from source again: dbt's start-up was 3.1 s of imports instead of 1.6 s.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml exchange_emulator/pyproject.toml | $(UV)
	@[ -x $(VENV)/bin/python ] || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	VIRTUAL_ENV=$(VENV) $(UV) pip install --quiet --compile-bytecode -r requirements-dev.txt -e . -e ./exchange_emulator
	@touch $@

$(DBT_VENV)/.installed: requirements-dbt.txt | $(UV)
	@[ -x $(DBT_VENV)/bin/python ] || $(UV) venv --quiet --python $(PYTHON) $(DBT_VENV)
	VIRTUAL_ENV=$(DBT_VENV) $(UV) pip install --quiet --compile-bytecode -r requirements-dbt.txt
	@touch $@

install: $(VENV)/.installed $(DBT_VENV)/.installed system-packages ui

# The Markets page (ui/): the exact packages of ui/package-lock.json (npm ci; the charting library comes
# from the registry, nothing third-party is in the repository), then vite's build into the API's package
# (gitignored; the API serves it under /marketflow/ui/).
UI_DIST := plugins/marketflow/api/ui_dist
ui/node_modules/.installed: ui/package.json ui/package-lock.json | system-packages
	cd ui && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(UI_DIST)/index.html: ui/node_modules/.installed ui/index.html ui/vite.config.js $(wildcard ui/src/*)
	cd ui && npm run --silent build -- --logLevel warn

ui: $(UI_DIST)/index.html

# Debian packages the tests run for real (Prometheus' promtool and server), when missing.
system-packages:
	@scripts/system_packages.sh

# cosmos renders the dbt graph from the manifest, so DAG parsing never runs dbt.
dbt-parse: $(DBT_VENV)/.installed
	cd dbt && ../$(DBT_VENV)/bin/dbt parse --quiet --profiles-dir .

# EXECUTOR=celery: the docker-compose topology without Docker (Redis, PgBouncer, Airflow's api-server,
# scheduler, dag-processor, triggerer and two Celery workers as separate processes; scripts/topology.py).
EXECUTOR ?= local
demo: install dbt-parse
	MARKETFLOW_EXECUTOR=$(EXECUTOR) $(VENV)/bin/python -m scripts.demo

down:
	@[ -x $(VENV)/bin/python ] && $(VENV)/bin/python -m scripts.stack down || true

status:
	$(VENV)/bin/python -m scripts.stack status

# docker-compose.yaml's secrets: the repository ships none (scripts/make_env.py, standard library only).
env:
	$(PYTHON) scripts/make_env.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: install dbt-parse lint
	$(VENV)/bin/pytest

# Fault-injection suite (faults/): every case, the results table, docs/faults.md rewritten; then
# the long production scenarios on a real Airflow deployment (pytest -m scenario, about 15 min).
faults: install dbt-parse
	$(VENV)/bin/python -m faults
	$(VENV)/bin/pytest -m scenario

# Benchmarks (bench/): every figure in one run on the bench's own services and emulators.
bench: install dbt-parse
	QUICK=$(QUICK) $(VENV)/bin/python -m bench

# The direct dependencies live in pyproject.toml (the product), requirements-dev.in (tests and tools)
# and requirements-dbt.in; the .txt files are their full resolution for Python 3.11 on Linux. uv keeps
# every pin already in a .txt file that still satisfies the inputs, so adding one dependency moves
# nothing else; UPGRADE=1 re-resolves everything to the newest releases.
LOCK := $(UV) pip compile --quiet --python-version 3.11 --python-platform linux \
	--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
lock: | $(UV)
	$(LOCK) pyproject.toml -o requirements.txt
	$(LOCK) pyproject.toml requirements-dev.in -o requirements-dev.txt
	$(LOCK) requirements-dbt.in -o requirements-dbt.txt

clean: down
	rm -rf $(LOCAL) dbt/target dbt/logs
