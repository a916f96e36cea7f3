"""Disk stays bounded: the caches' stored bytes, their expiry, and the queue's retention.

Measured on the real backends of this run: the database cache tables (embedded default) or Redis
(scaled out), and the test database. Each figure is in its assertion message.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.core.cache import caches
from django.core.cache.backends.db import DatabaseCache
from django.core.management import call_command
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat.caches import CONVERSATIONS, RESPONSES, conversation_cache, maintain, response_cache
from chat.models import CacheEntry
from queueing import retention, selectors
from queueing.models import Job, Kind, Status
from stats import counters
from stats.models import Counter
from tests.helpers import messages, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

KIB, MIB = 1024, 1024 * 1024
logger = logging.getLogger(__name__)


@pytest.fixture(autouse=True)
def empty(clean_caches):
    yield
    response_cache.clear()
    conversation_cache.clear()


# --- what the backend really holds -------------------------------------------------------------


def stored(alias: str) -> dict[str, tuple[int, int]]:
    """Every value the backend holds for ``alias``: its key as stored -> (key bytes, value bytes)."""
    backend = caches[alias]
    if isinstance(backend, DatabaseCache):
        with connection.cursor() as cursor:
            cursor.execute(
                f'SELECT "cache_key", LENGTH("cache_key"), LENGTH("value") FROM "{backend._table}"'
            )
            return {key: (k, v) for key, k, v in cursor.fetchall()}
    client = backend.client.get_client(write=False)  # django-redis
    found = {}
    for raw in client.scan_iter(match=backend.client.make_pattern("*"), count=1000):
        found[raw.decode()] = (len(raw), client.strlen(raw))
    return found


def real_bytes(alias: str) -> tuple[int, int]:
    """(keys + values, values alone) as the backend holds them."""
    rows = stored(alias).values()
    return sum(k + v for k, v in rows), sum(v for _, v in rows)


def index_keys(alias: str) -> set[str]:
    return set(CacheEntry.objects.filter(alias=alias).values_list("key", flat=True))


def stored_keys(alias: str) -> set[str]:
    """The index's keys of the stored values (the backend's own prefix taken off)."""
    prefix = str(caches[alias].make_key(""))
    if not isinstance(caches[alias], DatabaseCache):
        prefix = str(caches[alias].client.make_key(""))
    return {key.removeprefix(prefix) for key in stored(alias)}


def answer(i: int, size: int) -> dict[str, Any]:
    """A response-cache entry whose JSON is about ``size`` bytes."""
    return {"chunks": [{"content": f"{i:06d} " + "y" * size}], "final": {"done_reason": "stop"}}


def within(counted: int, real: int, share: float = 0.05) -> bool:
    return abs(counted - real) <= share * real


# --- the caches ------------------------------------------------------------------------------------


def test_eviction_deletes_the_values_with_their_index_rows(settings):
    settings.CACHE_MAX_SIZE_MB = 40 * KIB / MIB
    for i in range(60):
        assert response_cache.set(f"e{i}", answer(i, 2 * KIB))
        assert stored_keys(RESPONSES) == index_keys(RESPONSES), f"after store {i}"
    rows, entries = len(stored(RESPONSES)), response_cache.totals().entries
    assert 0 < rows == entries == CacheEntry.objects.filter(alias=RESPONSES).count() < 60, (
        f"{rows} values stored, {entries} entries counted, of 60 stores"
    )
    assert real_bytes(RESPONSES)[0] <= 40 * KIB


@contextlib.contextmanager
def peak_bytes(alias: str = RESPONSES, *, interval: float = 0.0) -> Iterator[list[int]]:
    """The most bytes ``alias``'s backend held while the block ran, sampled from another thread
    (its own database connection); read ``[0]`` after the block."""
    peak, done = [0], threading.Event()

    def sample() -> None:
        try:
            while not done.is_set():
                peak[0] = max(peak[0], real_bytes(alias)[0])
                time.sleep(interval)
        finally:
            connections.close_all()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


def test_a_burst_larger_than_the_limit_never_leaves_more_than_the_limit_plus_one_entry(settings):
    """40 answers of 200 KB against 2 MiB, stored by 4 threads at once (each its own database
    connection), the backend's bytes sampled all along."""
    settings.CACHE_MAX_SIZE_MB = 2
    limit, entry = 2 * MIB, 0

    def store(i: int) -> int:
        try:
            assert response_cache.set(f"burst{i}", answer(i, 200 * KIB))
            return CacheEntry.objects.get(alias=RESPONSES, key=f"burst{i}").size_bytes
        finally:
            connections.close_all()

    with peak_bytes() as peak:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            entry = max(pool.map(store, range(40)))
    peak = peak[0]
    final, counted = real_bytes(RESPONSES)[0], response_cache.totals().size_bytes
    assert peak <= limit + entry and final <= limit, (
        f"peak {peak / MIB:.2f} MiB, after the burst {final / MIB:.2f} MiB, limit 2 MiB, one entry "
        f"{entry / KIB:.0f} KiB; counted {counted / MIB:.2f} MiB"
    )
    assert stored_keys(RESPONSES) == index_keys(RESPONSES)


