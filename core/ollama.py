"""Speaks Ollama's HTTP API, nothing else.

An :class:`OllamaClient` wraps one ``httpx.AsyncClient`` for one server (``core.servers`` keeps one
per server and event loop, so connection pools are reused). Streaming calls yield parsed NDJSON
chunks. Every transport or protocol failure leaves this module as one of the ``core.errors.Ollama*``
exceptions; nothing above it sees httpx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import httpx

from core.errors import (
    OllamaBadResponse,
    OllamaBusy,
    OllamaError,
    OllamaModelNotFound,
    OllamaRejected,
    OllamaTimeout,
    OllamaUnavailable,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


def keep_alive_param(value: str | int | float) -> str | int | float:
    """Ollama rejects a bare numeric *string* with 400; send numbers as numbers."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return value


def listed_name(entry: dict[str, Any]) -> str:
    """The model an ``/api/tags`` or ``/api/ps`` entry is about (``name``; older Ollama: ``model``)."""
    return str(entry.get("name") or entry.get("model") or "")


class OllamaClient:
    """A reusable client for one Ollama server, with the timeouts from settings."""

    def __init__(
        self,
        *,
        base_url: str,
        connect_timeout: float,
        first_token_timeout: float,
        idle_timeout: float,
        generation_timeout: float,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout
        self.generation_timeout = generation_timeout
        # Read timeouts are enforced per chunk below (first token vs. idle), not by httpx.
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(connect=connect_timeout, read=None, write=30.0, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- simple JSON calls ---------------------------------------------------------------------

    async def version(self) -> str:
        """Ollama's version string (``GET /api/version``)."""
        data = await self._json("GET", "/api/version", timeout=self.first_token_timeout)
        return str(data.get("version", ""))

    async def tags(self) -> list[dict[str, Any]]:
        """The models Ollama has (``GET /api/tags``)."""
        data = await self._json("GET", "/api/tags", timeout=self.first_token_timeout)
        return list(data.get("models") or [])

    async def ps(self) -> list[dict[str, Any]]:
        """The models loaded in memory now (``GET /api/ps``)."""
        data = await self._json("GET", "/api/ps", timeout=self.first_token_timeout)
        return list(data.get("models") or [])

    async def show(self, model: str) -> dict[str, Any]:
        """A model's details (``POST /api/show``)."""
        return await self._json("POST", "/api/show", {"model": model}, timeout=self.first_token_timeout)

    async def load(self, model: str, keep_alive: str | int | float) -> dict[str, Any]:
        """Load a model (empty chat) and keep it for ``keep_alive``; returns Ollama's answer."""
        payload: dict[str, Any] = {"model": model, "messages": [], "keep_alive": keep_alive_param(keep_alive)}
        return await self._json("POST", "/api/chat", payload, timeout=self.first_token_timeout)

    async def request_json(
        self, method: str, path: str, payload: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Any non-streaming call (``/api/embed``, ``/api/show``...), with the first-token timeout."""
        return await self._json(method, path, payload, timeout=self.first_token_timeout)

    async def _json(
        self, method: str, path: str, payload: dict[str, Any] | None = None, *, timeout: float
    ) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                response = await self._http.request(method, path, json=payload)
        except TimeoutError:
            raise OllamaTimeout(f"Ollama did not answer {path} within {timeout:g} s") from None
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.content)
        return _parse_object(response.content, path)

    # --- streaming -----------------------------------------------------------------------------

    async def stream(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST ``payload`` with ``stream: true`` and yield each NDJSON chunk up to ``done``.

        Timeouts: the first chunk must come within ``first_token_timeout`` (model load and prompt
        evaluation happen before it), each later one within ``idle_timeout``, and the whole
        generation within ``generation_timeout``. Closing the generator closes the HTTP request,
        which makes Ollama stop generating.
        """
        body = {**payload, "stream": True}
        deadline = time.monotonic() + self.generation_timeout
        request = self._http.build_request("POST", path, json=body)
        try:
            async with asyncio.timeout(self.first_token_timeout):
                response = await self._http.send(request, stream=True)
        except TimeoutError:
            raise OllamaTimeout(f"Ollama sent no response within {self.first_token_timeout:g} s") from None
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None
        reads = ReadDeadline()
        try:
            if response.status_code >= 400:
                raise self._status_error(response.status_code, await response.aread())
            lines = _lines(response)
            limit, what = self.first_token_timeout, "first token"
            while True:
                limit = min(limit, deadline - time.monotonic())
                if limit <= 0:
                    raise OllamaTimeout(f"Ollama's generation took longer than {self.generation_timeout:g} s")
                try:
                    line = await reads.within(limit, anext(lines))
                except StopAsyncIteration:
                    raise OllamaBadResponse("Ollama ended the stream before it was done") from None
                except TimeoutError:
                    raise OllamaTimeout(f"Ollama sent no {what} within {limit:g} s") from None
                except httpx.TransportError as exc:
                    raise OllamaBadResponse(
                        f"the connection to Ollama broke mid-stream ({type(exc).__name__})"
                    ) from None
                if not line.strip():
                    continue
                chunk = _parse_object(line, path)
                if "error" in chunk:
                    raise OllamaError(f"Ollama reported an error: {chunk['error']}")
                if chunk.get("done"):
                    await _drain(lines)
                    yield chunk
                    return
                yield chunk
                limit, what = self.idle_timeout, "token"
        finally:
            reads.close()
            await response.aclose()

    # --- error mapping -------------------------------------------------------------------------

    def _unavailable(self, exc: Exception) -> OllamaUnavailable:
        logger.warning("Ollama at %s unreachable: %s", self.base_url, exc)
        return OllamaUnavailable(f"Ollama at {self.base_url} is unreachable ({type(exc).__name__})")

    @staticmethod
    def _status_error(status: int, content: bytes) -> OllamaError:
        try:
            message = str(json.loads(content).get("error", "")) or f"HTTP {status}"
        except (ValueError, AttributeError):
            message = f"HTTP {status}"
        if status == 404:
            return OllamaModelNotFound(message)
        if status == 503:
            return OllamaBusy(f"Ollama is busy: {message}")
        if status == 400:
            return OllamaRejected(message)
        return OllamaError(f"Ollama answered HTTP {status}: {message}")


class ReadDeadline:
    """A deadline for each read of a stream, with one timer for the stream instead of one per read.

    ``asyncio.timeout`` around every line made, rescheduled and cancelled a timer handle per token:
    about a quarter of the worker's CPU per relayed token (a py-spy profile of a 100,000-token
    generation). Here a read only records when it is due; the one timer, when it fires, either
    finds the read late and cancels it (turned into ``TimeoutError`` as ``asyncio.timeout`` does,
    and only while a read is awaited: the consumer's own code between reads is never cancelled),
    or re-arms itself for the current read's due time: one timer per idle limit, not per token.
    A cancellation of the task from elsewhere stays a cancellation.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a ReadDeadline belongs to a task"
        self._task = task
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._reading = False
        self._fired = False

    async def within(self, limit: float, read: Awaitable[T]) -> T:
        """``await read``, or TimeoutError once ``limit`` seconds passed."""
        self._due = self._loop.time() + limit
        if self._timer is None or self._timer.when() > self._due:
            self._arm(self._due)
        self._reading = True
        try:
            return await read
        except asyncio.CancelledError:
            if self._fired:
                self._fired = False
                if self._task.uncancel() == 0:
                    raise TimeoutError from None
            raise
        finally:
            self._reading = False

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        self.close()
        self._timer = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        if not self._reading:
            return  # between reads: the next read arms the timer again
        if self._loop.time() >= self._due:
            self._fired = True
            self._task.cancel()
        else:
            self._arm(self._due)


# The longest NDJSON line accepted from Ollama. Its chunks are a token or a few (an embedding
# answer is not streamed); a longer line is a broken or hostile upstream, not buffered whole.
MAX_LINE_BYTES = 8 * 1024 * 1024


async def _lines(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body's lines as bytes (no decode to text and back), each at most MAX_LINE_BYTES."""
    pending = bytearray()
    async for data in response.aiter_bytes():
        pending += data
        if b"\n" not in data:
            if len(pending) > MAX_LINE_BYTES:
                raise OllamaBadResponse(f"Ollama sent a line longer than {MAX_LINE_BYTES // 2**20} MiB")
            continue
        *complete, rest = pending.split(b"\n")
        pending = bytearray(rest)
        for line in complete:
            yield bytes(line)
    if pending:
        yield bytes(pending)


async def _drain(lines: AsyncIterator[bytes]) -> None:
    """Read the end of the chunked body so the connection goes back to the pool for reuse."""
    try:
        async with asyncio.timeout(1.0):
            async for _ in lines:
                pass
    except (TimeoutError, httpx.TransportError):
        pass


def _parse_object(raw: bytes, path: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise OllamaBadResponse(f"Ollama sent malformed JSON from {path}") from None
    if not isinstance(value, dict):
        raise OllamaBadResponse(f"Ollama sent a non-object from {path}")
    if b"\\u" in raw and _UNSAFE_ESCAPE.search(raw):
        value = _made_safe(value)
    return value


# JSON escapes that decode to text no UTF-8 encoder, SSE frame or PostgreSQL column takes: a lone
# UTF-16 surrogate, and NUL (PostgreSQL refuses it in text and jsonb). Ollama itself (Go) never
# writes a surrogate; a broken or hostile upstream might, and one must not end a stream silently.
_UNSAFE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_UNSAFE_TEXT = re.compile("[\x00\ud800-\udfff]")


def _made_safe(value: Any) -> Any:
    """``value`` with each NUL and lone surrogate replaced by U+FFFD (a pair the JSON decoder
    already joined into one character is untouched)."""
    if isinstance(value, str):
        return _UNSAFE_TEXT.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_made_safe(k): _made_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_made_safe(v) for v in value]
    return value
