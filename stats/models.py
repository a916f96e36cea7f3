"""What every process shares about use: named counters, and usage per owner, model and hour."""

from __future__ import annotations

from django.db import models


class Counter(models.Model):
    name = models.CharField(max_length=64, primary_key=True)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


class Usage(models.Model):
    """What an owner used of a model in one hour: requests, cache hits, tokens and GPU time (from
    Ollama's final-chunk metrics). Days and months are sums of hours; quotas are checked on them."""

    owner = models.CharField(max_length=200)
    model = models.CharField(max_length=200)
    hour = models.DateTimeField()  # the hour's start, UTC
    requests = models.PositiveBigIntegerField(default=0)  # generations charged to the owner
    cache_hits = models.PositiveBigIntegerField(default=0)  # answered from the cache: no GPU time
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    gpu_ns = models.PositiveBigIntegerField(default=0)  # prompt_eval_duration + eval_duration

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "model", "hour"], name="usage_unique")]
        indexes = [models.Index(fields=["owner", "hour"], name="usage_owner_idx")]
        verbose_name_plural = "usage"

    def __str__(self) -> str:
        return f"{self.owner or 'anonymous'} {self.model} {self.hour:%Y-%m-%d %H}h"
