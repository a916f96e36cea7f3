"""Django admin for the queue: inspect requests, cancel them through the same service as the API."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html_join

from queueing.models import ACTIVE, Job, Status
from queueing.selectors import queue_position
from queueing.submit import cancel_many


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "status",
        "owner",
        "kind",
        "model",
        "priority",
        "position",
        "age",
        "attempts",
        "created_at",
    )
    list_filter = ("status", "kind", "owner", "model")
    search_fields = ("payload", "result_content")
    ordering = ("rank",)
    actions = ("cancel_selected",)
    readonly_fields = (
        "id", "kind", "status", "priority", "rank", "endpoint", "model", "cache_key", "use_cache", "owner",
        "idempotency_key", "created_at", "started_at", "finished_at", "caller_seen_at", "attempts",
        "generation_id", "lease_owner", "lease_expires_at", "conversation", "result_content",
        "result_final", "done_reason", "cached", "deduplicated", "error_code", "error_message", "payload",
    )  # fmt: skip
    exclude = ("result_chunks",)

    @admin.display(description="queue position")
    def position(self, job: Job) -> int | str:
        return queue_position(job) if job.status == Status.PENDING else "-"

    @admin.display(description="age")
    def age(self, job: Job) -> str:
        seconds = int((timezone.now() - job.created_at).total_seconds())
        return (
            f"{seconds // 3600}h {seconds % 3600 // 60}m"
            if seconds >= 3600
            else f"{seconds // 60}m {seconds % 60}s"
        )

    @admin.display(description="messages")
    def conversation(self, job: Job) -> str:
        messages_ = job.payload.get("messages") or [
            {"role": "user", "content": job.payload.get("prompt", "")}
        ]
        return format_html_join(
            "", "<p><b>{}</b>: {}</p>", ((m.get("role", "?"), m.get("content", "")) for m in messages_)
        )

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Job], search_term: str) -> Any:
        try:
            return queryset.filter(id=uuid.UUID(search_term.strip())), False
        except ValueError:
            return super().get_search_results(request, queryset, search_term)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        # Rows change only through the queue's services; the change view is read-only.
        return False

    @admin.action(description="Cancel selected requests", permissions=["cancel"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        # Read the selection first: the queryset is re-evaluated, and may be filtered by status.
        selected = list(queryset.values_list("id", "status"))
        cancelled = cancel_many([job_id for job_id, status in selected if status in ACTIVE])
        skipped = len(selected) - cancelled
        self.message_user(
            request,
            f"Cancelled {cancelled} request(s)" + (f"; {skipped} were already finished." if skipped else "."),
            messages.SUCCESS if cancelled else messages.WARNING,
        )

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_staff)
