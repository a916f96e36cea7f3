"""Operations endpoints: health and statistics, and the operators' cache actions."""

from __future__ import annotations

import asyncio
import logging

from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST

from chat.auth import require_operator
from chat.http import api_view
from chat.requests import parse_json_body
from chatbot_site.runtime import run_blocking
from stats import metrics, services

logger = logging.getLogger(__name__)


@api_view("GET", "HEAD")
async def health(request: HttpRequest) -> JsonResponse:
    """``GET /health``: ``{"status": "healthy"}``; ``?deep=1`` adds a check per dependency."""
    deep = request.GET.get("deep", "").lower() in ("1", "true", "yes")
    healthy, report = await services.health_report(deep=deep)
    return JsonResponse(report, status=200 if healthy else 503)


@api_view("GET", "POST")
async def cache_stats(request: HttpRequest) -> HttpResponseBase:
    """``GET``: the statistics. ``POST {"action": ..., "data": {...}}``: an operator's action."""
    if request.method == "GET":
        return JsonResponse(await services.collect_stats())
    who = await require_operator(request)
    body = parse_json_body(request)
    result = await services.run_action(body.get("action"), body.get("data"))
    logger.info("cache-stats action %s by %s: %s", body.get("action"), who, result)
    return JsonResponse(result)


@api_view("GET")
async def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """``GET /metrics`` in Prometheus' text format."""
    metrics.EVENT_LOOP_TASKS.set(len(asyncio.all_tasks()))
    return HttpResponse(await run_blocking(metrics.render), content_type=CONTENT_TYPE_LATEST)