@pytest.mark.parametrize("cache", [response_cache, conversation_cache], ids=["responses", "conversations"])
def test_counted_bytes_are_the_bytes_the_backend_stores(cache):
    sizes = [1 * KIB, 3 * KIB, 10 * KIB, 50 * KIB, 200 * KIB]
    for i, size in enumerate(sizes * 4):
        value = answer(i, size) if cache is response_cache else {"messages": messages("é" * size)}
        assert cache.set(f"s{i}", value)
    counted = cache.totals().size_bytes
    total, values = real_bytes(cache.alias)
    index = sum(CacheEntry.objects.filter(alias=cache.alias).values_list("size_bytes", flat=True))
    assert counted == index and within(counted, total) and within(counted, values), (
        f"counted {counted} bytes, stored {total} (keys and values), {values} (values alone): "
        f"{counted / values:.3f} of the values"
    )


def test_expired_entries_are_purged_not_only_hidden(settings):
    settings.CACHE_TTL_SECONDS = 1
    for i in range(5):
        response_cache.set(f"x{i}", answer(i, KIB))
    time.sleep(2.1)
    assert response_cache.get("x0") is None  # hidden: the backend says it has expired
    left = len(stored(RESPONSES))
    purged = maintain(reconcile=False)["cache_expired"]
    assert stored(RESPONSES) == {} and index_keys(RESPONSES) == set(), (
        f"{left} expired values before the purge, {len(stored(RESPONSES))} after ({purged} purged)"
    )
    assert response_cache.totals().entries == response_cache.totals().size_bytes == 0


def test_a_store_purges_expired_entries_by_itself(settings):
    settings.CACHE_TTL_SECONDS = 1
    for i in range(5):
        response_cache.set(f"x{i}", answer(i, KIB))
    time.sleep(2.1)
    settings.CACHE_TTL_SECONDS = 3600
    response_cache.set("fresh", answer(9, KIB))
    left = stored_keys(RESPONSES)
    assert left == index_keys(RESPONSES) == {"fresh"}, f"stored after the store: {sorted(left)}"
    assert response_cache.totals().entries == 1


def test_values_without_index_rows_and_index_rows_without_values_are_repaired():
    if not isinstance(caches[RESPONSES], DatabaseCache):
        pytest.skip("Redis expires what it holds by itself; orphans are a database-cache matter")
    response_cache.set("kept", answer(1, KIB))
    response_cache.set("valueless", answer(2, KIB))
    for i in range(3):  # what eviction used to leave: values nobody indexes, unexpired
        caches[RESPONSES].set(f"orphan{i}", "x" * 5000, timeout=3600)
    caches[RESPONSES].delete("valueless")
    before = len(stored(RESPONSES))
    repaired = response_cache.reconcile()
    assert stored_keys(RESPONSES) == index_keys(RESPONSES) == {"kept"}, (
        f"{before} values before, {len(stored(RESPONSES))} after: {repaired}"
    )
    assert repaired["orphan_values"] == 3 and repaired["orphan_entries"] == 1
    assert response_cache.totals().size_bytes == real_bytes(RESPONSES)[0]


def test_lost_totals_are_recounted_from_the_index(settings):
    for i in range(5):
        response_cache.set(f"t{i}", answer(i, 2 * KIB))
    expected = response_cache.totals()
    Counter.objects.filter(name__startswith=f"{RESPONSES}.stored_").delete()
    assert response_cache.totals() == expected
    response_cache.set("t5", answer(5, 2 * KIB))
    assert response_cache.totals().entries == 6
    assert response_cache.totals().size_bytes == real_bytes(RESPONSES)[0]


