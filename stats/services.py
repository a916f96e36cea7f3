"""Operations services: health now; statistics, cache actions and warm-up build on it."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, TypedDict

from channels.layers import get_channel_layer
from django.core.cache import caches
from django.db import connection

from chat.errors import OllamaError
from chat.ollama import get_client
from chatbot_site.runtime import run_blocking

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_SECONDS = 3.0


class CheckResult(TypedDict, total=False):
    ok: bool
    error: str
    latency_ms: float
    version: str


def _database_probe() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _cache_probe(alias: str) -> None:
    key = f"health:{uuid.uuid4().hex}"
    cache = caches[alias]
    cache.set(key, "ok", timeout=10)
    if cache.get(key) != "ok":
        raise RuntimeError(f"cache {alias!r} did not return what was stored")
    cache.delete(key)


async def _channel_layer_probe() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "health.probe"})
    message = await layer.receive(channel)
    if message.get("type") != "health.probe":
        raise RuntimeError("channel layer returned another message")


async def _timed(probe: Any) -> CheckResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            await probe
    except Exception as exc:  # noqa: BLE001 - any failure of a probe is the answer we report
        logger.warning("health probe failed: %s", exc)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


async def _ollama_check() -> CheckResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            version = await get_client().version()
    except (OllamaError, TimeoutError) as exc:
        return {"ok": False, "error": f"Ollama unreachable: {exc}"}
    return {
        "ok": True,
        "version": version,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
    }


async def health_report(*, deep: bool) -> tuple[bool, dict[str, Any]]:
    """Whether the service is healthy, and the report; ``deep`` probes every dependency.

    Database, caches and channel layer are required (the service cannot queue or cache without
    them); Ollama is reported but not required, so a restarting Ollama does not get the gateway
    itself restarted by an orchestrator.
    """
    if not deep:
        return True, {"status": "healthy"}
    names = ["database", "response_cache", "conversation_cache", "channel_layer", "ollama"]
    results = await asyncio.gather(
        _timed(run_blocking(_database_probe)),
        _timed(run_blocking(_cache_probe, "responses")),
        _timed(run_blocking(_cache_probe, "conversations")),
        _timed(_channel_layer_probe()),
        _ollama_check(),
    )
    checks = dict(zip(names, results, strict=True))
    healthy = all(result["ok"] for name, result in checks.items() if name != "ollama")
    return healthy, {"status": "healthy" if healthy else "unhealthy", "checks": checks}
