"""Delivery: S3 upload against a real S3-compatible server (moto, 127.0.0.1), base64, and the limits."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from i2v_worker.config import Settings
from i2v_worker.worker.delivery import DeliveryError, bucket_configured, deliver
from tests.support.s3_server import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY

pytestmark = pytest.mark.timeout(60)

RESULT = {"mime_type": "video/mp4", "seed": 1, "width": 32, "height": 32, "frames": 5, "fps": 16,
          "timings": {"total": 0.1}}


def write_mp4(path: Path, frames: int = 5, size: int = 32) -> Path:
    """A real (tiny) H.264 MP4 made with PyAV."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=16)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.full((size, size, 3), (i * 40) % 255, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture
def video(tmp_path) -> Path:
    return write_mp4(tmp_path / "job-1_00001.mp4")


def settings_for(tmp_path, s3=None, **kw) -> Settings:
    if s3 is not None:
        kw.update(bucket_endpoint_url=s3.endpoint_url, bucket_access_key_id=S3_ACCESS_KEY,
                  bucket_secret_access_key=S3_SECRET_KEY, bucket_region=S3_REGION, bucket_name="videos")
    return Settings(model_dir=tmp_path / "models", **kw)


def test_upload_to_s3_returns_a_presigned_url(tmp_path, video, s3_server):
    s3_server.client().create_bucket(Bucket="videos")
    settings = settings_for(tmp_path, s3_server, url_expiry_s=3600)
    assert bucket_configured(settings)
    out = deliver(video, "job-1", "auto", dict(RESULT, timings={}), settings)
    assert "video" not in out
    url = out["video_url"]
    assert url.startswith(s3_server.endpoint_url + "/videos/job-1/") and "X-Amz-Expires=3600" in url
    head = s3_server.client().head_object(Bucket="videos", Key=f"job-1/{video.name}")
    assert head["ContentType"] == "video/mp4"
    assert head["ContentLength"] == video.stat().st_size
    got = httpx.get(url, timeout=10)  # the presigned URL works without credentials
    assert got.status_code == 200 and got.content == video.read_bytes()
    assert out["timings"]["upload"] >= 0


def test_url_delivery_uploads(tmp_path, video, s3_server):
    s3_server.client().create_bucket(Bucket="videos")
    out = deliver(video, "job/../2", "url", dict(RESULT), settings_for(tmp_path, s3_server))
    assert "/videos/job_.._2/" in out["video_url"]  # the job id cannot escape its prefix


def test_base64_delivery_even_with_a_bucket(tmp_path, video, s3_server):
    s3_server.client().create_bucket(Bucket="videos")
    out = deliver(video, "job-1", "base64", dict(RESULT), settings_for(tmp_path, s3_server))
    assert base64.b64decode(out["video"]) == video.read_bytes() and "video_url" not in out
    assert s3_server.client().list_objects_v2(Bucket="videos").get("KeyCount", 0) == 0


def test_auto_without_bucket_is_base64_never_a_local_path(tmp_path, video):
    out = deliver(video, "job-1", "auto", dict(RESULT), settings_for(tmp_path))
    assert "video_url" not in out
    assert base64.b64decode(out["video"]) == video.read_bytes()


def test_url_delivery_without_bucket_is_a_clear_error(tmp_path, video):
    with pytest.raises(DeliveryError) as info:
        deliver(video, "job-1", "url", dict(RESULT), settings_for(tmp_path))
    assert info.value.code == "invalid_input"
    assert "BUCKET_ENDPOINT_URL" in info.value.message
    assert info.value.details[0]["field"] == "output.delivery"


def test_too_large_for_base64(tmp_path, video):
    limit = video.stat().st_size  # the base64 text is a third larger than the file
    with pytest.raises(DeliveryError) as info:
        deliver(video, "job-1", "auto", dict(RESULT), settings_for(tmp_path, max_base64_result_bytes=limit))
    assert info.value.code == "output_too_large"
    assert "bucket" in info.value.message and "I2V_MAX_BASE64_BYTES" in info.value.message


def test_limit_counts_the_whole_result(tmp_path, video):
    """The video alone fits; with the rest of the result it does not."""
    encoded = len(base64.b64encode(video.read_bytes()))
    big = dict(RESULT, warnings=["x" * 500])
    whole = len(json.dumps(dict(big, video="A" * encoded)))
    with pytest.raises(DeliveryError) as info:
        deliver(video, "job-1", "auto", big, settings_for(tmp_path, max_base64_result_bytes=whole - 1))
    assert info.value.code == "output_too_large"
    out = deliver(video, "job-1", "auto", big, settings_for(tmp_path, max_base64_result_bytes=whole))
    assert len(json.dumps(out)) <= whole


def test_missing_bucket_is_reported(tmp_path, video, s3_server):
    with pytest.raises(DeliveryError) as info:
        deliver(video, "job-1", "auto", dict(RESULT), settings_for(tmp_path, s3_server))
    assert info.value.code == "upload_failed"
    assert "videos" in info.value.message and "BUCKET_NAME" in info.value.message


def test_unreachable_endpoint_is_reported(tmp_path, video, s3_server):
    s3_server.client().create_bucket(Bucket="videos")
    settings = settings_for(tmp_path, s3_server).model_copy(update={"bucket_endpoint_url": "http://127.0.0.1:9"})
    with pytest.raises(DeliveryError) as info:
        deliver(video, "job-1", "url", dict(RESULT), settings)
    assert info.value.code == "upload_failed" and "127.0.0.1:9" in info.value.message
