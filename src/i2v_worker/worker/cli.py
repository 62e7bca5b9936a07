"""`i2v-worker serve`, `i2v-worker run --test_input JOB`, `i2v-worker schema [--settings|--output]`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import uuid
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the RunPod serverless worker (the container's entry point)",
                       description="Boots the engine and prefetches the preset's models, then runs the runpod SDK. "
                       "SDK arguments pass through: --rp_serve_api --rp_api_port 8000 --rp_api_host 127.0.0.1 "
                       "start a local API with /run, /runsync, /status.")
    p.set_defaults(func=_serve, accepts_extra=True)

    p = sub.add_parser("run", help="run one job locally and write its MP4",
                       description="Runs exactly one job through the worker's handler. JOB is a JSON string "
                       '({"input": {...}}, as the runpod SDK takes it) or the path of a JSON file. A base64 '
                       "result is written to I2V_OUTPUT_DIR/<job id>.<mp4|webm|gif>. Exit status 1 when the job fails.")
    p.add_argument("--test_input", "--test-input", dest="test_input", required=True, metavar="JOB",
                   help="job JSON, or a path to a JSON file (e.g. examples/job.json)")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON (video data elided)")
    p.set_defaults(func=_run)

    p = sub.add_parser("schema", help="print the job input JSON Schema (or the settings table)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--settings", action="store_true", help="print the environment variables as a Markdown table")
    g.add_argument("--output", action="store_true", help="print the JSON Schema of the job output instead")
    g.add_argument("--markdown", action="store_true", help="print the job input fields as a Markdown table (README)")
    p.set_defaults(func=_schema)


def _serve(args: argparse.Namespace) -> int:
    from i2v_worker.config import Settings
    from i2v_worker.worker.app import serve

    return serve(Settings.from_env(), list(args.extra))


def load_job(text: str) -> dict[str, Any]:
    """JOB: a JSON string or the path of a JSON file; must be an object with an `input` key."""
    source = "the --test_input JSON"
    stripped = text.strip()
    if not stripped.startswith("{"):
        path = Path(text).expanduser()
        try:
            stripped = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SystemExit(f"--test_input: {text!r} is neither JSON nor a readable file ({exc.strerror or exc})")
        source = str(path)
    try:
        job = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--test_input: {source} is not valid JSON: {exc}")
    if not isinstance(job, dict) or "input" not in job:
        raise SystemExit(f'--test_input: {source} must be an object like {{"input": {{...}}}}')
    job.setdefault("id", f"local-{uuid.uuid4().hex[:12]}")
    return job


def _run(args: argparse.Namespace) -> int:
    from i2v_worker.config import Settings
    from i2v_worker.worker.app import build_worker, run_one

    job = load_job(args.test_input)
    settings = Settings.from_env()
    worker = build_worker(settings, progress_sink=_log_progress)
    result = asyncio.run(run_one(worker, job))
    return report_result(job, result, settings.output_dir, as_json=args.json)


def _log_progress(job: dict, payload: dict) -> None:
    """`run`'s stand-in for RunPod's progress_update: the (already throttled) updates go to the log."""
    import logging

    from i2v_worker.logs import log

    log(logging.getLogger("i2v_worker.worker"), logging.INFO, "progress", job=job.get("id"),
        **{k: v for k, v in payload.items() if v is not None})


def report_result(job: dict, result: dict, output_dir: Path, *, as_json: bool = False, out=None) -> int:
    out = out or sys.stdout
    path = None
    if "video" in result and not result.get("error"):
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        from i2v_worker.video.encode import FORMATS

        ext = next((s.extension for s in FORMATS.values() if s.mime_type == result.get("mime_type")), ".mp4")
        path = output_dir / f"{job['id']}{ext}"
        path.write_bytes(base64.b64decode(result["video"]))
    shown = {k: (f"<{len(v)} base64 chars>" if k == "video" else v) for k, v in result.items()}
    if as_json:
        print(json.dumps(dict(shown, path=str(path) if path else None), indent=2, ensure_ascii=False), file=out)
    elif result.get("error"):
        print(f"FAILED [{result.get('error_code')}] {result['error']}", file=out)
        if result.get("details"):
            print(json.dumps(result["details"], indent=2, ensure_ascii=False), file=out)
    else:
        t = result.get("timings", {})
        print(f"ok: {result['width']}x{result['height']}, {result['frames']} frames at {result['fps']} fps, "
              f"seed {result['seed']}, total {t.get('total', 0):.2f} s "
              f"(models {t.get('models', 0):.2f}, inference {t.get('inference', 0):.2f}, "
              f"encode {t.get('encode', 0):.2f}, upload {t.get('upload', 0):.2f})", file=out)
        for w in result.get("warnings") or []:
            print(f"warning: {w}", file=out)
        print(f"video: {path or result.get('video_url')}", file=out)
    return 1 if result.get("error") else 0


def _schema(args: argparse.Namespace) -> int:
    if args.settings:
        print(settings_table())
        return 0
    from i2v_worker.worker.schema import input_json_schema, input_markdown_table, output_json_schema

    if args.markdown:
        print(input_markdown_table())
        return 0
    print(json.dumps(output_json_schema() if args.output else input_json_schema(), indent=2, ensure_ascii=False))
    return 0


def settings_table() -> str:
    """Markdown table of the environment variables, from config.Settings' field descriptions."""
    from i2v_worker.config import Settings

    rows = ["| Variable | Default | Description |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        desc = field.description or name
        var, _, text = desc.partition(":")
        if not text:
            var, text = name.upper(), desc
        default = field.get_default(call_default_factory=True) if not field.is_required() else "(see description)"
        if isinstance(default, (tuple, list, dict)) and not default:
            default = ""
        elif isinstance(default, bool):
            default = "1" if default else "0"
        rows.append(f"| `{var.strip()}` | {('`' + str(default) + '`') if default not in ('', None) else ''} "
                    f"| {text.strip().replace('|', '/')} |")
    return "\n".join(rows)
