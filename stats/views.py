"""Operations endpoints."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from chat.http import api_view
from stats.services import health_report


@api_view("GET", "HEAD")
async def health(request: HttpRequest) -> JsonResponse:
    """``GET /health``: ``{"status": "healthy"}``; ``?deep=1`` adds a check per dependency."""
    deep = request.GET.get("deep", "").lower() in ("1", "true", "yes")
    healthy, report = await health_report(deep=deep)
    return JsonResponse(report, status=200 if healthy else 503)
