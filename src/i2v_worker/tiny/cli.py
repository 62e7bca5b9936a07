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
    gen.add_argument("--shape", default="tiny",
                     help="tiny (default, a few MB); slice (production dims, one block, about 1.3 GB); "
                          "production (the real sizes, about 27 GB, random blocks: bench/gpu.py)")
    gen.set_defaults(func=_generate)
    tiny.set_defaults(func=lambda args: (tiny.print_help(), 2)[1])


def _generate(args: argparse.Namespace) -> int:
    from i2v_worker.tiny.generate import SHAPES, generate_models, shape_files

    start = time.monotonic()
    shape = getattr(args, "shape", "tiny")
    if shape not in SHAPES:
        print(f"unknown --shape {shape!r}; use one of: {', '.join(SHAPES)}")
        return 2
    paths = generate_models(args.out, SHAPES[shape], names=shape_files(shape), seed=args.seed, force=args.force)
    total = sum(p.stat().st_size for p in paths.values())
    log(logger, logging.INFO, "tiny models ready", out=str(args.out), shape=shape, files=len(paths), bytes=total,
        seconds=round(time.monotonic() - start, 2))
    for role, path in paths.items():
        print(f"{role.value}\t{path}")
    return 0
