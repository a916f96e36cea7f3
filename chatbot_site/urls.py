"""URL routes. Every error a client can get from them is JSON, framework errors included."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import path

from chat.errors import json_error
from stats import views as stats_views

urlpatterns = [
    path("health", stats_views.health, name="health"),
    path("admin/", admin.site.urls),
]


def bad_request(request: HttpRequest, exception: Any = None) -> JsonResponse:
    return json_error(400, "bad_request", "The request could not be understood.")


def permission_denied(request: HttpRequest, exception: Any = None) -> JsonResponse:
    return json_error(403, "forbidden", "You are not allowed to do that.")


def not_found(request: HttpRequest, exception: Any = None) -> JsonResponse:
    return json_error(404, "not_found", f"No endpoint at {request.path}.")


def csrf_failure(request: HttpRequest, reason: str = "") -> JsonResponse:
    return json_error(403, "csrf_failed", f"CSRF verification failed: {reason}")


def server_error(request: HttpRequest) -> JsonResponse:
    return json_error(500, "internal_error", "The server failed; the error was logged.")


handler400 = bad_request
handler403 = permission_denied
handler404 = not_found
handler500 = server_error
