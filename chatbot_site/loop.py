"""The server's event loop: each turn runs I/O first, then urgent work, then a time-boxed share of
the rest, so a liveness probe is answered within a few turns however much work a burst queued.

asyncio's own loop runs, each turn, every callback that was ready when the turn began, in order:
under a burst of 1,000 new streams a turn held 500 to 1,800 callbacks (50 to 200 ms), and a
``/health`` request, whose parse, application steps and write are each a callback behind the whole
backlog, took half a second. This loop (Python 3.11's ``_run_once`` with three changes) runs, each
turn:

1. the I/O callbacks of this turn's poll (reads and writes: a new request is read, and an answer
   leaves, without waiting for the backlog);
2. the callbacks scheduled in an ``urgent()`` context (a probe's application task and everything
   it schedules), all of them;
3. the other ready callbacks, oldest first, for at most TURN_BUDGET_SECONDS; what is left waits for
   the next turn, which polls without blocking.

Nothing is reordered within a class, and every ready callback still runs (the budget only moves
the poll between them), so throughput is unchanged; only waiting moves from the probe to the bulk.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import heapq
import sys
from collections.abc import Callable
from typing import Any

# Ready callbacks run per turn, beyond I/O and urgent ones, before the loop polls again.
TURN_BUDGET_SECONDS = 0.005
URGENT: contextvars.ContextVar[bool] = contextvars.ContextVar("urgent", default=False)
SUPPORTED = sys.version_info[:2] == (3, 11)  # _run_once below follows 3.11's

# asyncio.base_events' thresholds for purging cancelled timers.
_MIN_SCHEDULED_TIMER_HANDLES = 100
_MIN_CANCELLED_TIMER_HANDLES_FRACTION = 0.5
_MAXIMUM_SELECT_TIMEOUT = 24 * 3600


def urgent(callback: Callable[[], Any]) -> Any:
    """Run ``callback`` in a copy of the current context marked urgent: the tasks it creates and
    the callbacks they schedule run ahead of the backlog."""
    context = contextvars.copy_context()
    context.run(URGENT.set, True)
    return context.run(callback)


class ProbeFirstEventLoop(asyncio.SelectorEventLoop):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._io_ready: collections.deque[asyncio.Handle] = collections.deque()
        self._urgent: collections.deque[asyncio.Handle] = collections.deque()

    # --- where callbacks wait -------------------------------------------------------------------

    def _call_soon(self, callback: Any, args: Any, context: Any) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        marked = context.get(URGENT, False) if context is not None else URGENT.get()
        me: Any = self
        (self._urgent if marked else me._ready).append(handle)
        return handle

    def _add_callback(self, handle: asyncio.Handle) -> None:
        """An I/O callback of this turn's poll (asyncio's selector loop adds them here)."""
        if not handle.cancelled():
            self._io_ready.append(handle)

    # --- one turn -------------------------------------------------------------------------------

    def _run_once(self) -> None:
        me: Any = self  # asyncio's private attributes, as its own _run_once uses them
        scheduled: list[Any] = me._scheduled
        sched_count = len(scheduled)
        if (
            sched_count > _MIN_SCHEDULED_TIMER_HANDLES
            and me._timer_cancelled_count / sched_count > _MIN_CANCELLED_TIMER_HANDLES_FRACTION
        ):
            kept = []
            for handle in scheduled:
                if handle._cancelled:
                    handle._scheduled = False
                else:
                    kept.append(handle)
            heapq.heapify(kept)
            me._scheduled = scheduled = kept
            me._timer_cancelled_count = 0
        else:
            while scheduled and scheduled[0]._cancelled:
                me._timer_cancelled_count -= 1
                handle = heapq.heappop(scheduled)
                handle._scheduled = False

        ready: collections.deque[Any] = me._ready
        timeout = None
        if ready or self._urgent or self._io_ready or me._stopping:
            timeout = 0
        elif scheduled:
            timeout = min(max(0, scheduled[0]._when - self.time()), _MAXIMUM_SELECT_TIMEOUT)

        event_list = me._selector.select(timeout)
        me._process_events(event_list)
        event_list = None

        end_time = self.time() + me._clock_resolution
        while scheduled:
            handle = scheduled[0]
            if handle._when >= end_time:
                break
            handle = heapq.heappop(scheduled)
            handle._scheduled = False
            (self._urgent if handle._context.get(URGENT, False) else ready).append(handle)

        for queue in (self._io_ready, self._urgent):
            for _ in range(len(queue)):
                handle = queue.popleft()
                if not handle._cancelled:
                    handle._run()
        deadline = self.time() + TURN_BUDGET_SECONDS
        for _ in range(len(ready)):
            handle = ready.popleft()
            if handle._cancelled:
                continue
            handle._run()
            if self._urgent or self.time() > deadline:
                break  # poll again; an urgent callback just scheduled runs next turn
        handle = None


class ProbeFirstPolicy(asyncio.DefaultEventLoopPolicy):
    _loop_factory = ProbeFirstEventLoop


def install() -> None:
    """New event loops are ProbeFirstEventLoops (before daphne makes Twisted's loop)."""
    if SUPPORTED:
        asyncio.set_event_loop_policy(ProbeFirstPolicy())
