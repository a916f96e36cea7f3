"""Reading an async iterator in its own task, so the reader can wait with a timeout and see what
is already waiting, without ever interrupting the source (cancelling a pending ``anext`` would)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Pump(Generic[T]):
    """``maxsize`` above 0 bounds what waits: the source is read no further ahead of the reader
    (a stream's frames, so a slow client does not hold a whole replayed answer). 0 reads the
    source as fast as it comes (a listener on the channel layer, which must always be drained)."""

    def __init__(self, source: AsyncIterator[T], maxsize: int = 0) -> None:
        self.queue: asyncio.Queue[T | BaseException | None] = asyncio.Queue(maxsize)
        self.task = asyncio.ensure_future(self._run(source))

    async def _run(self, source: AsyncIterator[T]) -> None:
        try:
            async for item in source:
                await self.queue.put(item)
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which re-raises it
            await self.queue.put(exc)
        await self.queue.put(None)

    def ready(self) -> bool:
        """Whether ``get`` would return at once."""
        return not self.queue.empty()

    async def get(self, timeout: float | None = None) -> T | None:
        """The next item, None at the end; raises TimeoutError after ``timeout`` and whatever
        the source raised. No timer or task when an item is already waiting."""
        if self.queue.empty():
            async with asyncio.timeout(timeout):
                item = await self.queue.get()
        else:
            item = self.queue.get_nowait()
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        """Stop reading (the source is cancelled, which runs its ``finally``)."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
