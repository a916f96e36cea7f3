"""Per-process start-up of the background parts, and the pool that runs blocking work.

daphne has no ASGI lifespan and ``AppConfig.ready()`` runs before its event loop exists, so the
server calls :func:`start_process` from the reactor once it runs, and the ASGI application calls it
again on its first event (for servers without that hook). It runs once per process and loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.conf import settings
from django.db import close_old_connections

logger = logging.getLogger(__name__)
T = TypeVar("T")

_prepared: set[int] = set()
_started: set[int] = set()
# Run (once per server process) when it starts serving; apps register here from ready().
_startup_hooks: list[Callable[[asyncio.AbstractEventLoop], Any]] = []
_shutdown_hooks: list[Callable[[], Awaitable[None]]] = []


def on_start(hook: Callable[[asyncio.AbstractEventLoop], Any]) -> None:
    """Register ``hook(loop)`` to run when this server process starts serving."""
    _startup_hooks.append(hook)


def on_shutdown(hook: Callable[[], Awaitable[None]]) -> None:
    """Register a coroutine function to await when this server process stops (SIGTERM)."""
    _shutdown_hooks.append(hook)


def prepare_process(loop: asyncio.AbstractEventLoop) -> None:
    """Install the blocking-work pool on ``loop`` and connect the caches, once per loop."""
    if id(loop) in _prepared:
        return
    _prepared.add(id(loop))
    # [server] workers: the threads that run our blocking work (database and cache calls made
    # through run_blocking). Each thread keeps at most one database connection.
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=settings.SERVER_WORKERS, thread_name_prefix="blocking")
    )
    # Off the event loop thread (the database cache refuses async contexts), but waited for.
    connect = threading.Thread(target=_connect_caches, name="connect-caches")
    connect.start()
    connect.join()


def start_process(loop: asyncio.AbstractEventLoop) -> None:
    """Prepare the process, then run the server start-up hooks (the embedded worker...), once."""
    prepare_process(loop)
    if id(loop) in _started:
        return
    _started.add(id(loop))
    for hook in _startup_hooks:
        hook(loop)


async def stop_process() -> None:
    """Run the shutdown hooks (hand queued work back, close pools); each failure is logged."""
    for hook in reversed(_shutdown_hooks):
        try:
            await hook()
        except Exception:
            logger.exception("shutdown hook %s failed", getattr(hook, "__qualname__", hook))


def _connect_caches() -> None:
    """Touch every cache once, on this thread, before requests arrive.

    The Redis client imports modules lazily on its first connection; two pool threads connecting
    for the first time at once can trip Python's import deadlock detection (seen in the deep
    health check). One connection made here first avoids it.
    """
    from django.core.cache import caches

    for alias in settings.CACHES:
        try:
            caches[alias].get("startup:probe")
        except Exception as exc:  # noqa: BLE001 - a cache that is down is bypassed, not fatal
            logger.warning("cache %r not reachable at start-up: %s", alias, exc)


def _with_fresh_connection(fn: Callable[..., T]) -> Callable[..., T]:
    def call(*args: Any, **kwargs: Any) -> T:
        # Pool threads live long: drop connections that broke or outlived CONN_MAX_AGE first.
        close_old_connections()
        return fn(*args, **kwargs)

    return call


async def run_blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on the process's blocking-work pool (``[server] workers`` threads), in a copy of
    the caller's context (request ids reach the log lines it writes).

    Plain ``run_in_executor``: asgiref's ``sync_to_async`` did the same with more bookkeeping per
    call, and there are several calls per request.
    """
    return await _run_in(None, fn, *args, **kwargs)


async def run_scheduler_blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``run_blocking`` on the queue worker's own thread: claims and results never wait behind
    the requests' own database calls in the shared pool."""
    loop = asyncio.get_running_loop()
    executor = _scheduler_executors.get(id(loop))
    if executor is None:
        executor = _scheduler_executors[id(loop)] = ThreadPoolExecutor(1, thread_name_prefix="scheduler")
    return await _run_in(executor, fn, *args, **kwargs)


async def _run_in(
    executor: ThreadPoolExecutor | None, fn: Callable[..., T], /, *args: Any, **kwargs: Any
) -> T:
    call = functools.partial(_with_fresh_connection(fn), *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor, contextvars.copy_context().run, call)


_scheduler_executors: dict[int, ThreadPoolExecutor] = {}
