"""Scaled out, PostgreSQL or Redis cut while streams are open (a loopback proxy between the service's
processes and the dependency is closed, every connection through it reset): each open stream ends
with a last frame, the answer's end or one error frame in the surface's shape, and its connection
closes. Figures in the assertion messages.

PostgreSQL cut: tokens keep coming over Redis until the worker fails the generation, then one
error frame. Redis cut: every answer completes, its tokens still coming from the rows (the worker
writes the output so far to them while the layer is down). Neither stalls a stream for more than
MAX_STALL_SECONDS."""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.helpers import messages, sse_events, wait_for
from tests.reliability.tcp_proxy import TcpProxy

pytestmark = pytest.mark.scaled
STREAMS = 4
MAX_STALL_SECONDS = 2.5


class Stream(threading.Thread):
    """One streamed /api/chat-optimized request, every frame kept with the time it came."""

    def __init__(self, base: str, text: str) -> None:
        super().__init__(daemon=True)
        self.base, self.text = base, text
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self.closed_at: float | None = None
        self.status: int | None = None
        self.failure = ""

    def run(self) -> None:
        body = {"messages": messages(self.text), "stream": True}
        try:
            with httpx.stream("POST", f"{self.base}/api/chat-optimized", json=body, timeout=60) as response:
                self.status = response.status_code
                for _, data in sse_events(response.iter_lines()):
                    if data is not None:
                        self.frames.append((time.monotonic(), data))
        except httpx.HTTPError as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
        self.closed_at = time.monotonic()

    @property
    def tokens(self) -> int:
        return sum(1 for _, f in self.frames if f.get("content"))


def cut_under_streams(proxy: TcpProxy, server: Any) -> tuple[float, list[Stream]]:
    streams = [Stream(server.url, f"cut mid-stream {i} {time.monotonic_ns()}") for i in range(STREAMS)]
    for stream in streams:
        stream.start()
    try:
        wait_for(lambda: all(s.tokens >= 3 for s in streams), timeout=30, what="every stream under way")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}: {[(s.status, s.tokens, s.failure, s.frames[-2:]) for s in streams]}"
        ) from None
    cut_at = time.monotonic()
    proxy.cut()
    for stream in streams:
        stream.join(60)
    return cut_at, streams


def check_endings(cut_at: float, streams: list[Stream], what: str, *, max_stall: float | None) -> str:
    endings = []
    for s in streams:
        assert s.closed_at is not None, f"{what}: a stream is still open"
        last = s.frames[-1][1] if s.frames else {}
        ended_by = "done" if last.get("done") is True else ("error" if last.get("error") else "nothing")
        times = [cut_at, *(at for at, _ in s.frames if at > cut_at), s.closed_at]
        stall = max(b - a for a, b in itertools.pairwise(times))
        endings.append((ended_by, round(s.closed_at - cut_at, 2), round(stall, 2), s.tokens, s.failure))
    figures = (
        f"{what}: (last frame, closed s after the cut, longest stall s, tokens, client error) per stream: "
        f"{endings}"
    )
    for s, (ended_by, _, stall, _, failure) in zip(streams, endings, strict=True):
        assert s.status == 200 and not failure, figures
        assert ended_by in ("done", "error"), figures
        assert max_stall is None or stall <= max_stall, figures
        errors = [f for _, f in s.frames if f.get("error")]
        assert len(errors) <= 1, figures
        assert all(isinstance(e["error"], str) and e.get("code") for e in errors), figures
    return figures


def proxied_database_url(server_base_env: dict[str, str], proxy: TcpProxy) -> str:
    parsed = urlparse(server_base_env["DATABASE_URL"])
    return parsed._replace(netloc=f"{parsed.username or 'postgres'}@127.0.0.1:{proxy.port}").geturl()


@pytest.fixture
def slow_streams(ollama):
    ollama.configure(first_token_delay=0.02, token_delay=0.1, token_count=120)  # 12 s per answer
    return ollama


def cut_while_streaming(
    start_server: Any, start_worker: Any, proxy: TcpProxy, setting: dict[str, str], what: str
) -> tuple[Any, list[Stream], str]:
    """One daphne without a worker and one runworker reaching the dependency through ``proxy``
    (every token crosses processes), the proxy cut under STREAMS streams, then started again so the
    processes can hand their work back and stop."""
    env = {**setting, "QUEUE_EMBEDDED_WORKER": "false", "QUEUE_MAX_CONCURRENT": STREAMS}
    server = start_server(**env)
    start_worker(**env)
    try:
        cut_at, streams = cut_under_streams(proxy, server)
        figures = check_endings(cut_at, streams, what, max_stall=MAX_STALL_SECONDS)
    finally:
        proxy.start()
    return server, streams, figures


def answered_after_the_cut(server: Any, figures: str) -> None:
    with server.client() as client:
        wait_for(lambda: client.get("/health?deep=1").status_code == 200, timeout=30, what="healthy again")
        answer = client.post("/api/chat-optimized", json={"messages": messages("after the cut")})
        assert answer.status_code == 200, f"{answer.text}; {figures}"


def test_postgresql_cut_mid_stream_ends_every_stream(
    servers, start_server, start_worker, slow_streams, transactional_db
) -> None:
    proxy = TcpProxy(urlparse(servers.base_env["DATABASE_URL"]).port or 5432).start()
    setting = {"DATABASE_URL": proxied_database_url(servers.base_env, proxy)}
    server, _, figures = cut_while_streaming(start_server, start_worker, proxy, setting, "PostgreSQL cut")
    answered_after_the_cut(server, figures)


def test_redis_cut_mid_stream_ends_every_stream(
    servers, start_server, start_worker, slow_streams, transactional_db
) -> None:
    redis_url = urlparse(os.environ["REDIS_URL"])
    proxy = TcpProxy(redis_url.port or 6379).start()
    setting = {"REDIS_URL": redis_url._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()}
    server, streams, figures = cut_while_streaming(start_server, start_worker, proxy, setting, "Redis cut")
    assert all(s.frames[-1][1].get("done") and s.tokens == 120 for s in streams), figures
    answered_after_the_cut(server, figures)
