"""Shared fixtures: the Ollama emulator, live daphne servers, and which deployment this run is."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.fake_ollama import FakeOllama
from tests.live import LiveServer, WorkerProcess, server_env

logging.getLogger("httpx").setLevel(logging.WARNING)

SCALED = bool(os.environ.get("REDIS_URL") and os.environ.get("DATABASE_URL"))


def _flush_retrying_deadlocks() -> None:
    """The flush between tests (one TRUNCATE of every table, in the order of a set of table names,
    so a different order in each pytest process) can deadlock on PostgreSQL with a live server's
    transaction that is still running as a test ends: its worker claims every poll, reading the
    servers' rows and then the queue's. PostgreSQL aborts one of the two. The server's worker
    retries on its own; when the flush is the one aborted, it runs again here. (In one run in
    about two, 10 teardowns failed this way; TRUNCATE is the tests' own, the service never runs it.)"""
    from django.core.management.base import CommandError
    from django.db import OperationalError
    from django.test import TransactionTestCase

    teardown = TransactionTestCase._fixture_teardown

    def _fixture_teardown(self: TransactionTestCase) -> None:
        for attempt in range(1, FLUSH_ATTEMPTS + 1):
            try:
                teardown(self)
                return
            except (CommandError, OperationalError) as exc:
                cause = exc.__cause__ if isinstance(exc, CommandError) else exc
                if "deadlock detected" not in str(cause) or attempt == FLUSH_ATTEMPTS:
                    raise
                time.sleep(0.05 * attempt)

    TransactionTestCase._fixture_teardown = _fixture_teardown  # type: ignore[method-assign]


FLUSH_ATTEMPTS = 5
_flush_retrying_deadlocks()


def pytest_report_header(config: pytest.Config) -> str:
    if SCALED:
        return f"deployment: scaled out (REDIS_URL={os.environ['REDIS_URL']}, PostgreSQL)"
    return "deployment: embedded default (SQLite, database caches, in-memory channel layer)"


@pytest.fixture(autouse=True)
def _no_leftover_counter_increments() -> Iterator[None]:
    """Increments the test process buffered in an earlier test must not count in this one (nor be
    written at exit, after the test database is gone)."""
    from stats import counters

    counters.discard_pending()
    yield
    counters.discard_pending()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs the scaled-out deployment (REDIS_URL and DATABASE_URL)")
    for item in items:
        if "scaled" in item.keywords and not SCALED:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def emulator() -> Iterator[FakeOllama]:
    fake = FakeOllama().start()
    yield fake
    fake.stop()


@pytest.fixture
def ollama(emulator: FakeOllama) -> Iterator[FakeOllama]:
    """The emulator, reset before and after the test."""
    emulator.reset()
    yield emulator
    emulator.reset()


def _database_env() -> dict[str, str]:
    """Point a server process at the test database this session created."""
    from django.db import connection

    name = connection.settings_dict["NAME"]
    if connection.vendor == "sqlite":
        return {"SQLITE_PATH": str(name)}
    d = connection.settings_dict
    port = d.get("PORT") or 5432
    user = d.get("USER") or "postgres"
    return {"DATABASE_URL": f"postgres://{user}@{d.get('HOST') or '127.0.0.1'}:{port}/{name}"}


@pytest.fixture(scope="session")
def server_base_env(django_db_setup: Any, django_db_blocker: Any, emulator: FakeOllama) -> dict[str, str]:
    with django_db_blocker.unblock():
        env = _database_env()
    env.update(
        {
            "OLLAMA_API_URL": emulator.url,
            "OLLAMA_MODEL": "llama3.2:1b",
            "LOG_LEVEL": os.environ.get("TEST_SERVER_LOG_LEVEL", "INFO"),
            "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX,  # tests/settings.py made it unique
        }
    )
    return env


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture
def clean_caches(transactional_db: Any) -> None:
    """Empty the response and conversation caches: their values outlive the database flush."""
    from chat.caches import conversation_cache, response_cache

    response_cache.clear()
    conversation_cache.clear()


class Servers:
    """The session's default server, shared by tests needing no other configuration.

    Only one set of workers may drain the test queue at a time, or a test's own server would share
    its jobs with the default one; so a test that starts its own servers stops the shared one, and
    the next test that needs it starts it again.
    """

    def __init__(self, base_env: dict[str, str], logs_dir: Path) -> None:
        self.base_env, self.logs_dir = base_env, logs_dir
        self.shared: LiveServer | None = None
        self.starts = 0

    def get_shared(self) -> LiveServer:
        if self.shared is not None and self.shared.proc is not None and self.shared.proc.poll() is not None:
            pytest.fail(f"the shared server died:\n{self.shared.log[-4000:]}")
        if self.shared is None:
            self.starts += 1
            log = self.logs_dir / f"shared-{self.starts}.log"
            self.shared = LiveServer(server_env(self.base_env, {}), log).start()
        return self.shared

    def stop_shared(self) -> None:
        if self.shared is not None:
            self.shared.close()
            self.shared = None


@pytest.fixture(scope="session")
def servers(server_base_env: dict[str, str], logs_dir: Path) -> Iterator[Servers]:
    pool = Servers(server_base_env, logs_dir)
    yield pool
    pool.stop_shared()


@pytest.fixture
def start_server(
    servers: Servers,
    logs_dir: Path,
    request: pytest.FixtureRequest,
    ollama: FakeOllama,
    clean_caches: None,
    django_db_blocker: Any,
) -> Iterator[Callable[..., LiveServer]]:
    """Start a daphne server with env overrides (``QUEUE_MAX_CONCURRENT=2``...); stopped after."""
    _stop_shared_server(servers, django_db_blocker)
    started: list[LiveServer] = []

    def start(args: list[str] | None = None, **overrides: Any) -> LiveServer:
        log = logs_dir / f"{request.node.name}-{len(started)}.log"
        server = LiveServer(server_env(servers.base_env, overrides), log, args=args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()


@pytest.fixture
def server(servers: Servers, ollama: FakeOllama, clean_caches: None) -> LiveServer:
    """The shared live server, with a reset emulator and a clean database for this test."""
    return servers.get_shared()


@pytest.fixture
def start_worker(
    servers: Servers, logs_dir: Path, request: pytest.FixtureRequest, start_server: Any
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``manage.py runworker chat-worker`` processes with env overrides; stopped after."""
    started: list[WorkerProcess] = []

    def start(**overrides: Any) -> WorkerProcess:
        log = logs_dir / f"{request.node.name}-worker-{len(started)}.log"
        worker = WorkerProcess(server_env(servers.base_env, overrides), log)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def no_workers(servers: Servers) -> None:
    """No server runs: a test that drives the queue itself must not race a worker for its jobs."""
    servers.stop_shared()


def _stop_shared_server(servers: Servers, django_db_blocker: Any) -> None:
    if servers.shared is None:
        return
    servers.stop_shared()
    # A stopping server writes its buffered counter increments on the way out, and its probes may
    # have recorded a server's state, after the last test's database flush: they belong to that
    # test, not to the one starting now (a server left "out" would take every claim's route away).
    from queueing.models import OwnerService, ServerState, WorkerBeat
    from stats.models import Counter

    with django_db_blocker.unblock():
        Counter.objects.all().delete()
        ServerState.objects.all().delete()
        OwnerService.objects.all().delete()  # its owners' attained service would skew a fair-share test
        WorkerBeat.objects.all().delete()


@pytest.fixture(scope="session", autouse=True)
def _no_sessions_left_on_the_test_database(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """PostgreSQL refuses to drop the test database while any session uses it, and pool threads of
    the test process (management commands and admin actions run in-process) may still hold one at
    the end: end them first, so the database is dropped cleanly."""
    yield
    from django.db import connection

    with django_db_blocker.unblock():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
