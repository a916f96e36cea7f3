"""The Ollama client against the emulator over real HTTP: chunks, timeouts and the error mapping."""

from __future__ import annotations

import asyncio
import time

import pytest

from core.errors import (
    OllamaBadResponse,
    OllamaBusy,
    OllamaError,
    OllamaModelNotFound,
    OllamaTimeout,
    OllamaUnavailable,
)
from core.ollama import OllamaClient, keep_alive_param
from tests.fake_ollama import FakeOllama, reply_tokens

BODY = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}


def make_client(url: str, **timeouts: float) -> OllamaClient:
    values = {
        "connect_timeout": 2.0,
        "first_token_timeout": 5.0,
        "idle_timeout": 5.0,
        "generation_timeout": 30.0,
    }
    values.update(timeouts)
    return OllamaClient(base_url=url, **values)


async def collect(client: OllamaClient, body=BODY) -> list[dict]:
    try:
        return [chunk async for chunk in client.stream("/api/chat", body)]
    finally:
        await client.aclose()


def test_stream_yields_every_chunk_then_done(ollama: FakeOllama):
    chunks = asyncio.run(collect(make_client(ollama.url)))
    assert [c["message"]["content"] for c in chunks[:-1]] == reply_tokens(BODY, 8)
    assert chunks[-1]["done"] is True and chunks[-1]["eval_count"] == 8


def test_json_calls(ollama: FakeOllama):
    async def run():
        client = make_client(ollama.url)
        try:
            return (
                await client.version(),
                await client.tags(),
                await client.load("llama3.2:1b", "300"),
                await client.ps(),
            )
        finally:
            await client.aclose()

    version, tags, load, ps = asyncio.run(run())
    assert version and len(tags) == 3
    assert load["done_reason"] == "load" and [m["name"] for m in ps] == ["llama3.2:1b"]
    # "300" went out as the number 300: a numeric string would have been a 400.
    assert ollama.requests[-2].body["keep_alive"] == 300


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        ("refuse", OllamaUnavailable, "ollama_unavailable"),
        ("http500", OllamaError, "ollama_error"),
        ("busy", OllamaBusy, "ollama_busy"),
        ("malformed", OllamaBadResponse, "ollama_bad_response"),
        ("error_line", OllamaError, "ollama_error"),
        ("cut", OllamaBadResponse, "ollama_bad_response"),
    ],
)
def test_faults_map_to_our_errors(ollama: FakeOllama, fault, error, code):
    ollama.configure(fault=fault, fault_after=2)
    with pytest.raises(error) as exc:
        asyncio.run(collect(make_client(ollama.url)))
    assert exc.value.code == code
    if fault == "busy":
        assert exc.value.status == 503 and exc.value.retry_after


def test_unknown_model_maps_to_model_not_found(ollama: FakeOllama):
    with pytest.raises(OllamaModelNotFound) as exc:
        asyncio.run(collect(make_client(ollama.url), {**BODY, "model": "missing:7b"}))
    assert exc.value.status == 404 and "missing:7b" in exc.value.message


def test_hang_before_headers_times_out_on_first_token(ollama: FakeOllama):
    ollama.configure(fault="hang")
    started = time.monotonic()
    with pytest.raises(OllamaTimeout):
        asyncio.run(collect(make_client(ollama.url, first_token_timeout=0.3)))
    assert time.monotonic() - started < 3


def test_stall_mid_stream_times_out_on_idle(ollama: FakeOllama):
    ollama.configure(fault="stall", fault_after=2)
    with pytest.raises(OllamaTimeout) as exc:
        asyncio.run(collect(make_client(ollama.url, idle_timeout=0.3)))
    assert "token" in exc.value.message
    deadline = time.monotonic() + 2
    while ollama.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ollama.stats()["in_flight"] == 0  # our side closed the request


def test_closing_the_stream_early_stops_the_upstream_generation(ollama: FakeOllama):
    ollama.configure(token_delay=0.1, token_count=100)

    async def first_then_leave():
        client = make_client(ollama.url)
        stream = client.stream("/api/chat", BODY)
        first = await anext(stream)
        await stream.aclose()
        await client.aclose()
        return first

    first = asyncio.run(first_then_leave())
    assert first["done"] is False
    deadline = time.monotonic() + 1
    while ollama.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ollama.stats()["in_flight"] == 0 and ollama.stats()["aborted"] == 1


def test_keep_alive_param():
    assert keep_alive_param("15m") == "15m"
    assert keep_alive_param("-1") == -1
    assert keep_alive_param(0) == 0


# --- a broken or hostile upstream: what Ollama itself never sends ----------------------------------


class RawUpstream:
    """A loopback HTTP server that answers every request with the given NDJSON body bytes."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n")
        for start in range(0, len(self.body), 65536):
            writer.write(self.body[start : start + 65536])
            await writer.drain()
        writer.close()


DONE = b'{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}\n'


def test_lone_surrogates_and_nuls_from_the_upstream_are_made_safe_before_anything_stores_them():
    content = b'"a\\ud800b\\u0000c \\ud83d\\ude00"'
    line = b'{"model":"m","message":{"role":"assistant","content":' + content + b'},"done":false}\n'

    async def run() -> list[dict]:
        async with RawUpstream(line + DONE) as url:
            return await collect(make_client(url))

    chunks = asyncio.run(run())
    content = chunks[0]["message"]["content"]
    assert content == "a\ufffdb\ufffdc \U0001f600"  # the valid pair is kept, one emoji
    assert content.encode("utf-8")  # encodable: an SSE frame or a database row takes it


def test_an_endless_upstream_line_is_refused_at_the_bound_not_buffered_whole():
    endless = b'{"model":"m","message":{"content":"' + b"x" * (9 * 1024 * 1024)

    async def run() -> list[dict]:
        async with RawUpstream(endless) as url:
            return await collect(make_client(url))

    with pytest.raises(OllamaBadResponse, match="longer than 8 MiB"):
        asyncio.run(run())


# --- the per-read deadline ---------------------------------------------------------------------


def test_a_read_deadline_times_out_a_late_read_only():
    from core.ollama import ReadDeadline

    async def run() -> list[str]:
        seen = []
        reads = ReadDeadline()
        try:
            assert await reads.within(0.2, asyncio.sleep(0.05, "on time")) == "on time"
            await asyncio.sleep(0.3)  # the consumer's own work between reads, past the limit: untouched
            seen.append("between reads not cancelled")
            for _ in range(20):  # many quick reads inside one limit
                await reads.within(0.2, asyncio.sleep(0.01))
            seen.append("quick reads")
            started = time.monotonic()
            try:
                await reads.within(0.1, asyncio.sleep(5))
            except TimeoutError:
                seen.append(f"late read timed out after {time.monotonic() - started:.1f} s")
            assert await reads.within(0.2, asyncio.sleep(0.01, "again")) == "again"
            seen.append("usable after a timeout")
        finally:
            reads.close()
        return seen

    assert asyncio.run(run()) == [
        "between reads not cancelled",
        "quick reads",
        "late read timed out after 0.1 s",
        "usable after a timeout",
    ]


def test_a_cancellation_from_elsewhere_stays_a_cancellation():
    from core.ollama import ReadDeadline

    async def reader() -> None:
        reads = ReadDeadline()
        try:
            await reads.within(10, asyncio.sleep(5))
        finally:
            reads.close()

    async def run() -> str:
        task = asyncio.ensure_future(reader())
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "not cancelled"

    assert asyncio.run(run()) == "cancelled"
