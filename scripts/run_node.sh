#!/usr/bin/env bash
# run_node.sh CMD...: run the node in the foreground; when it ends (Ctrl-C included), stop the
# private redis-server that `ensure_redis.sh start` started under var/redis, if one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
private_redis=""
pid=""
[ -s var/redis/redis.pid ] && read -r pid < var/redis/redis.pid  # a builtin: no fork before the traps
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    private_redis=yes
fi
cleanup() {
    if [ -n "$private_redis" ]; then
        scripts/ensure_redis.sh stop
    fi
}
trap cleanup EXIT
# Ctrl-C reaches the node through the terminal's process group (a warm shutdown); this shell
# runs its trap once the node has exited.
trap 'exit 130' INT
trap 'exit 143' TERM
"$@"
