"""`i2v-worker models ...`: fetch, status, verify, gc, get (the contract others script against).

Exit codes: 0 ok, 1 failure (one clear line on stderr; a traceback only with --log-level DEBUG),
2 usage. Settings come from the environment (`Settings.from_env`); flags override them.
Only argparse is imported at module level: `models get` (used by the benchmark) must start fast
and never pulls torch.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--manifest", metavar="FILE", help="manifest TOML (env I2V_MANIFEST; default: the packaged one)")
    common.add_argument("--store", metavar="DIR", help="store root (env I2V_MODEL_DIR)")

    models = subparsers.add_parser("models", help="model store: fetch, status, verify, gc, get",
                                   description="Manage the model store.")
    sub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    models.set_defaults(func=lambda args: (models.print_help(), 2)[1])

    p = sub.add_parser("fetch", parents=[common], help="download models into the store (verified, resumable)")
    p.add_argument("names", nargs="*", metavar="NAME", help="model names (default: the preset's models)")
    p.add_argument("--preset", help="fetch this preset's models (env I2V_PRESET)")
    p.add_argument("--connections", type=int, metavar="N", help="connections per file (env I2V_CONNECTIONS)")
    p.add_argument("--dry-run", action="store_true",
                   help="say what would be adopted from where and how many bytes are left to download; change nothing")
    p.set_defaults(func=_run(_fetch))

    p = sub.add_parser("status", parents=[common], help="show each model's state (no network, no hashing)")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these models")
    p.add_argument("--preset", help="only this preset's models")
    p.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")
    p.set_defaults(func=_run(_status))

    p = sub.add_parser("verify", parents=[common], help="check records; --full rehashes every file")
    p.add_argument("--full", action="store_true", help="rehash each file and compare with its record or pin")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run(_verify))

    p = sub.add_parser("gc", parents=[common], help="remove stale temp files and files no manifest entry references; "
                       "trim job LoRAs to I2V_LORA_BUDGET_GB (least recently used first, never one in use)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.set_defaults(func=_run(_gc))

    p = sub.add_parser("get", help="download one URL (hf:// or http(s)://) to DEST with the store's engine")
    p.add_argument("url", metavar="URL")
    p.add_argument("dest", metavar="DEST", help="destination file (or an existing directory)")
    p.add_argument("--sha256", metavar="HEX", help="expected sha256 (default: the server's X-Linked-Etag if any)")
    p.add_argument("--size", type=int, metavar="N", help="expected size in bytes")
    p.add_argument("--connections", type=int, metavar="N", help="parallel connections (env I2V_CONNECTIONS)")
    p.set_defaults(func=_run(_get))


def _run(fn):
    """Wrap a command: one clear error line and exit 1; a traceback only at DEBUG."""

    def call(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except BrokenPipeError:  # output piped into `head` and closed
            return 1
        except KeyboardInterrupt:
            print("interrupted (partial downloads are kept and resume on the next fetch)", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - the CLI's one place that turns errors into a line
            if str(getattr(args, "log_level", "")).upper() == "DEBUG":
                import traceback

                traceback.print_exc()
            from i2v_worker.store.errors import StoreError

            text = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
            print(f"error: {text}", file=sys.stderr)
            return 1

    return call


def _settings(args: argparse.Namespace):
    from pathlib import Path

    from i2v_worker.config import Settings

    over: dict[str, Any] = {}
    if getattr(args, "store", None):
        over["model_dir"] = Path(args.store).expanduser()
    if getattr(args, "manifest", None):
        over["manifest"] = Path(args.manifest).expanduser()
    if getattr(args, "preset", None):
        over["preset"] = args.preset
    if getattr(args, "connections", None):
        over["connections_per_file"] = args.connections
    return Settings.from_env(**over)


def _store(args: argparse.Namespace):
    from i2v_worker.store.store import ModelStore

    settings = _settings(args)
    return settings, ModelStore.from_settings(settings)


def _selected(args: argparse.Namespace, store, settings, *, default_all: bool) -> list[str]:
    names = list(getattr(args, "names", None) or [])
    for n in names:
        store.manifest.get(n)  # unknown name -> ManifestError naming the known ones
    preset = getattr(args, "preset", None)
    if preset:
        names += [e.name for e in store.manifest.preset(preset)]
    if not names:
        names = store.manifest.names() if default_all else [e.name for e in store.manifest.preset(settings.preset)]
    return list(dict.fromkeys(names))


def _fetch(args: argparse.Namespace) -> int:
    import time

    from i2v_worker.store.progress import LogProgress, RichProgress

    settings, store = _store(args)
    names = _selected(args, store, settings, default_all=False)
    if getattr(args, "dry_run", False):
        return _print_plan(store, names)
    t0 = time.monotonic()
    if sys.stderr.isatty():
        with RichProgress(names) as bars:
            store.ensure(names, progress=bars)
    else:
        store.ensure(names, progress=LogProgress())
    statuses = store.status(names)
    _print_table(statuses, title=f"fetched {len(names)} model(s) in {time.monotonic() - t0:.1f} s",
                 origins=_origins(store, statuses))
    return 0


def _status_dict(s, origin: str | None = None) -> dict[str, Any]:
    d = {"name": s.name, "folder": s.folder, "size": s.size, "state": s.state.value, "pinned": s.pinned,
         "path": str(s.path), "bytes_on_disk": s.bytes_on_disk, "sha256": s.sha256}
    if origin is not None:
        d["origin"] = origin  # "downloaded", "adopted from PATH (hardlink|symlink)", ... (issue 10)
    return d


def _origins(store, statuses) -> dict[str, str]:
    from i2v_worker.store.adopt.plan import status_origin

    return {s.name: status_origin(store, s.name, s.state) for s in statuses}


def _print_plan(store, names: list[str]) -> int:
    """`models fetch --dry-run`: per model, present / adopt from PATH / download (bytes), and the total."""
    import json

    from rich.console import Console
    from rich.table import Table

    from i2v_worker.store.adopt import plan_fetch

    plan = plan_fetch(store, names)
    table = Table(title=f"fetch --dry-run: model store {store.root}", title_justify="left")
    for col in ("name", "state", "action", "from", "to download"):
        table.add_column(col, overflow="fold")
    for i in plan.items:
        left = "-" if i.action in ("present", "adopt") else ("? (unpinned)" if i.bytes_to_download is None
                                                              else _human(i.bytes_to_download))
        table.add_row(i.name, i.state, i.action, i.source, left)
    console = Console(width=200 if not sys.stdout.isatty() else None)
    console.print(table)
    for i in plan.items:
        for r in i.rejected:
            print(f"  {i.name}: not adoptable: {r}")
    adopt = [i for i in plan.items if i.action == "adopt"]
    unknown = plan.unknown_sizes
    print(f"would adopt {len(adopt)} model(s) ({_human(sum(i.size or 0 for i in adopt))}), "
          f"download {sum(1 for i in plan.items if i.action in ('download', 'resume'))} "
          f"({plan.bytes_to_download} bytes = {_human(plan.bytes_to_download)}"
          + (f" + {len(unknown)} unpinned of unknown size: {' '.join(unknown)}" if unknown else "") + ")")
    print("plan-json: " + json.dumps({"bytes_to_download": plan.bytes_to_download, "unknown_sizes": unknown,
                                      "items": [i.__dict__ | {"rejected": list(i.rejected)} for i in plan.items]}))
    return 0


def _print_table(statuses, title: str | None = None, origins: dict[str, str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    cols = ("name", "folder", "size", "state", "pinned", "path") + (("origin",) if origins is not None else ())
    for col in cols:
        table.add_column(col, overflow="fold")
    colors = {"present": "green", "missing": "red", "corrupt": "bold red", "unverified": "yellow",
              "partial": "yellow", "downloading": "cyan"}
    for s in statuses:
        size = "?" if s.size is None else _human(s.size)
        state = s.state.value
        if state in ("partial", "downloading") and s.bytes_on_disk:
            state += f" ({_human(s.bytes_on_disk)})"
        table.add_row(s.name, s.folder, size, f"[{colors.get(s.state.value, 'white')}]{state}[/]",
                      "yes" if s.pinned else "no", str(s.path),
                      *((origins.get(s.name, ""),) if origins is not None else ()))
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _status(args: argparse.Namespace) -> int:
    import json

    settings, store = _store(args)
    names = _selected(args, store, settings, default_all=True)
    statuses = store.status(names)
    loras = [] if getattr(args, "names", None) or getattr(args, "preset", None) else _job_loras(settings, store).status()
    origins = _origins(store, statuses)
    if args.json:
        print(json.dumps([_status_dict(s, origins[s.name]) for s in statuses] + [_job_lora_dict(s) for s in loras],
                         indent=1))
    else:
        _print_table(statuses, title=f"model store {store.root}", origins=origins)
        if loras:
            _print_job_loras(loras, settings)
    return 0


def _job_loras(settings, store):
    from i2v_worker.store.job_loras import JobLoraStore

    return JobLoraStore.from_settings(settings, store)


def _job_lora_dict(s) -> dict[str, Any]:
    return {"name": f"job/{s.sha256}.safetensors", "folder": "loras", "kind": "job_lora", "size": s.size,
            "state": "present", "sha256": s.sha256, "sources": list(s.sources), "last_used": s.last_used,
            "in_use": s.in_use, "path": str(s.path)}


def _print_job_loras(loras, settings) -> None:
    import datetime

    from rich.console import Console
    from rich.table import Table

    total = sum(s.size for s in loras)
    table = Table(title=f"job LoRAs: {_human(total)} of the {settings.lora_budget_gb:g} GB budget (I2V_LORA_BUDGET_GB)",
                  title_justify="left")
    for col in ("sha256", "size", "last used", "in use", "sources"):
        table.add_column(col, overflow="fold")
    for s in loras:
        used = datetime.datetime.fromtimestamp(s.last_used, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if s.last_used else "?"
        table.add_row(s.sha256[:16], _human(s.size), used, "yes" if s.in_use else "no", "\n".join(s.sources))
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


def _verify(args: argparse.Namespace) -> int:
    import json

    from i2v_worker.store.types import ModelState

    _, store = _store(args)
    statuses = store.verify(full=args.full)
    if args.json:
        print(json.dumps([_status_dict(s) for s in statuses], indent=1))
    else:
        _print_table(statuses, title="verify --full (rehashed)" if args.full else "verify (records)")
    corrupt = [s.name for s in statuses if s.state is ModelState.CORRUPT]
    if corrupt:
        print(f"error: corrupt: {' '.join(corrupt)} (their records were dropped; `i2v-worker models fetch` "
              "replaces them)", file=sys.stderr)
        return 1
    return 0


def _gc(args: argparse.Namespace) -> int:
    settings, store = _store(args)
    removed = store.gc(dry_run=args.dry_run)
    removed += _job_loras(settings, store).gc(dry_run=args.dry_run)  # job LoRAs: trimmed to the budget, LRU first
    verb = "would remove" if args.dry_run else "removed"
    for p in removed:
        print(f"{verb} {p}")
    print(f"{verb} {len(removed)} file(s)")
    return 0


def _get(args: argparse.Namespace) -> int:
    from i2v_worker.store.get import get_url

    settings = _settings(args)
    result = get_url(args.url, args.dest, settings=settings, sha256=args.sha256, size=args.size)
    print(f"{result.path}: {result.size} bytes in {result.seconds:.2f} s "
          f"({result.size / 1e6 / max(result.seconds, 1e-9):.1f} MB/s, "
          f"{result.size / 2**20 / max(result.seconds, 1e-9):.1f} MiB/s) sha256 {result.sha256}"
          + (f" resumed {result.resumed_bytes} bytes" if result.resumed_bytes else ""))
    return 0
