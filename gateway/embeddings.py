"""Embeddings for every surface (``/api/embed``, the legacy ``/api/embeddings``, OpenAI's
``/v1/embeddings``): jobs of the scheduler like generations (so an embedding model, which Ollama
runs one request at a time, gets its cap here, where the queue has positions and fairness),
answered from the response cache by model and input. ``Cache-Control`` is honoured."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from gateway import payloads
from gateway.session import GenerationSession


async def embeddings(request: HttpRequest, endpoint: str, native: dict[str, Any]) -> dict[str, Any]:
    """Ollama's answer to ``native`` on ``/api/<endpoint>`` (``embed`` or ``embeddings``)."""
    spec = await payloads.spec_for(request, endpoint=endpoint, payload=native, samples=False)
    session = GenerationSession(spec)
    await session.start()
    await session.answer()
    body: dict[str, Any] = session.final["body"]
    return body
