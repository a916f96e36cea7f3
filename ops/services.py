"""Operations services: health, statistics, cache actions and model warm-up."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any, TypedDict

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import caches
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from chat.caches import SizedCache, conversation_cache, response_cache
from core import servers
from core.errors import BadRequest, NotFound, OllamaError
from core.ollama import listed_name
from core.owners import rules_for
from core.runtime import run_blocking
from core.values import is_model_name, keep_alive_problem
from gateway.schemas import WarmModelData, validate_value
from queueing import fleet, selectors, upstream
from stats import counters, usage
from stats.models import Usage

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_SECONDS = 3.0


class CheckResult(TypedDict, total=False):
    ok: bool
    error: str
    latency_ms: float
    version: str


def _database_probe() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _cache_probe(alias: str) -> None:
    key = f"health:{uuid.uuid4().hex}"
    cache = caches[alias]
    cache.set(key, "ok", timeout=10)
    if cache.get(key) != "ok":
        raise RuntimeError(f"cache {alias!r} did not return what was stored")
    cache.delete(key)


async def _channel_layer_probe() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "health.probe"})
    message = await layer.receive(channel)
    if message.get("type") != "health.probe":
        raise RuntimeError("channel layer returned another message")


async def _timed(probe: Any) -> CheckResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            await probe
    except Exception as exc:  # noqa: BLE001 - any failure of a probe is the answer we report
        logger.warning("health probe failed: %s", exc)
        return {"ok": False, "error": _public(exc)}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


async def _server_check(view: fleet.View, place: int) -> dict[str, Any]:
    started = time.perf_counter()
    # The one server of [ollama] api_url is named by its host:port: the public report calls it by
    # its place instead. Names the operator gave ([[ollama.servers]] name) are shown as given.
    name = view.name if _without_addresses(view.name) == view.name else f"server {place}"
    found: dict[str, Any] = {"name": name, "state": "up" if view.up else "out"}
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            found["version"] = await upstream.on(view.name, lambda c: c.version())
    except (OllamaError, TimeoutError) as exc:
        message = (
            exc.message if isinstance(exc, OllamaError) else f"no answer within {HEALTH_TIMEOUT_SECONDS:g} s"
        )
        found.update(ok=False, error=f"Ollama unreachable: {_without_addresses(message)}")
    else:
        found.update(ok=True, latency_ms=round((time.perf_counter() - started) * 1000, 2))
    if view.failures:
        found["consecutive_failures"] = view.failures
    if not view.up:
        found["retry_at"] = view.as_dict()["retry_at"]
    return found


def _public(exc: BaseException) -> str:
    """What a failed probe says on the public ``/health``: what failed, never where (hosts, ports
    and URLs of the internal services are in the log only)."""
    if isinstance(exc, TimeoutError):
        return f"TimeoutError: no answer within {HEALTH_TIMEOUT_SECONDS:g} s"
    return f"{type(exc).__name__}: {_without_addresses(str(exc))}"[:300]


_ADDRESS = re.compile(
    r"\b(?:[a-z][a-z0-9+.-]*://\S+|\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?"
    r"|[\w.-]+:\d{1,5}(?![\w.])"  # host:port (a model tag such as qwen2.5:0.5b is not one)
    r"|port \d+)",
    re.IGNORECASE,
)


def _without_addresses(text: str) -> str:
    return _ADDRESS.sub("[internal address]", text)


async def _ollama_check() -> dict[str, Any]:
    """Every server asked for its version at once; ok when one answers (the first that did gives
    the version and latency at the top, as with one server). Bounded like every check: the servers'
    shared state is read from the database, which may be the part that is frozen."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            views = await run_blocking(fleet.views)
    except Exception as exc:  # noqa: BLE001 - reported, as any probe's failure
        return {"ok": False, "error": f"the servers' state is unreadable ({_public(exc)})", "servers": []}
    checked = await asyncio.gather(*(_server_check(v, place) for place, v in enumerate(views, 1)))
    first = next((c for c in checked if c["ok"]), None)
    top: dict[str, Any] = (
        {"ok": True, "version": first["version"], "latency_ms": first["latency_ms"]}
        if first is not None
        else {"ok": False, "error": checked[0]["error"] if len(checked) == 1 else "no Ollama server answers"}
    )
    return {**top, "servers": checked}


