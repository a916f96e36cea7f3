"""``/api/chat-queue``: submit, inspect, cancel and stream queued requests."""

from __future__ import annotations

import uuid
from typing import Any

from django.http import HttpRequest, HttpResponseBase, JsonResponse

from core.errors import BadRequest
from core.generation import Answer, metrics
from core.runtime import run_blocking
from gateway import payloads
from gateway.http import api_view, owner_of
from gateway.schemas import QueueBody
from gateway.schemas.params import OptionalRequestQuery, RequestQuery
from gateway.sse import event_frames, sse_response
from queueing import selectors, submit
from queueing.follow import follow_request
from queueing.models import Job, Kind, Status


def result_body(job: Job) -> dict[str, Any]:
    """A finished request's answer as the API shows it."""
    final = job.result_final or {}
    return {
        "message": Answer.of(job.result_chunks or []).message(),
        "model": job.model,
        "done_reason": job.done_reason or final.get("done_reason", ""),
        "metrics": metrics(final),
        "cached": job.cached,
    }


def _status_body(job: Job) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": str(job.id),
        "status": job.status,
        "queue_position": selectors.queue_position(job),
    }
    if job.status == Status.COMPLETED:
        body["result"] = result_body(job)
    elif job.status in (Status.FAILED, Status.CANCELLED):
        body["error"] = {"error": job.error_message, "code": job.error_code or job.status}
    return body


def _idempotency_key(request: HttpRequest) -> str | None:
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and not 1 <= len(key) <= 200:
        raise BadRequest("Idempotency-Key must be 1 to 200 characters.", code="invalid_idempotency_key")
    return key


@api_view(
    "GET", "POST", "DELETE", body=QueueBody, query={"GET": OptionalRequestQuery, "DELETE": RequestQuery}
)
async def chat_queue(
    request: HttpRequest,
    body: QueueBody | None = None,
    query: OptionalRequestQuery | RequestQuery | None = None,
) -> HttpResponseBase:
    owner = owner_of(request)
    if body is not None:
        spec = await payloads.spec_for(
            request,
            endpoint="chat",
            payload=payloads.chat_payload(body, payloads.messages_of(body)),
            samples=body.samples(),
            kind=Kind.QUEUED,
            priority=body.priority,
            use_cache=body.use_cache,
            idempotency_key=_idempotency_key(request),
        )
        job, status = await submit.submit_queued(spec)
        return JsonResponse({"request_id": str(job.id), "status": status}, status=202)

    assert query is not None
    if query.requestId is None:
        return JsonResponse(await run_blocking(selectors.queue_overview))
    if request.method == "GET":
        job = await run_blocking(selectors.get_request, job_id=query.requestId, owner=owner)
        return JsonResponse(await run_blocking(_status_body, job))
    job = await submit.cancel(uuid.UUID(query.requestId), owner=owner, reason="cancelled by the client")
    return JsonResponse({"request_id": str(job.id), "status": job.status})


@api_view("GET", query=RequestQuery, streams=True)
async def chat_queue_stream(request: HttpRequest, query: RequestQuery) -> HttpResponseBase:
    """SSE of one request's tokens; a finished one is replayed at once."""
    job = await run_blocking(selectors.get_request, job_id=query.requestId, owner=owner_of(request))
    # A queued request keeps running when a stream listener leaves: following only reads.
    return sse_response(event_frames(follow_request(job.id), cached=job.cached))