def test_conversations_are_bounded_the_same_way(settings):
    settings.CONVERSATION_CACHE_MAX_SIZE_MB = 30 * KIB / MIB
    for i in range(40):
        conversation_cache.set(f"conv:{i}", {"messages": messages("z" * 2000)})
    total = real_bytes(CONVERSATIONS)[0]
    assert total <= 30 * KIB and stored_keys(CONVERSATIONS) == index_keys(CONVERSATIONS), total


def test_a_burst_through_the_live_servers_stays_within_the_limit(start_server, ollama):
    """Two server processes (each with its worker) answer 10 distinct requests of about 25 KB each
    against a 64 KiB response cache, the backend's bytes sampled all along."""
    ollama.configure(token_count=800)
    limit, asked = 64 * KIB, 10
    env = {"CACHE_MAX_SIZE_MB": limit / MIB, "QUEUE_MAX_CONCURRENT": 4}
    servers = [start_server(**env), start_server(**env)]

    def ask(i: int) -> int:
        body = {"messages": messages(f"long answer {i}"), "stream": False}
        return httpx.post(f"{servers[i % 2].url}/api/chat-optimized", json=body, timeout=60).status_code

    def all_stored() -> bool:
        evicted = counters.read([counters.RESPONSE_EVICTIONS])[counters.RESPONSE_EVICTIONS]
        return evicted + response_cache.totals().entries >= asked

    with peak_bytes(interval=0.005) as peak:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(ask, range(asked)))
        wait_for(all_stored, what="every answer stored or evicted")
    peak = peak[0]
    assert codes == [200] * asked, codes
    entry = max(CacheEntry.objects.filter(alias=RESPONSES).values_list("size_bytes", flat=True))
    final, counted = real_bytes(RESPONSES)[0], response_cache.totals().size_bytes
    assert peak <= limit + entry and final <= limit and within(counted, final), (
        f"peak {peak / KIB:.0f} KiB, after {final / KIB:.0f} KiB, counted {counted / KIB:.0f} KiB, "
        f"limit {limit / KIB:.0f} KiB, one entry {entry / KIB:.0f} KiB"
    )
    assert stored_keys(RESPONSES) == index_keys(RESPONSES)


# --- the queue's retention -------------------------------------------------------------------------

FINAL = {"done_reason": "stop", "eval_count": 12, "total_duration": 900, "context": [1, 2, 3] * 100}


def finished_rows(count: int, *, ago: timedelta, now: Any, status: str = "", **fields: Any) -> list[Job]:
    """``count`` finished rows (completed, failed and cancelled in turn unless ``status``)."""
    statuses = [status] if status else [Status.COMPLETED, Status.FAILED, Status.CANCELLED]
    rows = [
        Job(
            kind=Kind.QUEUED,
            status=statuses[i % len(statuses)],
            rank=float(i),
            model="m",
            payload={"model": "m", "messages": messages(f"secret prompt {i}")},
            cache_key=f"k{i}",
            finished_at=now - ago,
            started_at=now - ago - timedelta(seconds=2),
            result_content=f"secret answer {i}",
            result_chunks=[{"content": f"secret answer {i}"}],
            result_final=dict(FINAL),
            done_reason="stop",
            **fields,
        )
        for i in range(count)
    ]
    return Job.objects.bulk_create(rows, batch_size=250)


def blank(job: Job) -> bool:
    return (job.payload, job.result_content, job.result_chunks) == ({}, "", None)


def test_prune_deletes_finished_rows_past_retention_in_batches_and_keeps_the_rest(settings):
    settings.RETENTION_FINISHED_SECONDS = 86_400
    now = timezone.now()
    finished_rows(1000, ago=timedelta(days=2), now=now)
    recent = {j.id for j in finished_rows(50, ago=timedelta(hours=1), now=now)}
    active = {
        Job.objects.create(kind=Kind.QUEUED, status=status, rank=0.0, model="m", payload={}, cache_key="a").id
        for status in (Status.PENDING, Status.PROCESSING)
    }
    Job.objects.filter(id__in=active).update(created_at=now - timedelta(days=3))
    with CaptureQueriesContext(connection) as queries:
        counts = retention.prune(now=now)
    deletes = [
        q["sql"] for q in queries.captured_queries if q["sql"].startswith('DELETE FROM "queueing_job"')
    ]
    left = set(Job.objects.values_list("id", flat=True))
    assert counts["deleted"] == 1000 and left == recent | active, (
        f"{counts['deleted']} deleted, {len(left)} left of 1052"
    )
    sizes = [len(re.findall(r"'[0-9a-f-]{32,36}'", sql)) for sql in deletes]
    assert sum(sizes) == 1000 and max(sizes) <= retention.BATCH, f"rows per DELETE statement: {sizes}"


