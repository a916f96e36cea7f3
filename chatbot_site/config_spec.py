"""Every configuration key, declared once: its section, type, default, environment variable and check.

``chatbot_site.config`` is the loader that reads them. Named tables (``[owners.<name>]``,
``[models."<name>"]``) hold per-owner and per-model settings; they come from the file only. The loader
turns the file plus the environment into frozen dataclasses; ``settings.py`` is its only caller, and
turns every key into the Django setting named like its environment variable (``[queue]
max_queue_size`` is ``QUEUE_MAX_QUEUE_SIZE`` in the file's comments, the environment and
``django.conf.settings``; a named table is ``OWNERS`` / ``MODELS``, a dict of its entries).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from core.values import keep_alive_problem

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = BASE_DIR / "config.toml"

Check = Callable[[Any], "str | None"]


class ConfigError(Exception):
    """A configuration problem, described in one line."""


# --- value checks: each returns None when the value is fine, else what is wrong -------------------


def between(low: float, high: float) -> Check:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}"

    return check


def nonempty(value: Any) -> str | None:
    return None if str(value).strip() else "must not be empty"


def http_url(value: Any) -> str | None:
    parsed = urlparse(str(value))
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return "must be an http:// or https:// URL"
    return None


def optional_url(*schemes: str) -> Check:
    def check(value: Any) -> str | None:
        if not value:
            return None
        scheme = urlparse(str(value)).scheme
        return None if scheme in schemes else f"must be empty or a URL with scheme {'/'.join(schemes)}"

    return check


_LEVELS = {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}


def log_level(value: Any) -> str | None:
    try:
        parse_log_levels(str(value))
    except ValueError as exc:
        return str(exc)
    return None


def parse_log_levels(spec: str) -> tuple[str, dict[str, str]]:
    """Parse ``"INFO,chat.ollama=DEBUG"`` into a root level and per-logger levels."""
    root, modules = "INFO", {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, level = part.rpartition("=")
        if level.upper() not in _LEVELS:
            raise ValueError(f"unknown log level {level!r} (use {', '.join(sorted(_LEVELS))})")
        if name:
            modules[name.strip()] = level.upper()
        else:
            root = level.upper()
    return root, modules


_KEY_LINE = re.compile(r"^[A-Za-z0-9_.-]{1,64}:[0-9a-f]{64}$")


def api_key_lines(value: Any) -> str | None:
    names = []
    for line in value:
        if not _KEY_LINE.match(line):
            return 'each entry must be "name:<hex SHA-256 of the key>" (see manage.py create_api_key)'
        names.append(line.split(":", 1)[0])
    return "key names must be unique" if len(set(names)) != len(names) else None


def origins(value: Any) -> str | None:
    for origin in value:
        parsed = urlparse(origin)
        if origin == "*" or parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path:
            return f"{origin!r} is not an origin such as https://chat.example.org (no wildcards)"
    return None


def root_path(value: Any) -> str | None:
    text = str(value)
    if text and (not text.startswith("/") or text.endswith("/") or "//" in text):
        return 'must be empty or a path prefix such as "/chat" (leading slash, no trailing slash)'
    return None


def setting(default: Any, env: str, check: Check | None = None) -> Any:
    """Declare a config key: its default, the env variable that overrides it, and its check."""
    return field(default=default, metadata={"env": env, "check": check})


# --- the sections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    host: str = setting("0.0.0.0", "HOST", nonempty)
    port: int = setting(8080, "PORT", between(1, 65535))
    # Size of each process's thread pool for blocking work (database and cache calls made by the
    # scheduler and services). It also bounds the database connections a process opens.
    workers: int = setting(0, "SERVER_WORKERS", between(0, 64))  # 0: 1 on SQLite, 4 on PostgreSQL
    # A ": ping" comment after this much silence on an SSE stream keeps proxies from closing it.
    sse_heartbeat_seconds: float = setting(15.0, "SSE_HEARTBEAT_SECONDS", between(0.1, 300))
    # The path prefix the service is mounted under behind a proxy ("" = the root). Only ever from
    # configuration: daphne would take it from a client's Daphne-Root-Path header, which the ASGI
    # application overwrites (a forged prefix once made protected paths look public).
    root_path: str = setting("", "SERVER_ROOT_PATH", root_path)
    # A connection must send its whole request head (request line and headers) within this long
    # after it opened or after its last response: slow-header (slowloris) connections are closed.
    header_timeout_seconds: float = setting(10.0, "SERVER_HEADER_TIMEOUT_SECONDS", between(0.5, 600))
    # Open connections per process; beyond it a new one gets 503 and is closed. Keep it below the
    # descriptor limit (the systemd units set LimitNOFILE=65536).
    max_connections: int = setting(900, "SERVER_MAX_CONNECTIONS", between(1, 1_000_000))
    # Output a connection may hold that its client has not read yet; a stream waits (pauses its
    # source) beyond it, and a reader that does not drain for header_timeout_seconds is dropped.
    max_unsent_bytes: int = setting(1_048_576, "SERVER_MAX_UNSENT_BYTES", between(16_384, 1_073_741_824))


@dataclass(frozen=True)
class ServerEntry:
    """One Ollama server of ``[[ollama.servers]]`` (or of ``OLLAMA_SERVERS``)."""

    name: str = ""
    url: str = ""
    max_concurrent: int | None = None  # default: [queue] max_concurrent
    models: list[str] | None = None  # the models it may serve (default: any it has)
    weight: float = 1.0  # a larger server takes more of the load when servers are equally busy


def server_entries(entries: Any) -> str | None:
    names = []
    for i, e in enumerate(entries):
        where = f"entry {i + 1} ({e.name or e.url or '?'})"
        if not e.url or http_url(e.url):
            return f"{where}: url must be an http:// or https:// URL"
        if not e.name or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", e.name):
            return f"{where}: name must be 1 to 64 letters, digits, '_', '.', ':' or '-'"
        if e.max_concurrent is not None and not 1 <= e.max_concurrent <= 256:
            return f"{where}: max_concurrent must be between 1 and 256"
        if not 0 < e.weight <= 1000:
            return f"{where}: weight must be above 0 and at most 1000"
        names.append(e.name)
    return "server names must be unique" if len(set(names)) != len(names) else None


@dataclass(frozen=True)
class OllamaConfig:
    api_url: str = setting("http://localhost:11434", "OLLAMA_API_URL", http_url)
    # Several servers: [[ollama.servers]] tables, or OLLAMA_SERVERS="a=http://gpu-a:11434,http://gpu-b:11434"
    # (a bare URL is named by its host:port). Empty: api_url is the one server.
    servers: list[ServerEntry] = setting((), "OLLAMA_SERVERS", server_entries)
    # A server that fails this many times in a row (refused, timed out, 5xx) is taken out, and tried
    # again after retry_seconds (doubling while it keeps failing, up to four times that).
    failure_threshold: int = setting(3, "OLLAMA_FAILURE_THRESHOLD", between(1, 100))
    retry_seconds: float = setting(5.0, "OLLAMA_RETRY_SECONDS", between(0.1, 3600))
    probe_interval_seconds: float = setting(2.0, "OLLAMA_PROBE_INTERVAL_SECONDS", between(0.1, 3600))
    model: str = setting("deepseek-r1:8b", "OLLAMA_MODEL", nonempty)
    keep_alive: str = setting("15m", "OLLAMA_KEEP_ALIVE", keep_alive_problem)
    warm_on_start: bool = setting(False, "OLLAMA_WARM_ON_START")
    connect_timeout_seconds: float = setting(5.0, "OLLAMA_CONNECT_TIMEOUT_SECONDS", between(0.1, 300))
    first_token_timeout_seconds: float = setting(
        120.0, "OLLAMA_FIRST_TOKEN_TIMEOUT_SECONDS", between(0.1, 3600)
    )
    idle_timeout_seconds: float = setting(60.0, "OLLAMA_IDLE_TIMEOUT_SECONDS", between(0.1, 3600))
    generation_timeout_seconds: float = setting(600.0, "OLLAMA_GENERATION_TIMEOUT_SECONDS", between(1, 86400))


@dataclass(frozen=True)
class CacheConfig:
    max_size_mb: float = setting(256.0, "CACHE_MAX_SIZE_MB", between(0, 1_000_000))
    ttl_seconds: int = setting(3600, "CACHE_TTL_SECONDS", between(1, 31_536_000))
    enabled: bool = setting(True, "CACHE_ENABLED")
    # A sampling request (no seed, temperature not 0) the same owner repeats within this many seconds
    # of being served is a request for a new answer (a chat UI's Regenerate). 0 turns the rule off.
    regenerate_within_seconds: int = setting(300, "CACHE_REGENERATE_WITHIN_SECONDS", between(0, 86_400))


@dataclass(frozen=True)
class ConversationCacheConfig:
    max_size_mb: float = setting(128.0, "CONVERSATION_CACHE_MAX_SIZE_MB", between(0, 1_000_000))
    ttl_seconds: int = setting(1800, "CONVERSATION_CACHE_TTL_SECONDS", between(1, 31_536_000))


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = setting(3, "BATCH_MAX_BATCH_SIZE", between(1, 100))
    batch_timeout_ms: int = setting(2000, "BATCH_TIMEOUT_MS", between(0, 60_000))
    enable_deduplication: bool = setting(True, "BATCH_ENABLE_DEDUPLICATION")


@dataclass(frozen=True)
class QueueConfig:
    max_concurrent: int = setting(1, "QUEUE_MAX_CONCURRENT", between(1, 256))
    max_queue_size: int = setting(100, "QUEUE_MAX_QUEUE_SIZE", between(1, 1_000_000))
    # Run the queue worker inside each server process (the embedded default). Turn off when
    # separate `manage.py runworker chat-worker` processes drain the queue.
    embedded_worker: bool = setting(True, "QUEUE_EMBEDDED_WORKER")
    # A worker renews its jobs' leases every lease/3 s; a job whose lease lapses (its worker died)
    # is re-queued (or failed after max_attempts).
    lease_seconds: float = setting(30.0, "QUEUE_LEASE_SECONDS", between(1, 3600))
    max_attempts: int = setting(3, "QUEUE_MAX_ATTEMPTS", between(1, 100))
    # A retried queued request waits base x 2^(attempt-1) seconds (capped at retry_max_seconds, with
    # jitter) before it may run again; an unreachable or busy Ollama does not use up attempts, but
    # no request is retried after retry_window_seconds from its first failure.
    retry_base_seconds: float = setting(1.0, "QUEUE_RETRY_BASE_SECONDS", between(0, 3600))
    retry_max_seconds: float = setting(15.0, "QUEUE_RETRY_MAX_SECONDS", between(0, 3600))
    retry_window_seconds: float = setting(300.0, "QUEUE_RETRY_WINDOW_SECONDS", between(0, 86_400))
    # A worker refreshes its beat this often; one silent for 3 beats is dead and its jobs are taken.
    heartbeat_seconds: float = setting(1.0, "QUEUE_HEARTBEAT_SECONDS", between(0.1, 60))
    # Workers also poll this often, so a lost wake-up message only delays work.
    poll_interval_ms: int = setting(1000, "QUEUE_POLL_INTERVAL_MS", between(10, 60_000))
    # One priority step is worth this many seconds of waiting: a request of priority p submitted at
    # t is ordered as if submitted at t - p * aging, so low priorities are never starved for ever.
    priority_aging_seconds: float = setting(30.0, "QUEUE_PRIORITY_AGING_SECONDS", between(0, 86_400))


@dataclass(frozen=True)
class LimitsConfig:
    max_body_bytes: int = setting(1_048_576, "LIMITS_MAX_BODY_BYTES", between(1024, 100 * 1_048_576))
    max_messages: int = setting(500, "LIMITS_MAX_MESSAGES", between(1, 100_000))
    max_message_chars: int = setting(200_000, "LIMITS_MAX_MESSAGE_CHARS", between(1, 10_000_000))
    # Higher runs first; requests outside the range are rejected.
    max_priority: int = setting(10, "LIMITS_MAX_PRIORITY", between(0, 1_000_000))


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = setting("", "DATABASE_URL", optional_url("postgres", "postgresql", "sqlite"))
    sqlite_path: str = setting("data/chatbot.sqlite3", "SQLITE_PATH", nonempty)
    # PostgreSQL: connect timeout and per-statement timeout, so a frozen server gives fast 503s.
    connect_timeout_seconds: float = setting(3.0, "DATABASE_CONNECT_TIMEOUT_SECONDS", between(1, 600))
    statement_timeout_seconds: float = setting(10.0, "DATABASE_STATEMENT_TIMEOUT_SECONDS", between(0, 3600))


@dataclass(frozen=True)
class RedisConfig:
    url: str = setting("", "REDIS_URL", optional_url("redis", "rediss", "unix"))
    key_prefix: str = setting("chatbot", "REDIS_KEY_PREFIX", nonempty)
    # Connect and socket timeouts of the caches and the channel layer.
    timeout_seconds: float = setting(2.0, "REDIS_TIMEOUT_SECONDS", between(0.1, 600))


@dataclass(frozen=True)
class SecurityConfig:
    secret_key: str = setting("", "SECRET_KEY")
    debug: bool = setting(False, "DEBUG")
    allowed_hosts: list[str] = setting(("*",), "ALLOWED_HOSTS")
    csrf_trusted_origins: list[str] = setting((), "CSRF_TRUSTED_ORIGINS")
    # Set when TLS is terminated in front of the service: secure cookies, HSTS, HTTPS redirect.
    https: bool = setting(False, "HTTPS")
    # Sent as `X-Admin-Token` to run state-changing operations (cache clears, warm-up) without a
    # staff session. Empty: only staff sessions may.
    admin_token: str = setting("", "ADMIN_TOKEN")
    # "name:<hex SHA-256 of the key>" per client; empty = no keys needed. Each name owns its
    # requests, conversations and cached answers.
    api_keys: list[str] = setting((), "API_KEYS", api_key_lines)
    # Let different owners share cached answers (off: each owner's cache is its own).
    shared_cache: bool = setting(False, "SHARED_CACHE")
    cors_allowed_origins: list[str] = setting((), "CORS_ALLOWED_ORIGINS", origins)
    # Per owner (API key, else client address); 0 turns a limit off.
    rate_limit_per_minute: int = setting(0, "RATE_LIMIT_PER_MINUTE", between(0, 1_000_000))
    max_concurrent_streams: int = setting(0, "MAX_CONCURRENT_STREAMS", between(0, 100_000))


@dataclass(frozen=True)
class UiConfig:
    # The example chat page at /: how a front-end consumes the SSE frames.
    enabled: bool = setting(True, "UI_ENABLED")


@dataclass(frozen=True)
class LoggingConfig:
    level: str = setting("INFO", "LOG_LEVEL", log_level)


@dataclass(frozen=True)
class FairnessConfig:
    # How fast received GPU time is forgotten: an owner's attained service halves every this many
    # seconds (the fair-share pick serves the owner with the least, weighted).
    half_life_seconds: float = setting(60.0, "FAIRNESS_HALF_LIFE_SECONDS", between(1, 86_400))
    default_weight: float = setting(1.0, "FAIRNESS_DEFAULT_WEIGHT", between(0.01, 1000))
    # Per owner (overridable in [owners.<name>]); 0 = no limit.
    max_in_flight: int = setting(0, "FAIRNESS_MAX_IN_FLIGHT", between(0, 10_000))
    max_pending: int = setting(0, "FAIRNESS_MAX_PENDING", between(0, 1_000_000))
    # A streaming interactive request is ordered as if submitted this many seconds earlier than
    # the same owner's other requests: a chat UI's background calls wait behind the user's answer.
    streaming_head_start_seconds: float = setting(
        15.0, "FAIRNESS_STREAMING_HEAD_START_SECONDS", between(0, 3600)
    )
    # Requests for a model Ollama has loaded go first, unless one that would swap models has waited
    # this long.
    model_swap_after_seconds: float = setting(10.0, "FAIRNESS_MODEL_SWAP_AFTER_SECONDS", between(0, 3600))
    # A header naming the end user (Open WebUI forwards X-OpenWebUI-User-Id), trusted only from
    # these client addresses or from keys with forward_user = true.
    trusted_user_header: str = setting("", "FAIRNESS_TRUSTED_USER_HEADER")
    trusted_proxies: list[str] = setting((), "FAIRNESS_TRUSTED_PROXIES")


# --- named tables: [owners.<name>] and [models."<name>"], from the file only --------------------


def positive_or_none(value: Any) -> str | None:
    return None if value is None or value >= 0 else "must not be negative"


def entry(default: Any = None, check: Check | None = positive_or_none) -> Any:
    """A key of a named table: optional (None inherits the section default)."""
    return field(default=default, metadata={"env": None, "check": check})


@dataclass(frozen=True)
class OwnerConfig:
    """One owner (an API key's name): its share, limits and quotas. None inherits [fairness]."""

    weight: float | None = entry()
    max_priority: int | None = entry()
    max_in_flight: int | None = entry()
    max_pending: int | None = entry()
    max_streams: int | None = entry()
    forward_user: bool = entry(False, None)  # may name the end user in [fairness] trusted_user_header
    tokens_per_hour: int | None = entry()
    tokens_per_day: int | None = entry()
    tokens_per_month: int | None = entry()
    gpu_seconds_per_hour: float | None = entry()
    gpu_seconds_per_day: float | None = entry()
    gpu_seconds_per_month: float | None = entry()


@dataclass(frozen=True)
class ModelConfig:
    """One model: generations at once, and runner options pinned or capped so that users who send
    different values do not make Ollama reload the model for each other."""

    max_concurrent: int | None = entry()
    num_ctx: int | None = entry()
    max_num_ctx: int | None = entry()
    num_batch: int | None = entry()
    num_gpu: int | None = entry()
    main_gpu: int | None = entry()
    num_thread: int | None = entry()
    use_mmap: bool | None = entry(None, None)


@dataclass(frozen=True)
class RetentionConfig:
    # Finished queue rows (done, failed, cancelled) are deleted this long after they finished, by
    # the worker and by `manage.py prune_queue`.
    finished_seconds: float = setting(86_400.0, "RETENTION_FINISHED_SECONDS", between(60, 31_536_000))
    # The prompts and answers of finished rows are blanked this long after they finished (the row,
    # its status and its figures stay until finished_seconds); 0: kept as long as the row.
    payload_seconds: float = setting(0.0, "RETENTION_PAYLOAD_SECONDS", between(0, 31_536_000))


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    ollama: OllamaConfig
    cache: CacheConfig
    conversation_cache: ConversationCacheConfig
    batch: BatchConfig
    queue: QueueConfig
    limits: LimitsConfig
    database: DatabaseConfig
    redis: RedisConfig
    security: SecurityConfig
    ui: UiConfig
    logging: LoggingConfig
    fairness: FairnessConfig
    retention: RetentionConfig
    owners: dict[str, OwnerConfig]
    models: dict[str, ModelConfig]
    source: str


# Named tables: section -> the dataclass of each entry.
NAMED: dict[str, type] = {"owners": OwnerConfig, "models": ModelConfig}
SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(Config)[f.name]
    for f in fields(Config)
    if f.name != "source" and f.name not in NAMED
}
