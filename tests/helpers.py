"""Small helpers the end-to-end tests share."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

MODEL = "llama3.2:1b"


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def ollama_body(text: str, **extra: Any) -> dict[str, Any]:
    """The body the service sends Ollama for a one-message chat (for emulator call counts)."""
    return {"model": MODEL, "messages": messages(text), **extra}


def submit(client: httpx.Client, text: str, **fields: Any) -> dict[str, Any]:
    headers = fields.pop("headers", None)
    r = client.post("/api/chat-queue", json={"messages": messages(text), **fields}, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()


def wait_for(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def wait_status(
    client: httpx.Client, request_id: str, statuses: tuple[str, ...] = ("completed",), timeout: float = 20
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = client.get("/api/chat-queue", params={"requestId": request_id}).json()
        return body if body["status"] in statuses else None

    return wait_for(check, timeout, what=f"{request_id} to be {statuses}")


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """Parse SSE lines into (event name, data) pairs; comments come out as ("comment", None)."""
    event = "message"
    for line in lines:
        if line.startswith(":"):
            yield "comment", None
        elif line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            yield event, json.loads(line[len("data: ") :])
            event = "message"
