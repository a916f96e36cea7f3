"""The chat service: composes the caches, the scheduler and live output. Views, admin, commands and
the worker all go through here (or through ``queueing.services`` for plain queue transitions)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from chat import sse
from chat.caches import response_cache, response_key
from chat.errors import ApiError
from chat.requests import ChatRequest
from chatbot_site.runtime import run_blocking
from queueing import live
from queueing import services as queue
from queueing.models import Job, Kind, Status
from stats import counters

logger = logging.getLogger(__name__)


def chat_cache_key(req: ChatRequest, messages: list[dict[str, Any]], owner: str) -> str:
    return response_key(
        endpoint="chat",
        model=req.model,
        messages=messages,
        options=req.options,
        format=req.format,
        owner=owner,
    )


async def cached_answer(key: str, *, use_cache: bool) -> dict[str, Any] | None:
    """The cached entry for ``key`` (counted as a hit or miss), or None when bypassed or missing."""
    if not (use_cache and settings.RESPONSE_CACHE_ENABLED):
        return None
    return await run_blocking(response_cache.get, key)


async def submit_queued(req: ChatRequest, *, owner: str = "", idempotency_key: str | None = None) -> Job:
    """``POST /api/chat-queue``: answer from the cache at once, or put the request in the queue."""
    payload = req.ollama_payload()
    key = chat_cache_key(req, req.messages, owner)
    if idempotency_key:
        existing = await run_blocking(_by_idempotency_key, owner, idempotency_key)
        if existing is not None:
            return existing
    entry = await cached_answer(key, use_cache=req.use_cache)
    if entry is not None:
        return await run_blocking(
            queue.complete_from_cache,
            kind=Kind.QUEUED,
            endpoint="chat",
            model=req.model,
            payload=payload,
            cache_key=key,
            owner=owner,
            priority=req.priority,
            entry=entry,
            idempotency_key=idempotency_key,
        )
    enqueued = await run_blocking(
        queue.enqueue_request,
        kind=Kind.QUEUED,
        endpoint="chat",
        model=req.model,
        payload=payload,
        cache_key=key,
        priority=req.priority,
        owner=owner,
        use_cache=req.use_cache,
        idempotency_key=idempotency_key,
    )
    if enqueued.created and not enqueued.joined:
        await live.wake_workers()
    return enqueued.job


def _by_idempotency_key(owner: str, idempotency_key: str) -> Job | None:
    return Job.objects.filter(owner=owner, idempotency_key=idempotency_key).first()


async def cancel(job_id: uuid.UUID, *, owner: str | None, reason: str = "cancelled") -> Job:
    """Cancel a request and, when no one else shares its generation, stop it upstream."""
    result = await run_blocking(queue.cancel_request, job_id=job_id, owner=owner, reason=reason)
    if result.stop_generation is not None:
        await live.stop_generation(worker=result.stop_worker, generation_id=result.stop_generation)
    await live.notify_jobs([result.job.id])
    return result.job


def cancel_many(job_ids: list[Any]) -> int:
    """Cancel several requests from sync code (the admin action); returns how many were cancelled."""
    from asgiref.sync import async_to_sync

    async def run() -> int:
        done = 0
        for job_id in job_ids:
            try:
                await cancel(job_id, owner=None, reason="cancelled by an administrator")
            except ApiError:
                continue
            done += 1
        return done

    return async_to_sync(run)()


@dataclass
class Answer:
    """A whole (non-streamed) answer."""

    content: str
    job: Job | None = None
    cached: bool = False
    final: dict[str, Any] = field(default_factory=dict)


def result_body(job: Job) -> dict[str, Any]:
    """The finished request as the API shows it."""
    final = job.result_final or {}
    return {
        "message": {"role": "assistant", "content": job.result_content},
        "model": job.model,
        "done_reason": job.done_reason or final.get("done_reason", ""),
        "metrics": metrics(final),
    }


METRIC_KEYS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def metrics(final: dict[str, Any]) -> dict[str, int]:
    """Ollama's final-chunk metrics (nanoseconds and token counts), those it sent."""
    return {key: final[key] for key in METRIC_KEYS if key in final}


async def event_frames(events: AsyncIterator[live.Event], *, cached: bool) -> AsyncIterator[bytes]:
    """Turn a followed request's events into SSE frames."""
    async for event in events:
        if event.kind == "chunk":
            yield sse.content_frame(event.content, cached=cached)
        elif event.kind == "position":
            yield sse.frame(event.status, event="queue")
        elif event.kind == "restart":
            yield sse.frame({"reason": "the generation is being retried from the start"}, event="restart")
        elif event.kind == "done":
            assert event.job is not None
            final = event.job.result_final or {}
            yield sse.done_frame(
                cached=cached or event.job.cached,
                done_reason=event.job.done_reason,
                metrics=metrics(final),
            )
        elif event.kind == "error":
            assert event.error is not None
            yield sse.error_frame(event.error.message, event.error.code)
        elif event.kind == "cancelled":
            assert event.job is not None
            yield sse.error_frame(event.job.error_message or "The request was cancelled.", "cancelled")


async def shielded(coro: Any) -> Any:
    """Run clean-up to the end even if the caller is being cancelled (a client went away)."""
    return await asyncio.shield(coro)


def is_finished(job: Job) -> bool:
    return job.status in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)


async def count_request() -> None:
    await run_blocking(counters.incr, counters.CHAT_REQUESTS)
