#!/usr/bin/env bash
# Create the virtualenv and install the project (the site and django-worker-mode) with its dev tools.
# On a fresh Debian machine `python3 -m venv` needs the python3-venv package.
set -euo pipefail
PYTHON="${1:-python3}"
VENV="${2:-.venv}"
cd "$(dirname "$0")/.."

. scripts/apt.sh

if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        apt_install python3-venv
        "$PYTHON" -m venv "$VENV"
    fi
fi
mkdir -p var
echo "Installing dependencies into $VENV (log: var/pip.log)"
# Both distributions, editable, in one pip command: the site's requirement django-worker-mode is
# then met by this checkout's packaging/django-worker-mode (worker_mode/), not looked up elsewhere.
if ! { "$VENV/bin/python" -m pip install --upgrade pip \
        && "$VENV/bin/python" -m pip install -e ./packaging/django-worker-mode -e '.[dev]'; } \
        >var/pip.log 2>&1; then
    tail -n 40 var/pip.log >&2
    echo "error: pip install failed; the whole log is in var/pip.log" >&2
    exit 1
fi
