"""Helpers the benchmarks share: a free port, rates and hashes, and an nginx master they configure.

Each bench writes its own nginx config (download.py: one file behind an HF-style redirect, from
nginx.conf.template; cold_start.py: five files with an access log); `NginxProcess` runs it: a
config check first, ready when the bench's probe request answers, stopped with its workers.
"""

from __future__ import annotations

import grp
import hashlib
import http.client
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


class SetupError(SystemExit):
    """The bench could not set itself up (nginx would not start, a tool is missing): the message
    says what; uncaught it ends the bench like SystemExit."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_rate(text: str) -> int:
    """'40m' -> bytes per second (k, m, g: binary multiples)."""
    text = text.strip().lower()
    mult = {"k": 2**10, "m": 2**20, "g": 2**30}.get(text[-1:], 1)
    return int(float(text.rstrip("kmg")) * mult)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def nginx_user_line() -> str:
    """Under root the workers drop to nobody (who must be able to read the served files)."""
    if os.geteuid() != 0:
        return ""
    group = "nogroup"
    try:
        grp.getgrnam(group)
    except KeyError:
        group = "nobody"
    return f"user nobody {group};"


class NginxProcess:
    """An nginx master on 127.0.0.1:`port` running `conf` (which a subclass writes); `probe` is the
    request (method, path) that answers once it serves, and `ready_status` what it must answer
    (None: any answer)."""

    probe: tuple[str, str] = ("GET", "/")
    ready_status: int | None = None

    def __init__(self, binary: str, tmp: Path) -> None:
        self.binary, self.tmp, self.port = binary, tmp, free_port()
        self.conf = tmp / "nginx.conf"
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [self.binary, "-p", str(self.tmp), "-c", str(self.conf), "-e", str(self.tmp / "error.log")]
        check = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True)
        if check.returncode:
            raise SetupError(f"nginx rejected the generated config {self.conf}:\n{check.stderr}")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SetupError(f"nginx exited at start (rc {self.proc.returncode}):\n{self.error_log()}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request(*self.probe)
                r = c.getresponse()
                r.read()
                c.close()
                if self.ready_status is None or r.status == self.ready_status:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise SetupError(f"nginx did not answer on 127.0.0.1:{self.port} within 15 s:\n{self.error_log()}")

    def error_log(self) -> str:
        try:
            return (self.tmp / "error.log").read_text()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # fast shutdown: the master stops its workers
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
