"""The chat service: composes the caches, the scheduler and live output. Views, admin, commands and
the worker all go through here (or through ``queueing.services`` for plain queue transitions)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings

from chat import sse
from chat.caches import conversation_cache, response_cache, response_key
from chat.errors import ApiError, NotFound
from chat.pump import Pump
from chat.requests import ChatRequest
from chatbot_site.runtime import run_blocking
from queueing import live
from queueing import services as queue
from queueing.models import Job, Kind
from stats import counters

logger = logging.getLogger(__name__)

METRIC_KEYS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
# How long a streaming request waits for its first token (or error) before the SSE response starts
# anyway with queue-position frames. An error within it is a plain JSON error with its status.
FIRST_EVENT_WAIT_SECONDS = 1.0


def metrics(final: dict[str, Any]) -> dict[str, int]:
    """Ollama's final-chunk metrics (nanoseconds and token counts), those it sent."""
    return {key: final[key] for key in METRIC_KEYS if key in final}


def chat_cache_key(req: ChatRequest, messages: list[dict[str, Any]], owner: str) -> str:
    return response_key(
        endpoint="chat",
        model=req.model,
        messages=messages,
        options=req.options,
        format=req.format,
        owner=owner,
    )


def cached_entry(key: str, *, use_cache: bool) -> dict[str, Any] | None:
    """The cached entry for ``key`` (counted as a hit or miss), or None when bypassed or missing."""
    if not (use_cache and settings.RESPONSE_CACHE_ENABLED):
        return None
    return response_cache.get(key)


def _answer_or_enqueue(key: str, *, use_cache: bool, **job: Any) -> dict[str, Any] | queue.Enqueued:
    """The cached entry, or the request enqueued: one trip to the blocking pool for both."""
    entry = cached_entry(key, use_cache=use_cache)
    if entry is not None:
        return entry
    return queue.enqueue_request(cache_key=key, use_cache=use_cache, **job)


# --- /api/chat-queue -----------------------------------------------------------------------------


async def submit_queued(
    req: ChatRequest, *, owner: str = "", idempotency_key: str | None = None
) -> tuple[Job, dict[str, Any]]:
    """``POST /api/chat-queue``: answer from the cache at once, or put the request in the queue.
    Returns the request and its status block (one trip to the blocking pool for all of it)."""
    key = chat_cache_key(req, req.messages, owner)
    enqueued, status = await run_blocking(
        _submit_blocking, req, key=key, owner=owner, idempotency_key=idempotency_key
    )
    if enqueued.created and not enqueued.joined and not enqueued.job.cached:
        await live.wake_workers()
    return enqueued.job, status


def _submit_blocking(
    req: ChatRequest, *, key: str, owner: str, idempotency_key: str | None
) -> tuple[queue.Enqueued, dict[str, Any]]:
    if idempotency_key:
        existing = queue.find_by_idempotency_key(owner=owner, key=idempotency_key)
        if existing is not None:
            return queue.Enqueued(existing, created=False), queue.queue_status(existing)
    counters.incr(counters.CHAT_REQUESTS)
    common = {
        "kind": Kind.QUEUED,
        "endpoint": "chat",
        "model": req.model,
        "payload": req.ollama_payload(),
        "priority": req.priority,
        "owner": owner,
        "idempotency_key": idempotency_key,
    }
    found = _answer_or_enqueue(key, use_cache=req.use_cache, **common)
    if isinstance(found, dict):  # a cached answer completes the request at once
        found = queue.Enqueued(queue.complete_from_cache(**common, cache_key=key, entry=found), created=True)
    return found, queue.queue_status(found.job)


async def cancel(job_id: uuid.UUID, *, owner: str | None, reason: str = "cancelled") -> Job:
    """Cancel a request and, when no one else shares its generation, stop it upstream."""
    result = await run_blocking(queue.cancel_request, job_id=job_id, owner=owner, reason=reason)
    if result.stop_generation is not None:
        await live.stop_generation(worker=result.stop_worker, generation_id=result.stop_generation)
    await live.notify_jobs([result.job.id])
    return result.job


