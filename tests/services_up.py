"""Exit 0 when the Redis and PostgreSQL URLs given answer, 1 otherwise (used by `make test-scaled`)."""

from __future__ import annotations

import sys

import psycopg
import redis


def main(redis_url: str, database_url: str) -> int:
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
        psycopg.connect(database_url.replace("postgres://", "postgresql://", 1), connect_timeout=2).close()
    except (redis.RedisError, psycopg.Error, OSError) as exc:
        sys.stderr.write(f"not reachable: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
