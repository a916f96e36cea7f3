"""URL routes. Every error a client can get from them is JSON, framework errors included."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.views import serve as staticfiles_serve
from django.http import HttpRequest, JsonResponse
from django.urls import path

from core.errors import ApiError
from gateway.http import anthropic_error, error_response, json_error, openai_error
from gateway.openapi import schema_view
from gateway.views import anthropic as anthropic_api
from gateway.views import chat as chat_views
from gateway.views import ollama as ollama_api
from gateway.views import openai as openai_api
from gateway.views import queue as queue_views
from gateway.views import responses as responses_api
from ops import views as stats_views


def static(request: HttpRequest, path: str) -> Any:
    """Admin assets, served by the app itself so the embedded default needs no web server."""
    return staticfiles_serve(request, path, insecure=True)


urlpatterns = [
    path("", chat_views.chat_page, name="chat-page"),
    path("health", stats_views.health, name="health"),
    path("api/schema", schema_view, name="openapi-schema"),
    path("api/chat-optimized", chat_views.chat_optimized, name="chat-optimized"),
    path("api/conversations/<str:conversation_id>", chat_views.conversation, name="conversation"),
    path("api/chat-queue", queue_views.chat_queue, name="chat-queue"),
    path("api/cache-stats", stats_views.cache_stats, name="cache-stats"),
    path("api/usage", stats_views.usage, name="usage"),
    path("metrics", stats_views.prometheus_metrics, name="metrics"),
    # Ollama's API, for existing Ollama clients.
    path("api/chat", ollama_api.chat, name="ollama-chat"),
    path("api/generate", ollama_api.generate, name="ollama-generate"),
    path("api/embed", ollama_api.embed, name="ollama-embed"),
    path("api/embeddings", ollama_api.legacy_embeddings, name="ollama-embeddings"),
    path("api/tags", ollama_api.tags, name="ollama-tags"),
    path("api/ps", ollama_api.ps, name="ollama-ps"),
    path("api/show", ollama_api.show, name="ollama-show"),
    path("api/version", ollama_api.version, name="ollama-version"),
    *(
        path(f"api/{name}", ollama_api.model_management, name=f"ollama-{name}")
        for name in ("pull", "push", "create", "copy", "delete")
    ),
    path("api/blobs/<path:digest>", ollama_api.model_management, name="ollama-blobs"),
    # OpenAI's API, for the openai SDK and what is built on it.
    path("v1/chat/completions", openai_api.chat_completions, name="openai-chat-completions"),
    path("v1/models", openai_api.models, name="openai-models"),
    path("v1/models/<path:name>", openai_api.model, name="openai-model"),
    path("v1/completions", openai_api.completions, name="openai-completions"),
    path("v1/embeddings", openai_api.embeddings_view, name="openai-embeddings"),
    path("v1/responses", responses_api.responses, name="openai-responses"),
    path("v1/messages", anthropic_api.messages, name="anthropic-messages"),
    path("api/chat-queue/stream", queue_views.chat_queue_stream, name="chat-queue-stream"),
    path("admin/", admin.site.urls),
    path(f"{settings.STATIC_URL.strip('/')}/<path:path>", static),
]


def bad_request(request: HttpRequest, exception: Any = None) -> JsonResponse:
    return json_error(400, "bad_request", "The request could not be understood.")


def permission_denied(request: HttpRequest, exception: Any = None) -> JsonResponse:
    return json_error(403, "forbidden", "You are not allowed to do that.")


def not_found(request: HttpRequest, exception: Any = None) -> JsonResponse:
    error = ApiError(f"No endpoint at {request.path}.", code="not_found", status=404)
    if request.path_info.startswith("/v1/messages/"):
        # count_tokens, batches: Ollama serves neither (a 404), in Anthropic's shape here.
        return anthropic_error(error)
    if request.path_info.startswith("/v1/"):
        return openai_error(error)  # the OpenAI SDKs show the reason only in their own shape
    return error_response(error)


def csrf_failure(request: HttpRequest, reason: str = "") -> JsonResponse:
    return json_error(403, "csrf_failed", f"CSRF verification failed: {reason}")


def server_error(request: HttpRequest) -> JsonResponse:
    return json_error(500, "internal_error", "The server failed; the error was logged.")


handler400 = bad_request
handler403 = permission_denied
handler404 = not_found
handler500 = server_error
