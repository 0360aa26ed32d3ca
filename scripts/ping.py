"""Answer whether a service is reachable, for the Makefile and .ci/run.

ping.py redis URL           exit 0 when a Redis answers PING at URL
ping.py redis-address URL   print "host port" of a Redis URL
ping.py db URL              exit 0 when the database at URL accepts a connection
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit


def redis_ok(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def db_ok(url: str) -> bool:
    import dj_database_url
    import psycopg

    cfg = dj_database_url.parse(url)
    try:
        psycopg.connect(
            host=cfg["HOST"] or None,
            port=cfg["PORT"] or None,
            user=cfg["USER"] or None,
            password=cfg["PASSWORD"] or None,
            dbname=cfg["NAME"] or None,
            connect_timeout=2,
        ).close()
    except psycopg.Error:
        return False
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    what, url = argv[1], argv[2]
    if what == "redis":
        return 0 if redis_ok(url) else 1
    if what == "redis-address":
        parts = urlsplit(url)
        print(parts.hostname or "127.0.0.1", parts.port or 6379)
        return 0
    if what == "db":
        return 0 if db_ok(url) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
