"""Shared fixtures: the Ollama emulator, live daphne servers, and which deployment this run is."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Every key this test run writes to a shared Redis starts with this prefix, so runs never collide
# and clean-up never touches anything else. Set before Django reads its settings.
os.environ.setdefault("REDIS_KEY_PREFIX", f"chatbot-test-{uuid.uuid4().hex[:8]}")

from tests.fake_ollama import FakeOllama
from tests.live import LiveServer, server_env

SCALED = bool(os.environ.get("REDIS_URL") and os.environ.get("DATABASE_URL"))


def pytest_report_header(config: pytest.Config) -> str:
    if SCALED:
        return f"deployment: scaled out (REDIS_URL={os.environ['REDIS_URL']}, PostgreSQL)"
    return "deployment: embedded default (SQLite, database caches, in-memory channel layer)"


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
            "LOG_LEVEL": "INFO",
            "REDIS_KEY_PREFIX": os.environ["REDIS_KEY_PREFIX"],
        }
    )
    return env


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture
def start_server(
    server_base_env: dict[str, str], logs_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., LiveServer]]:
    """Start a daphne server with env overrides (``QUEUE_MAX_CONCURRENT=2``...); stopped after."""
    started: list[LiveServer] = []

    def start(args: list[str] | None = None, **overrides: Any) -> LiveServer:
        log = logs_dir / f"{request.node.name}-{len(started)}.log"
        server = LiveServer(server_env(server_base_env, overrides), log, args=args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()


@pytest.fixture(scope="session")
def shared_server(server_base_env: dict[str, str], logs_dir: Path) -> Iterator[LiveServer]:
    """One server with the default test configuration, shared by the tests that need no other."""
    server = LiveServer(server_env(server_base_env, {}), logs_dir / "shared.log").start()
    yield server
    server.close()


@pytest.fixture
def server(shared_server: LiveServer, ollama: FakeOllama, transactional_db: Any) -> LiveServer:
    """The shared live server, with a reset emulator and a clean database for this test."""
    if shared_server.proc is None or shared_server.proc.poll() is not None:
        pytest.fail(f"the shared server died:\n{shared_server.log[-4000:]}")
    return shared_server
