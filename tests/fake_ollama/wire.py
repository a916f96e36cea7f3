"""HTTP/1.1 on asyncio streams: just enough of it to answer as Ollama's Go server does."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    499: "Client Closed Request",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
JSON_TYPE = "application/json; charset=utf-8"  # gin's c.JSON
NDJSON_TYPE = "application/x-ndjson"
SSE_TYPE = "text/event-stream"


def dumps(value: Any) -> str:
    """JSON as Go's encoding/json writes it: compact, UTF-8, with <, > and & escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def unix_now() -> int:
    return int(datetime.now(UTC).timestamp())


def unix_of(rfc3339: str) -> int:
    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp())


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
    return method, path, headers, body


def head(status: int, content_type: str, extra: str) -> bytes:
    return (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Date: {datetime.now(UTC).strftime('%a, %d %b %Y %H:%M:%S GMT')}\r\n"
        f"{extra}\r\n"
    ).encode()


async def send(writer: asyncio.StreamWriter, status: int, payload: bytes, content_type: str) -> None:
    writer.write(head(status, content_type, f"Content-Length: {len(payload)}\r\n") + payload)
    await writer.drain()


async def send_json(
    writer: asyncio.StreamWriter,
    status: int,
    value: Any,
    content_type: str = JSON_TYPE,
    newline: bool = False,
) -> None:
    """``newline``: the body ends in "\\n", as json.NewEncoder writes it (the /v1 middleware)."""
    await send(writer, status, (dumps(value) + ("\n" if newline else "")).encode(), content_type)


async def start_chunked(
    writer: asyncio.StreamWriter, status: int, content_type: str, extra: str = ""
) -> None:
    writer.write(head(status, content_type, "Transfer-Encoding: chunked\r\n" + extra))
    await writer.drain()


async def write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


async def end_chunked(writer: asyncio.StreamWriter) -> None:
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def sleep_unless(gone: asyncio.Future[bytes], seconds: float) -> bool:
    """Sleep; returns True if the client went away meanwhile (or already had)."""
    if gone.done():
        return True
    if seconds <= 0:
        await asyncio.sleep(0)
        return gone.done()
    done, _ = await asyncio.wait({gone}, timeout=seconds)
    return bool(done)


class Stream:
    """A chunked response body opened on first use (status 200)."""

    def __init__(self, writer: asyncio.StreamWriter, content_type: str, extra: str = "") -> None:
        self.writer, self.content_type, self.extra = writer, content_type, extra
        self.started = False

    async def write(self, data: bytes) -> None:
        if not self.started:
            self.started = True
            await start_chunked(self.writer, 200, self.content_type, self.extra)
        await write_chunk(self.writer, data)

    async def close(self) -> None:
        if not self.started:
            self.started = True
            await start_chunked(self.writer, 200, self.content_type, self.extra)
        await end_chunked(self.writer)

    async def sse(self, event: str | None, data: Any) -> None:
        payload = data if isinstance(data, str) else dumps(data)
        prefix = f"event: {event}\n" if event else ""
        await self.write(f"{prefix}data: {payload}\n\n".encode())
