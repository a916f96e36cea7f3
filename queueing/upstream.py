"""Calls to Ollama outside the queue, across the servers: the merged listings (``/api/tags``,
``/api/ps``, ``/api/version``) and a call made on the server that has a model (``/api/show``, a
load or an unload). A server fault met here counts towards taking that server out, as a
generation's does.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from core import servers
from core.errors import ApiError, OllamaModelNotFound
from core.ollama import OllamaClient, listed_name
from core.runtime import run_blocking
from core.servers import model_name
from queueing import fleet

T = TypeVar("T")


async def on(name: str, call: Callable[[OllamaClient], Awaitable[T]]) -> T:
    """``call`` on server ``name``'s client; a server fault is recorded, then raised."""
    try:
        return await call(servers.client(name))
    except ApiError as exc:
        if servers.is_server_fault(exc):
            await run_blocking(fleet.record_failure, name, exc)
        raise


async def _on_each(names: list[str], call: Callable[[OllamaClient], Awaitable[T]]) -> list[tuple[str, T]]:
    """``call`` on every server in ``names`` at once: the answers of those that answered; the
    first error when none did."""
    results = await asyncio.gather(*(on(n, call) for n in names), return_exceptions=True)
    answered = [(n, r) for n, r in zip(names, results, strict=True) if not isinstance(r, BaseException)]
    if not answered:
        error = next((r for r in results if isinstance(r, BaseException)), None)
        if error is not None:
            raise error
    return answered


async def server_for(model: str) -> str:
    """The server that should answer about ``model``; 404 as Ollama words it when none may."""
    found = await fleet.server_for(model)
    if found is None:
        raise OllamaModelNotFound(f"model '{model}' not found")
    return found


async def tags() -> list[dict[str, Any]]:
    """``/api/tags`` of every server that is in: each model once, the newest first (as Ollama
    orders its own list)."""
    names = [v.name for v in await fleet.up_servers()]
    seen: dict[str, dict[str, Any]] = {}
    for _, models in await _on_each(names, lambda c: c.tags()):
        for entry in models:
            key = model_name(listed_name(entry))
            seen.setdefault(key, entry)
    return sorted(seen.values(), key=_modified, reverse=True)


def _modified(entry: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(entry.get("modified_at", ""))).timestamp()
    except ValueError:
        return 0.0


async def ps() -> list[dict[str, Any]]:
    """``/api/ps`` of every server that is in, each entry with the ``server`` it is loaded on."""
    names = [v.name for v in await fleet.up_servers()]
    return [{**m, "server": name} for name, loaded in await _on_each(names, lambda c: c.ps()) for m in loaded]


async def version() -> str:
    """The oldest version among the servers that are in: what every one of them supports."""
    names = [v.name for v in await fleet.up_servers()]
    found = [v for _, v in await _on_each(names, lambda c: c.version())]
    return min(found, key=_version_key) if found else ""


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version.split("-")[0])[:3]) or (0,)


async def request(model: str, method: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One call about ``model`` (show, a load, a render) on the server that has it."""
    name = await server_for(model)
    return await on(name, lambda c: c.request_json(method, path, payload))


async def unload(path: str, payload: dict[str, Any]) -> dict[str, Any]:
    """``keep_alive: 0`` with no prompt unloads the model: from every server that is in and may
    serve it (it may be loaded on any of them). Ollama's answer from the first."""
    model = str(payload.get("model", ""))
    names = [v.name for v in await fleet.up_servers() if v.server.allows(model)]
    if not names:
        raise OllamaModelNotFound(f"model '{model}' not found")
    answers = await _on_each(names, lambda c: c.request_json("POST", path, payload))
    return answers[0][1]
