"""`i2v-worker tiny generate --out DIR [--seed N] [--force]`: write the tiny stand-in model files."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from i2v_worker.logs import log

logger = logging.getLogger("i2v_worker.tiny")


def register(subparsers: argparse._SubParsersAction) -> None:
    tiny = subparsers.add_parser("tiny", help="tiny stand-in model files (real formats, random weights)")
    tiny_sub = tiny.add_subparsers(dest="tiny_command", metavar="SUBCOMMAND")
    gen = tiny_sub.add_parser(
        "generate",
        help="write the tiny model files (Q5_0 GGUF experts, VAE, fp8-scaled UMT5, LoRA, RIFE) into --out",
    )
    gen.add_argument("--out", required=True, type=Path, help="folder to write into (created if missing)")
    gen.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    gen.add_argument("--force", action="store_true", help="rewrite files that already exist")
    gen.set_defaults(func=_generate)
    tiny.set_defaults(func=lambda args: (tiny.print_help(), 2)[1])


def _generate(args: argparse.Namespace) -> int:
    from i2v_worker.tiny.generate import generate_tiny_models

    start = time.monotonic()
    paths = generate_tiny_models(args.out, seed=args.seed, force=args.force)
    total = sum(p.stat().st_size for p in paths.values())
    log(logger, logging.INFO, "tiny models ready", out=str(args.out), files=len(paths), bytes=total,
        seconds=round(time.monotonic() - start, 2))
    for role, path in paths.items():
        print(f"{role.value}\t{path}")
    return 0
