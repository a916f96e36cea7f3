"""A stream's output held in the application is bounded, whatever the answer's size: a slow
client's frames are read from the source only a little ahead of it, and one write is at most
about WRITE_MAX_BYTES (a cached replay used to be read whole at once and joined into one write)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from gateway.sse import READ_AHEAD_FRAMES, WRITE_MAX_BYTES, with_heartbeat

FRAME = b"data: " + b"x" * 994 + b"\n\n"  # 1,002 bytes
FRAMES = 5_000  # 5 MB of answer


def test_a_slow_reader_is_fed_a_bounded_window_and_bounded_writes():
    read = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal read
        for _ in range(FRAMES):
            read += 1
            yield FRAME

    async def slow_client() -> tuple[list[int], list[int]]:
        ahead, writes, taken = [], [], 0
        async for data in with_heartbeat(source(), interval=10):
            writes.append(len(data))
            taken += len(data) // len(FRAME)
            await asyncio.sleep(0)  # the source gets every chance to run ahead
            await asyncio.sleep(0)
            ahead.append(read - taken)
        return ahead, writes

    ahead, writes = asyncio.run(slow_client())
    assert sum(writes) == FRAMES * len(FRAME)  # everything arrived, in order of the frames
    assert max(ahead) <= READ_AHEAD_FRAMES + 2, max(ahead)
    assert max(writes) <= WRITE_MAX_BYTES + len(FRAME), max(writes)
    assert len(writes) < FRAMES / 10  # frames waiting still leave together, not one write each


def test_a_lone_frame_still_goes_at_once():
    async def run() -> float:
        gate = asyncio.Event()

        async def source() -> AsyncIterator[bytes]:
            yield FRAME
            await gate.wait()
            yield FRAME

        stream = with_heartbeat(source(), interval=10)
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(2):  # a write that waited for the next frame would hang here
            first = await anext(stream)
        took = asyncio.get_running_loop().time() - started
        assert first == FRAME
        gate.set()
        assert [f async for f in stream] == [FRAME]
        return took

    assert asyncio.run(run()) < 0.5
