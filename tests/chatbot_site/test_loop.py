"""The server's event loop: I/O and urgent work ahead of a backlog, every callback still run, in
order. The loop's clock is replaced by one each backlog callback advances by a millisecond, so the
turn budget is counted in callbacks, not measured."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from chatbot_site import loop as server_loop

BACKLOG = 1000  # callbacks of 1 ms each (on the loop's clock): a second of queued work
COST = 0.001


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_case(make_loop: Callable[[], asyncio.AbstractEventLoop], scenario: str) -> tuple[int, list[int]]:
    """How many backlog callbacks ran before the probe finished, and the order they ran in."""
    event_loop = make_loop()
    clock = Clock()
    event_loop.time = clock  # type: ignore[method-assign]
    ran: list[int] = []
    probe_done_after: list[int] = []

    def busy(i: int) -> None:
        ran.append(i)
        clock.now += COST

    async def probe() -> None:
        for _ in range(5):  # five steps, as a request's parse, view, response and write are
            await asyncio.sleep(0)
        probe_done_after.append(len(ran))

    async def main() -> None:
        for i in range(BACKLOG):
            event_loop.call_soon(busy, i)
        if scenario == "urgent":
            await server_loop.urgent(lambda: asyncio.ensure_future(probe()))
        else:  # a read: a socket that becomes readable while the backlog waits
            left, right = socket.socketpair()
            left.setblocking(False)
            read = event_loop.create_future()
            event_loop.add_reader(left, lambda: read.done() or read.set_result(len(ran)))
            right.send(b"x")
            probe_done_after.append(await read)
            event_loop.remove_reader(left)
            left.close()
            right.close()
        while len(ran) < BACKLOG:
            await asyncio.sleep(0)

    try:
        event_loop.run_until_complete(main())
    finally:
        event_loop.close()
    return probe_done_after[0], ran


@pytest.mark.skipif(not server_loop.SUPPORTED, reason="the loop follows Python 3.11's")
@pytest.mark.parametrize("scenario", ["urgent", "read"])
def test_a_probe_runs_ahead_of_the_backlog_and_the_backlog_still_runs_in_order(scenario):
    after, ran = run_case(server_loop.ProbeFirstEventLoop, scenario)
    # Five turns of at most TURN_BUDGET_SECONDS of backlog each (plus the callback that crossed it).
    per_turn = round(server_loop.TURN_BUDGET_SECONDS / COST) + 1
    assert after <= 6 * per_turn, f"the probe waited for {after} of {BACKLOG} backlog callbacks"
    assert ran == list(range(BACKLOG))


@pytest.mark.parametrize("scenario", ["urgent", "read"])
def test_asyncio_s_own_loop_makes_the_probe_wait_for_the_whole_backlog(scenario):
    """What the server's loop changes (and so what the test above would catch)."""
    after, ran = run_case(asyncio.SelectorEventLoop, scenario)
    assert after == BACKLOG
    assert ran == list(range(BACKLOG))


@pytest.mark.skipif(not server_loop.SUPPORTED, reason="the loop follows Python 3.11's")
def test_timers_threads_and_cancellation_behave_as_asyncio_s():
    event_loop = server_loop.ProbeFirstEventLoop()
    try:
        seen: list[str] = []

        async def main() -> None:
            event_loop.call_later(0.01, seen.append, "timer")
            cancelled = event_loop.call_soon(seen.append, "cancelled")
            cancelled.cancel()
            await asyncio.sleep(0.02)
            result = await event_loop.run_in_executor(None, lambda: "from a thread")
            seen.append(result)
            task = asyncio.ensure_future(asyncio.sleep(10))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            seen.append(await asyncio.wait_for(asyncio.sleep(0, "in time"), 1))

        event_loop.run_until_complete(main())
        assert seen == ["timer", "from a thread", "in time"]
    finally:
        event_loop.close()
