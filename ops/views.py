"""Operations endpoints: health and statistics, and the operators' cache actions."""

from __future__ import annotations

import asyncio
import logging

from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST

from core.runtime import run_blocking
from gateway.http import KEY, KEY_OR_OPERATOR, OPERATOR, PUBLIC, api_view, owner_of
from gateway.schemas import CacheAction
from gateway.schemas.params import HealthQuery, UsageQuery
from ops import metrics, services
from stats.metrics import EVENT_LOOP_TASKS

logger = logging.getLogger(__name__)


@api_view("GET", "HEAD", auth=PUBLIC, query=HealthQuery)
async def health(request: HttpRequest, query: HealthQuery) -> JsonResponse:
    """``GET /health``: ``{"status": "healthy"}``; ``?deep=1`` adds a check per dependency."""
    healthy, report = await services.health_report(deep=query.is_deep)
    return JsonResponse(report, status=200 if healthy else 503)


@api_view("GET", "POST", auth={"GET": KEY, "POST": OPERATOR}, body=CacheAction)
async def cache_stats(request: HttpRequest, body: CacheAction | None = None) -> HttpResponseBase:
    """``GET``: the statistics. ``POST {"action": ..., "data": {...}}``: an operator's action."""
    if body is None:
        return JsonResponse(await services.collect_stats())
    result = await services.run_action(body.action, body.data)
    logger.info("cache-stats action %s by %s: %s", body.action, getattr(request, "operator", "?"), result)
    return JsonResponse(result)


@api_view("GET")
async def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """``GET /metrics`` in Prometheus' text format."""
    EVENT_LOOP_TASKS.set(len(asyncio.all_tasks()))
    return HttpResponse(await run_blocking(metrics.render), content_type=CONTENT_TYPE_LATEST)


@api_view("GET", auth=KEY_OR_OPERATOR, query=UsageQuery)
async def usage(request: HttpRequest, query: UsageQuery) -> JsonResponse:
    """``GET /api/usage``: an owner's own usage; an operator's (``X-Admin-Token``) is everyone's."""
    owner = None if getattr(request, "operator", None) else owner_of(request)
    return JsonResponse(await run_blocking(services.usage_report, owner=owner, window=query.window))
