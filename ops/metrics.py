"""``/metrics`` in Prometheus' text format, right in both deployments.

Two kinds of figures:

* Shared figures (cache hits, misses, evictions, bytes and entries; queue length by status and
  priority; generations in flight; deduplicated, cancelled and failed requests; upstream errors by
  kind) are read from the shared database at scrape time, so every process reports the same values
  and scraping any one of them is enough. They match ``/api/cache-stats`` because both read the same
  rows (``ops.services.collect_counters_and_caches``).
* Timings (``stats.metrics``) are measured in the process that saw them. Scrape every server
  process, or set ``PROMETHEUS_MULTIPROC_DIR`` to a directory all processes of a host share
  (workers included) and any process serves the sum.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

from core.owners import account_of
from ops.services import collect_counters_and_caches, lifetime_usage


class SharedFiguresCollector(Collector):
    """Reads the shared counters, caches and queue table at scrape time."""

    def collect(self) -> Iterator[Metric]:
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
        yield from server_families(stats["servers"])
        yield from usage_families()


def server_families(figures: list[dict[str, Any]]) -> Iterator[Metric]:
    """Each Ollama server's figures, labelled by its name."""
    gauges = {
        "up": GaugeMetricFamily(
            "chatbot_server_up", "1 while the server is in, 0 while out", labels=["server"]
        ),
        "in_flight": GaugeMetricFamily(
            "chatbot_server_in_flight", "Generations running on the server", labels=["server"]
        ),
        "capacity": GaugeMetricFamily(
            "chatbot_server_max_concurrent", "Generations the server may run at once", labels=["server"]
        ),
        "loaded": GaugeMetricFamily(
            "chatbot_server_loaded_models", "Models loaded on the server at its last probe", labels=["server"]
        ),
        "failures": GaugeMetricFamily(
            "chatbot_server_consecutive_failures",
            "Failures in a row (out at the threshold)",
            labels=["server"],
        ),
    }
    generations = CounterMetricFamily(
        "chatbot_server_generations",
        "Generations the server finished, by outcome",
        labels=["server", "outcome"],
    )
    seconds = CounterMetricFamily(
        "chatbot_server_generation_seconds",
        "Time spent in the server's completed generations",
        labels=["server"],
    )
    for server in figures:
        name = [server["name"]]
        gauges["up"].add_metric(name, 1 if server["state"] == "up" else 0)
        gauges["in_flight"].add_metric(name, server["in_flight"])
        gauges["capacity"].add_metric(name, server["max_concurrent"])
        gauges["loaded"].add_metric(name, len(server["loaded_models"]))
        gauges["failures"].add_metric(name, server["consecutive_failures"])
        generations.add_metric([server["name"], "completed"], server["completed"])
        generations.add_metric([server["name"], "failed"], server["failed"])
        seconds.add_metric(name, server["generation_seconds"])
    yield from gauges.values()
    yield generations
    yield seconds


def usage_families() -> Iterator[Metric]:
    """Usage per account (an owner's configured part, so the label set is the configuration's) and
    model, since the service started keeping it."""
    families = {
        "requests": CounterMetricFamily(
            "chatbot_usage_requests", "Generations charged", labels=["owner", "model"]
        ),
        "cache_hits": CounterMetricFamily(
            "chatbot_usage_cache_hits", "Requests answered from the cache", labels=["owner", "model"]
        ),
        "tokens": CounterMetricFamily(
            "chatbot_usage_tokens", "Prompt and generated tokens", labels=["owner", "model", "kind"]
        ),
        "gpu": CounterMetricFamily(
            "chatbot_usage_gpu_seconds",
            "GPU time (prompt evaluation + generation)",
            labels=["owner", "model"],
        ),
    }
    totals: dict[tuple[str, str], dict[str, int]] = {}
    for row in lifetime_usage():
        key = (account_of(row["owner"]), row["model"])
        figures = totals.setdefault(
            key, dict.fromkeys(("requests", "cache_hits", "prompt", "output", "gpu"), 0)
        )
        for name in figures:
            figures[name] += row[name] or 0
    for (owner, model), figures in sorted(totals.items()):
        families["requests"].add_metric([owner, model], figures["requests"])
        families["cache_hits"].add_metric([owner, model], figures["cache_hits"])
        families["tokens"].add_metric([owner, model, "prompt"], figures["prompt"])
        families["tokens"].add_metric([owner, model, "output"], figures["output"])
        families["gpu"].add_metric([owner, model], figures["gpu"] / 1e9)
    yield from families.values()


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
