"""The byte-accounting index of the response and conversation caches."""

from __future__ import annotations

from django.db import models


class CacheEntry(models.Model):
    """One stored cache value: its size and when it was last used (for LRU eviction).

    Django's cache API reports no sizes and has no LRU order, and the cache backends differ by
    deployment; this table, in the database every process shares, keeps both for all of them.
    """

    alias = models.CharField(max_length=32)
    key = models.CharField(max_length=200)
    size_bytes = models.PositiveIntegerField()
    last_used = models.FloatField()  # epoch seconds
    expires_at = models.FloatField()  # epoch seconds; the backend drops the value then too

    class Meta:
        constraints = [models.UniqueConstraint(fields=["alias", "key"], name="cache_entry_unique")]
        indexes = [
            models.Index(fields=["alias", "last_used"], name="cache_entry_lru_idx"),
            models.Index(fields=["alias", "expires_at"], name="cache_entry_expiry_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.alias}:{self.key} ({self.size_bytes} B)"
