"""Scaled out, Redis stopped under load: requests are still answered (cache bypassed), the queue keeps
draining from the database; Redis back: the cache is used again. Figures in the assertion messages."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import messages, sse_events, wait_for, wait_status

pytestmark = pytest.mark.scaled
FINISHED = ("completed", "failed", "cancelled")


class RedisServer:
    """A Redis of this test's own on a free port, so stopping it disturbs nothing else."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def ready() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    return conn.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_for(ready, timeout=10, what="redis-server to answer PING")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is needed for the scaled-out run")
    redis = RedisServer(tmp_path)
    redis.start()
    yield redis
    redis.stop()


class Load:
    """Clients asking in a loop (plain, streaming and queued requests), results kept per phase."""

    def __init__(self, server, clients: int = 4) -> None:
        self.server, self.clients = server, clients
        self.phase = "up"
        self.results: Counter[tuple[str, str]] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(clients)]

    def ask(self, client: httpx.Client, kind: str, text: str) -> None:
        body = {"messages": messages(text)}
        if kind == "plain":
            response = client.post("/api/chat-optimized", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["message"]["content"], response.text
        elif kind == "stream":
            with client.stream("POST", "/api/chat-optimized", json={**body, "stream": True}) as response:
                assert response.status_code == 200, response.read()
                events = [data for _, data in sse_events(response.iter_lines()) if data is not None]
            assert events and events[-1].get("done") is True, events[-3:]
            assert any(data.get("content") for data in events), events
        else:
            request_id = client.post("/api/chat-queue", json=body).json()["request_id"]
            final = wait_status(client, request_id, FINISHED, timeout=30)
            assert final["status"] == "completed", final

    def run(self, index: int) -> None:
        kinds = ("plain", "stream", "queued")
        n = 0
        with self.server.client(timeout=60) as client:
            while not self.stop.is_set():
                n += 1
                kind, phase = kinds[(index + n) % 3], self.phase
                try:
                    self.ask(client, kind, f"outage load {index} {n} {time.monotonic_ns()}")
                    self.results[(phase, "ok")] += 1
                except Exception as exc:  # noqa: BLE001 - every failure is reported by the test
                    self.results[(phase, "failed")] += 1
                    self.failures.append(f"{phase} {kind}: {type(exc).__name__}: {str(exc)[:300]}")

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(90)


def cached_on_repeat(client: httpx.Client, text: str) -> bool:
    body = {"messages": messages(text)}
    client.post("/api/chat-optimized", json=body).raise_for_status()
    return client.post("/api/chat-optimized", json=body).json()["cached"]


def test_redis_stopped_under_load_answers_everything_and_recovers(
    own_redis, start_server, start_worker, ollama, transactional_db
) -> None:
    ollama.configure(first_token_delay=0.02, token_delay=0.005, token_count=6)
    # One daphne without a worker and one runworker: every token crosses processes, so with Redis
    # gone the listener must fall back to the database rows.
    env = {"REDIS_URL": own_redis.url, "QUEUE_EMBEDDED_WORKER": "false", "QUEUE_MAX_CONCURRENT": 4}
    server = start_server(**env)
    start_worker(**env)
    with server.client() as client:
        assert cached_on_repeat(client, "before the outage"), "the cache is not used with Redis up"

    with Load(server) as load:
        wait_for(lambda: load.results[("up", "ok")] >= 6, timeout=30, what="load with Redis up")
        own_redis.stop()
        load.phase = "down"
        outage_started = time.monotonic()
        wait_for(
            lambda: load.results[("down", "ok")] >= 20 and time.monotonic() - outage_started >= 5,
            timeout=60,
            what="5 s and 20 answers with Redis down",
        )
        with server.client() as client:
            queued = [
                client.post("/api/chat-queue", json={"messages": messages(f"queued in outage {i}")})
                for i in range(5)
            ]
            assert all(r.status_code == 202 for r in queued), [r.text for r in queued]
            finals = [wait_status(client, r.json()["request_id"], FINISHED, timeout=30) for r in queued]
            assert all(f["status"] == "completed" for f in finals), finals
        outage_seconds = time.monotonic() - outage_started
        own_redis.start()
        load.phase = "back"
        wait_for(lambda: load.results[("back", "ok")] >= 6, timeout=60, what="load after Redis is back")

    figures = (
        f"answered with Redis up {load.results[('up', 'ok')]}, during the {outage_seconds:.1f} s outage "
        f"{load.results[('down', 'ok')]} + 5 queued, after {load.results[('back', 'ok')]}; "
        f"failed {len(load.failures)}: {load.failures[:5]}"
    )
    assert not load.failures, figures
    with server.client() as client:
        wait_for(
            lambda: cached_on_repeat(client, f"after the outage {time.monotonic_ns()}"),
            timeout=20,
            what="the cache to be used again once Redis is back",
        )
        stats = client.get("/api/chat-queue").json()
    assert stats["by_status"].get("processing", 0) == 0 and stats["queue_length"] == 0, f"{stats}; {figures}"
