"""The channel layer, used as a speed-up that may be down, and one channel's inbox.

Scaled out, the layer is Redis. When Redis is unreachable, messages are only a speed-up: workers
poll the queue table, and listeners re-read their rows every second (a finished row carries every
chunk). So layer failures are logged and skipped, never raised, and after one failure the layer is
left alone for LAYER_RETRY_SECONDS instead of being retried per token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings

from core.pump import Pump

logger = logging.getLogger(__name__)


def _layer_errors() -> tuple[type[BaseException], ...]:
    """OSError covers refused connections and timeouts; redis-py wraps them in its own errors."""
    if not settings.REDIS_URL:  # redis is imported only where it is used (it costs memory)
        return (OSError,)
    from redis.exceptions import RedisError

    return (RedisError, OSError)


LAYER_ERRORS = _layer_errors()
LAYER_RETRY_SECONDS = 1.0
_layer_down_until = 0.0
_layer_warned_at = 0.0


def _layer_failed(what: str, exc: BaseException) -> None:
    global _layer_down_until, _layer_warned_at
    now = time.monotonic()
    _layer_down_until = now + LAYER_RETRY_SECONDS
    if now - _layer_warned_at >= 30:
        _layer_warned_at = now
        logger.warning(
            "channel layer unavailable (%s: %s: %s); listeners poll the database until it is back",
            what, type(exc).__name__, exc,
        )  # fmt: skip


def layer_available() -> bool:
    return time.monotonic() >= _layer_down_until


async def quietly(what: str, operation: Coroutine[Any, Any, Any]) -> bool:
    """Run one layer operation; False (logged, not raised) if the layer is full or down."""
    if not layer_available():
        operation.close()  # never started: no "coroutine was never awaited" warning
        return False
    try:
        if not settings.REDIS_URL:  # the in-process layer never waits: no timer per message
            await operation
            return True
        # A frozen Redis must not hold a publisher (a worker's token relay) for its socket timeout.
        async with asyncio.timeout(settings.REDIS_TIMEOUT_SECONDS):
            await operation
        return True
    except ChannelFull:
        return False
    except LAYER_ERRORS as exc:
        _layer_failed(what, exc)
        return False


async def receive(layer: Any, channel: str) -> dict[str, Any]:
    """``layer.receive`` that waits out an outage of the layer instead of failing."""
    while True:
        if layer_available():
            try:
                message: dict[str, Any] = await layer.receive(channel)
                return message
            except LAYER_ERRORS as exc:
                _layer_failed("receive", exc)
        await asyncio.sleep(LAYER_RETRY_SECONDS)


async def messages(layer: Any, channel: str) -> AsyncIterator[dict[str, Any]]:
    """Every message of ``channel``, for ever (outages waited out)."""
    while True:
        yield await receive(layer, channel)


# Background clean-ups in flight (kept referenced so they are not garbage-collected mid-way).
_cleanups: set[asyncio.Task[None]] = set()
CLEANUP_SECONDS = 5.0


class Inbox:
    """A new channel of its own, read by a Pump so waits can time out without losing messages, and
    the groups it joined (left when it closes)."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.groups: list[str] = []
        self.channel = ""
        self._pump: Pump[dict[str, Any]] | None = None

    async def open(self) -> None:
        self.channel = await self.layer.new_channel()
        self._pump = Pump(messages(self.layer, self.channel))

    async def join(self, group: str) -> None:
        """Join a group; if the layer is down the follower still progresses by re-reading its row."""
        self.groups.append(group)
        await quietly("join", self.layer.group_add(group, self.channel))

    async def leave(self, group: str) -> None:
        if group in self.groups:
            self.groups.remove(group)
            await quietly("leave", self.layer.group_discard(group, self.channel))

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await quietly("send", self.layer.send(channel, message))

    async def get(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None after ``timeout`` seconds."""
        assert self._pump is not None
        try:
            return await self._pump.get(timeout)
        except TimeoutError:
            return None

    def close(self) -> None:
        """Stop receiving and leave the groups, in the background.

        Nothing waits for it: a cancelled channels_redis receive can take a while to unwind, and
        the caller (a finished stream) must not be held open meanwhile. Group memberships also
        expire on their own (channel layer ``expiry``).
        """
        task = asyncio.ensure_future(self._cleanup())
        _cleanups.add(task)
        task.add_done_callback(_cleanups.discard)

    async def _cleanup(self) -> None:
        try:
            async with asyncio.timeout(CLEANUP_SECONDS):
                if self._pump is not None:
                    await self._pump.close()
                for group in list(self.groups):
                    await self.leave(group)
        except TimeoutError:
            logger.warning("leaving %s took over %s s; left to expire", self.groups, CLEANUP_SECONDS)
        except Exception:
            logger.exception("leaving channel groups failed; they expire on their own")


async def send_to(channel: str, message: dict[str, Any]) -> None:
    """Send one message on the process's layer, quietly."""
    await quietly("send", get_channel_layer().send(channel, message))


async def group_send(group: str, message: dict[str, Any]) -> None:
    await quietly("publish", get_channel_layer().group_send(group, message))
