"""Every stream ends: whatever fails after a streaming response started, the client gets one error
frame in the surface's own shape and the stream closes (it once stopped with no further byte and
stayed open until the client gave up)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from django.db import OperationalError

from gateway.sse import api_error_frame, ending, with_heartbeat
from gateway.views.anthropic import error_event
from gateway.views.ollama import error_line
from gateway.views.openai import error_frame as openai_error_frame


def failing(exc: BaseException, *, also_in_finally: BaseException | None = None) -> AsyncIterator[bytes]:
    async def frames() -> AsyncIterator[bytes]:
        try:
            yield b"data: first\n\n"
            raise exc
        finally:
            if also_in_finally is not None:  # the session's clean-up fails the same way
                raise also_in_finally

    return frames()


async def drain(frames: AsyncIterator[bytes]) -> list[bytes]:
    async with asyncio.timeout(5):  # the stream must end by itself
        return [f async for f in frames]


@pytest.mark.parametrize(
    ("on_error", "expected"),
    [
        (api_error_frame, b'event: error\ndata: {"error":'),
        (error_line, b'{"error": '),
        (openai_error_frame, b'data: {"error":{"message"'),
        (error_event, b"event: error\n"),
    ],
    ids=["chat-optimized", "ollama", "openai", "anthropic"],
)
def test_a_database_failure_mid_stream_ends_it_with_one_error_frame_in_the_surfaces_shape(on_error, expected):
    source = failing(
        OperationalError("server closed the connection"), also_in_finally=OperationalError("gone")
    )
    frames = asyncio.run(drain(with_heartbeat(ending(source, on_error), interval=10)))
    body = b"".join(frames)
    assert body.startswith(b"data: first\n\n")
    tail = body[len(b"data: first\n\n") :]
    assert tail.startswith(expected) and b"database is unavailable" in tail, tail
    assert tail.count(b"database is unavailable") == 1 and body.endswith(b"\n"), tail  # one error frame


def test_an_unexpected_failure_also_ends_the_stream_with_an_error_frame():
    frames = asyncio.run(
        drain(ending(failing(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogate")), api_error_frame))
    )
    event, data = frames[-1].decode().strip().split("\n")
    assert event == "event: error" and json.loads(data.removeprefix("data: "))["code"] == "internal_error"


def test_the_client_going_away_is_not_turned_into_a_frame():
    async def run() -> None:
        frames = ending(failing(asyncio.CancelledError()), api_error_frame)
        await drain(frames)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run())
