"""Prometheus metrics at ``/metrics``.

Two kinds, so the numbers are right in both deployments:

* Shared figures (cache hits, misses, evictions, bytes and entries; queue length by status and
  priority; generations in flight; deduplicated, cancelled and failed requests; upstream errors by
  kind) are read from the shared database at scrape time, so every process reports the same values
  and scraping any one of them is enough. They match ``/api/cache-stats`` because both read the same
  rows.
* Timings (request latency per endpoint, time to first token, upstream generation time) are
  measured in the process that saw them. Scrape every server process, or set
  ``PROMETHEUS_MULTIPROC_DIR`` to a directory all processes of a host share (workers included)
  and any process serves the sum.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

HTTP_REQUESTS = Counter(
    "chatbot_http_requests",
    "HTTP requests answered, by endpoint, method and status",
    ["endpoint", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "chatbot_http_request_duration_seconds",
    "Time to the response headers (a stream's body continues after), by endpoint",
    ["endpoint"],
    buckets=_LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "chatbot_upstream_first_token_seconds",
    "Upstream request sent to Ollama's first chunk",
    buckets=_LATENCY_BUCKETS,
)
GENERATION_TIME = Histogram(
    "chatbot_upstream_generation_seconds",
    "Whole upstream generations that completed",
    buckets=_LATENCY_BUCKETS,
)

EVENT_LOOP_TASKS = Gauge(
    "chatbot_event_loop_tasks",
    "asyncio tasks alive in the serving process's event loop, counted at scrape time",
    multiprocess_mode="livesum",
)


class SharedFiguresCollector(Collector):
    """Reads the shared counters, caches and queue table at scrape time."""

    def collect(self) -> Iterator[Metric]:
        from stats.services import collect_counters_and_caches

        stats = collect_counters_and_caches()
        for name, label in (("response_cache", "responses"), ("conversation_cache", "conversations")):
            block = stats[name]
            yield _counter("chatbot_cache_hits", "Cache lookups that found an entry", label, block["hits"])
            yield _counter("chatbot_cache_misses", "Cache lookups that found nothing", label, block["misses"])
            yield _counter(
                "chatbot_cache_evictions",
                "Entries evicted to stay within max_size_mb",
                label,
                block["evictions"],
            )
            yield _gauge("chatbot_cache_bytes", "Bytes stored", label, block["total_size_bytes"])
            yield _gauge("chatbot_cache_entries", "Entries stored", label, block["total_entries"])
        queue = stats["queue"]
        by_status = GaugeMetricFamily(
            "chatbot_queue_requests", "Requests in the queue table by status", labels=["status"]
        )
        for status, count in queue["by_status"].items():
            by_status.add_metric([status], count)
        yield by_status
        pending = GaugeMetricFamily(
            "chatbot_queue_pending_by_priority", "Pending requests by priority", labels=["priority"]
        )
        for priority, count in queue["pending_by_priority"].items():
            pending.add_metric([priority], count)
        yield pending
        yield GaugeMetricFamily(
            "chatbot_generations_in_flight",
            "Upstream generations running now",
            value=queue["generations_in_flight"],
        )
        requests = stats["requests"]
        for key, help_text in (
            ("total", "Generation requests received (cache hits included)"),
            ("deduplicated", "Requests that shared another request's generation"),
            ("cancelled", "Requests cancelled"),
            ("failed", "Requests that failed"),
            ("completed", "Requests completed by a generation"),
            ("generations", "Upstream generations completed"),
        ):
            yield CounterMetricFamily(f"chatbot_requests_{key}", help_text, value=requests[key])
        errors = CounterMetricFamily("chatbot_upstream_errors", "Upstream failures by kind", labels=["kind"])
        for kind, count in stats["upstream_errors"].items():
            errors.add_metric([kind], count)
        yield errors


def _counter(name: str, help_text: str, cache: str, value: float) -> Metric:
    family = CounterMetricFamily(name, help_text, labels=["cache"])
    family.add_metric([cache], value)
    return family


def _gauge(name: str, help_text: str, cache: str, value: float) -> Metric:
    family = GaugeMetricFamily(name, help_text, labels=["cache"])
    family.add_metric([cache], value)
    return family


def render() -> bytes:
    """The exposition text: this process's (or the host's) timings plus the shared figures."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    shared = CollectorRegistry()
    shared.register(SharedFiguresCollector())
    return text + generate_latest(shared)


def observe_request(endpoint: str, method: str, status: int, started: float) -> None:
    HTTP_REQUESTS.labels(endpoint, method, str(status)).inc()
    HTTP_LATENCY.labels(endpoint).observe(time.perf_counter() - started)


def endpoint_of(request: Any) -> str:
    match = getattr(request, "resolver_match", None)
    return match.url_name or match.route if match else "unmatched"
