"""``/api/chat-queue``: submit, inspect, cancel and stream queued requests."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponseBase, JsonResponse

from chat import services as chat
from chat.errors import BadRequest
from chat.http import api_view, owner_of
from chat.requests import parse_chat_request, parse_json_body, parse_request_id
from chat.sse import sse_response
from chatbot_site.runtime import run_blocking
from queueing import live, services
from queueing.models import Job, Status

QUEUE_FIELDS = {"messages", "model", "priority", "options", "format", "keep_alive", "use_cache"}


def _status_body(job: Job) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": str(job.id),
        "status": job.status,
        "queue_position": services.queue_position(job),
    }
    if job.status == Status.COMPLETED:
        body["result"] = {**chat.result_body(job), "cached": job.cached}
    elif job.status in (Status.FAILED, Status.CANCELLED):
        body["error"] = {"error": job.error_message, "code": job.error_code or job.status}
    return body


@api_view("GET", "POST", "DELETE")
async def chat_queue(request: HttpRequest) -> HttpResponseBase:
    owner = owner_of(request)
    if request.method == "POST":
        req = parse_chat_request(parse_json_body(request), fields=QUEUE_FIELDS)
        idempotency_key = request.headers.get("Idempotency-Key") or None
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
            raise BadRequest("Idempotency-Key must be 1 to 200 characters.", code="invalid_idempotency_key")
        job, status = await chat.submit_queued(req, owner=owner, idempotency_key=idempotency_key)
        return JsonResponse({"request_id": str(job.id), "status": status}, status=202)

    request_id = request.GET.get("requestId")
    if request.method == "GET" and request_id is None:
        return JsonResponse(await run_blocking(services.queue_overview))
    job_id = parse_request_id(request_id)
    if request.method == "DELETE":
        job = await chat.cancel(job_id, owner=owner, reason="cancelled by the client")
        return JsonResponse({"request_id": str(job.id), "status": job.status})
    job = await run_blocking(services.get_request, job_id=job_id, owner=owner)
    return JsonResponse(await run_blocking(_status_body, job))


@api_view("GET")
async def chat_queue_stream(request: HttpRequest) -> HttpResponseBase:
    """SSE of one request's tokens; a finished one is replayed at once."""
    job_id = parse_request_id(request.GET.get("requestId"))
    job = await run_blocking(services.get_request, job_id=job_id, owner=owner_of(request))
    # A queued request keeps running when a stream listener leaves: following only reads.
    return sse_response(chat.event_frames(live.follow_request(job.id), cached=job.cached))
