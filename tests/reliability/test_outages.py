"""Queued work rides out Ollama going away (a restart, a crash mid-stream) and the gateway's own
crash: nothing accepted is lost, nothing runs twice, and a restarted server takes its
predecessor's work at once. Each test reports its figures in its assertion message."""

from __future__ import annotations

import collections
import logging
import time

import httpx
import pytest

from queueing.models import Job, Status
from stats import counters
from tests.helpers import MODEL, messages, ollama_body, wait_for

QUEUED = 50
logger = logging.getLogger(__name__)  # the figures: `pytest -o log_cli=true` shows them


def _submit_all(client: httpx.Client, prefix: str, n: int = QUEUED) -> list[str]:
    ids = []
    for i in range(n):
        r = client.post("/api/chat-queue", json={"messages": messages(f"{prefix} {i}")})
        assert r.status_code == 202, r.text
        ids.append(r.json()["request_id"])
    return ids


@pytest.mark.parametrize("outage", [5, 60])
def test_fifty_queued_requests_ride_out_an_ollama_outage_that_starts_mid_stream(start_server, ollama, outage):
    ollama.configure(token_count=6, token_delay=0.02)
    server = start_server(
        QUEUE_MAX_QUEUE_SIZE=200, QUEUE_MAX_CONCURRENT=2, OLLAMA_RETRY_SECONDS=1, QUEUE_RETRY_MAX_SECONDS=4
    )
    with server.client() as client:
        ids = _submit_all(client, f"outage {outage}")
        wait_for(lambda: ollama.stats()["completed"] >= 5 and ollama.stats()["in_flight"] > 0, timeout=30)
        in_flight = ollama.stats()["in_flight"]
        ollama.configure(fault="refuse")  # killed: streams in flight are cut, new connections refused
        time.sleep(outage)
        ollama.configure(fault=None)
        back = time.monotonic()
        wait_for(lambda: Job.objects.filter(status__in=[Status.COMPLETED, Status.FAILED]).count() == QUEUED,
                 timeout=120, interval=0.2)  # fmt: skip
        drained = time.monotonic() - back
    server.stop()  # its buffered counter increments are written on the way out
    statuses = collections.Counter(Job.objects.values_list("status", flat=True))
    upstream = [ollama.completed_for(ollama_body(f"outage {outage} {i}")) for i in range(QUEUED)]
    counted = counters.read([counters.COMPLETED])[counters.COMPLETED]
    attempts = collections.Counter(Job.objects.values_list("attempts", flat=True))
    figures = (
        f"{outage} s outage begun with {in_flight} generating: {dict(statuses)}; "
        f"answered upstream once: {upstream.count(1)} of {QUEUED}; completions counted {counted}; "
        f"attempts {dict(attempts)}; drained {drained:.1f} s after Ollama came back"
    )
    logger.warning(figures)
    assert statuses == {Status.COMPLETED: QUEUED}, figures
    assert upstream == [1] * QUEUED and counted == QUEUED and len(set(ids)) == QUEUED, figures


def test_after_kill_9_the_restarted_server_answers_the_first_request_within_two_seconds(start_server, ollama):
    """Its predecessor's leases do not hold the slot: the worker knows that process is gone."""
    ollama.configure(token_count=4, first_token_delay=30)  # the killed server's generation never ends
    server = start_server(QUEUE_LEASE_SECONDS=30)
    rounds = []
    for n in range(5):
        with server.client() as client:
            held = client.post("/api/chat-queue", json={"messages": messages(f"held {n}")})
            held = held.json()["request_id"]
            wait_for(lambda: Job.objects.filter(id=held, status=Status.PROCESSING).exists(), timeout=10)  # noqa: B023
        server.kill()
        ollama.configure(first_token_delay=0.0)
        server.start()
        started = time.monotonic()
        with server.client() as client:
            body = {"model": MODEL, "messages": messages(f"first after restart {n}"), "stream": False}
            r = client.post("/api/chat", json=body, timeout=30)
        rounds.append(time.monotonic() - started)
        assert r.status_code == 200, r.text
        ollama.configure(first_token_delay=30)
    ollama.configure(first_token_delay=0.0)
    figures = "first request after kill -9 and restart answered in " + ", ".join(f"{s:.2f} s" for s in rounds)
    logger.warning(figures)
    assert max(rounds) < 2.0, figures


def test_kill_9_loses_no_counted_completion(start_server, ollama):
    """The figures that count queue rows are written with the rows: a server killed with -9 while
    generations complete leaves as many counted as there are rows (buffered increments of its last
    half second died with it: 278 counted for 282 rows once)."""
    ollama.configure(token_count=4, token_delay=0.03)
    server = start_server(QUEUE_MAX_QUEUE_SIZE=200, QUEUE_MAX_CONCURRENT=2)
    queued = 40
    with server.client() as client:
        _submit_all(client, "counted", queued)
    wait_for(lambda: Job.objects.filter(status=Status.COMPLETED).count() >= 12, timeout=60, interval=0.02)
    server.kill()  # while generations complete, a few every second
    counted = counters.read([counters.COMPLETED, counters.REQUESTS_QUEUED])
    rows = Job.objects.filter(status=Status.COMPLETED).count()
    figures = (
        f"killed with {rows} of {queued} completed: counted {counted[counters.COMPLETED]} completed, "
        f"{counted[counters.REQUESTS_QUEUED]} queued"
    )
    logger.warning(figures)
    assert counted[counters.COMPLETED] == rows and counted[counters.REQUESTS_QUEUED] == queued, figures
