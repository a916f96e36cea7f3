from __future__ import annotations

import asyncio

from django.apps import AppConfig


class QueueingConfig(AppConfig):
    name = "queueing"
    verbose_name = "Queue"

    def ready(self) -> None:
        from core import runtime

        runtime.on_start(_start_worker)


_worker_task: asyncio.Task[None] | None = None


def _start_worker(loop: asyncio.AbstractEventLoop) -> None:
    """Embedded default: the queue worker runs in the server process."""
    global _worker_task
    from core import runtime
    from queueing.worker import start_embedded_worker

    _worker_task = start_embedded_worker(loop)
    if _worker_task is not None:
        runtime.on_shutdown(_stop_worker)


async def _stop_worker() -> None:
    if _worker_task is not None and not _worker_task.done():
        _worker_task.cancel()
        await asyncio.gather(_worker_task, return_exceptions=True)
