"""The one place that reads configuration: ``config.toml`` (or ``CONFIG_PATH``), then env overrides.

Every key is declared once below, with its type, default, environment variable and range. The loader
turns the file plus the environment into frozen dataclasses; ``settings.py`` is its only caller, and
turns every key into the Django setting named like its environment variable (``[queue]
max_queue_size`` is ``QUEUE_MAX_QUEUE_SIZE`` in the file's comments, the environment and
``django.conf.settings``). A
missing file, an unknown key or a bad value raises :class:`ConfigError` whose message is one line
naming the key, the value and where it came from.
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import environ

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


@dataclass(frozen=True)
class OllamaConfig:
    api_url: str = setting("http://localhost:11434", "OLLAMA_API_URL", http_url)
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


@dataclass(frozen=True)
class RedisConfig:
    url: str = setting("", "REDIS_URL", optional_url("redis", "rediss", "unix"))
    key_prefix: str = setting("chatbot", "REDIS_KEY_PREFIX", nonempty)


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
    source: str


SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(Config)[f.name] for f in fields(Config) if f.name != "source"
}


def as_settings(config: Config) -> dict[str, Any]:
    """Every key as a Django setting named by its environment variable (one name per knob)."""
    return {
        f.metadata["env"]: getattr(getattr(config, section), f.name)
        for section, cls in SECTIONS.items()
        for f in fields(cls)
    }


def env_names() -> dict[str, str]:
    """Map every override variable to its ``[section] key`` (used by the docs test)."""
    return {
        f.metadata["env"]: f"[{section}] {f.name}" for section, cls in SECTIONS.items() for f in fields(cls)
    }


# --- loading -----------------------------------------------------------------------------------


def _coerce_toml(kind: Any, value: Any) -> Any:
    """Check a TOML value's type; TOML already distinguishes bool, int, float, str and arrays."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is str:
        # keep_alive may be written as a number of seconds.
        ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        value = str(value) if ok else value
    else:  # list[str]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not ok:
        raise TypeError(f"must be {_type_name(kind)}")
    return value


def _coerce_env(env: environ.Env, name: str, kind: Any) -> Any:
    raw = env.ENVIRON[name]
    if kind is bool:
        if raw.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise TypeError("must be a boolean (true/false)")
        return env.bool(name)
    if kind is str:
        return env.str(name)
    if kind is int or kind is float:
        try:
            return (env.int if kind is int else env.float)(name)
        except ValueError:
            raise TypeError(f"must be {_type_name(kind)}") from None
    return [item for item in env.list(name) if item]


def _type_name(kind: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        kind, "a list of strings"
    )


def load_config(environ_map: Mapping[str, str] | None = None) -> Config:
    """Read the file named by ``CONFIG_PATH`` (default ``config.toml``), then env overrides.

    ``environ_map`` replaces the process environment (and ``.env``) for tests.
    """
    if environ_map is None:
        env_file = BASE_DIR / ".env"
        if env_file.is_file():
            environ.Env.read_env(str(env_file))  # never overrides variables already set
        environ_map = os.environ
    env = environ.Env()
    env.ENVIRON = environ_map
    path = Path(environ_map.get("CONFIG_PATH") or DEFAULT_CONFIG_PATH)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found (set CONFIG_PATH or create it)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None

    for section, table in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"[{section}] in {path}: unknown section (known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{section} in {path}: must be a [section] table")

    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        table = data.get(section, {})
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        for key in table:
            if key not in known:
                raise ConfigError(
                    f"[{section}] {key} in {path}: unknown key (known: {', '.join(sorted(known))})"
                )
        values = {}
        for f in fields(cls):
            kind = hints[f.name]
            kind = list if typing.get_origin(kind) is list else kind
            env_name = f.metadata["env"]
            if env_name in environ_map:
                where, raw = f"env {env_name}", environ_map[env_name]
                try:
                    value = _coerce_env(env, env_name, kind)
                except TypeError as exc:
                    raise ConfigError(f"[{section}] {f.name} = {raw!r} (from {where}): {exc}") from None
            elif f.name in table:
                where, raw = str(path), table[f.name]
                try:
                    value = _coerce_toml(kind, raw)
                except TypeError as exc:
                    raise ConfigError(f"[{section}] {f.name} = {raw!r} (from {where}): {exc}") from None
            else:
                where, raw, value = "default", str(f.default), f.default
            if kind is list:
                value = list(value)
            check = f.metadata["check"]
            problem = check(value) if check else None
            if problem:
                raise ConfigError(f"[{section}] {f.name} = {raw!r} (from {where}): {problem}")
            values[f.name] = value
        built[section] = cls(**values)
    return Config(**built, source=str(path))
