"""The per-process Prometheus metrics: timings measured in the process that saw them (request
latency per endpoint, time to first token, upstream generation time). ``ops.metrics`` serves them at
``/metrics`` with the shared figures read from the database.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

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


def observe_request(endpoint: str, method: str, status: int, started: float) -> None:
    HTTP_REQUESTS.labels(endpoint, method, str(status)).inc()
    HTTP_LATENCY.labels(endpoint).observe(time.perf_counter() - started)


def endpoint_of(request: Any) -> str:
    match = getattr(request, "resolver_match", None)
    return match.url_name or match.route if match else "unmatched"
