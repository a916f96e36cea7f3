"""Per-owner limits: requests per minute and concurrent streams, counted in the ``default`` cache
(local memory on the embedded default's single process, Redis when scaled out, so every process
counts against the same numbers)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator

from django.conf import settings
from django.core.cache import caches
from django.http import HttpResponseBase

from core.errors import TooManyRequests
from core.runtime import run_blocking

logger = logging.getLogger(__name__)


def _count(key: str, delta: int, ttl: int) -> int:
    """Add ``delta`` to a counter; 0 if the cache is down (limits fail open: the gateway keeps
    answering while Redis is away, and says so in the log)."""
    cache = caches["default"]
    try:
        cache.add(key, 0, ttl)
        try:
            return cache.incr(key, delta)
        except ValueError:  # expired between add and incr
            cache.set(key, max(delta, 0), ttl)
            return max(delta, 0)
    except Exception as exc:  # noqa: BLE001 - any backend failure means "not counted"
        logger.warning("rate limit not counted, cache unavailable: %s: %s", type(exc).__name__, exc)
        return 0


async def check_rate(identity: str) -> None:
    """Raise a 429 with Retry-After when ``identity`` used up this minute's requests."""
    limit = settings.RATE_LIMIT_PER_MINUTE
    if not limit:
        return
    now = time.time()
    minute = int(now // 60)
    used = await run_blocking(_count, f"ratelimit:{identity}:{minute}", 1, 120)
    if used > limit:
        raise TooManyRequests(
            f"Rate limit of {limit} requests per minute reached.",
            code="rate_limited",
            retry_after=max(1, math.ceil((minute + 1) * 60 - now)),
        )


def _streams_key(identity: str) -> str:
    return f"streams:{identity}"


async def acquire_stream(identity: str, limit: int) -> None:
    """Take one of ``identity``'s ``limit`` stream slots before anything is queued; 429 when none
    is left. A crashed process's slots stop counting after an hour at most."""
    open_now = await run_blocking(_count, _streams_key(identity), 1, 3600)
    if open_now > limit:
        await release_stream(identity)
        raise TooManyRequests(
            f"At most {limit} concurrent streams per client.", code="too_many_streams", retry_after=1
        )


async def release_stream(identity: str) -> None:
    await run_blocking(_count, _streams_key(identity), -1, 3600)


def held_while_streaming(identity: str, response: HttpResponseBase) -> HttpResponseBase:
    """Release the slot when the stream ends (or the client leaves)."""
    content = response.streaming_content  # type: ignore[attr-defined]

    async def counted() -> AsyncIterator[bytes]:
        try:
            async for chunk in content:
                yield chunk
        finally:
            await release_stream(identity)

    response.streaming_content = counted()  # type: ignore[attr-defined]
    return response
