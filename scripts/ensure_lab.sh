#!/usr/bin/env bash
# ensure_lab.sh: what the lab's hosts run and are made with (lab/): iproute2 (namespaces, veth,
# bridge), util-linux (unshare, setpriv), a PostgreSQL server for the db host, redis-server.
# The lab needs root; as another user this only says so (its tests then skip with that reason).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/apt.sh
if [ "$(id -u)" != "0" ]; then
    echo "The lab needs root (network namespaces, a bridge, cgroups): not installing its packages."
    exit 0
fi
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v setpriv >/dev/null && command -v unshare >/dev/null || missing+=(util-linux)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi
