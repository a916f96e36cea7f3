"""Where a generation's answer goes.

The native handlers write Ollama's chunks (``api.ChatResponse`` / ``api.GenerateResponse`` as
dicts) to a sink. ``Sink`` is Ollama's own wire format; the OpenAI and Anthropic layers subclass it
and convert every chunk, as Ollama's middleware wraps the handler's response writer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .wire import NDJSON_TYPE, Stream, dumps, send_json

OUT_OF_MEMORY = "an error was encountered while running the model: out of memory"


class Sink:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.body = Stream(writer, NDJSON_TYPE)

    async def error(self, status: int, message: str) -> None:
        """An error before anything was sent (gin's c.JSON(status, {"error": ...}))."""
        await send_json(self.writer, status, {"error": message})

    async def whole(self, response: dict[str, Any]) -> None:
        """The non-streaming answer."""
        await send_json(self.writer, 200, response)

    async def chunk(self, chunk: dict[str, Any]) -> None:
        await self.body.write((dumps(chunk) + "\n").encode())

    async def finish(self) -> None:
        await self.body.close()

    async def fault(self, kind: str, streaming: bool) -> None:
        """The emulator's 'malformed' and 'error_line' faults, on a 200 already under way."""
        line = b'{"model": "broken' if kind == "malformed" else dumps({"error": OUT_OF_MEMORY}).encode()
        if not streaming:
            self.body = Stream(self.writer, "application/json")
        await self.body.write(line + b"\n")
        await self.body.close()


class CompatSink(Sink):
    """Base for the /v1 layers: an error line mid-stream reaches the converter as a chunk with no
    fields (Go unmarshals ``{"error": ...}`` into an empty response); a malformed line makes the
    middleware's Write fail, which ends the stream; a non-streaming error is a 500."""

    async def fault(self, kind: str, streaming: bool) -> None:
        if not streaming:
            if kind == "malformed":
                await Sink.fault(self, kind, streaming)
            else:
                await self.error(500, OUT_OF_MEMORY)
            return
        if kind == "error_line":
            await self.chunk({})
        await self.body.close()
