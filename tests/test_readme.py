"""The README is part of the product: its tables are generated from the code, and every command it
shows runs (here, or in the test named for it, or in CI).

Regenerate the tables after changing a setting or a job field:
    .venv/bin/python tests/test_readme.py
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLI = [sys.executable, "-m", "i2v_worker"]


def _tables() -> dict[str, str]:
    from i2v_worker.error_codes import troubleshooting_table
    from i2v_worker.worker.cli import settings_table
    from i2v_worker.worker.schema import input_markdown_table

    return {"settings-table": settings_table(), "input-table": input_markdown_table(),
            "errors-table": troubleshooting_table()}


def _with_tables(text: str) -> str:
    for name, table in _tables().items():
        text = re.sub(
            rf"<!-- {name}:start -->.*?<!-- {name}:end -->",
            lambda _m, n=name, t=table: f"<!-- {n}:start -->\n{t}\n<!-- {n}:end -->",
            text,
            flags=re.S,
        )
    return text


def _readme_commands() -> list[str]:
    """Every line of a ```bash block in the README (comments stripped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


# Commands shown in the README that need more than this module can start cheaply, and the test
# (or CI step) that runs each of them for real.
EXERCISED_ELSEWHERE = {
    "make run": ".ci/run",  # ENGINE=comfyui too: .ci/run runs both
    "make image-test": ".ci/run",
    "make test": ".ci/run",
    "make serve": "tests/test_client.py",  # the same `serve --rp_serve_api` on the tiny models
    "make bench": "bench/run.sh",
    "i2v-worker run": "tests/test_cli_worker.py",
    "i2v-worker serve": "tests/test_cli_worker.py",
    "i2v-worker submit": "tests/test_client.py",
    "i2v-worker models get": "tests/test_store_cli.py",
    "docker build": "tests/test_deploy_files.py",  # no Docker engine here: the Dockerfile is checked statically
    ".venv/bin/python -m pytest": "Makefile",  # `make test` runs the same pytest
}


def test_readme_starts_with_the_two_commands():
    head = "\n".join(README.read_text().splitlines()[:8])
    assert "make run" in head and "make test" in head


def test_readme_tables_are_generated_from_the_code():
    text = README.read_text()
    assert _with_tables(text) == text, "README tables are stale: run `.venv/bin/python tests/test_readme.py`"


def test_every_readme_cli_command_parses():
    from i2v_worker.cli import build_parser

    for line in _readme_commands():
        if not line.startswith("i2v-worker "):
            continue
        argv = shlex.split(line)[1:]
        args, extra = build_parser(argv).parse_known_args(argv)
        assert getattr(args, "func", None), line
        assert not extra or getattr(args, "accepts_extra", False), f"{line}: unknown arguments {extra}"


def test_every_readme_command_is_exercised():
    """A command either runs in test_readme_store_commands_run below or is named in EXERCISED_ELSEWHERE,
    whose file must really contain it."""
    here = {"i2v-worker models status", "i2v-worker models fetch", "i2v-worker models verify",
            "i2v-worker models gc", "i2v-worker schema"}
    for line in _readme_commands():
        prefix = next((p for p in sorted(here | EXERCISED_ELSEWHERE.keys(), key=len, reverse=True)
                       if line.startswith(p)), None)
        assert prefix, f"README command not exercised by any test: {line}"
        if prefix in EXERCISED_ELSEWHERE:
            where = ROOT / EXERCISED_ELSEWHERE[prefix]
            word = prefix.split()[-1]
            assert where.exists() and word in where.read_text(), f"{line}: not found in {where}"


@pytest.mark.timeout(300)
def test_readme_store_commands_run(tmp_path):
    """The store and schema commands exactly as the README shows them, on the tiny preset."""
    from i2v_worker.tiny import generate_tiny_models

    tiny = tmp_path / "tiny"
    generate_tiny_models(tiny)
    env = {**os.environ, "I2V_MODEL_DIR": str(tmp_path / "store"), "I2V_TINY_DIR": str(tiny),
           "I2V_PRESET": "tiny", "HF_HUB_OFFLINE": "1"}
    ran = 0
    for line in _readme_commands():
        if not line.startswith(("i2v-worker models status", "i2v-worker models fetch", "i2v-worker models verify",
                                "i2v-worker models gc", "i2v-worker schema")):
            continue
        # `status`/`verify` cover the packaged manifest: restrict them to what this store holds.
        argv = shlex.split(line)[1:]
        proc = subprocess.run(CLI + argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
        assert proc.returncode in (0, 1), f"{line}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
        if "fetch" in argv or "schema" in argv or "gc" in argv:
            assert proc.returncode == 0, f"{line}\n{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}"
        if "--json" in argv:
            states = {m["name"]: m["state"] for m in json.loads(proc.stdout)}
            assert states, line
        ran += 1
    assert ran >= 6


if __name__ == "__main__":
    README.write_text(_with_tables(README.read_text()))
    print("README tables regenerated")
