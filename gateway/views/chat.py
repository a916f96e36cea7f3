"""``/api/chat-optimized`` and ``/api/conversations/<id>``: thin views over ``chat.services``."""

from __future__ import annotations

import functools
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse

from chat import services
from chat.errors import NotFound
from chat.http import api_view, owner_of
from chat.requests import parse_chat_request, parse_conversation_id, parse_json_body
from chat.sse import sse_response
from chatbot_site.runtime import run_blocking

CHAT_FIELDS = {
    "messages", "model", "stream", "use_cache", "priority", "options", "format", "keep_alive",
    "conversation_id",
}  # fmt: skip


@api_view("POST")
async def chat_optimized(request: HttpRequest) -> HttpResponseBase:
    req = parse_chat_request(parse_json_body(request), fields=CHAT_FIELDS)
    session = services.ChatSession(req, owner=owner_of(request))
    await session.start()
    headers = {"X-Conversation-ID": session.conversation_id} if session.conversation_id else {}
    if not req.stream:
        response = JsonResponse(await session.answer_body())
        for name, value in headers.items():
            response[name] = value
        return response
    try:
        first = await session.first_events()
    except BaseException:
        await session.close()
        raise
    return sse_response(session.frames(first), headers=headers)


@api_view("GET", "DELETE")
async def conversation(request: HttpRequest, conversation_id: str) -> HttpResponseBase:
    conversation_id = parse_conversation_id(conversation_id)
    owner = owner_of(request)
    if request.method == "DELETE":
        await run_blocking(services.delete_conversation, owner=owner, conversation_id=conversation_id)
        return HttpResponse(status=204)
    stored = await run_blocking(services.get_conversation, owner=owner, conversation_id=conversation_id)
    return JsonResponse({"conversation_id": conversation_id, "messages": stored["messages"]})


@functools.cache
def _page() -> bytes:
    return (Path(__file__).parent / "page" / "index.html").read_bytes()


@api_view("GET", "HEAD")
async def chat_page(request: HttpRequest) -> HttpResponseBase:
    """``/``: the example chat page (``[ui] enabled``)."""
    if not settings.UI_ENABLED:
        raise NotFound("No endpoint at /.", code="not_found")
    response = HttpResponse(_page(), content_type="text/html; charset=utf-8")
    response["X-Frame-Options"] = "DENY"
    return response
