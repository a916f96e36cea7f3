# One command to run, one to test. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= $(shell $(PY) -c "from chatbot_site.config import load_config as l; print(l().server.host)" 2>/dev/null || echo 0.0.0.0)
PORT ?= $(shell $(PY) -c "from chatbot_site.config import load_config as l; print(l().server.port)" 2>/dev/null || echo 8080)
# Scaled-out test run: the local Redis and PostgreSQL (database `test`, trust auth).
SCALED_REDIS_URL ?= redis://127.0.0.1:6379/14
SCALED_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
PYTEST_ARGS ?=

.PHONY: run test browser-deps test-embedded test-scaled lint format migrate clean bench bench-scaled soak audit wrk

$(VENV)/.runtime: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt requirements-clients.txt
	$(PIP) install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

migrate: $(VENV)/.runtime
	$(PY) manage.py migrate --noinput

run: migrate
	@echo "chatbot-backend: serving on http://$(HOST):$(PORT) (Ctrl-C stops it)"
	$(PY) -m chatbot_site.serve -b $(HOST) -p $(PORT) chatbot_site.asgi:application

# The whole suite twice: on the embedded default, then scaled out on Redis + PostgreSQL.
test: browser-deps test-embedded test-scaled

# Headless Chromium for the browser tests (Debian's packages; needs root, as on CI).
browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null) || \
	  echo "could not install chromium + chromium-driver: browser tests will be skipped (fail on CI)"

test-embedded: $(VENV)/.dev
	@echo "=== test suite: embedded default (SQLite, database caches, in-memory channel layer) ==="
	env -u REDIS_URL -u DATABASE_URL $(PY) -m pytest $(PYTEST_ARGS)

test-scaled: $(VENV)/.dev
	@echo "=== test suite: scaled out (REDIS_URL=$(SCALED_REDIS_URL) DATABASE_URL=$(SCALED_DATABASE_URL)) ==="
	@if $(PY) -m tests.services_up "$(SCALED_REDIS_URL)" "$(SCALED_DATABASE_URL)"; then \
		REDIS_URL=$(SCALED_REDIS_URL) DATABASE_URL=$(SCALED_DATABASE_URL) $(PY) -m pytest $(PYTEST_ARGS); \
	elif [ -n "$$REQUIRE_SCALED" ]; then \
		echo "scaled-out run required but Redis/PostgreSQL are not reachable"; exit 1; \
	else \
		echo "SKIPPED scaled-out run: Redis or PostgreSQL not reachable (start them; see README)"; \
	fi

# Benchmarks (not part of `make test`): see README, Performance.
wrk:
	@command -v wrk >/dev/null || (apt-get install -y wrk || (apt-get update && apt-get install -y wrk))

# Benchmarks run the service on the runtime requirements only (as `make run` installs them).
RUNTIME_VENV := .venv-runtime
$(RUNTIME_VENV)/.runtime: requirements.txt
	@test -x $(RUNTIME_VENV)/bin/python || $(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

bench: $(VENV)/.dev $(RUNTIME_VENV)/.runtime wrk
	BENCH_SERVER_PYTHON=$(RUNTIME_VENV)/bin/python $(PY) -m bench.run

bench-scaled: $(VENV)/.dev $(RUNTIME_VENV)/.runtime wrk
	BENCH_SERVER_PYTHON=$(RUNTIME_VENV)/bin/python $(PY) -m bench.run --scaled --json artifacts/bench-scaled.json

# Leak check (not part of `make test`): SOAK_ARGS="--streams 50 --minutes 10" by default.
SOAK_ARGS ?= --streams 50 --minutes 10
soak: $(VENV)/.dev $(RUNTIME_VENV)/.runtime
	BENCH_SERVER_PYTHON=$(RUNTIME_VENV)/bin/python $(PY) -m bench.soak $(SOAK_ARGS)

# Security checks (not part of `make test`): bandit on our code, pip-audit on the pinned runtime
# dependencies (--strict: a dependency it could not look up is a failure, not a silent pass).
audit: $(VENV)/.dev
	$(PIP) install --quiet --disable-pip-version-check bandit==1.9.4 pip-audit==2.10.1
	$(VENV)/bin/bandit -q -r core stats chat queueing gateway ops chatbot_site
	$(VENV)/bin/pip-audit --strict -r requirements.txt

# Lint, formatting, types (mypy with django-stubs, configured in pyproject.toml) and migrations that
# the models need but nobody wrote.
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	env -u REDIS_URL -u DATABASE_URL $(PY) manage.py makemigrations --check --dry-run

format: $(VENV)/.dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) data .pytest_cache .ruff_cache