def test_prune_blanks_prompts_and_answers_past_payload_retention(settings):
    settings.RETENTION_FINISHED_SECONDS = 7 * 86_400
    settings.RETENTION_PAYLOAD_SECONDS = 3600
    now = timezone.now()
    old = finished_rows(600, ago=timedelta(hours=2), now=now)
    newer = finished_rows(30, ago=timedelta(minutes=20), now=now)
    assert retention.prune(now=now)["blanked"] == 600
    rows = {j.id: j for j in Job.objects.all()}
    assert all(blank(rows[j.id]) for j in old) and not any(blank(rows[j.id]) for j in newer)
    kept = rows[old[0].id]
    assert kept.result_final == {"done_reason": "stop", "eval_count": 12, "total_duration": 900}
    assert (kept.status, kept.done_reason, kept.model) == (Status.COMPLETED, "stop", "m")
    assert len(rows) == 630  # blanked, not deleted
    # A pass finds only what became due since: nothing now, the newer rows an hour later.
    assert retention.prune(now=now)["blanked"] == 0
    assert retention.prune(now=now + timedelta(hours=1))["blanked"] == 30
    assert all(blank(j) for j in Job.objects.all())


def test_a_blanking_pass_cut_short_is_finished_by_the_next(settings):
    settings.RETENTION_FINISHED_SECONDS = 7 * 86_400
    settings.RETENTION_PAYLOAD_SECONDS = 3600
    now = timezone.now()
    rows = finished_rows(40, ago=timedelta(hours=3), now=now, status=Status.COMPLETED)
    for i, job in enumerate(rows):  # spread over 40 minutes, oldest first
        Job.objects.filter(id=job.id).update(finished_at=now - timedelta(hours=3) + timedelta(minutes=i))
    # An interrupted pass blanked the oldest 15 (it goes oldest first), and a straggler finished
    # a minute before the newest blanked row by another machine's clock arrived after it.
    done = [job.id for job in rows[:15]]
    Job.objects.filter(id__in=done).update(payload={}, result_content="", result_chunks=None)
    Job.objects.filter(id=rows[13].id).update(payload={"model": "m"}, result_content="late")
    assert retention.prune(now=now)["blanked"] == 26
    assert all(blank(j) for j in Job.objects.all())


def test_prune_queue_command_prints_the_counts_and_dry_run_changes_nothing(settings):
    settings.RETENTION_FINISHED_SECONDS = 86_400
    settings.RETENTION_PAYLOAD_SECONDS = 3600
    now = timezone.now()
    finished_rows(30, ago=timedelta(days=2), now=now)
    finished_rows(12, ago=timedelta(hours=2), now=now)
    finished_rows(5, ago=timedelta(minutes=5), now=now)
    out = io.StringIO()
    call_command("prune_queue", "--dry-run", stdout=out)
    assert "finished queue rows deleted: 30\n" in out.getvalue(), out.getvalue()
    assert "finished queue rows blanked (prompts and answers): 12\n" in out.getvalue()
    assert "dry run" in out.getvalue()
    assert Job.objects.count() == 47 and not any(blank(j) for j in Job.objects.all())
    out = io.StringIO()
    call_command("prune_queue", stdout=out)
    assert "finished queue rows deleted: 30\n" in out.getvalue(), out.getvalue()
    assert "finished queue rows blanked (prompts and answers): 12\n" in out.getvalue()
    assert Job.objects.count() == 17
    assert sum(blank(j) for j in Job.objects.all()) == 12


def test_prune_trims_the_history_of_turns_that_ended_without_finishing():
    """A cancelled, failed or cache-answered turn still carries its history: prune drops it, and
    leaves pending rows (they may still run) and rows without history alone."""
    now = timezone.now()
    history = [{"role": "user", "content": "old question"}, {"role": "assistant", "content": "old answer"}]
    rows = finished_rows(6, ago=timedelta(minutes=1), now=now, history=2)
    for row in rows:
        row.payload["messages"] = [*history, *row.payload["messages"]]
    Job.objects.bulk_update(rows, ["payload"])
    live = {"model": "m", "messages": [*history, *messages("live")]}
    pending = Job.objects.create(kind=Kind.QUEUED, rank=0, model="m", cache_key="p", history=2, payload=live)
    assert retention.prune(dry_run=True)["trimmed"] == 6
    assert retention.prune()["trimmed"] == 6
    for row in Job.objects.filter(id__in=[r.id for r in rows]):
        assert row.history == 0 and row.payload["messages"] == messages(row.payload["messages"][0]["content"])
        assert row.payload["messages"][0]["content"].startswith("secret prompt")
    pending.refresh_from_db()
    assert pending.history == 2 and len(pending.payload["messages"]) == 3
    assert retention.prune()["trimmed"] == 0


