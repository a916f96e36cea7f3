"""Server-Sent-Event framing, in the chat-optimized format, and the streaming response around it.

The chat-optimized format is the one the product's design document defines for
``/api/chat-optimized`` (and ``/api/chat-queue/stream``), which existing front-ends parse:

    data: {"content":"Rust","done":false,"cached":false}
    data: {"done":true,"cached":false}

Mid-stream failures become one ``event: error`` frame with ``{"error","code"}``; queue positions are
``event: queue`` frames (EventSource's ``onmessage`` ignores named events, so clients of the plain
format are unaffected). A ``: ping`` comment goes out after every ``SSE_HEARTBEAT_SECONDS`` (15) of silence.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse

from core.errors import ApiError, dependency_error
from core.generation import Chunk, metrics
from core.pump import Pump
from queueing.live import Event

logger = logging.getLogger(__name__)
PING = b": ping\n\n"
# A stream's output waiting in the application: frames read ahead of the client, and the bytes of
# one write. What the client has not taken beyond that waits in the server's connection, bounded
# by [server] max_unsent_bytes, so a slow reader holds a bounded amount, whatever the answer's size.
READ_AHEAD_FRAMES = 64
WRITE_MAX_BYTES = 64 * 1024
ErrorFrame = Callable[[ApiError], bytes]


def frame(data: dict[str, Any], event: str | None = None) -> bytes:
    """One SSE frame; compact JSON, keys in the order given."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def chunk_frame(chunk: Chunk, *, cached: bool) -> bytes:
    """One record chunk: ``content`` as the plain format has it, ``thinking`` and ``tool_calls``
    beside it when the model sent them (a chunk of thinking alone carries no ``content``)."""
    data: dict[str, Any] = {}
    content = chunk.get("content") or ""
    if content or not (chunk.get("thinking") or chunk.get("tool_calls")):
        data["content"] = content
    for key in ("thinking", "tool_calls"):
        if chunk.get(key):
            data[key] = chunk[key]
    data["done"] = False
    data["cached"] = cached
    return frame(data)


def done_frame(*, cached: bool, **extra: Any) -> bytes:
    return frame({"done": True, "cached": cached, **extra})


def error_frame(error: str, code: str) -> bytes:
    return frame({"error": error, "code": code}, event="error")


def api_error_frame(error: ApiError) -> bytes:
    return error_frame(error.message, error.code)


async def ending(frames: AsyncIterator[bytes], on_error: ErrorFrame) -> AsyncIterator[bytes]:
    """``frames``, and whatever fails after the response started (the database, the channel
    layer, the upstream, encoding) ends the stream with one error frame in the surface's own shape
    (``on_error``), so the client is never left on an open connection that sends nothing more.
    Only the client going away (cancellation) passes through."""
    try:
        async for item in frames:
            yield item
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except ApiError as exc:
        yield on_error(exc)
    except Exception as exc:
        error = dependency_error(exc)
        if error is None:
            logger.exception("a stream failed after its response started")
            error = ApiError(f"The stream failed: {type(exc).__name__}.", code="internal_error", status=500)
        else:
            logger.warning("a stream failed after its response started: %s", error.message)
        yield on_error(error)


async def event_frames(
    events: AsyncIterator[Event], *, cached: bool, **done_extra: Any
) -> AsyncIterator[bytes]:
    """A request's events as SSE frames in the chat-optimized format."""
    async for event in events:
        if event.kind == "chunk":
            yield chunk_frame(event.chunk, cached=cached)
        elif event.kind == "position":
            yield frame(event.status, event="queue")
        elif event.kind == "restart":
            yield frame({"reason": "the generation is being retried from the start"}, event="restart")
        elif event.kind == "done":
            yield done_frame(
                cached=cached,
                done_reason=str(event.final.get("done_reason", "")),
                metrics=metrics(event.final),
                **done_extra,
            )
        elif event.kind == "error":
            assert event.error is not None
            yield error_frame(event.error.message, event.error.code)


async def with_heartbeat(
    frames: AsyncIterator[bytes], interval: float, ping: bytes = PING
) -> AsyncIterator[bytes]:
    """Pass frames through, adding a ping comment whenever ``interval`` passes without one.

    Frames are read by a ``Pump``, at most READ_AHEAD_FRAMES ahead; each write takes the frames
    already waiting, up to WRITE_MAX_BYTES, so under load several tokens leave in one write (no
    delay is added: a lone frame goes at once). The source is
    only ever interrupted when the client goes away; then it is cancelled, which runs its
    ``finally`` (cancelling the upstream generation).
    """
    pump = Pump(frames, READ_AHEAD_FRAMES)
    try:
        while True:
            try:
                frame = await pump.get(interval)
            except TimeoutError:
                yield ping
                continue
            batch: list[bytes] = []
            size = 0
            while frame is not None:
                batch.append(frame)
                size += len(frame)
                if size >= WRITE_MAX_BYTES or not pump.ready():
                    break
                try:
                    frame = await pump.get()
                except Exception:
                    yield b"".join(batch)  # what came before the failure still goes out
                    raise
            if batch:
                yield b"".join(batch)
            if frame is None:
                return
    finally:
        try:
            await pump.close()
        except Exception:  # the client is gone (or the stream ended): nothing is left to tell
            logger.exception("closing a finished stream's source failed")


def sse_response(
    frames: AsyncIterator[bytes],
    *,
    headers: dict[str, str] | None = None,
    ping: bytes = PING,
    on_error: ErrorFrame = api_error_frame,
) -> StreamingHttpResponse:
    """A streaming ``text/event-stream`` response that proxies must not buffer; ``ping`` is the
    heartbeat (a comment by default; a surface may have its own, such as Anthropic's ping event),
    ``on_error`` the surface's error frame for a failure after the response started."""
    response = StreamingHttpResponse(
        with_heartbeat(ending(frames, on_error), settings.SSE_HEARTBEAT_SECONDS, ping),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in (headers or {}).items():
        response[name] = value
    return response