async def health_report(*, deep: bool) -> tuple[bool, dict[str, Any]]:
    """Whether the service is healthy, and the report; ``deep`` probes every dependency.

    Database, caches and channel layer are required (the service cannot queue or cache without
    them); Ollama is reported but not required, so a restarting Ollama does not get the gateway
    itself restarted by an orchestrator.
    """
    if not deep:
        return True, {"status": "healthy"}
    names = ["database", "response_cache", "conversation_cache", "channel_layer", "ollama"]
    results = await asyncio.gather(
        _timed(run_blocking(_database_probe)),
        _timed(run_blocking(_cache_probe, "responses")),
        _timed(run_blocking(_cache_probe, "conversations")),
        _timed(_channel_layer_probe()),
        _ollama_check(),
    )
    checks = dict(zip(names, results, strict=True))
    healthy = all(result["ok"] for name, result in checks.items() if name != "ollama")
    return healthy, {"status": "healthy" if healthy else "unhealthy", "checks": checks}


# --- statistics ----------------------------------------------------------------------------------


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _cache_block(cache: SizedCache, hits: int, misses: int) -> dict[str, Any]:
    totals = cache.totals()
    limit = cache.max_bytes
    return {
        "total_entries": totals.entries,
        "total_size_mb": round(totals.size_bytes / (1024 * 1024), 4),
        "total_size_bytes": totals.size_bytes,
        "max_size_mb": round(limit / (1024 * 1024), 4),
        "hit_rate": _rate(hits, hits + misses),
        "miss_rate": _rate(misses, hits + misses),
        "hits": hits,
        "misses": misses,
        "memory_usage_percent": round(totals.size_bytes * 100 / limit, 2) if limit else 0.0,
    }


def collect_counters_and_caches() -> dict[str, Any]:
    """Every measured figure that lives in the shared database (blocking)."""
    c = counters.read()

    def n(name: str) -> int:
        return int(c.get(name, 0))

    response = _cache_block(response_cache, n(counters.RESPONSE_HITS), n(counters.RESPONSE_MISSES))
    response["evictions"] = n(counters.RESPONSE_EVICTIONS)
    conversation = _cache_block(
        conversation_cache, n(counters.CONVERSATION_HITS), n(counters.CONVERSATION_MISSES)
    )
    del conversation["miss_rate"]  # the design document's conversation block has none
    conversation["evictions"] = n(counters.CONVERSATION_EVICTIONS)
    total, cached = n(counters.CHAT_REQUESTS), n(counters.RESPONSE_HITS)
    batches = n(counters.BATCHES)
    generations = n(counters.GENERATIONS)
    overview = selectors.queue_overview()
    return {
        "response_cache": response,
        "conversation_cache": conversation,
        "batch_processor": {
            "total_requests": total,
            "cached_responses": cached,
            "cache_hit_rate": round(cached * 100 / total, 2) if total else 0.0,
            "average_batch_size": round(n(counters.BATCHED_JOBS) / batches, 2) if batches else 0.0,
            "batches": batches,
            "deduplicated_requests": n(counters.DEDUPLICATED),
        },
        "queue_length": overview["queue_length"],
        "is_processing": overview["is_processing"],
        "queue": overview,
        "requests": {
            "total": total,
            "queued": n(counters.REQUESTS_QUEUED),
            "completed": n(counters.COMPLETED),
            "failed": n(counters.FAILED),
            "cancelled": n(counters.CANCELLED),
            "deduplicated": n(counters.DEDUPLICATED),
            "generations": generations,
            "average_generation_ms": round(n(counters.GENERATION_MS_TOTAL) / generations, 1)
            if generations
            else 0.0,
        },
        "upstream_errors": {
            name.removeprefix(counters.UPSTREAM_ERRORS_PREFIX): int(value)
            for name, value in sorted(c.items())
            if name.startswith(counters.UPSTREAM_ERRORS_PREFIX) and value
        },
        "servers": server_figures(),
    }


