"""The queue worker: a channels consumer on the ``chat-worker`` channel that drains the queue table.

Embedded default: one runs inside each daphne process (started when the server starts). Scaled out:
``python manage.py runworker chat-worker`` processes, any number, on channels_redis. Either way the
worker claims jobs from the database (the truth), runs each generation in its own task, streams its
tokens to the generation's group, and writes the result once, as the lease holder. Messages it
handles: ``queue.wake`` (look at the queue now), ``gen.cancel`` (stop a generation), ``gen.replay``
(send a late listener what a generation produced so far).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from channels.consumer import AsyncConsumer, get_handler_name
from channels.layers import get_channel_layer
from channels.routing import get_default_application
from channels.utils import await_many_dispatch
from channels.worker import Worker
from django.conf import settings

from chat.caches import store_response
from chat.errors import ApiError, OllamaError
from chat.ollama import get_client
from chatbot_site.runtime import prepare_process, run_scheduler_blocking
from queueing import live, services
from stats import counters, metrics

logger = logging.getLogger(__name__)

# Errors worth another attempt for a queued request: the next try may well succeed.
_RETRYABLE_CODES = {
    "ollama_unavailable",
    "ollama_timeout",
    "ollama_busy",
    "ollama_bad_response",
    "ollama_error",
}


@dataclass
class Running:
    generation: services.Generation
    task: asyncio.Task[None] | None = None
    chunks: list[str] = field(default_factory=list)


class Scheduler:
    """Claims work while slots are free, runs generations, renews leases, recovers lapsed ones."""

    def __init__(self, channel_layer: Any, name: str) -> None:
        self.layer = channel_layer
        self.name = name  # this worker's own channel: lease owner and address for cancel/replay
        self.running: dict[uuid.UUID, Running] = {}
        self._wake = asyncio.Event()
        self._deferred_since: float | None = None
        self._last_expiry_check = 0.0
        self._claiming: asyncio.Future[services.Claim] | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        renewer = asyncio.ensure_future(self._renew_forever())
        logger.info("queue worker %s started", self.name)
        try:
            while True:
                try:
                    await self._tick()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("queue worker tick failed; retrying")
                    await asyncio.sleep(1)
                await self._sleep()
        finally:
            renewer.cancel()

    async def _sleep(self) -> None:
        timeout = settings.QUEUE_POLL_INTERVAL_MS / 1000
        if self._deferred_since is not None:
            remaining = settings.BATCH_TIMEOUT_MS / 1000 - (time.monotonic() - self._deferred_since)
            timeout = max(0.0, min(timeout, remaining))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_expiry_check >= settings.QUEUE_POLL_INTERVAL_MS / 1000:
            self._last_expiry_check = now
            recovered = await run_scheduler_blocking(services.expire_leases)
            if recovered.get("requeued"):
                self.wake()
        while True:
            allow_partial = settings.BATCH_TIMEOUT_MS == 0 or (
                self._deferred_since is not None
                and time.monotonic() - self._deferred_since >= settings.BATCH_TIMEOUT_MS / 1000
            )
            # A claim commits in a pool thread even if this task is cancelled meanwhile; shutdown
            # waits for it, so whatever it claimed is released with the rest.
            self._claiming = asyncio.ensure_future(
                run_scheduler_blocking(services.claim_batch, worker=self.name, allow_partial=allow_partial)
            )
            claim = await asyncio.shield(self._claiming)
            if claim.deferred:
                if self._deferred_since is None:
                    self._deferred_since = time.monotonic()
                return
            self._deferred_since = None
            if not claim.jobs:
                return
            logger.debug("claimed %d jobs in %d new generations", claim.jobs, len(claim.generations))
            for generation in claim.generations:
                state = Running(generation)
                self.running[generation.generation_id] = state
                state.task = asyncio.ensure_future(self._generate(state))
            await live.notify_claimed(claim.assigned)
            if not claim.more:
                return

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(settings.QUEUE_LEASE_SECONDS / 3)
            if not self.running:
                continue
            try:
                alive = await run_scheduler_blocking(services.renew_leases, worker=self.name)
            except Exception:
                logger.exception("lease renewal failed")
                continue
            for generation_id, state in list(self.running.items()):
                if generation_id not in alive and state.task is not None:
                    # Every job of it was cancelled, or another worker took over after our lease
                    # lapsed: stop spending GPU time on it.
                    logger.info("generation %s has no live jobs left; stopping it", generation_id)
                    state.task.cancel()

    async def _generate(self, state: Running) -> None:
        generation = state.generation
        group = live.generation_group(generation.generation_id)
        gid = generation.generation_id.hex
        started = time.monotonic()
        try:
            final: dict[str, Any] = {}
            async for chunk in get_client().stream(f"/api/{generation.endpoint}", generation.payload):
                if not state.chunks:
                    metrics.TIME_TO_FIRST_TOKEN.observe(time.monotonic() - started)
                if chunk.get("done"):
                    final = {k: v for k, v in chunk.items() if k not in _NOT_METRICS}
                    break
                content = _content(generation.endpoint, chunk)
                state.chunks.append(content)
                message = {
                    "type": "gen.chunk",
                    "generation": gid,
                    "seq": len(state.chunks) - 1,
                    "content": content,
                }
                await live.quietly("publish", self.layer.group_send(group, message))
            jobs = await run_scheduler_blocking(
                services.finish_generation,
                worker=self.name,
                generation_id=generation.generation_id,
                chunks=state.chunks,
                final=final,
            )
            if jobs:
                metrics.GENERATION_TIME.observe(time.monotonic() - started)
                elapsed_ms = int((time.monotonic() - started) * 1000)
                counters.incr(counters.GENERATION_MS_TOTAL, elapsed_ms)
                if any(job.use_cache for job in jobs):
                    await run_scheduler_blocking(
                        store_response,
                        key=generation.cache_key,
                        endpoint=generation.endpoint,
                        model=str(generation.payload.get("model", "")),
                        chunks=state.chunks,
                        final=final,
                    )
            # The end, with what a listener needs to finish without reading its row again: the
            # jobs now completed, the number of chunks, and the final metrics.
            end = {
                "type": "gen.end",
                "generation": gid,
                "completed": [job.id.hex for job in jobs],
                "chunks": len(state.chunks),
                "final": final,
            }
            await live.quietly("publish", self.layer.group_send(group, end))
        except ApiError as exc:
            await self._fail(state, exc)
        except asyncio.CancelledError:
            logger.info("generation %s stopped", generation.generation_id)
            raise
        except Exception as exc:
            logger.exception("generation %s failed unexpectedly", generation.generation_id)
            await self._fail(state, OllamaError(f"The generation failed: {type(exc).__name__}"))
        finally:
            self.running.pop(generation.generation_id, None)
            self.wake()
            await live.wake_workers()  # a slot is free: workers elsewhere may claim now

    async def _fail(self, state: Running, error: ApiError) -> None:
        generation = state.generation
        retryable = error.code in _RETRYABLE_CODES
        logger.warning("generation %s failed: %s (%s)", generation.generation_id, error.message, error.code)
        counters.incr(counters.UPSTREAM_ERRORS_PREFIX + error.code)
        await run_scheduler_blocking(
            services.fail_generation,
            worker=self.name,
            generation_id=generation.generation_id,
            error=error,
            retryable=retryable,
        )
        message = {"type": "gen.end", "generation": generation.generation_id.hex, "error": error.code}
        await live.quietly(
            "publish", self.layer.group_send(live.generation_group(generation.generation_id), message)
        )

    def cancel(self, generation_id: uuid.UUID) -> None:
        state = self.running.get(generation_id)
        if state is not None and state.task is not None:
            state.task.cancel()

    async def replay(self, generation_id: uuid.UUID, reply_to: str) -> None:
        state = self.running.get(generation_id)
        message: dict[str, Any] = {"type": "gen.snapshot", "generation": generation_id.hex}
        if state is None:
            message["gone"] = True
        else:
            message["chunks"] = list(state.chunks)
        await live.quietly("replay", self.layer.send(reply_to, message))

    async def shutdown(self) -> None:
        """Stop generating and hand this worker's jobs back to the queue at once."""
        if self._claiming is not None:
            await asyncio.gather(self._claiming, return_exceptions=True)
        tasks = [state.task for state in self.running.values() if state.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        released = await run_scheduler_blocking(services.release_worker, worker=self.name)
        if released:
            logger.info("queue worker %s released its jobs: %s", self.name, released)


# What the final chunk carries besides metrics and done_reason (``context`` is kept: /api/generate
# callers continue from it).
_NOT_METRICS = {"model", "created_at", "message", "response", "done", "thinking"}


def _content(endpoint: str, chunk: dict[str, Any]) -> str:
    if endpoint == "generate":
        return str(chunk.get("response", ""))
    return str((chunk.get("message") or {}).get("content", ""))


class SchedulerConsumer(AsyncConsumer):
    """The worker as a channels consumer: the scheduler loop plus handlers named after messages."""

    async def dispatch(self, message: dict[str, Any]) -> None:
        # channels' dispatch first closes old database connections with a thread hop per message;
        # these handlers touch no database (run_blocking refreshes its own connections).
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.base_send = send
        self.scheduler = Scheduler(self.channel_layer, self.channel_name)
        loop_task = asyncio.ensure_future(self.scheduler.run())
        receive_own = _partial_receive(self.channel_layer, self.channel_name)
        try:
            await await_many_dispatch([receive, receive_own], self.dispatch)
        finally:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
            await asyncio.shield(self.scheduler.shutdown())

    async def queue_wake(self, message: dict[str, Any]) -> None:
        self.scheduler.wake()

    async def gen_cancel(self, message: dict[str, Any]) -> None:
        self.scheduler.cancel(uuid.UUID(message["generation"]))

    async def gen_replay(self, message: dict[str, Any]) -> None:
        await self.scheduler.replay(uuid.UUID(message["generation"]), message["reply_to"])


def _partial_receive(layer: Any, channel: str) -> Any:
    async def receive() -> dict[str, Any]:
        return await live.receive(layer, channel)

    return receive


class SchedulerWorker(Worker):
    """channels' Worker, but the consumer starts at once (not on its first message) and is
    restarted if it dies, and SIGTERM hands its jobs back before the process exits."""

    async def listener(self, channel: str) -> None:
        """channels' listener, but waiting out a channel layer outage (the scheduler polls the
        queue table meanwhile) instead of dying with it."""
        while True:
            message = await live.receive(self.channel_layer, channel)
            if not message.get("type"):
                raise ValueError("Worker received message with no type.")
            queue = self.get_or_create_application_instance(channel, {"type": "channel", "channel": channel})
            await queue.put(message)

    async def handle(self) -> None:
        prepare_process(asyncio.get_running_loop())
        listeners = [asyncio.ensure_future(self.listener(channel)) for channel in self.channels]
        try:
            while True:
                instances = []
                for channel in self.channels:
                    self.get_or_create_application_instance(channel, {"type": "channel", "channel": channel})
                    instances.append(self.application_instances[channel]["future"])
                done, _ = await asyncio.wait([*instances, *listeners], return_when=asyncio.FIRST_COMPLETED)
                for listener in listeners:
                    if listener in done:
                        listener.result()  # a channel layer failure: let it surface
                for channel in self.channels:
                    future = self.application_instances[channel]["future"]
                    if future.done():
                        if not future.cancelled() and future.exception() is not None:
                            logger.error("queue worker died; restarting", exc_info=future.exception())
                        self.delete_application_instance(channel)
                await asyncio.sleep(1)
        finally:
            for listener in listeners:
                listener.cancel()
            for channel in list(self.application_instances):
                future = self.application_instances[channel]["future"]
                future.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await future

    def run(self) -> None:
        """``runworker``: run until SIGTERM or SIGINT, then shut down cleanly."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        task = loop.create_task(self.handle())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)
        loop.run_until_complete(_close_client())
        loop.close()


async def _close_client() -> None:
    from chat.ollama import close_client

    await close_client()


def start_embedded_worker(loop: asyncio.AbstractEventLoop) -> asyncio.Task[None] | None:
    """Run a worker inside this server process (the embedded default)."""
    if not settings.QUEUE_EMBEDDED_WORKER:
        return None
    worker = SchedulerWorker(
        application=get_default_application(),
        channels=[settings.QUEUE_WORKER_CHANNEL],
        channel_layer=get_channel_layer(),
    )
    task = loop.create_task(worker.handle())
    logger.info("embedded queue worker starting")
    return task
