"""Retention: finished queue rows do not stay for ever, nor do their prompts and answers.

A finished row (completed, failed, cancelled) only serves reads of its result. ``prune`` deletes
those that finished more than ``[retention] finished_seconds`` ago and, when ``[retention]
payload_seconds`` is above 0, blanks the prompts and answers of those that finished more than
that ago: ``payload`` becomes ``{}``, ``result_content`` empty, ``result_chunks`` null, and
``result_final`` keeps only ``done_reason`` and Ollama's metrics (it may hold the prompt's token
``context`` or an embedding). Status, error, timings and figures stay until the row goes.

Everything runs in batches of ``BATCH`` rows, each its own short transaction: on SQLite a write
holds the database's write lock, and a day's rows deleted in one statement would stall every
store and claim behind it. The rows are found through ``job_finished_idx`` (status, finished_at).

Finding the rows still to blank without reading every blanked one again: rows become due in
``finished_at`` order (the clock of the process that finished them), so the blanked rows of a
status are the older part of its due range. Each pass scans a status's due rows newest first and
stops a ``CLOCK_SLACK`` past the first blanked row it meets, then blanks what it found oldest
first, so a pass cut short leaves the blanked part contiguous and the next pass finds the rest.

A conversation turn's row (``history`` above 0) carries the stored history in front of its own
messages while it may still run; once finished it keeps only its own (``trim_history``: at finish,
and here for rows that ended otherwise), so 15 turns of 1 MB leave one copy of the history, the
conversation store's, not fifteen.

``prune`` also runs the caches' maintenance (``chat.caches.maintain``: expired entries purged;
the first call in a process, then hourly, a reconcile), so one call a minute keeps the disk bounded.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import BooleanField, ExpressionWrapper, Q
from django.utils import timezone

from chat import caches
from core.generation import METRIC_KEYS
from queueing.models import TERMINAL, Job

logger = logging.getLogger(__name__)

BATCH = 500
# How far finished_at may run out of order: the clocks of the machines finishing rows, and a
# transaction that took its timestamp before a later one committed.
CLOCK_SLACK = timedelta(minutes=5)
# What result_final keeps once blanked.
KEPT_FINAL_KEYS = ("done_reason", *METRIC_KEYS)


def prune(now: datetime | None = None, *, dry_run: bool = False) -> dict[str, int]:
    """Delete finished rows past ``[retention] finished_seconds``, blank the prompts and answers
    of those past ``payload_seconds`` (when above 0), and purge the caches' expired entries.
    Returns how many rows went (``deleted``), were blanked (``blanked``) and cache entries were
    purged (``cache_expired``, ``cache_orphans``); with ``dry_run`` what would be, changing nothing.
    ``now`` places the queue's cut-offs; the caches' expiry is judged by the real clock."""
    now = now or timezone.now()
    finished_before = now - timedelta(seconds=settings.RETENTION_FINISHED_SECONDS)
    out = {"deleted": _delete(finished_before, dry_run=dry_run), "blanked": 0, "trimmed": 0}
    out["trimmed"] = _trim_finished(dry_run=dry_run)
    if settings.RETENTION_PAYLOAD_SECONDS > 0:
        payload_before = now - timedelta(seconds=settings.RETENTION_PAYLOAD_SECONDS)
        if payload_before > finished_before:
            out["blanked"] = _blank(payload_before, finished_before, dry_run=dry_run)
    if dry_run:
        out.update(cache_expired=caches.expired_entries(), cache_orphans=0)
    else:
        out.update(caches.maintain())
    if out["deleted"] or out["blanked"] or out["trimmed"]:
        logger.info("queue retention: %s", out)
    return out


def _finished() -> Any:
    # No ordering: the model's default (rank) would sort every matching row before the LIMIT.
    return Job.objects.filter(status__in=TERMINAL).order_by()


def trim_history(ids: list[Any]) -> None:
    """Drop the conversation history from the payloads of these finished rows: each keeps the
    messages its turn sent (read through job_history_idx, so rows without history cost nothing)."""
    if not ids:
        return
    rows = Job.objects.filter(id__in=ids, status__in=TERMINAL, history__gt=0).order_by()
    for job_id, payload, history in rows.values_list("id", "payload", "history"):
        messages = payload.get("messages") if isinstance(payload, dict) else None
        if isinstance(messages, list):
            payload = {**payload, "messages": messages[history:]}
        Job.objects.filter(id=job_id).update(payload=payload, history=0)


def _trim_finished(*, dry_run: bool) -> int:
    """The finished rows that still carry a history (cancelled, failed, answered from a cache)."""
    due = _finished().filter(history__gt=0)
    if dry_run:
        return int(due.count())
    trimmed = 0
    while ids := list(due.values_list("id", flat=True)[:BATCH]):
        trim_history(ids)
        trimmed += len(ids)
        if len(ids) < BATCH:
            break
    return trimmed


def _delete(before: datetime, *, dry_run: bool) -> int:
    """Delete finished rows that finished before ``before``, a batch per statement."""
    due = _finished().filter(finished_at__lt=before)
    if dry_run:
        return int(due.count())
    deleted = 0
    while True:
        ids = list(due.values_list("id", flat=True)[:BATCH])
        if not ids:
            return deleted
        deleted += Job.objects.filter(id__in=ids).delete()[0]
        if len(ids) < BATCH:
            return deleted


def _blank(before: datetime, floor: datetime, *, dry_run: bool) -> int:
    """Blank the prompts and answers of rows that finished in [floor, before)."""
    found: list[tuple[datetime, Any]] = []
    for status in TERMINAL:
        found += _unblanked(status, before, floor)
    if dry_run:
        return len(found)
    found.sort()  # oldest first: a pass cut short leaves the blanked rows contiguous
    ids = [job_id for _, job_id in found]
    for start in range(0, len(ids), BATCH):
        _blank_batch(ids[start : start + BATCH])
    return len(ids)


def _unblanked(status: str, before: datetime, floor: datetime) -> list[tuple[datetime, Any]]:
    """(finished_at, id) of the due rows of ``status`` not blanked yet, scanning newest first and
    stopping CLOCK_SLACK past the first blanked row."""
    due = (
        _finished()
        .filter(status=status, finished_at__lt=before, finished_at__gte=floor)
        .annotate(blank=ExpressionWrapper(Q(payload={}), output_field=BooleanField()))
    )
    found: list[tuple[datetime, Any]] = []
    stop_below: datetime | None = None
    upper = before
    while True:
        page = list(
            due.filter(finished_at__lt=upper)
            .order_by("-finished_at")
            .values_list("id", "finished_at", "blank")[:BATCH]
        )
        if not page:
            return found
        full = len(page) == BATCH
        if full:
            # The page may end inside a run of equal finished_at: take that run whole, so the next
            # page can start strictly below it.
            edge = page[-1][1]
            page = [row for row in page if row[1] != edge]
            page += list(due.filter(finished_at=edge).values_list("id", "finished_at", "blank"))
            upper = edge
        for job_id, finished, blank in page:
            if stop_below is not None and finished < stop_below:
                return found
            if blank:
                if stop_below is None:
                    stop_below = finished - CLOCK_SLACK
            else:
                found.append((finished, job_id))
        if not full:
            return found


def _blank_batch(ids: list[Any]) -> None:
    with transaction.atomic():
        finals = dict(Job.objects.filter(id__in=ids).values_list("id", "result_final"))
        Job.objects.filter(id__in=ids).update(payload={}, result_content="", result_chunks=None)
        trimmed = []
        for job_id, final in finals.items():
            if isinstance(final, dict):
                kept = {key: final[key] for key in KEPT_FINAL_KEYS if key in final}
                if kept != final:
                    trimmed.append(Job(id=job_id, result_final=kept))
        if trimmed:
            Job.objects.bulk_update(trimmed, ["result_final"])