def cancel_many(job_ids: list[Any]) -> int:
    """Cancel several requests from sync code (the admin action); returns how many were cancelled."""

    async def run() -> int:
        done = 0
        for job_id in job_ids:
            try:
                await cancel(job_id, owner=None, reason="cancelled by an administrator")
            except ApiError:
                continue
            done += 1
        return done

    return async_to_sync(run)()


def result_body(job: Job) -> dict[str, Any]:
    """A finished request's answer as the API shows it."""
    final = job.result_final or {}
    return {
        "message": {"role": "assistant", "content": job.result_content},
        "model": job.model,
        "done_reason": job.done_reason or final.get("done_reason", ""),
        "metrics": metrics(final),
    }


async def event_frames(
    events: AsyncIterator[live.Event], *, cached: bool, **done_extra: Any
) -> AsyncIterator[bytes]:
    """Turn a request's events into SSE frames in the seed's format."""
    async for event in events:
        if event.kind == "chunk":
            yield sse.content_frame(event.content, cached=cached)
        elif event.kind == "position":
            yield sse.frame(event.status, event="queue")
        elif event.kind == "restart":
            yield sse.frame({"reason": "the generation is being retried from the start"}, event="restart")
        elif event.kind == "done":
            yield sse.done_frame(
                cached=cached,
                done_reason=str(event.final.get("done_reason", "")),
                metrics=metrics(event.final),
                **done_extra,
            )
        elif event.kind == "error":
            assert event.error is not None
            yield sse.error_frame(event.error.message, event.error.code)


# --- conversations -------------------------------------------------------------------------------


def conversation_key(owner: str, conversation_id: str) -> str:
    return f"conv:{owner}:{conversation_id}"


def get_conversation(*, owner: str, conversation_id: str, count: bool = False) -> dict[str, Any]:
    """A stored conversation (its messages); 404 when unknown, expired or another owner's."""
    stored = conversation_cache.get(conversation_key(owner, conversation_id), count=count)
    if stored is None:
        raise NotFound(f"No conversation with id {conversation_id}.", code="conversation_not_found")
    return stored


def delete_conversation(*, owner: str, conversation_id: str) -> None:
    """Forget a conversation; 404 when unknown."""
    if not conversation_cache.delete(conversation_key(owner, conversation_id)):
        raise NotFound(f"No conversation with id {conversation_id}.", code="conversation_not_found")


def append_conversation(
    *,
    owner: str,
    conversation_id: str,
    model: str,
    history: list[dict[str, Any]],
    new: list[dict[str, Any]],
    reply: str,
) -> None:
    """Store the conversation with this exchange added (the last writer wins if two race)."""
    messages = [*history, *new, {"role": "assistant", "content": reply}]
    conversation_cache.set(
        conversation_key(owner, conversation_id),
        {"conversation_id": conversation_id, "model": model, "messages": messages, "updated_at": time.time()},
    )


