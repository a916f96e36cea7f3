"""Django settings: built from ``chatbot_site.config`` and nothing else.

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

from chatbot_site.config import BASE_DIR, ConfigError, load_config, parse_log_levels

try:
    CONFIG = load_config()
except ConfigError as exc:
    # One line, no traceback: the operator needs the key, the value and where it came from.
    sys.stderr.write(f"chatbot-backend: config error: {exc}\n")
    raise SystemExit(2) from None

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
DEBUG = CONFIG.security.debug
ALLOWED_HOSTS = CONFIG.security.allowed_hosts
CSRF_TRUSTED_ORIGINS = CONFIG.security.csrf_trusted_origins
ADMIN_TOKEN = CONFIG.security.admin_token
# name -> hex SHA-256 of the key; only hashes are ever configured.
API_KEYS = dict(line.split(":", 1) for line in CONFIG.security.api_keys)
SHARED_CACHE = CONFIG.security.shared_cache
RATE_LIMIT_PER_MINUTE = CONFIG.security.rate_limit_per_minute
MAX_CONCURRENT_STREAMS = CONFIG.security.max_concurrent_streams
CORS_ALLOWED_ORIGINS = CONFIG.security.cors_allowed_origins
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
    "chat",
    "queueing",
    "stats",
    "channels",
]

# The API's request path is async end to end: Django's own (sync) middlewares run only for the admin
# and the operator endpoint (chat.middleware.OnlyWhereNeeded), each costing a thread hop there.
MIDDLEWARE = [
    "chat.middleware.RequestIdMiddleware",
    "stats.middleware.MetricsMiddleware",
    "chat.middleware.ApiHeadersMiddleware",
    *(["corsheaders.middleware.CorsMiddleware"] if CONFIG.security.cors_allowed_origins else []),
    "chat.middleware.ApiKeyMiddleware",
    "chat.middleware.Security",
    "chat.middleware.Sessions",
    "chat.middleware.Common",
    "chat.middleware.Csrf",
    "chat.middleware.Authentication",
    "chat.middleware.Messages",
    "chat.middleware.Clickjacking",
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
else:
    SQLITE_PATH = Path(CONFIG.database.sqlite_path)
    if not SQLITE_PATH.is_absolute():
        SQLITE_PATH = BASE_DIR / SQLITE_PATH
    SQLITE_PATH.parent.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(SQLITE_PATH),
            # WAL + IMMEDIATE + a busy timeout: several processes writing at once get 0 "database
            # is locked" errors (measured; see shared/PLATFORM-FACTS.md), where the defaults fail.
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            "TEST": {"NAME": str(SQLITE_PATH.with_name("test_" + SQLITE_PATH.name))},
            # Keep each thread's connection: opening one per call cost more than the query.
            "CONN_MAX_AGE": None,
        }
    }

# --- caches ------------------------------------------------------------------------------------

REDIS_URL = CONFIG.redis.url
REDIS_KEY_PREFIX = CONFIG.redis.key_prefix
# The service bounds the response and conversation caches in bytes itself (chat.caches), so the
# backends' own entry-count culling is pushed out of the way.
_UNBOUNDED = {"MAX_ENTRIES": 10**12}

if REDIS_URL:
    _redis_options = {
        "CLIENT_CLASS": "django_redis.client.DefaultClient",
        # Fail fast when Redis is down: the caches are bypassed, requests are still answered.
        "SOCKET_CONNECT_TIMEOUT": 1.0,
        "SOCKET_TIMEOUT": 1.0,
    }
    CACHES = {
        alias: {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"{REDIS_KEY_PREFIX}:{alias}",
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
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15, "socket_connect_timeout": 2}],
                "prefix": f"{REDIS_KEY_PREFIX}:channels",
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
            "BACKEND": "chatbot_site.layers.LocalChannelLayer",  # channels' in-memory layer, leaner
            # The default capacity (100) silently drops group messages from a slow listener.
            "CONFIG": {"capacity": 10_000, "expiry": 60},
        }
    }

# --- the service -------------------------------------------------------------------------------

SERVER_HOST = CONFIG.server.host
SERVER_PORT = CONFIG.server.port
# 0 (the default) picks by database: SQLite has one writer and the GIL runs one thread at a time,
# so one thread measured fastest (no busy waits, no thread switches); PostgreSQL works in parallel.
SERVER_WORKERS = CONFIG.server.workers or (4 if CONFIG.database.url else 1)
SSE_HEARTBEAT_SECONDS = CONFIG.server.sse_heartbeat_seconds
SERVER_ROOT_PATH = CONFIG.server.root_path

OLLAMA_API_URL = CONFIG.ollama.api_url.rstrip("/")
OLLAMA_MODEL = CONFIG.ollama.model
OLLAMA_KEEP_ALIVE = CONFIG.ollama.keep_alive
OLLAMA_WARM_ON_START = CONFIG.ollama.warm_on_start
OLLAMA_CONNECT_TIMEOUT_SECONDS = CONFIG.ollama.connect_timeout_seconds
OLLAMA_FIRST_TOKEN_TIMEOUT_SECONDS = CONFIG.ollama.first_token_timeout_seconds
OLLAMA_IDLE_TIMEOUT_SECONDS = CONFIG.ollama.idle_timeout_seconds
OLLAMA_GENERATION_TIMEOUT_SECONDS = CONFIG.ollama.generation_timeout_seconds

RESPONSE_CACHE_ENABLED = CONFIG.cache.enabled
RESPONSE_CACHE_MAX_SIZE_MB = CONFIG.cache.max_size_mb
RESPONSE_CACHE_TTL_SECONDS = CONFIG.cache.ttl_seconds
CONVERSATION_CACHE_MAX_SIZE_MB = CONFIG.conversation_cache.max_size_mb
CONVERSATION_CACHE_TTL_SECONDS = CONFIG.conversation_cache.ttl_seconds

BATCH_MAX_SIZE = CONFIG.batch.max_batch_size
BATCH_TIMEOUT_MS = CONFIG.batch.batch_timeout_ms
BATCH_DEDUPLICATION = CONFIG.batch.enable_deduplication

QUEUE_MAX_CONCURRENT = CONFIG.queue.max_concurrent
QUEUE_MAX_SIZE = CONFIG.queue.max_queue_size
QUEUE_EMBEDDED_WORKER = CONFIG.queue.embedded_worker
QUEUE_LEASE_SECONDS = CONFIG.queue.lease_seconds
QUEUE_MAX_ATTEMPTS = CONFIG.queue.max_attempts
QUEUE_POLL_INTERVAL_MS = CONFIG.queue.poll_interval_ms
QUEUE_PRIORITY_AGING_SECONDS = CONFIG.queue.priority_aging_seconds
QUEUE_WORKER_CHANNEL = "chat-worker"

# Counters are written by a background thread (stats.counters); the test process writes on read.
COUNTERS_BACKGROUND_FLUSH = True

LIMITS_MAX_BODY_BYTES = CONFIG.limits.max_body_bytes
LIMITS_MAX_MESSAGES = CONFIG.limits.max_messages
LIMITS_MAX_MESSAGE_CHARS = CONFIG.limits.max_message_chars
LIMITS_MAX_PRIORITY = CONFIG.limits.max_priority
# Reading a larger body raises RequestDataTooBig, which the API answers with 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = LIMITS_MAX_BODY_BYTES

UI_ENABLED = CONFIG.ui.enabled

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
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "chat.logs.RequestIdFilter"}},
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
