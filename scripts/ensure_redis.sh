#!/usr/bin/env bash
# ensure_redis.sh install      make sure the redis-server binary exists (the tests start their own)
# ensure_redis.sh start URL    make sure a Redis answers at URL; if none does and URL points at this
#                              machine, start a private redis-server for the site under var/redis
# ensure_redis.sh stop         stop that private redis-server, if it runs (never any other Redis)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/apt.sh

ensure_binary() {
    command -v redis-server >/dev/null || apt_install redis-server
}

case "${1:-}" in
    install)
        ensure_binary
        ;;
    start)
        URL="${2:?usage: ensure_redis.sh start REDIS_URL}"
        if .venv/bin/python scripts/ping.py redis "$URL"; then
            echo "Redis answers at $URL"
            exit 0
        fi
        read -r HOST PORT < <(.venv/bin/python scripts/ping.py redis-address "$URL")
        case "$HOST" in
            127.*|localhost|::1) ;;
            *) echo "error: no Redis answers at $URL, and it is not on this machine: start it, or set REDIS_URL" >&2
               exit 1 ;;
        esac
        ensure_binary
        mkdir -p var/redis
        echo "No Redis at $URL: starting a private redis-server on $HOST:$PORT (data and log in var/redis)"
        redis-server --bind "$HOST" --port "$PORT" --daemonize yes --dir "$PWD/var/redis" \
            --pidfile "$PWD/var/redis/redis.pid" --logfile "$PWD/var/redis/redis.log" \
            --appendonly yes --save ""
        for _ in $(seq 50); do
            .venv/bin/python scripts/ping.py redis "$URL" && exit 0
            sleep 0.1
        done
        echo "error: redis-server did not come up; see var/redis/redis.log" >&2
        exit 1
        ;;
    stop)
        PIDFILE=var/redis/redis.pid
        if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null \
            && grep -q redis-server "/proc/$(cat "$PIDFILE")/cmdline" 2>/dev/null; then
            PID="$(cat "$PIDFILE")"
            echo "Stopping the private redis-server (pid $PID; its data stays in var/redis)"
            kill -TERM "$PID"
            for _ in $(seq 100); do
                kill -0 "$PID" 2>/dev/null || exit 0
                sleep 0.1
            done
            echo "error: redis-server $PID did not stop within 10 s" >&2
            exit 1
        fi
        echo "No private redis-server of this project runs"
        ;;
    *)
        echo "usage: ensure_redis.sh install | start REDIS_URL | stop" >&2
        exit 2
        ;;
esac
