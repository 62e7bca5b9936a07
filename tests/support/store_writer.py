"""A store writer as its own process, for the fleet drills (SIGSTOP, SIGKILL, other hosts).

    python -m tests.support.store_writer STORE MANIFEST NAME ENDPOINT [--stale S] [--beat S]

Runs `ModelStore.ensure([NAME])` against the test hub at ENDPOINT with short lease times, logs to
stderr, prints one JSON line {"ok": bool, "error": str|null, "path": str|null} and exits 0/1.
Run it under `unshare -u sh -c 'hostname hostB; exec python -m ...'` to be another host.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("store")
    p.add_argument("manifest")
    p.add_argument("name")
    p.add_argument("endpoint")
    p.add_argument("--stale", type=float, default=2.0)
    p.add_argument("--beat", type=float, default=0.2)
    p.add_argument("--connections", type=int, default=2)
    p.add_argument("--start-at", type=float, default=0.0, help="unix time to start at (line writers up)")
    a = p.parse_args()
    from i2v_worker.logs import configure_logging

    configure_logging("INFO", sys.stderr)
    from i2v_worker.store import load_manifest
    from tests.support.store_helpers import make_store

    store = make_store(Path(a.store), load_manifest(Path(a.manifest), env={}),
                       hf=SimpleNamespace(endpoint=a.endpoint), connections=a.connections,
                       lease_stale_s=a.stale, lease_heartbeat_s=a.beat, lease_poll_s=0.1, lease_wait_s=120)
    import time

    time.sleep(max(0.0, a.start_at - time.time()))
    try:
        path = store.ensure([a.name])[a.name]
    except Exception as exc:  # noqa: BLE001 - reported to the test
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}", "path": None}), flush=True)
        return 1
    print(json.dumps({"ok": True, "error": None, "path": str(path), "writer": store.writer_id}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
