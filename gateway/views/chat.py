"""``/api/chat-optimized``, ``/api/conversations/<id>`` and the example chat page."""

from __future__ import annotations

import functools
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse

from chat import conversations
from core.errors import NotFound
from core.runtime import run_blocking
from gateway.http import PUBLIC, api_view, owner_of
from gateway.schemas import ChatOptimizedBody
from gateway.schemas.params import ConversationPath
from gateway.session import ChatSession
from gateway.sse import event_frames, sse_response


@api_view("POST", body=ChatOptimizedBody)
async def chat_optimized(request: HttpRequest, body: ChatOptimizedBody) -> HttpResponseBase:
    session = ChatSession(request, body)
    await session.start()
    headers = {"X-Conversation-ID": session.conversation_id} if session.conversation_id else {}
    if not body.stream:
        response = JsonResponse(await session.answer_body())
        for name, value in headers.items():
            response[name] = value
        return response
    first = await session.first_events()
    frames = event_frames(session.events(first), cached=session.cached, **session.done_extra())
    return sse_response(frames, headers=headers)


@api_view("GET", "DELETE")
async def conversation(request: HttpRequest, conversation_id: str) -> HttpResponseBase:
    conversation_id = ConversationPath.of(conversation_id)
    owner = owner_of(request)
    if request.method == "DELETE":
        await run_blocking(conversations.delete_conversation, owner=owner, conversation_id=conversation_id)
        return HttpResponse(status=204)
    stored = await run_blocking(conversations.get_conversation, owner=owner, conversation_id=conversation_id)
    return JsonResponse({"conversation_id": conversation_id, "messages": stored["messages"]})


@functools.cache
def _page() -> bytes:
    return (Path(__file__).resolve().parent.parent / "page" / "index.html").read_bytes()


@api_view("GET", "HEAD", auth=PUBLIC)
async def chat_page(request: HttpRequest) -> HttpResponseBase:
    """``/``: the example chat page (``[ui] enabled``)."""
    if not settings.UI_ENABLED:
        raise NotFound("No endpoint at /.", code="not_found")
    response = HttpResponse(_page(), content_type="text/html; charset=utf-8")
    response["X-Frame-Options"] = "DENY"
    return response
