#!/usr/bin/env bash
# One command for the benchmarks of issue 2: download throughput (nginx CDN emulation) and the
# latency of `models status`. Arguments go to bench/download.py (e.g. --size-mib 256 --runs 1).
# Needs the Debian packages nginx, aria2, curl and time (`make bench` installs them) and the dev
# virtualenv (.venv, or PYTHON=/path/to/python).
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PY" ]; then
    echo "bench: $PY not found: build the virtualenv first (make test), or set PYTHON=" >&2
    exit 2
fi
missing=""
for bin in nginx aria2c curl; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing="$missing $bin"
done
if [ -n "$missing" ]; then
    echo "bench: missing:$missing. Install with: apt-get install -y nginx aria2 curl time" >&2
    exit 2
fi
"$PY" bench/download.py "$@"
rc_download=$?
echo
"$PY" bench/status_latency.py
rc_status=$?
if [ "$rc_download" -ne 0 ] || [ "$rc_status" -ne 0 ]; then
    echo "bench: a target was missed or a step failed (download rc=$rc_download, status rc=$rc_status)" >&2
    exit 1
fi
