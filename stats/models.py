"""Counters every process shares: one row per name, incremented atomically in the database."""

from __future__ import annotations

from django.db import models


class Counter(models.Model):
    name = models.CharField(max_length=64, primary_key=True)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}={self.value}"
