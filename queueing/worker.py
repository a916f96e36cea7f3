"""The queue worker: a plain class that drains the queue table, run by the embedded start-up (inside
each daphne process) and by ``manage.py runworker chat-worker`` (scaled out).

It claims jobs from the database (the truth) by ``queueing.policy``'s rules, runs each generation
in its own task, streams its chunks to the generation's group, and writes the result once, as the
lease holder. It listens on the shared ``chat-worker`` channel (``queue.wake``: look at the queue
now) and on a channel of its own, which is also its name as lease owner (``gen.cancel``: stop a
generation; ``gen.replay``: send a late listener what a generation produced so far). Messages only
save time: the worker also polls the table every ``[queue] poll_interval_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from chat.caches import store_response
from core import servers
from core.errors import ApiError, OllamaError
from core.generation import WHOLE_ENDPOINTS, Chunk, record_chunk, split_final
from core.generation import metrics as ollama_metrics
from core.runtime import prepare_process, run_blocking, run_scheduler_blocking
from queueing import fleet, live, policy, retention, transitions
from queueing.layer import messages, quietly
from queueing.spec import Claim, Generation
from stats import counters, metrics

# While the channel layer is down, how often a generation writes its output so far to its rows.
CHECKPOINT_SECONDS = 0.5

logger = logging.getLogger(__name__)


@dataclass
class Running:
    generation: Generation
    task: asyncio.Task[None] | None = None
    chunks: list[Chunk] = field(default_factory=list)
    checkpointed_at: float = -1e18  # when the output so far was last written to the rows
    checkpointing: bool = False


class QueueWorker:
    """Claims work while slots are free, runs generations, renews leases, recovers lapsed ones."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.name = ""  # this worker's own channel: lease owner and address for cancel/replay
        self.running: dict[uuid.UUID, Running] = {}
        self._wake = asyncio.Event()
        self._batch = policy.BatchWait()
        self._last_expiry_check = 0.0
        self._claiming: asyncio.Future[Claim] | None = None
        self._retry_in: float | None = None  # when a job backing off is ready (rule 6)
        self._side_tasks: set[asyncio.Task[None]] = set()

    # --- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled; then hand this worker's jobs back to the queue."""
        self.name = await self.layer.new_channel()
        await run_scheduler_blocking(transitions.beat, worker=self.name)
        tasks = [
            asyncio.ensure_future(self._listen(settings.QUEUE_WORKER_CHANNEL)),
            asyncio.ensure_future(self._listen(self.name)),
            asyncio.ensure_future(self._beat_forever()),
            asyncio.ensure_future(self._prune_forever()),
            asyncio.ensure_future(self._renew_forever()),
            asyncio.ensure_future(fleet.probe_forever()),
        ]
        logger.info("queue worker %s started", self.name)
        try:
            await self._schedule_forever()
        finally:
            # Hand the jobs back first: a cancelled channels_redis receive can take seconds to
            # unwind, and nothing the listeners do matters once the worker stops.
            await asyncio.shield(self.shutdown())
            for task in tasks:
                task.cancel()

    async def _listen(self, channel: str) -> None:
        async for message in messages(self.layer, channel):
            handler = getattr(self, str(message.get("type", "")).replace(".", "_"), None)
            if handler is None:
                logger.warning("queue worker: no handler for message type %r", message.get("type"))
                continue
            await handler(message)

    async def _schedule_forever(self) -> None:
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("queue worker tick failed; retrying")
                await asyncio.sleep(1)
            await self._sleep()

    async def _sleep(self) -> None:
        timeout = self._batch.sleep_for(settings.QUEUE_POLL_INTERVAL_MS / 1000)
        if self._retry_in is not None:
            timeout = min(timeout, self._retry_in + 0.005)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_expiry_check >= settings.QUEUE_POLL_INTERVAL_MS / 1000:
            self._last_expiry_check = now
            recovered = await run_scheduler_blocking(transitions.expire_leases, worker=self.name)
            if recovered.get("requeued"):
                self._wake.set()
        while True:
            # A claim commits in a pool thread even if this task is cancelled meanwhile; shutdown
            # waits for it, so whatever it claimed is released with the rest.
            self._claiming = asyncio.ensure_future(
                run_scheduler_blocking(
                    transitions.claim_batch,
                    worker=self.name,
                    allow_partial=self._batch.allow_partial(),
                )
            )
            claim = await asyncio.shield(self._claiming)
            self._retry_in = claim.retry_in
            if claim.deferred:
                self._batch.deferred()
                return
            self._batch.claimed()
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

    async def _beat_forever(self) -> None:
        """Tell the deployment this worker lives (rule 5: a silent one's jobs are taken over)."""
        while True:
            await asyncio.sleep(policy.heartbeat_every_seconds())
            try:
                await run_scheduler_blocking(transitions.beat, worker=self.name)
            except Exception as exc:  # noqa: BLE001 - the database is away: the next beat tries again
                logger.warning("heartbeat failed: %s", exc)

    async def _prune_forever(self) -> None:
        """Delete finished queue rows past ``[retention]`` about once a minute (every worker may; the
        deletes are idempotent and batched, so two at once only share the work)."""
        while True:
            await asyncio.sleep(PRUNE_EVERY_SECONDS)
            try:
                await run_blocking(retention.prune)  # it logs what it pruned
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                logger.warning("pruning finished queue rows failed: %s", exc)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(policy.renew_every_seconds())
            if not self.running:
                continue
            try:
                alive = await run_scheduler_blocking(transitions.renew_leases, worker=self.name)
            except Exception:
                logger.exception("lease renewal failed")
                continue
            for generation_id, state in list(self.running.items()):
                if generation_id not in alive and state.task is not None:
                    # Every job of it was cancelled, or another worker took over after our lease
                    # lapsed: stop spending GPU time on it.
                    logger.info("generation %s has no live jobs left; stopping it", generation_id)
                    state.task.cancel()

    # --- one generation ------------------------------------------------------------------------

    async def _generate(self, state: Running) -> None:
        generation = state.generation
        group = live.generation_group(generation.generation_id)
        gid = generation.generation_id.hex
        started = time.monotonic()
        client = servers.client(generation.server or None)
        try:
            final: dict[str, Any] = {}
            if generation.endpoint in WHOLE_ENDPOINTS:
                # Embeddings: one JSON answer, kept whole as the record's final.
                answer = await client.request_json("POST", f"/api/{generation.endpoint}", generation.payload)
                final = {**ollama_metrics(answer), "body": answer}
                if generation.loads_model:
                    self._background(fleet.refresh_loaded(generation.server))
            else:
                async for raw in client.stream(f"/api/{generation.endpoint}", generation.payload):
                    if not state.chunks:
                        metrics.TIME_TO_FIRST_TOKEN.observe(time.monotonic() - started)
                        if generation.loads_model:  # loaded now: what did the load unload?
                            self._background(fleet.refresh_loaded(generation.server))
                    if raw.get("done"):
                        last, final = split_final(generation.endpoint, raw)
                        if last is not None:
                            await self._publish(state, group, last)
                        break
                    await self._publish(state, group, record_chunk(generation.endpoint, raw))
            wall = time.monotonic() - started
            jobs = await run_scheduler_blocking(
                _finish_and_store, self.name, generation, state.chunks, final, wall
            )
            if jobs:
                ms = int((time.monotonic() - started) * 1000)
                metrics.GENERATION_TIME.observe(ms / 1000)
                counters.incr_many(
                    {
                        counters.GENERATION_MS_TOTAL: ms,
                        counters.server_counter(generation.server, "completed"): 1,
                        counters.server_counter(generation.server, "generation_ms"): ms,
                    }
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
            await quietly("publish", self.layer.group_send(group, end))
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
            self._wake.set()
            await live.wake_workers()  # a slot is free: workers elsewhere may claim now

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the generation (kept referenced until it ends)."""
        task = asyncio.ensure_future(work)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _publish(self, state: Running, group: str, chunk: Chunk) -> None:
        """Add a chunk to the record and send it to the generation's listeners."""
        state.chunks.append(chunk)
        gid = state.generation.generation_id.hex
        message = {"type": "gen.chunk", "generation": gid, "seq": len(state.chunks) - 1, "chunk": chunk}
        if not await quietly("publish", self.layer.group_send(group, message)):
            self._checkpoint(state)

    def _checkpoint(self, state: Running) -> None:
        """A chunk did not reach the layer: write the output so far to the rows (their listeners
        re-read them every second), beside the generation, at most every CHECKPOINT_SECONDS and
        one write at a time. Without it a Redis outage held every open stream's tokens back until
        its generation ended."""
        now = time.monotonic()
        if state.checkpointing or now - state.checkpointed_at < CHECKPOINT_SECONDS:
            return
        state.checkpointing, state.checkpointed_at = True, now
        chunks, generation_id = list(state.chunks), state.generation.generation_id

        async def write() -> None:
            try:
                await run_scheduler_blocking(
                    transitions.checkpoint_generation,
                    worker=self.name,
                    generation_id=generation_id,
                    chunks=chunks,
                )
            except Exception as exc:  # noqa: BLE001 - the rows get the whole record at the end anyway
                logger.warning("generation %s: output so far not written: %s", generation_id, exc)
            finally:
                state.checkpointing = False

        self._background(write())

    async def _fail(self, state: Running, error: ApiError) -> None:
        generation = state.generation
        logger.warning(
            "generation %s failed on %s: %s (%s)",
            generation.generation_id, generation.server, error.message, error.code,
        )  # fmt: skip
        counters.incr_many(
            {
                counters.UPSTREAM_ERRORS_PREFIX + error.code: 1,
                counters.server_counter(generation.server, "failed"): 1,
            }
        )
        await run_scheduler_blocking(
            transitions.fail_generation,
            worker=self.name,
            generation_id=generation.generation_id,
            error=error,
            server=generation.server,
            sent=bool(state.chunks),
        )
        message = {"type": "gen.end", "generation": generation.generation_id.hex, "error": error.code}
        group = live.generation_group(generation.generation_id)
        await quietly("publish", self.layer.group_send(group, message))

    # --- messages ------------------------------------------------------------------------------

    async def queue_wake(self, message: dict[str, Any]) -> None:
        self._wake.set()

    async def gen_cancel(self, message: dict[str, Any]) -> None:
        state = self.running.get(uuid.UUID(message["generation"]))
        if state is not None and state.task is not None:
            state.task.cancel()

    async def gen_replay(self, message: dict[str, Any]) -> None:
        generation_id = uuid.UUID(message["generation"])
        state = self.running.get(generation_id)
        reply: dict[str, Any] = {"type": "gen.snapshot", "generation": generation_id.hex}
        if state is None:
            reply["gone"] = True
        else:
            reply["chunks"] = list(state.chunks)
        await quietly("replay", self.layer.send(message["reply_to"], reply))

    # --- stopping ------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop generating and hand this worker's jobs back to the queue at once."""
        if self._claiming is not None:
            await asyncio.gather(self._claiming, return_exceptions=True)
        tasks = [state.task for state in self.running.values() if state.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.name:
            released = await run_scheduler_blocking(transitions.release_worker, worker=self.name)
            if released:
                logger.info("queue worker %s released its jobs: %s", self.name, released)


def _finish_and_store(
    worker: str, generation: Generation, chunks: list[Chunk], final: dict[str, Any], wall_seconds: float
) -> list[Any]:
    """Write the result to the jobs (as the lease holder) and, if any wants it, to the response
    cache, in one trip to the worker's thread (a repeat arriving meanwhile finds the entry soon)."""
    jobs = transitions.finish_generation(
        worker=worker,
        generation_id=generation.generation_id,
        chunks=chunks,
        final=final,
        wall_seconds=wall_seconds,
        server=generation.server,
    )
    if any(job.use_cache for job in jobs):
        store_response(
            key=generation.cache_key,
            endpoint=generation.endpoint,
            model=str(generation.payload.get("model", "")),
            chunks=chunks,
            final=final,
        )
    return jobs


RESTART_DELAY_SECONDS = 1.0
PRUNE_EVERY_SECONDS = 60.0


async def supervise() -> None:
    """Run a worker for ever, starting a new one if it dies (its jobs were handed back)."""
    while True:
        try:
            await QueueWorker().run()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("queue worker died; restarting")
        await asyncio.sleep(RESTART_DELAY_SECONDS)


def start_embedded_worker(loop: asyncio.AbstractEventLoop) -> asyncio.Task[None] | None:
    """Run a worker inside this server process (the embedded default)."""
    if not settings.QUEUE_EMBEDDED_WORKER:
        return None
    logger.info("embedded queue worker starting")
    return loop.create_task(supervise())


def run_until_signalled() -> None:
    """``runworker``: run until SIGTERM or SIGINT, then shut down cleanly."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    prepare_process(loop)
    task = loop.create_task(supervise())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(task)
    loop.run_until_complete(servers.close_clients())
    loop.close()
