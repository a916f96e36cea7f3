"""Submitting and cancelling requests, for every interface (the HTTP surfaces, the admin, commands).

A submission looks in the response cache first and enqueues only on a miss, in one trip to the
blocking pool; a cancellation also stops the upstream generation when nobody else shares it.
"""

from __future__ import annotations

import uuid
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings

from chat.caches import response_cache, wants_new_sample
from core.errors import ApiError
from core.runtime import run_blocking
from queueing import live, selectors, transitions
from queueing.models import Job
from queueing.spec import JobSpec
from stats import counters, usage


def cached_entry(spec: JobSpec) -> dict[str, Any] | None:
    """The cached entry for the request (counted as a hit or miss), or None when bypassed, missing,
    or when the owner asks again for a new sample of an answer it was just served."""
    if not (spec.read_cache and settings.CACHE_ENABLED):
        return None
    if spec.samples and wants_new_sample(owner=spec.owner, key=spec.cache_key):
        counters.incr(counters.REGENERATED)
        return None
    entry: dict[str, Any] | None = response_cache.get(spec.cache_key)
    if entry is not None:
        usage.record_hit(owner=spec.owner, model=spec.model)
    return entry


def answer_or_enqueue(spec: JobSpec) -> dict[str, Any] | transitions.Enqueued:
    """The cached entry, or the request enqueued (blocking)."""
    entry = cached_entry(spec)
    if entry is not None:
        return entry
    return transitions.enqueue_request(spec)


async def submit_queued(spec: JobSpec) -> tuple[Job, dict[str, Any]]:
    """``POST /api/chat-queue``: answer from the cache at once, or put the request in the queue.
    Returns the request and its status block (one trip to the blocking pool for all of it)."""
    enqueued, status = await run_blocking(_submit_blocking, spec)
    if enqueued.created and not enqueued.joined and not enqueued.job.cached:
        await live.wake_workers()
    return enqueued.job, status


def _submit_blocking(spec: JobSpec) -> tuple[transitions.Enqueued, dict[str, Any]]:
    if spec.idempotency_key:
        existing = selectors.find_by_idempotency_key(owner=spec.owner, key=spec.idempotency_key)
        if existing is not None:
            return transitions.Enqueued(existing, created=False), selectors.queue_status(existing)
    counters.incr(counters.CHAT_REQUESTS)
    found = answer_or_enqueue(spec)
    if isinstance(found, dict):  # a cached answer completes the request at once
        found = transitions.Enqueued(transitions.complete_from_cache(spec, found), created=True)
    return found, selectors.queue_status(found.job)


async def cancel(job_id: uuid.UUID, *, owner: str | None, reason: str = "cancelled") -> Job:
    """Cancel a request and, when no one else shares its generation, stop it upstream."""
    result = await run_blocking(transitions.cancel_request, job_id=job_id, owner=owner, reason=reason)
    if result.stop_generation is not None:
        await live.stop_generation(worker=result.stop_worker, generation_id=result.stop_generation)
    await live.notify_jobs([result.job.id])
    return result.job


def cancel_many(job_ids: list[uuid.UUID]) -> int:
    """Cancel several requests from sync code (the admin action); returns how many were cancelled."""

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