def server_figures() -> list[dict[str, Any]]:
    """Each Ollama server as the deployment sees it: its state, in flight, completed, failed and
    average generation time (blocking; shared by every process)."""
    views = fleet.views()
    running = selectors.running_by_server()
    names = [counters.server_counter(v.name, f) for v in views for f in counters.SERVER_FIGURES]
    c = counters.read(names)
    out = []
    for view in views:
        done = c[counters.server_counter(view.name, "completed")]
        ms = c[counters.server_counter(view.name, "generation_ms")]
        entry = view.as_dict()
        entry.update(
            in_flight=running.get(view.name, 0),
            completed=done,
            failed=c[counters.server_counter(view.name, "failed")],
            average_generation_ms=round(ms / done, 1) if done else 0.0,
            generation_seconds=round(ms / 1000, 3),
        )
        out.append(entry)
    return out


async def ollama_status() -> dict[str, Any]:
    """Whether the Ollama servers answer, the oldest version, and the models loaded on each."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            version, loaded = await asyncio.gather(upstream.version(), upstream.ps())
    except (OllamaError, TimeoutError) as exc:
        return {"reachable": False, "error": str(exc) or "no answer", "url": servers.configured()[0].url}
    return {
        "reachable": True,
        "url": servers.configured()[0].url,
        "version": version,
        "loaded_models": [
            {
                "name": listed_name(m),
                "server": m.get("server"),
                "expires_at": m.get("expires_at"),
                "size_vram": m.get("size_vram"),
            }
            for m in loaded
        ],
    }


async def collect_stats(*, include_ollama: bool = True) -> dict[str, Any]:
    """``GET /api/cache-stats``: the documented shape, every figure measured and shared by all processes."""
    ollama: dict[str, Any] | None = None
    if include_ollama:
        figures, ollama = await asyncio.gather(run_blocking(collect_counters_and_caches), ollama_status())
    else:
        figures = await run_blocking(collect_counters_and_caches)
    body: dict[str, Any] = {"timestamp": timezone.now().isoformat().replace("+00:00", "Z"), **figures}
    if ollama is not None:
        body["ollama"] = ollama
    return body


# --- actions -------------------------------------------------------------------------------------


def clear_caches(*, responses: bool = True, conversations: bool = True) -> dict[str, int]:
    """Remove this service's cached answers and/or conversations; returns how many entries went."""
    cleared = {}
    if responses:
        cleared["responses"] = response_cache.clear()
    if conversations:
        cleared["conversations"] = conversation_cache.clear()
    return cleared


async def warm_model(
    *, model: str | None = None, keep_alive: str | None = None, all_servers: bool = False
) -> dict[str, Any]:
    """Load a model the Ollama servers already have into memory and keep it for ``keep_alive``:
    on the one server routing would pick for it, or on every server that is in and has it.

    The name must be one a server lists: nothing user-supplied ever reaches pull, create or delete.
    """
    name = model or settings.OLLAMA_MODEL
    if not is_model_name(name):
        raise BadRequest(
            "Field 'model' must be an Ollama model name such as 'llama3.2:1b'.", code="invalid_model"
        )
    keep = keep_alive if keep_alive is not None else settings.OLLAMA_KEEP_ALIVE
    if keep_alive_problem(keep):
        raise BadRequest(f'keep_alive {keep!r} is not a duration such as "30m".', code="invalid_keep_alive")
    candidates = [v.name for v in await fleet.up_servers() if v.server.allows(name)]
    having: list[str] = []
    listed: set[str] = set()
    for server, models in zip(
        candidates,
        await asyncio.gather(
            *(upstream.on(s, lambda c: c.tags()) for s in candidates), return_exceptions=True
        ),
        strict=True,
    ):
        if isinstance(models, BaseException):
            continue
        names = {servers.model_name(listed_name(m)) for m in models}
        listed |= names
        if servers.model_name(name) in names:
            having.append(server)
    if not having:
        raise NotFound(
            f"Ollama has no model {name!r} on any server that is in; they have: "
            f"{', '.join(sorted(listed)) or 'none'}.",
            code="model_not_found",
        )
    if not all_servers:
        best = await fleet.server_for(name)
        having = [best if best in having else having[0]]
    warmed = await asyncio.gather(*(_warm_on(server, name, keep) for server in having))
    first = warmed[0]
    return {
        "model": name,
        "keep_alive": keep,
        "server": first["server"],
        "done_reason": first["done_reason"],
        "loaded": all(w["loaded"] for w in warmed),
        "loaded_models": first["loaded_models"],
        "elapsed_ms": max(w["elapsed_ms"] for w in warmed),
        "servers": warmed,
    }


