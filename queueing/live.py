"""Live output over the channel layer: wake-ups, control messages, and the events a follower sees.

A generation's tokens go to the group ``gen.<generation id>``; control events for one request go to
``job.<job id>``. The database row stays the truth: a listener that misses a message catches up from
the row (the stored chunks); see ``queueing.follow``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from core.errors import ApiError
from core.generation import Chunk
from queueing.layer import group_send, send_to


def job_group(job_id: uuid.UUID) -> str:
    return f"job.{job_id.hex}"


def generation_group(generation_id: uuid.UUID) -> str:
    return f"gen.{generation_id.hex}"


async def wake_workers() -> None:
    """Nudge a worker to look at the queue now (workers poll anyway: this only saves latency)."""
    await send_to(settings.QUEUE_WORKER_CHANNEL, {"type": "queue.wake"})


async def notify_jobs(job_ids: list[uuid.UUID]) -> None:
    """Tell the listeners of these jobs to re-read their rows."""
    for job_id in job_ids:
        await group_send(job_group(job_id), {"type": "job.update"})


async def notify_claimed(assigned: list[tuple[uuid.UUID, uuid.UUID, str]]) -> None:
    """Tell listeners their job started: which generation, and which worker runs it."""
    for job_id, generation_id, worker in assigned:
        message = {"type": "job.claimed", "generation": generation_id.hex, "worker": worker}
        await group_send(job_group(job_id), message)


async def stop_generation(*, worker: str, generation_id: uuid.UUID) -> None:
    """Ask the worker running a generation to close its upstream request (if the layer is down,
    the worker's next lease renewal finds no live job and stops it)."""
    await send_to(worker, {"type": "gen.cancel", "generation": generation_id.hex})


@dataclass
class Event:
    """What a follower of a request sees, in order."""

    kind: str  # "position" | "chunk" | "restart" | "done" | "error"
    chunk: Chunk = field(default_factory=dict)  # chunk: one chunk of the generation record
    status: dict[str, Any] = field(default_factory=dict)  # position: the queue status block
    final: dict[str, Any] = field(default_factory=dict)  # done: Ollama's final chunk (metrics)
    error: ApiError | None = None

    @property
    def content(self) -> str:
        return str(self.chunk.get("content") or "")
