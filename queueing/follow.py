"""Following one request from the queue to its end: positions, then chunks in order, then the end.

A follower may arrive at any time: before the request runs, while it generates, or after it
finished. The database row is the truth; channel messages only save reads:

* ``job.claimed`` (the request started: which generation, which worker) and ``job.update`` (re-read
  the row) arrive on the request's group ``job.<id>``;
* ``gen.chunk`` (one chunk with its sequence number) and ``gen.end`` (the generation ended: the jobs
  it completed, its chunk count and final metrics, or its error) arrive on ``gen.<generation id>``;
* ``gen.snapshot`` is the generating worker's answer to our ``gen.replay``: the chunks produced
  before we joined. Chunks are emitted only once the snapshot is here, in sequence order, and
  duplicates are dropped by sequence number;
* silence (no message for a second) re-reads the row: a lost message only delays the follower.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from core.errors import ApiError, error_from_code
from core.generation import Chunk
from core.runtime import run_blocking
from queueing import policy, selectors, transitions
from queueing.layer import Inbox
from queueing.live import Event, generation_group, job_group
from queueing.models import TERMINAL, Job, Status

# How often a waiting follower re-reads its row (position updates, missed messages).
REFRESH_SECONDS = 1.0
# A job still pending after this long gets position updates (most start sooner).
FIRST_POSITION_SECONDS = 0.25
# How long a late follower waits for the worker's replay before asking again.
REPLAY_TIMEOUT_SECONDS = 2.0


class Follower:
    """The state of one follower; ``events()`` yields what it sees. One method per message kind."""

    def __init__(self, job_id: uuid.UUID, *, keep_caller_alive: bool = False, job: Job | None = None) -> None:
        self.job_id = job_id
        self.keep_caller_alive = keep_caller_alive  # an interactive caller: mark it as waiting
        self.job = job  # the row as last read (or as just created, which saves a read)
        self.inbox = Inbox()
        self.started = time.monotonic()
        self.last_touch = time.monotonic()
        self.last_status: dict[str, Any] | None = None
        # The generation followed, and how far.
        self.generation: uuid.UUID | None = None
        self.emitted = 0  # chunks of it already yielded
        self.have_snapshot = False  # the worker's replay arrived: buffered chunks may go out
        self.buffered: dict[int, Chunk] = {}  # sequence number -> record chunk
        self.replay_asked = 0.0
        self.out: list[Event] = []  # what the handling of one message produced
        self.ended = False

    async def events(self) -> AsyncIterator[Event]:
        await self.inbox.open()
        try:
            await self.inbox.join(job_group(self.job_id))
            if self.job is None:
                await self.reload()
                self.started -= FIRST_POSITION_SECONDS  # an existing request shows its place at once
            while not self.ended:
                await self.step()
                for event in self.out:
                    yield event
                self.out.clear()
        finally:
            self.inbox.close()

    async def step(self) -> None:
        """Look at the row, then wait for one message (or silence) and handle it."""
        assert self.job is not None
        if self.keep_caller_alive and time.monotonic() - self.last_touch > policy.touch_every_seconds():
            await run_blocking(transitions.touch_caller, job_id=self.job_id)
            self.last_touch = time.monotonic()
        if self.job.status in TERMINAL:
            self.finish_from_row()
            return
        if self.job.generation_id != self.generation:
            await self.follow_generation(self.job.generation_id)
        wait = REFRESH_SECONDS
        if self.job.status == Status.PENDING:
            waited = time.monotonic() - self.started
            if waited >= FIRST_POSITION_SECONDS:
                await self.show_position()
            else:
                wait = FIRST_POSITION_SECONDS - waited  # most jobs start at once: no place shown
        message = await self.inbox.get(wait)
        if message is None:
            await self.on_silence()
            return
        handler = getattr(self, "on_" + str(message.get("type", "")).replace(".", "_"), None)
        if handler is not None and self.generation_matches(message):
            await handler(message)
        self.flush()

    def generation_matches(self, message: dict[str, Any]) -> bool:
        """gen.* messages count only for the generation followed now."""
        if not str(message.get("type", "")).startswith("gen."):
            return True
        return self.generation is not None and message.get("generation") == self.generation.hex

    # --- the row ---------------------------------------------------------------------------------

    async def reload(self) -> None:
        self.job = await run_blocking(selectors.get_request, job_id=self.job_id)

    def finish_from_row(self) -> None:
        """The row is final: emit what it holds that was not emitted yet, and how it ended."""
        job = self.job
        assert job is not None
        if job.status == Status.COMPLETED:
            if self.generation is not None and self.generation != job.generation_id:
                self.out.append(Event("restart"))
                self.emitted = 0
            for chunk in (job.result_chunks or [])[self.emitted :]:
                self.out.append(Event("chunk", chunk=chunk))
            self.out.append(Event("done", final=job.result_final or {}))
        elif job.status == Status.FAILED:
            self.out.append(Event("error", error=error_from_code(job.error_code, job.error_message)))
        else:
            reason = job.error_message or "The request was cancelled."
            self.out.append(
                Event("error", error=ApiError(reason, code=job.error_code or "cancelled", status=409))
            )
        self.ended = True

    async def follow_generation(self, generation: uuid.UUID | None) -> None:
        """Not started yet, started, or restarted after a failed attempt."""
        if self.generation is not None:
            await self.inbox.leave(generation_group(self.generation))
            if self.emitted:
                self.out.append(Event("restart"))
        self.generation, self.emitted, self.have_snapshot, self.buffered = generation, 0, False, {}
        if generation is not None:
            await self.inbox.join(generation_group(generation))
            await self.ask_replay()

    async def ask_replay(self) -> None:
        """Ask the generating worker for the chunks produced so far (answered as gen.snapshot)."""
        assert self.job is not None and self.generation is not None
        self.replay_asked = time.monotonic()
        if self.job.lease_owner:
            message = {
                "type": "gen.replay",
                "generation": self.generation.hex,
                "reply_to": self.inbox.channel,
            }
            await self.inbox.send(self.job.lease_owner, message)

    async def show_position(self) -> None:
        assert self.job is not None
        status = await run_blocking(selectors.queue_status, self.job)
        if status != self.last_status:
            self.last_status = status
            self.out.append(Event("position", status=status))

    def flush(self) -> None:
        """Emit the buffered chunks that are next in sequence (once the snapshot is here)."""
        if not self.have_snapshot:
            return
        while self.emitted in self.buffered:
            self.out.append(Event("chunk", chunk=self.buffered.pop(self.emitted)))
            self.emitted += 1
        for seq in [s for s in self.buffered if s < self.emitted]:
            del self.buffered[seq]

    # --- one method per message kind -------------------------------------------------------------

    async def on_gen_snapshot(self, message: dict[str, Any]) -> None:
        if message.get("gone"):  # the worker no longer runs it: the row says what happened
            await self.reload()
            return
        self.take_snapshot(message["chunks"])

    def take_snapshot(self, chunks: list[Chunk]) -> None:
        """The generation's chunks from its start (the worker's replay, or the row's output so far):
        buffered chunks may go out now."""
        self.have_snapshot = True
        for seq in range(self.emitted, len(chunks)):
            self.buffered.setdefault(seq, chunks[seq])

    async def on_gen_chunk(self, message: dict[str, Any]) -> None:
        self.buffered[message["seq"]] = message["chunk"]

    async def on_gen_end(self, message: dict[str, Any]) -> None:
        count = message.get("chunks", 0)
        complete = (
            self.job_id.hex in message.get("completed", ())
            and self.have_snapshot
            and all(seq < self.emitted or seq in self.buffered for seq in range(count))
        )
        if not complete:
            await self.reload()
            return
        # Completed, and every chunk is here: finish without reading the row again.
        for seq in range(self.emitted, count):
            self.out.append(Event("chunk", chunk=self.buffered[seq]))
        self.out.append(Event("done", final=message.get("final") or {}))
        self.ended = True

    async def on_job_claimed(self, message: dict[str, Any]) -> None:
        assert self.job is not None
        if self.job.status != Status.PENDING:
            await self.reload()
            return
        # Started: the message says where, so no read is needed to follow it.
        self.job.status = Status.PROCESSING
        self.job.generation_id = uuid.UUID(message["generation"])
        self.job.lease_owner = message["worker"]

    async def on_job_update(self, message: dict[str, Any]) -> None:
        await self.reload()

    async def on_silence(self) -> None:
        await self.reload()
        assert self.job is not None
        partial = self.job.result_chunks
        if partial and self.job.status == Status.PROCESSING and self.job.generation_id == self.generation:
            self.take_snapshot(partial)  # the output so far, written while the layer is down
            self.flush()
        if (
            self.generation is not None
            and not self.have_snapshot
            and time.monotonic() - self.replay_asked > REPLAY_TIMEOUT_SECONDS
            and self.job.generation_id == self.generation
        ):
            await self.ask_replay()


def follow_request(
    job_id: uuid.UUID, *, keep_caller_alive: bool = False, job: Job | None = None
) -> AsyncIterator[Event]:
    """Yield a request's queue positions, then its chunks in order, then how it ended."""
    return Follower(job_id, keep_caller_alive=keep_caller_alive, job=job).events()
