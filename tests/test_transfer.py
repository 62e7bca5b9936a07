"""The transfer engine against a real HF-style server on 127.0.0.1 (tests/support/hf_server.py).

Every test asserts on the bytes delivered into the part file. Files are a few MB with a small
chunk_size so each download is many ranged requests over several connections.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from i2v_worker.store.errors import DiskFullError, DownloadError, IntegrityError
from i2v_worker.store.sources import HubConfig, ResolvedSource, SourceResolver
from i2v_worker.store.transfer import (
    ConnectionBudget, Downloader, ResumeRecord, TransferCancelled, TransferConfig, make_client, read_sidecar,
    remove_part, sidecar_path,
)
from i2v_worker.store.transfer.record import write_sidecar
from tests.support.clock import RecordingClock

pytestmark = pytest.mark.timeout(90)

REPO, REV, PATH = "org/model", "main", "weights/model.bin"
URI = f"hf://{REPO}@{REV}/{PATH}"
SIZE = 3 * 2**20 + 12345  # not a multiple of the chunk size
CHUNK = 256 * 1024


def span(req) -> int:
    """Bytes a recorded ranged request asked for."""
    a, b = req.range.split("=")[1].split("-")
    return int(b) - int(a) + 1


def payload(n: int = SIZE, seed: int = 1) -> bytes:
    # deterministic, incompressible enough, quick to make
    block = hashlib.sha256(f"seed{seed}".encode()).digest() * 32
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(block + i.to_bytes(8, "little")).digest() * 64
        i += 1
    return bytes(out[:n])


@pytest.fixture
def data() -> bytes:
    return payload()


class Rig:
    def __init__(self, hf, tmp: Path, *, token: str | None = None, **cfg) -> None:
        self.hf = hf
        self.tmp = tmp
        self.sleep = RecordingClock()
        self.config = TransferConfig(**{"chunk_size": CHUNK, "connections_per_file": 4, "read_timeout_s": 5.0,
                                        "backoff_base_s": 0.01, **cfg})
        self.client = make_client(self.config)
        self.resolver = SourceResolver(HubConfig(endpoint=hf.endpoint, token=token), self.client, clock=self.sleep)
        self.downloader = Downloader(self.config, clock=self.sleep)
        self.part = tmp / "model.bin.part"

    def resolve(self, uri: str = URI) -> ResolvedSource:
        return self.resolver.resolve(uri, model="test-model")

    def download(self, uri: str = URI, **kw):
        src = self.resolve(uri)
        kw.setdefault("reresolve", lambda: self.resolve(uri))
        return self.downloader.download(src, self.part, model="test-model", **kw)

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def rig_factory(hf_server, tmp_path):
    rigs: list[Rig] = []

    def make(**kw) -> Rig:
        r = Rig(hf_server, tmp_path, **kw)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        r.close()


def test_parallel_ranged_download_delivers_exact_bytes_and_hash(hf_server, rig_factory, data):
    sha = hf_server.add_file(REPO, REV, PATH, data)
    rig = rig_factory()
    progress: list[tuple[int, int | None]] = []
    got = rig.download(progress=lambda done, total: progress.append((done, total)))
    assert rig.part.read_bytes() == data
    assert got.sha256 == sha and got.size == SIZE and got.resumed_bytes == 0 and got.fetched_bytes == SIZE
    gets = hf_server.cdn_requests()
    assert len(gets) == -(-SIZE // CHUNK)  # one request per range, no waste
    assert all(r.status == 206 and r.headers.get("accept-encoding") == "identity" for r in gets)
    starts = sorted(int(r.range.split("=")[1].split("-")[0]) for r in gets)
    assert starts == list(range(0, SIZE, CHUNK))
    assert hf_server.max_active_cdn_gets <= 4
    assert progress[-1] == (SIZE, SIZE)  # final progress call; throttled in between
    assert len(progress) < len(gets)
    assert read_sidecar(rig.part).verified == SIZE


def test_connection_reset_mid_body_resumes_the_range(hf_server, rig_factory, data):
    sha = hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.reset_after_bytes = 100_000
    hf_server.faults.reset_times = 3
    rig = rig_factory()
    got = rig.download()
    assert rig.part.read_bytes() == data and got.sha256 == sha
    resets = [r for r in hf_server.cdn_requests() if r.bytes_sent == 100_000]
    assert len(resets) == 3
    # each reset range was re-requested from where it stopped, not from its start
    assert SIZE <= hf_server.bytes_served < SIZE + 3 * 100_000
    assert got.fetched_bytes == SIZE


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limit_status_with_retry_after_seconds_is_honoured(hf_server, rig_factory, data, status):
    hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.status = status
    hf_server.faults.status_times = 2
    hf_server.faults.retry_after = "7"
    rig = rig_factory(connections_per_file=1)
    rig.download()
    assert rig.part.read_bytes() == data
    assert [r.status for r in hf_server.cdn_requests()][:2] == [status, status]
    waits = [s for s in rig.sleep.calls if s >= 7]
    assert len(waits) == 2 and all(s < 8 for s in waits)


def test_retry_after_http_date_is_honoured(hf_server, rig_factory, data):
    hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.status = 503
    hf_server.faults.status_times = 1
    hf_server.faults.retry_after = email.utils.formatdate(time.time() + 40, usegmt=True)
    rig = rig_factory(connections_per_file=1)
    rig.download()
    assert rig.part.read_bytes() == data
    assert any(30 <= s <= 41 for s in rig.sleep.calls), rig.sleep.calls


def test_resolve_rate_limit_is_retried_with_retry_after(hf_server, rig_factory, data):
    hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.status = 429
    hf_server.faults.status_on_resolve = True
    hf_server.faults.status_times = 1
    hf_server.faults.retry_after = "3"
    rig = rig_factory()
    rig.download()
    assert rig.part.read_bytes() == data
    assert [r.status for r in hf_server.resolve_requests()][:2] == [429, 302]
    assert any(3 <= s < 4 for s in rig.sleep.calls)


def test_stalled_range_is_re_requested(hf_server, rig_factory, data):
    sha = hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.stall_after_bytes = 50_000
    hf_server.faults.stall_s = 30
    hf_server.faults.stall_times = 1
    rig = rig_factory(read_timeout_s=0.5)
    got = rig.download()
    assert rig.part.read_bytes() == data and got.sha256 == sha
    stalled = [r for r in hf_server.cdn_requests() if r.bytes_sent == 50_000]
    assert len(stalled) == 1
    a = int(stalled[0].range.split("=")[1].split("-")[0])
    assert any(r.range and r.range.startswith(f"bytes={a + 50_000}-") for r in hf_server.cdn_requests())


def test_too_slow_range_is_re_requested(hf_server, rig_factory, data):
    sha = hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.trickle_bps = 20_000  # alive, but far below the minimum throughput
    hf_server.faults.trickle_times = 1
    rig = rig_factory(min_throughput_bps=200_000, throughput_window_s=0.5)
    got = rig.download()
    assert rig.part.read_bytes() == data and got.sha256 == sha
    cut = [r for r in hf_server.cdn_requests() if r.bytes_sent < span(r)]
    assert len(cut) == 1
    slow = cut[0]
    a = int(slow.range.split("=")[1].split("-")[0])
    retried = [r for r in hf_server.cdn_requests() if r is not slow and r.range
               and a < int(r.range.split("=")[1].split("-")[0]) < a + CHUNK]
    assert len(retried) == 1  # the rest of that range, asked again on a fresh request


def test_range_ignored_is_never_appended(hf_server, rig_factory, data):
    sha = hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.ignore_range = True
    rig = rig_factory()
    got = rig.download()
    assert rig.part.stat().st_size == SIZE
    assert rig.part.read_bytes() == data and got.sha256 == sha
    assert all(r.status == 200 for r in hf_server.cdn_requests())


def test_range_ignored_after_partial_progress_still_exact(hf_server, rig_factory, data):
    sha = hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.ignore_range_after = 3  # the CDN starts ignoring Range mid-download
    rig = rig_factory(connections_per_file=2)
    got = rig.download()
    assert rig.part.stat().st_size == SIZE
    assert rig.part.read_bytes() == data and got.sha256 == sha
    statuses = [r.status for r in hf_server.cdn_requests()]
    assert statuses[:3] == [206, 206, 206] and 200 in statuses


def test_corrupted_bytes_raise_integrity_error_with_both_hashes(hf_server, rig_factory, data):
    sha = hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.corrupt_offsets = (SIZE // 2,)
    rig = rig_factory()
    with pytest.raises(IntegrityError) as ei:
        rig.download()
    msg = str(ei.value)
    actual = hashlib.sha256(rig.part.read_bytes()).hexdigest()
    assert "test-model" in msg and sha in msg and actual in msg and "mismatch" in msg
    assert ei.value.permanent
    assert not sidecar_path(rig.part).exists()  # never resume from a bad prefix
    assert "?" not in msg


def test_cdn_url_expiry_re_resolves_and_completes(hf_server, rig_factory, data):
    sha = hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.url_valid_requests = 3
    rig = rig_factory()
    got = rig.download()
    assert rig.part.read_bytes() == data and got.sha256 == sha
    assert len(hf_server.resolve_requests()) > 1
    assert any(r.status == 403 for r in hf_server.cdn_requests())


def test_file_changed_upstream_during_download_is_permanent(hf_server, rig_factory, data):
    hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.url_valid_requests = 2
    rig = rig_factory(connections_per_file=1)
    src = rig.resolve()
    new_sha = hf_server.add_file(REPO, REV, PATH, payload(SIZE, seed=2))  # a new commit with other bytes
    with pytest.raises(DownloadError) as ei:
        rig.downloader.download(src, rig.part, model="test-model", reresolve=rig.resolve)
    assert ei.value.permanent and "changed upstream" in str(ei.value) and new_sha in str(ei.value)
    assert len(hf_server.resolve_requests()) == 2


def test_401_without_token_fails_fast_and_says_what_to_do(hf_server_factory, tmp_path, data):
    hf = hf_server_factory(token="secret-token")
    hf.add_file(REPO, REV, PATH, data)
    rig = Rig(hf, tmp_path)
    try:
        with pytest.raises(DownloadError) as ei:
            rig.download()
    finally:
        rig.close()
    assert ei.value.permanent and ei.value.status == 401
    assert "HF_TOKEN" in str(ei.value) and "licence" in str(ei.value) and "test-model" in str(ei.value)
    assert len(hf.requests) == 1 and rig.sleep.calls == []


@pytest.mark.parametrize("uri, reason", [
    ("hf://org/nope/weights/model.bin", "repository org/nope not found"),
    (f"hf://{REPO}@v9/{PATH}", "revision 'v9' not found"),
    (f"hf://{REPO}/weights/other.bin", "file 'weights/other.bin' not found"),
])
def test_404_fails_fast_naming_repo_revision_or_path(hf_server, rig_factory, data, uri, reason):
    hf_server.add_file(REPO, REV, PATH, data)
    rig = rig_factory()
    with pytest.raises(DownloadError) as ei:
        rig.download(uri)
    assert ei.value.permanent and ei.value.status == 404 and reason in str(ei.value)
    assert len(hf_server.requests) == 1 and rig.sleep.calls == []
    assert not rig.part.exists()


def test_404_on_the_cdn_fails_fast(hf_server, rig_factory, data):
    hf_server.add_file(REPO, REV, PATH, data)
    rig = rig_factory()
    src = rig.resolve()
    gone = ResolvedSource(url=hf_server.cdn_url("0" * 64), size=SIZE, sha256="0" * 64, etag=None, commit=None,
                          headers={}, display_url=src.display_url)
    with pytest.raises(DownloadError) as ei:
        rig.downloader.download(gone, rig.part, model="test-model")
    assert ei.value.permanent and ei.value.status == 404
    assert len(hf_server.cdn_requests()) <= 4  # at most the first wave of connections


def test_token_goes_to_the_hub_and_never_to_the_cdn(hf_server_factory, tmp_path, data):
    hf = hf_server_factory(token="secret-token")
    sha = hf.add_file(REPO, REV, PATH, data)
    rig = Rig(hf, tmp_path, token="secret-token")
    try:
        got = rig.download()
    finally:
        rig.close()
    assert rig.part.read_bytes() == data and got.sha256 == sha
    assert all(r.headers.get("authorization") == "Bearer secret-token" for r in hf.resolve_requests())
    assert hf.cdn_requests() and not any("authorization" in r.headers for r in hf.cdn_requests(None))


def test_sidecar_resume_after_cancel_fetches_only_the_rest(hf_server, rig_factory, data):
    sha = hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.rate_limit_bps = 1_000_000  # per connection: the download takes ~1.6 s
    rig = rig_factory(connections_per_file=2)
    cancel = threading.Event()

    def stop_when_half(done, total):
        if done >= SIZE // 2:
            cancel.set()

    with pytest.raises(TransferCancelled):
        rig.download(progress=stop_when_half, cancel=cancel)
    assert rig.part.exists()  # kept for resume
    verified = read_sidecar(rig.part).verified
    assert 0 < verified < SIZE
    hf_server.faults.rate_limit_bps = None
    hf_server.reset_log()
    got = rig.download()
    assert rig.part.read_bytes() == data and got.sha256 == sha
    assert got.resumed_bytes == verified
    assert hf_server.bytes_served <= SIZE - verified + CHUNK  # only the rest was fetched
    assert got.fetched_bytes == hf_server.bytes_served


def test_resume_part_left_by_a_killed_process(hf_server, rig_factory, data, tmp_path):
    """A part whose tail holds garbage beyond the recorded prefix (what SIGKILL leaves) resumes exactly."""
    sha = hf_server.add_file(REPO, REV, PATH, data)
    rig = rig_factory()
    rig.download()
    verified = 5 * CHUNK + 100
    rec = read_sidecar(rig.part)
    write_sidecar(rig.part, ResumeRecord(size=rec.size, sha256=rec.sha256, etag=rec.etag, validator=rec.validator,
                                         done=((0, verified),)))
    with open(rig.part, "r+b") as f:  # bytes after the durable prefix are not trustworthy
        f.seek(verified)
        f.write(b"\0garbage" * 50_000)
    hf_server.reset_log()
    got = rig.download()
    assert rig.part.read_bytes() == data and got.sha256 == sha and got.resumed_bytes == verified
    assert hf_server.bytes_served == SIZE - verified


def test_part_of_another_version_is_not_resumed(hf_server, rig_factory, data):
    hf_server.add_file(REPO, REV, PATH, data)
    rig = rig_factory()
    rig.part.write_bytes(b"x" * SIZE)
    sidecar_path(rig.part).write_text(json.dumps({"v": 1, "size": SIZE, "sha256": "1" * 64, "etag": "1" * 64,
                                                  "verified": SIZE}))
    got = rig.download()
    assert got.resumed_bytes == 0 and rig.part.read_bytes() == data


def test_cancel_stops_promptly_and_keeps_the_part_file(hf_server, rig_factory, data):
    hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.rate_limit_bps = 200_000
    rig = rig_factory(connections_per_file=2)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(TransferCancelled) as ei:
        rig.download(cancel=cancel)
    assert "test-model" in str(ei.value)
    assert rig.part.exists() and sidecar_path(rig.part).exists()
    assert hf_server.bytes_served < SIZE


@pytest.mark.timeout(20)  # the read timeout below is 60 s: only an interrupted read finishes in time
def test_cancel_interrupts_a_stalled_connection(hf_server, rig_factory, data):
    hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.stall_after_bytes = 10_000
    hf_server.faults.stall_s = 60
    hf_server.faults.stall_times = None  # every response stalls
    rig = rig_factory(connections_per_file=2, read_timeout_s=60)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(TransferCancelled):
        rig.download(cancel=cancel)
    assert rig.part.exists()


def test_connection_budget_caps_connections_across_downloads(hf_server, tmp_path, data):
    hf_server.add_file(REPO, REV, PATH, data)
    hf_server.add_file(REPO, REV, "b.bin", payload(SIZE, seed=3))
    hf_server.faults.rate_limit_bps = 4_000_000
    cfg = TransferConfig(chunk_size=CHUNK, connections_per_file=8, max_connections=3)
    client = make_client(cfg)
    budget = ConnectionBudget(3)
    resolver = SourceResolver(HubConfig(endpoint=hf_server.endpoint), client)
    dl = Downloader(cfg, budget=budget)
    results = {}

    def run(path: str) -> None:
        results[path] = dl.download(resolver.resolve(f"hf://{REPO}/{path}"), tmp_path / (path + ".part"))

    threads = [threading.Thread(target=run, args=(p,)) for p in (PATH, "b.bin")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    client.close()
    assert set(results) == {PATH, "b.bin"}
    assert (tmp_path / (PATH + ".part")).read_bytes() == data
    assert hf_server.max_active_cdn_gets <= 3


def test_https_download_and_untrusted_certificate(hf_server_factory, tmp_path, data):
    hf = hf_server_factory(tls=True)
    sha = hf.add_file(REPO, REV, PATH, data)
    assert hf.endpoint.startswith("https://")
    cfg = TransferConfig(chunk_size=CHUNK, connections_per_file=4)
    trusted = hf.client_ssl_context()
    with httpx.Client(verify=trusted) as client:
        resolver = SourceResolver(HubConfig(endpoint=hf.endpoint), client)
        src = resolver.resolve(URI, model="m")
        assert src.url.startswith("https://")
        got = Downloader(cfg, ssl_context=trusted).download(src, tmp_path / "m.part", model="m")
        assert (tmp_path / "m.part").read_bytes() == data and got.sha256 == sha
        served = hf.bytes_served
        with pytest.raises(DownloadError) as ei:  # default trust store: the self-signed CDN is refused
            Downloader(cfg).download(src, tmp_path / "x.part", model="tiny-vae")
    assert ei.value.permanent and "certificate" in str(ei.value) and "tiny-vae" in str(ei.value)
    assert hf.bytes_served == served


def test_file_source_is_copied_and_hashed(tmp_path, data):
    src_file = tmp_path / "src.bin"
    src_file.write_bytes(data)
    resolver = SourceResolver(HubConfig(offline=True), make_client())
    src = resolver.resolve(f"file://{src_file}", model="m")
    got = Downloader(TransferConfig()).download(src, tmp_path / "out.part", model="m")
    assert (tmp_path / "out.part").read_bytes() == data
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(IntegrityError):
        Downloader(TransferConfig()).download(src, tmp_path / "out2.part", model="m", expected_sha256="0" * 64)


def test_s3_source_downloads_by_ranges(s3_server, tmp_path, data):
    s3 = s3_server.client()
    s3.create_bucket(Bucket="models")
    s3.put_object(Bucket="models", Key="dir/model.bin", Body=data)
    cfg = TransferConfig(chunk_size=CHUNK, connections_per_file=4)
    client = make_client(cfg)
    resolver = SourceResolver(HubConfig(), client, s3_client_factory=s3_server.client)
    src = resolver.resolve("s3://models/dir/model.bin", model="m")
    assert src.size == SIZE and src.etag and src.display_url == "s3://models/dir/model.bin"
    got = Downloader(cfg).download(src, tmp_path / "m.part", model="m",
                                           reresolve=lambda: resolver.resolve("s3://models/dir/model.bin"))
    client.close()
    assert (tmp_path / "m.part").read_bytes() == data
    assert got.sha256 == hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs to fill (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.parametrize("preallocate", [True, False], ids=["at-preallocation", "during-write"])
def test_disk_full_raises_disk_full_error(hf_server, rig_factory, data, tiny_tmpfs, preallocate):
    hf_server.add_file(REPO, REV, PATH, data)
    rig = rig_factory(preallocate=preallocate)
    rig.part = tiny_tmpfs / ".model.bin.part"
    with pytest.raises(DiskFullError) as ei:
        rig.download()
    msg = str(ei.value)
    assert "test-model" in msg and str(SIZE) in msg and ei.value.needed == SIZE
    remove_part(rig.part)
    assert list(tiny_tmpfs.iterdir()) == []


def test_unknown_size_streams_in_one_request(hf_server, rig_factory, data):
    sha = hf_server.add_file(REPO, REV, PATH, data)
    rig = rig_factory()
    src = rig.resolve()
    unknown = ResolvedSource(url=src.url, size=None, sha256=None, etag=None, commit=None, headers=src.headers,
                             display_url=src.display_url)
    got = rig.downloader.download(unknown, rig.part, model="m")
    assert got.size == SIZE and got.sha256 == sha and rig.part.read_bytes() == data
    assert [r.range for r in hf_server.cdn_requests()] == [None]


def test_memory_stays_bounded_on_a_larger_file(hf_server, rig_factory, tmp_path):
    """48 MiB in 16 MiB ranges over 3 connections: no range is ever held in memory."""
    import tracemalloc

    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(48):
            f.write(os.urandom(2**20))
    hf_server.add_file(REPO, REV, "big.bin", big)
    rig = rig_factory(chunk_size=16 * 2**20, connections_per_file=3)
    tracemalloc.start()
    try:
        got = rig.download(f"hf://{REPO}/big.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.size == 48 * 2**20
    assert peak < 12 * 2**20, f"peak Python allocations {peak} bytes"
