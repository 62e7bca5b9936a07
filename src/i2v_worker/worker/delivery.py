"""Returning the video: upload to an S3-compatible bucket (presigned URL) or inline base64.

boto3 directly rather than the runpod SDK's `rp_upload`: that helper silently writes to a local
folder and returns a local path when credentials are missing, and labels files image/<ext>. Here
a missing bucket is an explicit choice (base64) or a clear error, and the result is always a real
http(s) URL or the bytes themselves.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from i2v_worker.config import Settings
from i2v_worker.error_codes import ErrorCode

MIME_TYPE = "video/mp4"  # default; the result's mime_type (from video.encode.FORMATS) wins
BUCKET_VARS = "BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY"


class DeliveryError(Exception):
    """`code`: output_too_large, upload_failed, invalid_input (url delivery without a bucket)."""

    def __init__(self, code: ErrorCode, message: str, details: Any = None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


def bucket_configured(settings: Settings) -> bool:
    return bool(settings.bucket_endpoint_url and settings.bucket_access_key_id and settings.bucket_secret_access_key)


def check_delivery_possible(delivery: str, settings: Settings) -> None:
    """Fail before any work when the requested delivery cannot happen."""
    if delivery == "url" and not bucket_configured(settings):
        raise DeliveryError(
            ErrorCode.INVALID_INPUT,
            f'output.delivery is "url" but no bucket is configured: set {BUCKET_VARS} (and BUCKET_NAME) '
            'on the endpoint, or use delivery "auto" or "base64"',
            details=[{"field": "output.delivery", "rule": "bucket_not_configured",
                      "message": f"needs {BUCKET_VARS}"}])


@dataclass
class Delivered:
    fields: dict[str, Any]  # video or video_url
    upload_s: float = 0.0


def s3_client(settings: Settings) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.bucket_endpoint_url,
        aws_access_key_id=settings.bucket_access_key_id,
        aws_secret_access_key=settings.bucket_secret_access_key,
        region_name=settings.bucket_region or "us-east-1",
        # path-style works on every S3-compatible store (R2, MinIO, B2, moto); s3v4 for presigning
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=10, read_timeout=60),
    )


def upload_video(path: Path, job_id: str, settings: Settings, client: Any = None, mime_type: str = MIME_TYPE) -> str:
    """Upload the video as `<job id>/<file name>` (the encoder's extension) with its ContentType and
    return a presigned GET URL (blocking: run in a thread)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    client = client or s3_client(settings)
    key = f"{_safe_key_part(job_id)}/{path.name}"
    bucket = settings.bucket_name
    try:
        client.upload_file(str(path), bucket, key, ExtraArgs={"ContentType": mime_type})
        url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                            ExpiresIn=settings.url_expiry_s)
    except (Boto3Error, BotoCoreError, ClientError) as exc:
        raise DeliveryError(
            ErrorCode.UPLOAD_FAILED,
            f"uploading the video to s3://{bucket}/{key} at {settings.bucket_endpoint_url} failed: {exc} "
            f"(check {BUCKET_VARS}, BUCKET_NAME and that the bucket exists)") from None
    if not url.startswith(("https://", "http://")):  # never hand out something that is not a URL
        raise DeliveryError(ErrorCode.UPLOAD_FAILED, f"the bucket client returned {url!r}, which is not an http(s) URL")
    return url


def _safe_key_part(job_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in job_id) or "job"


def encode_base64_result(path: Path, result: dict[str, Any], limit: int) -> dict[str, Any]:
    """`result` plus `video` (base64), refused when the whole JSON result would exceed `limit` bytes."""
    size = path.stat().st_size
    too_large = DeliveryError(
        ErrorCode.OUTPUT_TOO_LARGE,
        f"the video is {size / 2**20:.1f} MiB ({(size + 2) // 3 * 4 / 2**20:.1f} MiB as base64), over the inline "
        f"limit of {limit / 2**20:.1f} MiB (I2V_MAX_BASE64_BYTES): configure a bucket ({BUCKET_VARS}) to "
        "receive videos as URLs, or ask for fewer frames or a smaller size",
        details={"video_bytes": size, "limit_bytes": limit})
    if (size + 2) // 3 * 4 > limit:  # clearly too large: do not even encode it
        raise too_large
    out = dict(result, video=base64.b64encode(path.read_bytes()).decode("ascii"))
    if len(json.dumps(out, ensure_ascii=False).encode("utf-8")) > limit:
        raise too_large
    return out


def deliver(path: Path, job_id: str, delivery: str, result: dict[str, Any], settings: Settings,
            client: Any = None, clock=time.monotonic) -> dict[str, Any]:
    """The final result: `result` plus `video_url` (uploaded) or `video` (base64). Blocking."""
    check_delivery_possible(delivery, settings)
    if delivery == "url" or (delivery == "auto" and bucket_configured(settings)):
        t0 = clock()
        url = upload_video(path, job_id, settings, client, result.get("mime_type", MIME_TYPE))
        out = dict(result, video_url=url)
        out.setdefault("timings", {})["upload"] = round(clock() - t0, 4)
        return out
    return encode_base64_result(path, result, settings.max_base64_result_bytes)
