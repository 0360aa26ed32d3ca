# One-command set-up: `make run` starts the site, `make test` runs the tests.
# Both install first (idempotent). Nothing here depends on hand-installed tools:
# the scripts install Debian packages (python3-venv, redis-server) when absent.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8000
export REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: install run stop test matrix lint format dist bench bench-workflows bench-import-export bench-isolation bench-dbwait bench-lab cluster lab clean

install: $(STAMP)

$(STAMP): pyproject.toml packaging/django-worker-mode/pyproject.toml
	scripts/bootstrap.sh "$(PYTHON)" "$(VENV)"
	@touch $(STAMP)

run: install
	scripts/ensure_redis.sh start "$(REDIS_URL)"
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py loaddemo --webhook-url http://127.0.0.1:$(PORT)/catalog/webhook
	@echo
	@echo "  Create an admin user:  $(PY) manage.py createsuperuser"
	@echo "  Then log in at:        http://127.0.0.1:$(PORT)/admin/"
	@echo "  This node:             WORKER_MODE='$(WORKER_MODE)' (empty = requests + every service)"
	@echo "  Demo:                  add an Order in the admin; see Workflows > Executions"
	@echo
	WORKFLOWS_HTTP_ALLOWED_NETWORKS="$${WORKFLOWS_HTTP_ALLOWED_NETWORKS:-127.0.0.1}" \
		scripts/run_node.sh $(PY) manage.py runnode --bind 127.0.0.1:$(PORT)

# Stops the private redis-server `make run` started (when none answered at REDIS_URL).
stop:
	scripts/ensure_redis.sh stop

test: install
	scripts/ensure_redis.sh install
	scripts/ensure_browser.sh
	scripts/ensure_lab.sh
	$(PY) -m pytest $(PYTEST_ARGS)

# worker_mode's tests on every Python x Django pair this machine has an interpreter for (noxfile.py),
# each in a fresh virtualenv under .nox/, then nox's summary (ran, failed, skipped and why).
# NOX_ARGS: e.g. -s "matrix(py3.13-django6.1)" for one cell, -r to reuse the cells' virtualenvs.
matrix: install
	scripts/ensure_redis.sh install
	$(VENV)/bin/nox $(NOX_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Wheels and sdists of both distributions (django-worker-mode, nocobase-site) in dist/, checked
# with twine. The wheel of django-worker-mode is built from its sdist, as pip would from PyPI.
dist: install
	rm -rf dist
	$(PY) -m build --outdir dist packaging/django-worker-mode
	$(PY) -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

bench: install
	command -v valgrind >/dev/null || (. scripts/apt.sh && apt_install valgrind)
	$(PY) bench/middleware.py --cpu 1

# Needs PostgreSQL at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres).
bench-workflows: install
	scripts/ensure_redis.sh install
	$(PY) bench/workflows.py

# Request latency while worker nodes process a backlog (needs root: a private PostgreSQL; installs wrk).
bench-isolation: install
	command -v wrk >/dev/null || (. scripts/apt.sh && apt_install wrk)
	$(PY) bench/isolation.py $(BENCH_ARGS)

# Where a request waits while background work runs: round trips seen by the request node against
# time inside PostgreSQL (needs root: a private PostgreSQL; installs wrk).
bench-dbwait: install
	command -v wrk >/dev/null || (. scripts/apt.sh && apt_install wrk)
	$(PY) bench/dbwait.py $(BENCH_ARGS)

# The three-node example on this machine (PostgreSQL: DATABASE_URL or a local nocobase_cluster database).
cluster: install
	scripts/ensure_redis.sh start "$(REDIS_URL)"
	$(PY) scripts/cluster.py

# The cluster as hosts on this machine (network namespaces; needs root) until Ctrl-C: README "The lab".
# LAB_ARGS: e.g. --cpus wf=0.5,tasks=0.5 --for 600
lab: install
	scripts/ensure_lab.sh
	$(PY) -m lab $(LAB_ARGS)

# Scale-out, per-job costs and isolation on lab hosts (needs root; installs wrk): docs/BENCHMARKS.md.
bench-lab: install
	scripts/ensure_lab.sh
	command -v wrk >/dev/null || (. scripts/apt.sh && apt_install wrk)
	$(PY) bench/lab.py $(BENCH_ARGS)

# Needs PostgreSQL at DATABASE_URL; installs the 'bench' extra (django-import-export) for the comparison.
bench-import-export: install
	$(PY) -m pip install --quiet -e ./packaging/django-worker-mode -e '.[bench]'
	$(PY) bench/import_export.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var dist build .nox .pytest_cache .ruff_cache
