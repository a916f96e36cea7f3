"""Live output over the channel layer: wake-ups, token fan-out, and following one request.

A generation's tokens go to the group ``gen.<generation id>``; control events for one request go to
``job.<job id>``. The database row stays the truth: a listener that misses a message catches up from
the row (the stored chunks), and a late listener asks the generating worker for what was already
produced before it joined, then drops duplicates by sequence number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings

from chat.errors import ApiError, error_from_code
from chatbot_site.runtime import run_blocking
from queueing import services
from queueing.models import Job, Status

logger = logging.getLogger(__name__)

# How often a waiting listener re-reads its row (position updates, missed messages).
REFRESH_SECONDS = 1.0
# A job still pending after this long gets position updates (most start sooner).
FIRST_POSITION_SECONDS = 0.25
# How long a late listener waits for the worker's replay before re-reading the row.
REPLAY_TIMEOUT_SECONDS = 2.0


# --- a channel layer that may be down ----------------------------------------------------------------
# Scaled out, the layer is Redis. When Redis is unreachable, messages are only a speed-up: workers
# poll the queue table, and listeners re-read their rows every REFRESH_SECONDS (a finished row
# carries every chunk). So layer failures are logged and skipped, never raised, and after one
# failure the layer is left alone for LAYER_RETRY_SECONDS instead of being retried per token.


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
                return await layer.receive(channel)
            except LAYER_ERRORS as exc:
                _layer_failed("receive", exc)
        await asyncio.sleep(LAYER_RETRY_SECONDS)


def job_group(job_id: uuid.UUID) -> str:
    return f"job.{job_id.hex}"


def generation_group(generation_id: uuid.UUID) -> str:
    return f"gen.{generation_id.hex}"


async def wake_workers() -> None:
    """Nudge a worker to look at the queue now (workers poll anyway: this only saves latency)."""
    await quietly("wake", get_channel_layer().send(settings.QUEUE_WORKER_CHANNEL, {"type": "queue.wake"}))


async def notify_jobs(job_ids: list[uuid.UUID]) -> None:
    """Tell the listeners of these jobs to re-read their rows."""
    layer = get_channel_layer()
    for job_id in job_ids:
        await quietly("notify", layer.group_send(job_group(job_id), {"type": "job.update"}))


async def notify_claimed(assigned: list[tuple[uuid.UUID, uuid.UUID, str]]) -> None:
    """Tell listeners their job started: which generation, and which worker runs it."""
    layer = get_channel_layer()
    for job_id, generation_id, worker in assigned:
        message = {"type": "job.claimed", "generation": generation_id.hex, "worker": worker}
        await quietly("notify", layer.group_send(job_group(job_id), message))


async def stop_generation(*, worker: str, generation_id: uuid.UUID) -> None:
    """Ask the worker running a generation to close its upstream request (if the layer is down,
    the worker's next lease renewal finds no live job and stops it)."""
    message = {"type": "gen.cancel", "generation": generation_id.hex}
    await quietly("cancel", get_channel_layer().send(worker, message))


@dataclass
class Event:
    """What a follower of a request sees, in order."""

    kind: str  # "position" | "chunk" | "restart" | "done" | "error" | "cancelled"
    content: str = ""
    status: dict[str, Any] = field(default_factory=dict)  # position: the seed's status block
    final: dict[str, Any] = field(default_factory=dict)  # done: Ollama's final chunk (metrics)
    error: ApiError | None = None


class _Inbox:
    """One channel, read by a single background receive so waits can time out without losing messages."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.groups: list[str] = []
        self.channel = ""
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.channel = await self.layer.new_channel()
        self._task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        while True:
            self.queue.put_nowait(await receive(self.layer, self.channel))

    async def join(self, group: str) -> None:
        """Join a group; if the layer is down the follower still progresses by re-reading its row."""
        self.groups.append(group)
        await quietly("join", self.layer.group_add(group, self.channel))

    async def leave(self, group: str) -> None:
        if group in self.groups:
            self.groups.remove(group)
            await quietly("leave", self.layer.group_discard(group, self.channel))

    async def get(self, timeout: float) -> dict[str, Any] | None:
        if not self.queue.empty():  # the common case while tokens flow: no timer, no task
            return self.queue.get_nowait()
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    async def close(self) -> None:
        """Stop receiving and leave the groups, in the background.

        Nothing waits for it: a cancelled channels_redis receive can take a while to unwind, and
        the caller (a finished stream) must not be held open meanwhile. Group memberships also
        expire on their own (channel layer ``expiry``).
        """
        task = asyncio.ensure_future(self._cleanup())
        _cleanups.add(task)
        task.add_done_callback(_cleanups.discard)

    async def _cleanup(self) -> None:
        if self._task is not None:
            self._task.cancel()
        try:
            async with asyncio.timeout(CLEANUP_SECONDS):
                if self._task is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task
                for group in list(self.groups):
                    await self.leave(group)
        except TimeoutError:
            logger.warning("leaving %s took over %s s; left to expire", self.groups, CLEANUP_SECONDS)
        except Exception:
            logger.exception("leaving channel groups failed; they expire on their own")


# Background clean-ups in flight (kept referenced so they are not garbage-collected mid-way).
_cleanups: set[asyncio.Task[None]] = set()
CLEANUP_SECONDS = 5.0


async def follow_request(
    job_id: uuid.UUID, *, keep_caller_alive: bool = False, job: Job | None = None
) -> AsyncIterator[Event]:
    """Yield a request's queue positions, then its chunks in order, then how it ended.

    Works for a listener that arrives at any time: before the request runs, while it generates
    (what was generated so far is replayed first) or after it finished (the result is replayed).
    ``keep_caller_alive`` marks an interactive caller as still waiting while it listens. ``job``:
    the row as just created, saving a read (its position shows after FIRST_POSITION_SECONDS).
    """
    inbox = _Inbox()
    await inbox.open()
    started = time.monotonic()
    try:
        await inbox.join(job_group(job_id))
        if job is None:
            job = await run_blocking(services.get_request, job_id=job_id)
            started -= FIRST_POSITION_SECONDS
        generation: uuid.UUID | None = None
        emitted = 0
        have_snapshot = False
        buffered: dict[int, str] = {}
        replay_asked = 0.0
        last_status: dict[str, Any] | None = None
        last_touch = time.monotonic()

        while True:
            if keep_caller_alive and time.monotonic() - last_touch > settings.QUEUE_LEASE_SECONDS / 3:
                await run_blocking(services.touch_caller, job_id=job_id)
                last_touch = time.monotonic()

            if job.status in (Status.COMPLETED, Status.FAILED, Status.CANCELLED):
                if job.status == Status.COMPLETED:
                    if generation is not None and generation != job.generation_id:
                        yield Event("restart")
                        emitted = 0
                    for chunk in (job.result_chunks or [])[emitted:]:
                        yield Event("chunk", content=chunk)
                    yield Event("done", final=job.result_final or {})
                elif job.status == Status.FAILED:
                    yield Event("error", error=error_from_code(job.error_code, job.error_message))
                else:
                    reason = job.error_message or "The request was cancelled."
                    yield Event(
                        "error", error=ApiError(reason, code=job.error_code or "cancelled", status=409)
                    )
                return

            if job.generation_id != generation:
                # Not started yet, started, or restarted after a failed attempt.
                if generation is not None:
                    await inbox.leave(generation_group(generation))
                    if emitted:
                        yield Event("restart")
                generation, emitted, have_snapshot, buffered = job.generation_id, 0, False, {}
                if generation is not None:
                    await inbox.join(generation_group(generation))
                    await _ask_replay(inbox, job, generation)
                    replay_asked = time.monotonic()

            wait = REFRESH_SECONDS
            if job.status == Status.PENDING:
                waited = time.monotonic() - started
                if waited >= FIRST_POSITION_SECONDS:
                    status = await run_blocking(services.queue_status, job)
                    if status != last_status:
                        last_status = status
                        yield Event("position", status=status)
                else:
                    # Most jobs start at once: show a place in the queue only if it lasts.
                    wait = FIRST_POSITION_SECONDS - waited

            message = await inbox.get(wait)
            kind = message.get("type") if message else None
            if kind == "gen.snapshot" and generation and message["generation"] == generation.hex:
                if message.get("gone"):
                    job = await run_blocking(services.get_request, job_id=job_id)
                    continue
                have_snapshot = True
                buffered.update(dict(enumerate(message["chunks"])))
            elif kind == "gen.chunk" and generation and message["generation"] == generation.hex:
                buffered[message["seq"]] = message["content"]
            elif (
                kind == "gen.end"
                and generation
                and message["generation"] == generation.hex
                and job_id.hex in message.get("completed", ())
                and have_snapshot
                and all(seq < emitted or seq in buffered for seq in range(message["chunks"]))
            ):
                # Completed, and every chunk is here: finish without reading the row again.
                for seq in range(emitted, message["chunks"]):
                    yield Event("chunk", content=buffered[seq])
                yield Event("done", final=message.get("final") or {})
                return
            elif kind == "job.claimed" and job.status == Status.PENDING:
                # Started: the message says where, so no read is needed to follow it.
                job.status = Status.PROCESSING
                job.generation_id = uuid.UUID(message["generation"])
                job.lease_owner = message["worker"]
                continue
            elif kind in ("gen.end", "job.update", "job.claimed") or message is None:
                job = await run_blocking(services.get_request, job_id=job_id)
                if (
                    message is None
                    and generation is not None
                    and not have_snapshot
                    and time.monotonic() - replay_asked > REPLAY_TIMEOUT_SECONDS
                    and job.generation_id == generation
                ):
                    await _ask_replay(inbox, job, generation)
                    replay_asked = time.monotonic()
                continue

            if have_snapshot:
                while emitted in buffered:
                    yield Event("chunk", content=buffered.pop(emitted))
                    emitted += 1
                for seq in [s for s in buffered if s < emitted]:
                    del buffered[seq]
    finally:
        await inbox.close()


async def _ask_replay(inbox: _Inbox, job: Job, generation: uuid.UUID) -> None:
    """Ask the generating worker for the chunks produced so far (answered as gen.snapshot)."""
    if not job.lease_owner:
        return
    message = {"type": "gen.replay", "generation": generation.hex, "reply_to": inbox.channel}
    await quietly("replay", inbox.layer.send(job.lease_owner, message))
