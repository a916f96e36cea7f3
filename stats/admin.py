"""The admin's usage pages: per owner and model, by hour (read-only; written by the queue)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from stats.models import Usage


@admin.register(Usage)
class UsageAdmin(admin.ModelAdmin):
    list_display = (
        "owner",
        "model",
        "hour",
        "requests",
        "cache_hits",
        "prompt_tokens",
        "output_tokens",
        "gpu_seconds",
    )
    list_filter = ("owner", "model")
    search_fields = ("owner", "model")
    date_hierarchy = "hour"
    ordering = ("-hour", "owner", "model")

    @admin.display(description="GPU seconds")
    def gpu_seconds(self, row: Usage) -> float:
        return round(row.gpu_ns / 1e9, 3)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Usage | None = None) -> bool:
        return False
