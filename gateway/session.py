"""The generation session every surface shares: a cache hit replayed, or an interactive job followed.

``/api/chat-optimized``, Ollama's ``/api/chat`` and ``/api/generate`` and OpenAI's
``/v1/chat/completions`` differ only in how they frame the events a session yields.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.http import HttpRequest

from chat.caches import entry_chunks
from chat.conversations import append_conversation, fit_history, get_conversation
from core.errors import ApiError
from core.generation import Answer, Chunk, metrics
from core.pump import Pump
from core.runtime import run_blocking
from gateway import payloads
from gateway.http import owner_of
from gateway.schemas import ChatOptimizedBody
from queueing import live
from queueing.follow import follow_request
from queueing.models import Kind
from queueing.spec import JobSpec
from queueing.submit import answer_or_enqueue, cancel
from stats import counters

# How long a streaming request waits for its first token (or error) before the SSE response starts
# anyway with queue-position frames. An error within it is a plain JSON error with its status.
FIRST_EVENT_WAIT_SECONDS = 1.0


class _Replay:
    """A cached entry's events, with ``Pump``'s interface but no task: they are all here already."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry
        self.events = self._events(entry)  # one at a time, as the reader takes them

    @staticmethod
    def _events(entry: dict[str, Any]) -> Iterator[live.Event]:
        for chunk in entry_chunks(entry):
            yield live.Event("chunk", chunk=chunk)
        yield live.Event("done", final=entry.get("final") or {})

    async def get(self, timeout: float | None = None) -> live.Event | None:
        return next(self.events, None)

    async def close(self) -> None:
        pass


class GenerationSession:
    """One generation request from a waiting caller: a cache hit replayed, or an interactive job."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.cached = False
        self.job_id: uuid.UUID | None = None
        self.finished = False
        self.chunks: list[Chunk] = []
        self.final: dict[str, Any] = {}
        self._pump: Pump[live.Event] | _Replay | None = None

    @property
    def model(self) -> str:
        return self.spec.model

    async def start(self) -> None:
        """Look in the cache, or enqueue the generation."""
        counters.incr(counters.CHAT_REQUESTS)
        found = await run_blocking(answer_or_enqueue, self.spec)
        if isinstance(found, dict):
            self.cached = True
            self._pump = _Replay(found)
            return
        self.job_id = found.job.id
        if not found.joined:
            await live.wake_workers()
        self._pump = Pump(follow_request(self.job_id, keep_caller_alive=True, job=found.job))

    async def next_event(self, timeout: float | None = None) -> live.Event | None:
        """The next event (None at the end); raises TimeoutError after ``timeout``."""
        assert self._pump is not None
        event = await self._pump.get(timeout)
        if event is None:
            return None
        if event.kind == "chunk" and not isinstance(self._pump, _Replay):  # a replay has them all
            self.chunks.append(event.chunk)
        elif event.kind == "restart":
            self.chunks.clear()
        elif event.kind == "done":
            self.final = event.final
            self.finished = True
            await self.on_done()
        elif event.kind == "error":
            self.finished = True
        return event

    async def on_done(self) -> None:
        """Hook for what follows a successful answer."""

    def whole(self) -> Answer:
        """The answer received: a cache hit's from its entry (not kept twice while it streams)."""
        if isinstance(self._pump, _Replay):
            return Answer.of(entry_chunks(self._pump.entry))
        return Answer.of(self.chunks)

    async def first_events(self) -> list[live.Event]:
        """Events until the first token, the end, an error, or FIRST_EVENT_WAIT_SECONDS of queueing.

        An error here raises (and closes the session), so the client gets a plain error with its
        status code.
        """
        try:
            return await self._first_events()
        except BaseException:
            await self.close()
            raise

    async def _first_events(self) -> list[live.Event]:
        events: list[live.Event] = []
        deadline = time.monotonic() + FIRST_EVENT_WAIT_SECONDS
        while True:
            try:
                event = await self.next_event(max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                return events
            if event is None:
                return events
            if event.kind == "error":
                assert event.error is not None
                raise event.error
            events.append(event)
            if event.kind != "position":
                return events

    async def events(self, first: list[live.Event]) -> AsyncIterator[live.Event]:
        """``first``, then every later event; leaving early cancels the generation (if unshared)."""
        try:
            for event in first:
                yield event
            while (later := await self.next_event()) is not None:
                yield later
        finally:
            await asyncio.shield(self.close())

    async def answer(self) -> Answer:
        """The whole answer (non-streaming); raises the mapped ApiError on failure."""
        async for event in self.events([]):
            if event.kind == "error":
                assert event.error is not None
                raise event.error
            if event.kind == "done":
                return self.whole()
        raise ApiError("The generation ended without an answer.", code="no_answer", status=502)

    async def close(self) -> None:
        """Stop listening; cancel the job if it has not finished (the caller left)."""
        if self._pump is not None:
            await self._pump.close()
        if self.job_id is not None and not self.finished:
            with contextlib.suppress(ApiError):
                await cancel(self.job_id, owner=None, reason="the client disconnected")
            self.finished = True


class ChatSession(GenerationSession):
    """``/api/chat-optimized``: a generation plus conversation memory."""

    def __init__(self, request: HttpRequest, body: ChatOptimizedBody) -> None:
        spec = JobSpec(
            kind=Kind.INTERACTIVE, endpoint="chat", model=payloads.chat_model(body), payload={},
            cache_key="", owner=owner_of(request),
        )  # fmt: skip
        super().__init__(spec)
        self.request, self.body = request, body
        self.new_messages = payloads.messages_of(body)
        self.conversation_id: str | None = None
        self.history: list[dict[str, Any]] = []

    async def start(self) -> None:
        """Resolve the conversation (404 for an unknown one), then as any generation."""
        requested = self.body.conversation_id
        if requested == "new":
            self.conversation_id = str(uuid.uuid4())
        elif requested:
            self.conversation_id = requested
            stored = await run_blocking(
                get_conversation, owner=self.spec.owner, conversation_id=requested, count=True
            )
            self.history = fit_history(stored["messages"], self.new_messages)
        messages = [*self.history, *self.new_messages]
        self.spec = await payloads.spec_for(
            self.request,
            endpoint="chat",
            payload=payloads.chat_payload(self.body, messages),
            samples=self.body.samples(),
            priority=self.body.priority,
            use_cache=self.body.use_cache,
            streaming=self.body.stream,
            conversation=self.conversation_id and f"{self.spec.owner}/{self.conversation_id}",
            history=len(self.history),
        )
        await super().start()

    async def on_done(self) -> None:
        if self.conversation_id:
            await run_blocking(
                append_conversation,
                owner=self.spec.owner,
                conversation_id=self.conversation_id,
                model=self.spec.model,
                history=self.history,
                new=self.new_messages,
                reply=self.whole().message(),
            )

    def done_extra(self) -> dict[str, Any]:
        return {"conversation_id": self.conversation_id} if self.conversation_id else {}

    async def answer_body(self) -> dict[str, Any]:
        """The chat-optimized non-streaming body."""
        answer = await self.answer()
        return {
            "message": answer.message(),
            "cached": self.cached,
            "model": self.spec.model,
            "done_reason": str(self.final.get("done_reason", "")),
            "metrics": metrics(self.final),
            **self.done_extra(),
        }
