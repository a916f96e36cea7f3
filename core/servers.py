"""The Ollama servers behind the gateway, as configured, and a client for each.

``[[ollama.servers]]`` (or ``OLLAMA_SERVERS``) lists them; without it, ``[ollama] api_url`` is the
one server, named by its host:port. A server without its own ``max_concurrent`` gets
``[queue] max_concurrent``. Which server runs a generation is the scheduler's choice
(``queueing.policy``, rule 8); whether a server is in or out is shared state (``queueing.fleet``).
This module only knows the list, and keeps one HTTP client per server and event loop (an httpx
pool is bound to the loop it was created on).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from django.conf import settings

from core.errors import ApiError
from core.ollama import OllamaClient

# The failures that say "this server is in trouble", not "this request is wrong": they count
# towards taking a server out, and a generation that met one may run again elsewhere.
SERVER_FAULT_CODES = frozenset(
    {"ollama_unavailable", "ollama_timeout", "ollama_busy", "ollama_bad_response", "ollama_error"}
)


def is_server_fault(error: ApiError) -> bool:
    return error.code in SERVER_FAULT_CODES


def model_name(name: str) -> str:
    """The name Ollama lists a model under: a name without a tag is ``:latest``."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def has_model(tags: frozenset[str] | None, model: str) -> bool:
    """Whether a server whose probe listed ``tags`` has ``model`` (None: not probed yet, so it may)."""
    return tags is None or model_name(model) in tags


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    max_concurrent: int
    models: tuple[str, ...] = ()  # the names (or fnmatch patterns) it may serve; () = any
    weight: float = 1.0

    def allows(self, model: str) -> bool:
        """Whether configuration lets this server serve ``model`` (whether it has it is a probe's)."""
        if not self.models:
            return True
        name = model_name(model)
        return any(
            fnmatch.fnmatchcase(name, model_name(p)) or fnmatch.fnmatchcase(model, p) for p in self.models
        )


_configured: tuple[tuple[object, ...], tuple[Server, ...]] | None = None


def configured() -> tuple[Server, ...]:
    """The servers, in configuration order (rebuilt only when the settings change)."""
    global _configured
    entries = settings.OLLAMA_SERVERS
    key = (
        tuple((e.name, e.url, e.max_concurrent, tuple(e.models or ()), e.weight) for e in entries),
        settings.OLLAMA_API_URL,
        settings.QUEUE_MAX_CONCURRENT,
    )
    if _configured is not None and _configured[0] == key:
        return _configured[1]
    default = settings.QUEUE_MAX_CONCURRENT
    if entries:
        servers = tuple(
            Server(
                name=e.name,
                url=e.url.rstrip("/"),
                max_concurrent=e.max_concurrent or default,
                models=tuple(e.models or ()),
                weight=float(e.weight),
            )
            for e in entries
        )
    else:
        url = settings.OLLAMA_API_URL.rstrip("/")
        servers = (Server(name=urlparse(url).netloc or url, url=url, max_concurrent=default),)
    _configured = (key, servers)
    return servers


def by_name(name: str) -> Server | None:
    return next((s for s in configured() if s.name == name), None)


def names() -> list[str]:
    return [s.name for s in configured()]


def total_capacity() -> int:
    """Generations the deployment runs at once: the servers' max_concurrent added up."""
    return sum(s.max_concurrent for s in configured())


# --- clients ---------------------------------------------------------------------------------------

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, OllamaClient]] = (
    weakref.WeakKeyDictionary()
)


def _build(server: Server) -> OllamaClient:
    return OllamaClient(
        base_url=server.url,
        connect_timeout=settings.OLLAMA_CONNECT_TIMEOUT_SECONDS,
        first_token_timeout=settings.OLLAMA_FIRST_TOKEN_TIMEOUT_SECONDS,
        idle_timeout=settings.OLLAMA_IDLE_TIMEOUT_SECONDS,
        generation_timeout=settings.OLLAMA_GENERATION_TIMEOUT_SECONDS,
    )


def client(name: str | None = None) -> OllamaClient:
    """The running loop's client for server ``name`` (the first server when None)."""
    return _client_on(asyncio.get_running_loop(), name)


def _client_on(loop: asyncio.AbstractEventLoop, name: str | None) -> OllamaClient:
    servers = configured()
    server = servers[0] if name is None else (by_name(name) or servers[0])
    pool = _clients.setdefault(loop, {})
    found = pool.get(server.name)
    if found is None or found.base_url != server.url:
        found = pool[server.name] = _build(server)
    return found


def open_clients(loop: asyncio.AbstractEventLoop) -> None:
    """Create ``loop``'s clients now (servers do it at start-up: the first request saves it)."""
    for server in configured():
        _client_on(loop, server.name)


async def close_clients() -> None:
    """Close the running loop's clients (on shutdown)."""
    for found in _clients.pop(asyncio.get_running_loop(), {}).values():
        await found.aclose()


# --- affinity ----------------------------------------------------------------------------------------

AFFINITY_PROMPT_CHARS = 1024  # of a /api/generate prompt: its follow-ups repeat the start


def affinity_key(endpoint: str, payload: dict[str, Any], conversation: str | None = None) -> str:
    """A conversation's routing key: a hash of the model and its leading messages (up to and with
    the first user message), which every later turn repeats, or of the gateway's own conversation
    id when there is one (its history may be trimmed at the front). "" when there is nothing to
    reuse (embeddings). Routing sends a key back to the server that served it last, whose prompt
    cache holds that prefix."""
    if conversation:
        lead: Any = ["conversation", conversation]
    elif endpoint == "chat":
        messages = payload.get("messages") or []
        first_user = next(
            (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"), 0
        )
        lead = messages[: first_user + 1]
    elif endpoint == "generate":
        lead = [payload.get("system") or "", str(payload.get("prompt") or "")[:AFFINITY_PROMPT_CHARS]]
    else:
        return ""
    raw = json.dumps([payload.get("model"), lead], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()
