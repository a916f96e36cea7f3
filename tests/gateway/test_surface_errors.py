"""Every surface answers a full queue and a missing Ollama in its own error shape and status."""

from __future__ import annotations

import pytest

from tests.helpers import MODEL, messages

SURFACES = [
    ("/api/chat", {"model": MODEL, "messages": messages("x"), "stream": False}, "ollama"),
    ("/v1/chat/completions", {"model": MODEL, "messages": messages("x")}, "openai"),
    ("/v1/completions", {"model": MODEL, "prompt": "x"}, "openai"),
    ("/v1/responses", {"model": MODEL, "input": "x"}, "openai"),
    ("/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": messages("x")}, "anthropic"),
    ("/api/chat-optimized", {"messages": messages("x")}, "ours"),
]


def shape_of(body: dict) -> str:
    if body.get("type") == "error" and isinstance(body.get("error"), dict):
        return "anthropic"
    if isinstance(body.get("error"), dict):
        return "openai"
    if set(body) == {"error", "code"}:
        return "ours"
    if set(body) == {"error"}:
        return "ollama"
    return "unknown"


def test_a_full_queue(start_server, ollama):
    server = start_server(QUEUE_EMBEDDED_WORKER="false", QUEUE_MAX_QUEUE_SIZE=1)
    with server.client() as client:
        assert client.post("/api/chat-queue", json={"messages": messages("fills it")}).status_code == 202
        answers = {path: client.post(path, json=body) for path, body, _ in SURFACES}
    for path, _, shape in SURFACES:
        r = answers[path]
        assert shape_of(r.json()) == shape, (path, r.text)
        # Ollama's own clients know its 503 "server busy"; the others get 429 and Retry-After.
        assert r.status_code == (503 if shape == "ollama" else 429), (path, r.status_code)
        assert int(r.headers["Retry-After"]) >= 1
    assert ollama.generation_requests() == []  # (a /api/show for the model's capabilities is fine)


@pytest.mark.parametrize(("path", "body", "shape"), SURFACES)
def test_ollama_down(server, ollama, path, body, shape):
    ollama.configure(fault="refuse")
    with server.client() as client:
        r = client.post(path, json=body)
    assert r.status_code == 502 and shape_of(r.json()) == shape, r.text
