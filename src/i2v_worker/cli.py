"""The `i2v-worker` command: composes the sub-commands each package contributes.

Each package owns its own commands in its own `cli.py` (`register(subparsers)` adds them), so this
module stays a table of contents.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from i2v_worker import __version__

# Top-level command -> the module that registers it. Only the module owning the command being run
# is imported, so `models status` does not pay for the client's or the generator's imports.
_COMMANDS = {
    "models": "i2v_worker.store.cli",  # models fetch/status/verify/gc/get
    "serve": "i2v_worker.worker.cli",
    "run": "i2v_worker.worker.cli",
    "schema": "i2v_worker.worker.cli",
    "tiny": "i2v_worker.tiny.cli",  # tiny generate
    "submit": "i2v_worker.client.cli",
}


def _modules_for(argv: list[str]) -> list[str]:
    args = iter(argv)
    command = None
    for arg in args:
        if arg == "--log-level":
            next(args, None)  # skip the option's value
        elif not arg.startswith("-"):
            command = arg
            break
    if command in _COMMANDS:
        return [_COMMANDS[command]]
    return list(dict.fromkeys(_COMMANDS.values()))  # help or a typo: list every command


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2v-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"i2v-worker {__version__}")
    parser.add_argument(
        "--log-level", default=os.environ.get("I2V_LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING (env I2V_LOG_LEVEL)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _modules_for(sys.argv[1:] if argv is None else argv):
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
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