# --- the overview and averages behind /api/cache-stats and /metrics ----------------------------------


def test_the_overview_reads_no_finished_row_from_the_table():
    if connection.vendor != "sqlite":
        pytest.skip("reads SQLite's query plans")
    now = timezone.now()
    finished_rows(300, ago=timedelta(hours=1), now=now)
    with CaptureQueriesContext(connection) as queries:
        selectors.queue_overview()
        selectors._measure_average_generation_ms()
    scans = []
    with connection.cursor() as cursor:
        for query in queries.captured_queries:
            if '"queueing_job"' not in query["sql"]:
                continue
            cursor.execute("EXPLAIN QUERY PLAN " + query["sql"])
            for step in (row[3] for row in cursor.fetchall()):
                # A search goes through an index; a scan is fine only of an index alone.
                if step.startswith("SCAN queueing_job") and "COVERING INDEX" not in step:
                    scans.append(f"{step}: {query['sql'][:120]}")
    assert scans == []


def test_the_average_generation_time_looks_only_at_recent_completed_rows():
    now = timezone.now()
    older = finished_rows(50, ago=timedelta(hours=2), now=now, status=Status.COMPLETED)  # 2 s each
    assert selectors._measure_average_generation_ms() == 2000
    finished_rows(
        selectors.AVERAGE_WINDOW_ROWS, ago=timedelta(hours=1), now=now, status=Status.COMPLETED, cached=True
    )
    assert selectors._measure_average_generation_ms() == selectors.DEFAULT_GENERATION_MS
    fresh = finished_rows(1, ago=timedelta(minutes=1), now=now, status=Status.COMPLETED)[0]
    Job.objects.filter(id=fresh.id).update(started_at=fresh.finished_at - timedelta(seconds=4))
    assert selectors._measure_average_generation_ms() == 4000
    assert len(older) == 50


def _database_bytes() -> int:
    """The database's size on disk: the SQLite file with its write-ahead log, or PostgreSQL's."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_database_size(current_database())")
            return int(cursor.fetchone()[0])
        cursor.execute("PRAGMA page_count")
        pages = cursor.fetchone()[0]
        cursor.execute("PRAGMA freelist_count")
        free = cursor.fetchone()[0]
        cursor.execute("PRAGMA page_size")
        return int((pages - free) * cursor.fetchone()[0])


def test_conversation_turns_keep_one_copy_of_the_history(start_server, ollama):
    """15 turns of 1 MB each on one conversation: the queue rows keep each turn's own message, not
    the history in front of it again (1 + 2 + ... + 15 = 120 MB of payloads before)."""
    ollama.configure(token_count=4)
    server = start_server(LIMITS_MAX_BODY_BYTES=2 * MIB, LIMITS_MAX_MESSAGE_CHARS=2 * MIB)
    turns, size = 15, MIB
    before = _database_bytes()
    conversation = "new"
    with server.client() as client:
        for turn in range(turns):
            text = f"turn {turn} " + "h" * size
            body = {"messages": messages(text), "conversation_id": conversation, "stream": False}
            r = client.post("/api/chat-optimized", json=body, timeout=60)
            assert r.status_code == 200, r.text[:300]
            conversation = r.json()["conversation_id"]
        stored = client.get(f"/api/conversations/{conversation}").json()["messages"]
    wait_for(lambda: not Job.objects.filter(history__gt=0).exists(), what="every finished turn trimmed")
    history = sum(len(m["content"]) for m in stored)
    payloads = sum(len(json.dumps(p)) for p in Job.objects.values_list("payload", flat=True))
    growth = _database_bytes() - before
    figures = (
        f"{turns} turns of {size / MIB:.0f} MB: history {history / MIB:.1f} MB, queue payloads "
        f"{payloads / MIB:.1f} MB, database grew {growth / MIB:.1f} MB ({connection.vendor})"
    )
    logger.warning(figures)
    assert len(stored) == 2 * turns, figures
    assert Job.objects.count() == turns, figures
    assert payloads <= 1.1 * history, figures
    # The conversation store's one copy, the rows' own turns, and the live row of the last turn.
    assert growth <= 4 * history, figures
