"""Source URI parsing and resolution (hf://, http(s)://, file://, s3://) against real local servers."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from i2v_worker.store.errors import DownloadError, OfflineError
from i2v_worker.store.sources import (
    HubConfig, SourceResolver, parse_retry_after, parse_source, redact_url,
)

pytestmark = pytest.mark.timeout(60)

DATA = hashlib.sha256(b"x").digest() * 4096  # 128 KiB
SHA = hashlib.sha256(DATA).hexdigest()


# ---- parsing ------------------------------------------------------------------------------------

def test_parse_hf_with_and_without_revision():
    s = parse_source("hf://Comfy-Org/Wan_2.1_ComfyUI_repackaged@617a7633e636506f850e043bc4605f290a466a8e/split_files/vae/wan_2.1_vae.safetensors")
    assert (s.scheme, s.repo, s.revision, s.path) == (
        "hf", "Comfy-Org/Wan_2.1_ComfyUI_repackaged", "617a7633e636506f850e043bc4605f290a466a8e",
        "split_files/vae/wan_2.1_vae.safetensors")
    s = parse_source("hf://QuantStack/Wan2.2-I2V-A14B-GGUF/HighNoise/x.gguf")
    assert (s.repo, s.revision, s.path) == ("QuantStack/Wan2.2-I2V-A14B-GGUF", "main", "HighNoise/x.gguf")
    assert parse_source("hf://org/repo@refs%2Fpr%2F1/a.bin").revision == "refs/pr/1"


def test_parse_other_schemes():
    assert parse_source("https://cdn.example.com/a/b.bin?sig=1").url == "https://cdn.example.com/a/b.bin?sig=1"
    assert parse_source("file:///models/x.safetensors").path == "/models/x.safetensors"
    s = parse_source("s3://my-bucket/models/x.gguf")
    assert (s.bucket, s.path) == ("my-bucket", "models/x.gguf")


@pytest.mark.parametrize("uri, reason", [
    ("", "empty"),
    ("ftp://host/x", "unsupported scheme"),
    ("hf://org/repo", "expected hf://org/repo"),
    ("hf://org/repo@/x.bin", "empty revision"),
    ("hf://org@v1/repo/x.bin", "goes after the repo name"),
    ("hf://org/repo/../x.bin", "'..'"),
    ("hf://org/re po/x.bin", "bad repo name"),
    ("https:///path", "missing host"),
    ("https://host:99999/x", "bad port"),
    ("file://relative/x.bin", "absolute path"),
    ("file:///models/", "directory"),
    ("file:///models/../etc/passwd", "'..'"),
    ("s3://Bad_Bucket/key", "bucket"),
    ("s3://bucket", "object key"),
    (" hf://org/repo/x.bin", "whitespace"),
])
def test_bad_uris_raise_value_error_with_reason(uri, reason):
    with pytest.raises(ValueError, match=None) as ei:
        parse_source(uri)
    assert reason in str(ei.value)


def test_redact_url_strips_credentials_and_signature():
    assert redact_url("https://user:pw@cdn.example.com:8443/a/b.bin?X-Amz-Signature=abc") == \
        "https://cdn.example.com:8443/a/b.bin"
    assert redact_url("/local/path") == "/local/path"


def test_parse_retry_after_seconds_and_date():
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=lambda: 1445412480.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# ---- resolution -----------------------------------------------------------------------------------

@pytest.fixture
def client():
    with httpx.Client() as c:
        yield c


def test_hf_resolve_reads_linked_headers_and_does_not_follow(hf_server, client):
    hf_server.add_file("org/repo", "main", "dir/m.bin", DATA)
    r = SourceResolver(HubConfig(endpoint=hf_server.endpoint), client).resolve("hf://org/repo/dir/m.bin")
    assert r.size == len(DATA) and r.sha256 == SHA and r.etag == SHA
    assert r.commit == hf_server.commit_of("org/repo")
    assert r.url.startswith(hf_server.cdn_endpoint + "/cdn/")
    assert r.display_url == f"{hf_server.endpoint}/org/repo/resolve/main/dir/m.bin"
    assert r.headers == {"Accept-Encoding": "identity"}
    reqs = hf_server.requests
    assert [(q.method, q.kind) for q in reqs] == [("HEAD", "resolve")]  # one HEAD, redirect not followed
    assert reqs[0].headers["accept-encoding"] == "identity"


def test_hf_relative_location_resolves_against_the_hub_and_keeps_the_token(hf_server_factory, client):
    hf = hf_server_factory(token="tok", cdn_same_origin=True)
    hf.add_file("org/repo", "main", "m.bin", DATA)
    r = SourceResolver(HubConfig(endpoint=hf.endpoint, token="tok"), client).resolve("hf://org/repo/m.bin")
    assert r.url.startswith(hf.endpoint + "/cdn/")
    assert r.headers.get("Authorization") == "Bearer tok"  # same host as the hub: allowed


def test_hf_token_is_not_handed_to_another_host(hf_server_factory, client):
    hf = hf_server_factory(token="tok")
    hf.add_file("org/repo", "main", "m.bin", DATA)
    r = SourceResolver(HubConfig(endpoint=hf.endpoint, token="tok"), client).resolve("hf://org/repo/m.bin")
    assert "Authorization" not in r.headers
    assert hf.resolve_requests()[0].headers["authorization"] == "Bearer tok"


def test_hf_resolve_by_commit(hf_server, client):
    hf_server.add_file("org/repo", "main", "m.bin", DATA)
    commit = hf_server.commit_of("org/repo")
    r = SourceResolver(HubConfig(endpoint=hf_server.endpoint), client).resolve(f"hf://org/repo@{commit}/m.bin")
    assert r.sha256 == SHA and r.commit == commit


def test_hf_401_with_a_token_says_the_token_was_refused(hf_server_factory, client):
    hf = hf_server_factory(token="right")
    hf.add_file("org/repo", "main", "m.bin", DATA)
    with pytest.raises(DownloadError) as ei:
        SourceResolver(HubConfig(endpoint=hf.endpoint, token="wrong"), client).resolve("hf://org/repo/m.bin", model="vae")
    assert ei.value.permanent and "refused" in str(ei.value) and "vae" in str(ei.value)
    assert "wrong" not in str(ei.value)  # the token itself is never printed


def test_offline_raises_without_touching_the_network(hf_server, client):
    hf_server.add_file("org/repo", "main", "m.bin", DATA)
    resolver = SourceResolver(HubConfig(endpoint=hf_server.endpoint, offline=True), client)
    for uri in ("hf://org/repo/m.bin", f"{hf_server.endpoint}/x.bin", "s3://bucket/key"):
        with pytest.raises(OfflineError) as ei:
            resolver.resolve(uri, model="lora")
        assert "HF_HUB_OFFLINE" in str(ei.value) and "lora" in str(ei.value)
    assert hf_server.requests == []


def test_http_source_learns_size_and_etag_following_redirects(hf_server, client):
    hf_server.add_file("org/repo", "main", "m.bin", DATA)
    url = hf_server.resolve_url("org/repo", "main", "m.bin")
    r = SourceResolver(HubConfig(endpoint="http://unused.invalid"), client).resolve(url)
    assert r.size == len(DATA) and r.url.startswith(hf_server.cdn_endpoint)
    assert r.sha256 == SHA  # X-Linked-Etag seen on the redirecting hop
    plain = SourceResolver(HubConfig(), client).resolve(r.url)  # the CDN URL itself: plain HTTP
    assert plain.size == len(DATA) and plain.etag == SHA and plain.sha256 is None


def test_http_404_is_permanent(hf_server, client):
    hf_server.add_file("org/repo", "main", "m.bin", DATA)
    with pytest.raises(DownloadError) as ei:
        SourceResolver(HubConfig(), client).resolve(f"{hf_server.endpoint}/nothing/here")
    assert ei.value.permanent and ei.value.status == 404


def test_file_source(tmp_path, client):
    f = tmp_path / "a.bin"
    f.write_bytes(DATA)
    r = SourceResolver(HubConfig(offline=True), client).resolve(f"file://{f}")
    assert r.size == len(DATA) and r.is_local and r.url == str(f)
    with pytest.raises(DownloadError) as ei:
        SourceResolver(HubConfig(), client).resolve(f"file://{tmp_path}/missing.bin", model="tiny-vae")
    assert ei.value.permanent and "does not exist" in str(ei.value) and "tiny-vae" in str(ei.value)


def test_s3_resolve_presigns_and_reports_missing_objects(s3_server, client):
    s3 = s3_server.client()
    s3.create_bucket(Bucket="models")
    s3.put_object(Bucket="models", Key="m.bin", Body=DATA)
    resolver = SourceResolver(HubConfig(), client, s3_client_factory=s3_server.client)
    r = resolver.resolve("s3://models/m.bin")
    assert r.size == len(DATA) and r.etag == hashlib.md5(DATA).hexdigest()
    assert "Signature" in r.url and "?" not in r.display_url
    got = client.get(r.url, headers={"Range": "bytes=0-9"})
    assert got.status_code == 206 and got.content == DATA[:10]
    with pytest.raises(DownloadError) as ei:
        resolver.resolve("s3://models/absent.bin", model="m")
    assert ei.value.permanent and ei.value.status == 404 and "s3://models/absent.bin" in str(ei.value)


def test_s3_without_client_factory_is_a_clear_error(client):
    with pytest.raises(DownloadError) as ei:
        SourceResolver(HubConfig(), client).resolve("s3://models/m.bin", model="m")
    assert ei.value.permanent and "S3" in str(ei.value)
