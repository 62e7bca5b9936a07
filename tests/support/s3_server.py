"""An S3-compatible server on 127.0.0.1 for tests: moto in server mode (a real HTTP endpoint).

    with S3Server() as s3:
        client = s3.client()                       # boto3 client bound to the endpoint
        client.create_bucket(Bucket="models")
        client.put_object(Bucket="models", Key="a.bin", Body=b"...")
        s3.endpoint_url                            # "http://127.0.0.1:<port>"
        s3.env()                                   # AWS_*/BUCKET_* variables pointing at it

Fixture: ``s3_server`` (one server per test; moto's state is reset at teardown).
"""

from __future__ import annotations

import socket
from typing import Any, Iterator

import pytest

__all__ = ["S3Server", "s3_server", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_REGION"]

S3_ACCESS_KEY = "testing-access-key"
S3_SECRET_KEY = "testing-secret-key"
S3_REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self) -> None:
        self.port = 0
        self._server: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "S3Server":
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

        last: Exception | None = None
        for _ in range(5):  # the free port can be taken between probe and bind: retry
            self.port = _free_port()
            try:
                self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
                self._server.start()
                return self
            except OSError as e:  # pragma: no cover - rare race
                last = e
        raise RuntimeError(f"could not start moto server: {last}")

    def close(self) -> None:
        if self._server is not None:
            try:
                import requests  # moto's own dependency

                requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=5)
            except Exception:
                pass
            self._server.stop()
            self._server = None

    def client(self, **kw: Any) -> Any:
        """A boto3 S3 client for this server (path-style addressing, static test credentials)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY, region_name=S3_REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}), **kw)

    def env(self) -> dict[str, str]:
        """Environment variables a Settings.from_env would read to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_DEFAULT_REGION": S3_REGION, "AWS_ENDPOINT_URL": self.endpoint_url,
            "BUCKET_ENDPOINT_URL": self.endpoint_url, "BUCKET_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "BUCKET_SECRET_ACCESS_KEY": S3_SECRET_KEY, "BUCKET_REGION": S3_REGION,
        }

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


@pytest.fixture
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 (free port), stopped at teardown."""
    srv = S3Server().start()
    try:
        yield srv
    finally:
        srv.close()
