"""Django settings: built from ``chatbot_site.config`` and nothing else.

Every config key becomes the setting named like its environment variable (``QUEUE_MAX_CONCURRENT``,
``CACHE_TTL_SECONDS``...), generated from the config spec below, so one knob has one name. A few are
then resolved in place (a generated secret key, the thread count that 0 picks, the API key table).

Two deployments come out of one file. Nothing set: SQLite, caches in the SQLite file (shared by
every process on the machine), the in-memory channel layer and the queue worker inside the server.
``REDIS_URL`` moves the caches (django-redis) and the channel layer (channels_redis) to Redis;
``DATABASE_URL`` moves the database (and, without Redis, the caches) to PostgreSQL.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import environ

from chatbot_site.config import BASE_DIR, ConfigError, as_settings, load_config, parse_log_levels

try:
    CONFIG = load_config()
except ConfigError as exc:
    # One line, no traceback: the operator needs the key, the value and where it came from.
    sys.stderr.write(f"chatbot-backend: config error: {exc}\n")
    raise SystemExit(2) from None

globals().update(as_settings(CONFIG))

DATA_DIR = BASE_DIR / "data"


def _secret_key() -> str:
    """The configured key, else one generated once and kept in data/secret_key (0600)."""
    if CONFIG.security.secret_key:
        return CONFIG.security.secret_key
    path = DATA_DIR / "secret_key"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
CORS_ALLOW_CREDENTIALS = False  # never credentials across origins: API keys travel in headers
CORS_URLS_REGEX = r"^/(api|v1)/.*$"
CORS_ALLOW_HEADERS = ("authorization", "content-type", "idempotency-key", "x-request-id")
CORS_EXPOSE_HEADERS = ("x-conversation-id", "x-request-id", "retry-after")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    # Before channels: our `runworker` (the queue worker's start-up and SIGTERM handling) must win.
    "stats",
    "chat",
    "queueing",
    "ops",
    "channels",
]

# The API's request path is async end to end: Django's own (sync) middlewares run only for the admin
# and the operator endpoint (gateway.middleware.OnlyWhereNeeded), each costing a thread hop there.
# Under ASGI an API request runs through API_MIDDLEWARE alone (chatbot_site.handler.ApiHandler).
API_MIDDLEWARE = [
    "gateway.middleware.RequestIdMiddleware",
    "gateway.middleware.MetricsMiddleware",
    "gateway.middleware.ApiHeadersMiddleware",
    *(["corsheaders.middleware.CorsMiddleware"] if CONFIG.security.cors_allowed_origins else []),
]
MIDDLEWARE = [
    *API_MIDDLEWARE,
    "gateway.middleware.Security",
    "gateway.middleware.Sessions",
    "gateway.middleware.Common",
    "gateway.middleware.Csrf",
    "gateway.middleware.Authentication",
    "gateway.middleware.Messages",
    "gateway.middleware.Clickjacking",
]

ROOT_URLCONF = "chatbot_site.urls"
CSRF_FAILURE_VIEW = "chatbot_site.urls.csrf_failure"
ASGI_APPLICATION = "chatbot_site.asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database ----------------------------------------------------------------------------------

if CONFIG.database.url:
    DATABASES = {"default": environ.Env.db_url_config(CONFIG.database.url)}
    DATABASES["default"].update({"CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True})
    # A frozen or unreachable PostgreSQL must fail a request fast with 503 database_unavailable,
    # not hold it: libpq's connect_timeout, and a statement_timeout on every session.
    _pg_options = DATABASES["default"].setdefault("OPTIONS", {})
    _pg_options.setdefault("connect_timeout", max(1, round(CONFIG.database.connect_timeout_seconds)))
    if CONFIG.database.statement_timeout_seconds:
        _statement_ms = int(CONFIG.database.statement_timeout_seconds * 1000)
        _pg_options["options"] = (
            f"{_pg_options.get('options', '')} -c statement_timeout={_statement_ms}".strip()
        )
else:
    _sqlite_file = Path(CONFIG.database.sqlite_path)
    if not _sqlite_file.is_absolute():
        _sqlite_file = BASE_DIR / _sqlite_file
    _sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(_sqlite_file),
            # WAL + IMMEDIATE + a busy timeout: several processes writing at once got 0 "database
            # is locked" errors in 1,500 transactions measured here, where the defaults failed 75
            # of 600.
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            "TEST": {"NAME": str(_sqlite_file.with_name("test_" + _sqlite_file.name))},
            # Keep each thread's connection: opening one per call cost more than the query.
            "CONN_MAX_AGE": None,
        }
    }

# --- caches ------------------------------------------------------------------------------------

# The service bounds the response and conversation caches in bytes itself (chat.caches), so the
# backends' own entry-count culling is pushed out of the way.
_UNBOUNDED: dict[str, object] = {"MAX_ENTRIES": 10**12}

if CONFIG.redis.url:
    _redis_options = {
        "CLIENT_CLASS": "django_redis.client.DefaultClient",
        # Fail fast when Redis is down or frozen: the caches are bypassed, requests still answered.
        "SOCKET_CONNECT_TIMEOUT": CONFIG.redis.timeout_seconds,
        "SOCKET_TIMEOUT": CONFIG.redis.timeout_seconds,
    }
    CACHES = {
        alias: {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": CONFIG.redis.url,
            "KEY_PREFIX": f"{CONFIG.redis.key_prefix}:{alias}",
            "TIMEOUT": None,
            "OPTIONS": _redis_options,
        }
        for alias in ("default", "responses", "conversations")
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 times reads out after 5 s by default, exactly channels_redis's blocking
                # receive timeout (5 s): the receive then fails. Give reads more room than that.
                # Every other layer call is bounded by [redis] timeout_seconds (queueing.layer).
                "hosts": [
                    {
                        "address": CONFIG.redis.url,
                        "socket_timeout": 5 + CONFIG.redis.timeout_seconds,
                        "socket_connect_timeout": CONFIG.redis.timeout_seconds,
                    }
                ],
                "prefix": f"{CONFIG.redis.key_prefix}:channels",
                "capacity": 10_000,
                "expiry": 60,
            },
        }
    }
else:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        # Database caches on the SQLite file (or PostgreSQL): every process on the machine sees
        # them, so `manage.py clear_cache` acts on what the running server cached.
        "responses": {
            "BACKEND": "chat.cache_backends.UpsertDatabaseCache",
            "LOCATION": "cache_responses",
            "TIMEOUT": None,
            "OPTIONS": _UNBOUNDED,
        },
        "conversations": {
            "BACKEND": "chat.cache_backends.UpsertDatabaseCache",
            "LOCATION": "cache_conversations",
            "TIMEOUT": None,
            "OPTIONS": _UNBOUNDED,
        },
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "core.channel_layer.LocalChannelLayer",  # channels' in-memory layer, leaner
            # The default capacity (100) silently drops group messages from a slow listener.
            "CONFIG": {"capacity": 10_000, "expiry": 60},
        }
    }

# --- the service: resolved values and fixed names --------------------------------------------------

# 0 (the default) picks by database: SQLite has one writer and the GIL runs one thread at a time,
# so one thread measured fastest (no busy waits, no thread switches); PostgreSQL works in parallel.
SERVER_WORKERS = CONFIG.server.workers or (4 if CONFIG.database.url else 1)
OLLAMA_API_URL = CONFIG.ollama.api_url.rstrip("/")
QUEUE_WORKER_CHANNEL = "chat-worker"

# Counters are written by a background thread (stats.counters); the test process writes on read.
COUNTERS_BACKGROUND_FLUSH = True

# Reading a larger body raises RequestDataTooBig, which the API answers with 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = CONFIG.limits.max_body_bytes

# --- security: strict when TLS is terminated in front of us --------------------------------------

SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if CONFIG.security.https:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = 31_536_000
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# --- static files, i18n -------------------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- logging: one line per event with level, logger and request id --------------------------------

_ROOT_LEVEL, _MODULE_LEVELS = parse_log_levels(CONFIG.logging.level)
# httpx logs a line per upstream request at INFO: one per generation, probe and model read, on the
# hot path (measured: the default logging cost real time at 16 streams). Failures are logged by the
# gateway itself; "INFO,httpx=INFO" brings the lines back.
_MODULE_LEVELS = {"httpx": "WARNING", **_MODULE_LEVELS}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "core.logs.RequestIdFilter"}},
    "formatters": {
        "line": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
        }
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "line",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": _ROOT_LEVEL},
    "loggers": {name: {"level": level} for name, level in _MODULE_LEVELS.items()},
}