def fit_history(history: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the oldest non-system history messages until history + new fits the message limit."""
    room = settings.LIMITS_MAX_MESSAGES - len(new)
    if len(history) <= room:
        return history
    system = [m for m in history if m.get("role") == "system"]
    rest = [m for m in history if m.get("role") != "system"]
    keep = max(room - len(system), 0)
    return [*system, *rest[len(rest) - keep :]] if keep else system[:room]


# --- /api/chat-optimized -------------------------------------------------------------------------


class _Replay:
    """A cached entry's events, with ``Pump``'s interface but no task: they are all here already."""

    def __init__(self, entry: dict[str, Any]) -> None:
        events = [live.Event("chunk", content=chunk) for chunk in entry["chunks"]]
        events.append(live.Event("done", final=entry.get("final") or {}))
        self.events = iter(events)

    async def get(self, timeout: float | None = None) -> live.Event | None:
        return next(self.events, None)

    async def close(self) -> None:
        pass


class GenerationSession:
    """One generation request from a waiting caller: a cache hit replayed, or an interactive job.

    Shared by every surface (``/api/chat-optimized``, Ollama's ``/api/chat`` and ``/api/generate``,
    OpenAI's ``/v1/chat/completions``): they differ only in how they frame the events.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        model: str,
        payload: dict[str, Any],
        cache_key: str,
        owner: str,
        priority: int = 0,
        use_cache: bool = True,
    ) -> None:
        self.endpoint, self.model, self.payload, self.cache_key = endpoint, model, payload, cache_key
        self.owner, self.priority, self.use_cache = owner, priority, use_cache
        self.cached = False
        self.job_id: uuid.UUID | None = None
        self.finished = False
        self.chunks: list[str] = []
        self.final: dict[str, Any] = {}
        self._pump: Pump[live.Event] | _Replay | None = None

    async def start(self) -> None:
        """Look in the cache, or enqueue the generation."""
        counters.incr(counters.CHAT_REQUESTS)
        found = await run_blocking(
            _answer_or_enqueue,
            self.cache_key,
            use_cache=self.use_cache,
            kind=Kind.INTERACTIVE,
            endpoint=self.endpoint,
            model=self.model,
            payload=self.payload,
            priority=self.priority,
            owner=self.owner,
        )
        if isinstance(found, dict):
            self.cached = True
            self._pump = _Replay(found)
            return
        enqueued = found
        self.job_id = enqueued.job.id
        if not enqueued.joined:
            await live.wake_workers()
        self._pump = Pump(live.follow_request(self.job_id, keep_caller_alive=True, job=enqueued.job))

    async def next_event(self, timeout: float | None = None) -> live.Event | None:
        """The next event (None at the end); raises TimeoutError after ``timeout``."""
        assert self._pump is not None
        event = await self._pump.get(timeout)
        if event is None:
            return None
        if event.kind == "chunk":
            self.chunks.append(event.content)
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

    async def first_events(self) -> list[live.Event]:
        """Events until the first token, the end, an error, or FIRST_EVENT_WAIT_SECONDS of queueing.

        An error here raises, so the client gets a plain error with its status code.
        """
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
            while (event := await self.next_event()) is not None:
                yield event
        finally:
            await asyncio.shield(self.close())

    async def answer(self) -> str:
        """The whole answer (non-streaming); raises the mapped ApiError on failure."""
        async for event in self.events([]):
            if event.kind == "error":
                assert event.error is not None
                raise event.error
            if event.kind == "done":
                return "".join(self.chunks)
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

    def __init__(self, req: ChatRequest, owner: str) -> None:
        self.req = req
        self.conversation_id: str | None = None
        self.history: list[dict[str, Any]] = []
        super().__init__(endpoint="chat", model=req.model, payload={}, cache_key="", owner=owner,
                         priority=req.priority, use_cache=req.use_cache)  # fmt: skip

    async def start(self) -> None:
        """Resolve the conversation (404 for an unknown one), then as any generation."""
        req = self.req
        if req.conversation_id == "new":
            self.conversation_id = str(uuid.uuid4())
        elif req.conversation_id:
            self.conversation_id = req.conversation_id
            stored = await run_blocking(
                get_conversation, owner=self.owner, conversation_id=req.conversation_id, count=True
            )
            self.history = fit_history(stored["messages"], req.messages)
        messages = [*self.history, *req.messages]
        self.payload = req.ollama_payload(messages)
        self.cache_key = chat_cache_key(req, messages, self.owner)
        await super().start()

    async def on_done(self) -> None:
        if self.conversation_id:
            await run_blocking(
                append_conversation,
                owner=self.owner,
                conversation_id=self.conversation_id,
                model=self.req.model,
                history=self.history,
                new=self.req.messages,
                reply="".join(self.chunks),
            )

    async def frames(self, first: list[live.Event]) -> AsyncIterator[bytes]:
        """The SSE frames in the seed's format."""
        extra = {"conversation_id": self.conversation_id} if self.conversation_id else {}
        async for frame in event_frames(self.events(first), cached=self.cached, **extra):
            yield frame

    async def answer_body(self) -> dict[str, Any]:
        """The seed's non-streaming body."""
        content = await self.answer()
        body: dict[str, Any] = {
            "message": {"role": "assistant", "content": content},
            "cached": self.cached,
            "model": self.model,
            "done_reason": str(self.final.get("done_reason", "")),
            "metrics": metrics(self.final),
        }
        if self.conversation_id:
            body["conversation_id"] = self.conversation_id
        return body
