"""Which Ollama servers are in, as every process of the deployment sees it: the circuit breaker and
the probes. One ``ServerState`` row per configured server holds it; routing (``queueing.policy``,
rule 8) reads the rows at every claim.

**Circuit breaker.** A server fault (refused, timed out, 5xx, a stream cut; ``core.servers``
names them) from a generation or a probe adds one to the server's consecutive failures; a success
sets them back to 0. At ``[ollama] failure_threshold`` the server is *out*: no claim routes to it.
Once ``retry_seconds`` have passed it is probed again: on success it is back in, on failure it stays
out for twice as long (up to four times ``retry_seconds``: a restarted Ollama is back in soon).

**Probes.** Every ``[ollama] probe_interval_seconds`` each server is asked for its version, its
models (``/api/tags``) and its loaded models (``/api/ps``), by one process of the deployment: the
one whose conditional update moves the row's ``next_probe_at`` forward (every worker tries; one
wins). An out server is probed only once its ``retry_at`` is due.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from core import servers
from core.errors import ApiError, OllamaError
from core.ollama import listed_name
from core.runtime import run_blocking
from core.servers import Server, has_model, model_name
from queueing.models import ServerState

logger = logging.getLogger(__name__)
State = ServerState.State
BACKOFF_CAP = 4  # an out server's retry interval grows to at most this many retry_seconds


@dataclass(frozen=True)
class View:
    """A server as routing and the reports see it."""

    server: Server
    up: bool
    tags: frozenset[str] | None  # the models it has (None: not probed yet, so any may be there)
    loaded: frozenset[str]
    failures: int = 0
    last_error: str = ""
    out_since: datetime | None = None
    retry_at: datetime | None = None
    version: str = ""
    probed_at: datetime | None = None

    @property
    def name(self) -> str:
        return self.server.name

    def has(self, model: str) -> bool:
        return has_model(self.tags, model)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": "up" if self.up else "out",
            "max_concurrent": self.server.max_concurrent,
            "weight": self.server.weight,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
            "out_since": _iso(self.out_since),
            "retry_at": _iso(self.retry_at),
            "version": self.version,
            "models": sorted(self.tags) if self.tags is not None else None,
            "loaded_models": sorted(self.loaded),
            "probed_at": _iso(self.probed_at),
        }


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None


def _names(values: Any) -> frozenset[str]:
    return frozenset(model_name(str(v)) for v in values or ())


def views() -> list[View]:
    """Every configured server with its shared state, in configuration order (blocking; one read)."""
    configured = servers.configured()
    rows = {r.name: r for r in ServerState.objects.filter(name__in=[s.name for s in configured])}
    missing = [s for s in configured if s.name not in rows]
    if missing:
        ServerState.objects.bulk_create(
            [ServerState(name=s.name, url=s.url) for s in missing], ignore_conflicts=True
        )
    out = []
    for server in configured:
        row = rows.get(server.name)
        if row is None:
            out.append(View(server, up=True, tags=None, loaded=frozenset()))
            continue
        out.append(
            View(
                server,
                up=row.state == State.UP,
                tags=None if row.tags is None else _names(row.tags),
                loaded=_names(row.loaded),
                failures=row.failures,
                last_error=row.last_error,
                out_since=row.out_since,
                retry_at=row.retry_at,
                version=row.version,
                probed_at=row.probed_at,
            )
        )
    return out


_memo: tuple[float, list[View]] | None = None
MEMO_SECONDS = 1.0


async def recent_views(*, fresh: bool = False) -> list[View]:
    """``views()`` read at most once a second per process (every time with ``fresh``): for the
    listings and ``/api/show`` (claims read the rows themselves, inside their transaction)."""
    global _memo
    if not fresh and _memo is not None and time.monotonic() - _memo[0] < MEMO_SECONDS:
        return _memo[1]
    found = await run_blocking(views)
    _memo = (time.monotonic(), found)
    return found


async def server_for(model: str) -> str | None:
    """The server to ask about ``model`` outside the queue (``/api/show``, model facts): an up one
    that may serve it and has it, loaded first; None when the configuration lets none serve it."""
    candidates = [v for v in await recent_views() if v.server.allows(model)]
    if candidates and not any(v.has(model) for v in candidates):
        # Read before a probe listed it (a second after start-up, say): the rows may know better.
        candidates = [v for v in await recent_views(fresh=True) if v.server.allows(model)]
    if not candidates:
        return None
    best = min(candidates, key=lambda v: (not v.up, not v.has(model), model_name(model) not in v.loaded))
    return best.name


async def up_servers() -> list[View]:
    """The servers that are in (all of them when every one is out: a listing then reports the
    upstream's own error rather than nothing)."""
    found = await recent_views()
    return [v for v in found if v.up] or found


# --- the breaker -----------------------------------------------------------------------------------


def record_failure(name: str, error: ApiError, now: datetime | None = None) -> None:
    """One more consecutive failure of ``name``; out at the threshold (blocking)."""
    now = now or timezone.now()
    retry = settings.OLLAMA_RETRY_SECONDS
    with transaction.atomic():
        row = ServerState.objects.select_for_update().filter(name=name).first()
        if row is None:
            return
        row.failures += 1
        row.last_error = f"{error.code}: {error.message}"[:300]
        fields = ["failures", "last_error"]
        if row.state == State.UP and row.failures >= settings.OLLAMA_FAILURE_THRESHOLD:
            row.state, row.out_since, row.backoff_seconds = State.OUT, now, retry
            row.retry_at = now + timedelta(seconds=retry)
            fields += ["state", "out_since", "backoff_seconds", "retry_at"]
            logger.warning(
                "Ollama server %s is out after %d failures: %s", name, row.failures, row.last_error
            )
        elif row.state == State.OUT and row.retry_at is not None and row.retry_at <= now:
            # The trial after the back-off failed: out for twice as long.
            row.backoff_seconds = min(max(row.backoff_seconds, retry) * 2, BACKOFF_CAP * retry)
            row.retry_at = now + timedelta(seconds=row.backoff_seconds)
            fields += ["backoff_seconds", "retry_at"]
        row.save(update_fields=fields)


# A server with a failure or out of service (hand-written: every finished generation asks).
_NOT_CLEAR = (
    f'SELECT "state" FROM "{ServerState._meta.db_table}" '  # noqa: S608 - the model's table; values are parameters
    'WHERE "name" = %s AND ("state" <> %s OR "failures" > 0)'
)


def record_success(name: str) -> None:
    """``name`` answered: its failures are forgotten and, if it was out, it is back in (blocking).
    One read while it is healthy (every finished generation calls this)."""
    with connection.cursor() as cursor:
        cursor.execute(_NOT_CLEAR, [name, State.UP])
        states = [row[0] for row in cursor.fetchall()]
    if not states:
        return
    back = ServerState.objects.filter(name=name)
    if State.OUT in states:
        logger.warning("Ollama server %s is back in", name)
    back.update(state=State.UP, failures=0, out_since=None, retry_at=None, backoff_seconds=0.0, last_error="")


# --- probes ------------------------------------------------------------------------------------------


def take_due_probes(now: datetime | None = None) -> list[Server]:
    """The servers this process should probe now: due ones whose probe lease it won (blocking)."""
    now = now or timezone.now()
    views()  # rows exist
    due = ServerState.objects.filter(
        Q(next_probe_at__isnull=True) | Q(next_probe_at__lte=now),
        Q(state=State.UP) | Q(retry_at__isnull=True) | Q(retry_at__lte=now),
        name__in=servers.names(),
    ).values_list("name", "next_probe_at")
    until = now + timedelta(seconds=settings.OLLAMA_PROBE_INTERVAL_SECONDS)
    won = []
    for name, previous in list(due):
        # Conditional on the value read: of several processes, exactly one moves it forward.
        if ServerState.objects.filter(name=name, next_probe_at=previous).update(next_probe_at=until):
            found = servers.by_name(name)
            if found is not None:
                won.append(found)
    return won


def record_probe(name: str, *, version: str, tags: list[str], loaded: list[str]) -> None:
    ServerState.objects.filter(name=name).update(
        version=version[:64], tags=tags, loaded=loaded, probed_at=timezone.now()
    )
    record_success(name)


async def probe(server: Server) -> None:
    """Ask one server how it is, and record the answer (or the failure)."""
    client = servers.client(server.name)
    timeout = settings.OLLAMA_CONNECT_TIMEOUT_SECONDS
    try:
        async with asyncio.timeout(timeout):
            version, tags, loaded = await asyncio.gather(client.version(), client.tags(), client.ps())
    except TimeoutError:
        error: ApiError = OllamaError(f"no answer to a probe within {timeout:g} s", code="ollama_timeout")
    except OllamaError as exc:
        if not servers.is_server_fault(exc):
            return  # it answered, if oddly (a 404 from an old Ollama without /api/ps)
        error = exc
    else:
        await run_blocking(
            record_probe,
            server.name,
            version=version,
            tags=[listed_name(m) for m in tags],
            loaded=[listed_name(m) for m in loaded],
        )
        return
    logger.info("probe of Ollama server %s failed: %s", server.name, error.message)
    await run_blocking(record_failure, server.name, error)


async def refresh_loaded(server: str) -> None:
    """Read one server's ``/api/ps`` now: a generation just loaded a model there, and the load may
    have unloaded others (Ollama's max_loaded_models). Routing sees the swap before the next probe."""
    try:
        loaded = await servers.client(server).ps()
    except OllamaError as exc:
        logger.debug("reading %s's loaded models failed: %s", server, exc.message)
        return
    names = [listed_name(m) for m in loaded]
    await run_blocking(ServerState.objects.filter(name=server).update, loaded=names)


async def probe_forever() -> None:
    """The probing loop of one worker (every worker runs one; each server is probed by one)."""
    while True:
        try:
            due = await run_blocking(take_due_probes)
            if due:
                await asyncio.gather(*(probe(s) for s in due))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("probing the Ollama servers failed; retrying")
        await asyncio.sleep(min(settings.OLLAMA_PROBE_INTERVAL_SECONDS / 2, 1.0))