async def _warm_on(server: str, name: str, keep: str) -> dict[str, Any]:
    started = time.perf_counter()
    answer = await upstream.on(server, lambda c: c.load(name, keep))
    loaded = [listed_name(m) for m in await upstream.on(server, lambda c: c.ps())]
    return {
        "server": server,
        "done_reason": answer.get("done_reason", ""),
        "loaded": name in loaded or servers.model_name(name) in loaded,
        "loaded_models": loaded,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }


async def run_action(action: str, data: dict[str, Any] | None) -> dict[str, Any]:
    """``POST /api/cache-stats``: one of the actions the body's schema allows."""
    if action == "warm_model":
        warm = validate_value(WarmModelData, data or {})
        keep = None if warm.keep_alive is None else str(warm.keep_alive)
        result = await warm_model(model=warm.model, keep_alive=keep, all_servers=bool(warm.all))
        return {"action": action, "status": "ok", **result}
    cleared = await run_blocking(
        clear_caches,
        responses=action in ("clear", "clear_response_cache"),
        conversations=action in ("clear", "clear_conversation_cache"),
    )
    return {"action": action, "status": "ok", "cleared": cleared}


# --- usage ------------------------------------------------------------------------------------------


def usage_report(*, owner: str | None, window: str) -> dict[str, Any]:
    """``GET /api/usage``: per owner (one's own, or everyone's for an operator) and per model, in the
    current hour, day or month, with the owner's quotas and what is left of them."""
    rows = usage.report(owner=owner, window=window)
    owners: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = owners.setdefault(
            row["owner"],
            {
                "owner": row["owner"],
                "requests": 0,
                "cache_hits": 0,
                "tokens": 0,
                "gpu_seconds": 0.0,
                "models": [],
            },
        )
        for key in ("requests", "cache_hits", "tokens"):
            entry[key] += row[key]
        entry["gpu_seconds"] = round(entry["gpu_seconds"] + row["gpu_seconds"], 6)
        entry["models"].append({k: v for k, v in row.items() if k != "owner"})
    for name, entry in owners.items():
        rules = rules_for(name)
        entry["quotas"] = [
            {
                "unit": unit,
                "window": quota_window,
                "limit": limit,
                "used": usage.totals(owner=name, window=quota_window)[unit],
                "renews_at": usage.window_end(quota_window).isoformat(),
            }
            for unit, quota_window, limit in rules.quotas
        ]
    return {
        "window": window,
        "since": usage.window_start(window).isoformat(),
        "owners": list(owners.values()),
    }


def lifetime_usage() -> list[dict[str, Any]]:
    """Usage per owner and model, every hour kept (for the Prometheus counters)."""
    usage.flush_hits()
    return list(
        Usage.objects.values("owner", "model").annotate(
            requests=Sum("requests"), cache_hits=Sum("cache_hits"), prompt=Sum("prompt_tokens"),
            output=Sum("output_tokens"), gpu=Sum("gpu_ns"),
        ).order_by()
    )  # fmt: skip
