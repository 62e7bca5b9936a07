"""The `i2v-worker` command: composes the sub-commands each package contributes.

Each package owns its own commands in its own `cli.py` (`register(subparsers)` adds them), so this
module stays a table of contents.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from i2v_worker import __version__

# (module, description) of every package that contributes commands.
_COMMAND_MODULES = (
    "i2v_worker.store.cli",  # models fetch/status/verify/gc/get
    "i2v_worker.worker.cli",  # serve, run, schema, submit
    "i2v_worker.tiny.cli",  # tiny generate
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2v-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"i2v-worker {__version__}")
    parser.add_argument(
        "--log-level", default=os.environ.get("I2V_LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING (env I2V_LOG_LEVEL)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a package still being built: its commands are absent
            if exc.name and exc.name.startswith("i2v_worker"):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # The runpod SDK parses sys.argv itself (--rp_serve_api, --test_input ...): pass unknown
    # arguments through to the commands that hand them on.
    args, extra = parser.parse_known_args(argv)
    from i2v_worker.logs import configure_logging

    configure_logging(args.log_level)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
