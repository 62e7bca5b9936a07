"""Issue 9's fleet drills for the transfer engine, against real servers on 127.0.0.1
(tests/support/hf_server.py): a file changing upstream mid-download, slow-loris servers, an
hour-long Retry-After, resume from a record of scattered ranges, adaptive connections, URL
credentials. Each test failed on the engine before issue 9."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

import pytest

from i2v_worker.store import ModelState, load_manifest
from i2v_worker.store.clock import SystemClock
from i2v_worker.store.errors import DownloadError, SourceChangedError, StoreError, TransferCancelled
from i2v_worker.store.records import read_record
from i2v_worker.store.sources import HubConfig, SourceResolver
from i2v_worker.store.transfer import (Downloader, ResumeRecord, TransferConfig, make_client, read_sidecar,
                                       sidecar_path)
from i2v_worker.store.transfer.record import write_sidecar
from tests.support.clock import RecordingClock
from tests.support.store_helpers import make_store, write_manifest

pytestmark = pytest.mark.timeout(90)

SIZE = 3 * 2**20 + 4321
CHUNK = 256 * 1024
REPO, REV, PATH = "org/model", "main", "weights/model.bin"


def payload(n: int = SIZE, seed: int = 1) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Rig:
    def __init__(self, hf, tmp: Path, clock=None, **cfg) -> None:
        self.hf = hf
        self.clock = clock or RecordingClock()
        self.config = TransferConfig(**{"chunk_size": CHUNK, "connections_per_file": 2, "initial_connections": 2,
                                        "read_timeout_s": 5.0, "backoff_base_s": 0.01, **cfg})
        self.client = make_client(self.config)
        self.resolver = SourceResolver(HubConfig(endpoint=hf.endpoint), self.client, clock=self.clock,
                                       retry=self.config.retry)
        self.downloader = Downloader(self.config, clock=self.clock)
        self.part = tmp / ".m.bin.part"

    def download(self, uri: str, cancel=None, **kw):
        src = self.resolver.resolve(uri, model="m", cancel=cancel)
        return self.downloader.download(src, self.part, model="m", cancel=cancel,
                                        reresolve=lambda: self.resolver.resolve(uri, model="m", cancel=cancel), **kw)


@pytest.fixture
def rig(hf_server, tmp_path):
    made = []

    def make(**kw) -> Rig:
        r = Rig(hf_server, tmp_path, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.client.close()


# ---- item 1: a file that changes upstream mid-download is never stitched ----------------------------

@pytest.mark.parametrize("if_range", [True, False], ids=["server-honours-if-range", "server-ignores-if-range"])
def test_file_replaced_mid_download_is_never_stitched(hf_server, rig, if_range):
    old, new = payload(seed=1), payload(seed=2)
    url = hf_server.add_plain("m.bin", old)
    hf_server.plain_if_range = if_range
    hf_server.faults.rate_limit_bps = 2_000_000  # several rounds of ranges, so the swap lands mid-download
    hf_server.swap_plain("m.bin", new, after_gets=3)
    r = rig()
    got = r.download(url)
    data = r.part.read_bytes()
    assert data == new, "published bytes must be one version, never a mix"
    assert got.sha256 == sha(new) and got.size == SIZE
    gets = [q for q in hf_server.plain_requests() if q.method == "GET"]
    if if_range:  # ranges after the first response carry the validator they are tied to
        assert any("if-range" in q.headers for q in gets)


def test_changed_file_with_an_expected_sha256_fails_and_is_not_resumed(hf_server, rig):
    old, new = payload(seed=1), payload(seed=2)
    url = hf_server.add_plain("m.bin", old)
    hf_server.faults.rate_limit_bps = 2_000_000
    hf_server.swap_plain("m.bin", new, after_gets=3)
    r = rig()
    with pytest.raises(SourceChangedError) as ei:
        r.download(url, expected_sha256=sha(old))
    assert ei.value.permanent and "changed upstream" in str(ei.value) and "nothing was published" in str(ei.value)
    assert not sidecar_path(r.part).exists()


def test_unpinned_https_model_replaced_mid_download_publishes_one_version(hf_server, tmp_path):
    old, new = payload(seed=1), payload(seed=2)
    url = hf_server.add_plain("m.bin", old)
    hf_server.faults.rate_limit_bps = 2_000_000
    hf_server.swap_plain("m.bin", new, after_gets=3)
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", {"m.bin": {"source": url}}), env={})
    store = make_store(tmp_path / "store", manifest, hf=hf_server, connections=2)
    path = store.ensure(["m.bin"])["m.bin"]
    assert path.read_bytes() == new
    assert read_record(store.root, "m.bin").sha256 == sha(new)
    [st] = store.verify(full=True)
    assert st.state is ModelState.PRESENT and st.sha256 == sha(new)


def test_resume_record_of_an_older_version_is_not_reused(hf_server, rig):
    old, new = payload(seed=1), payload(seed=2)
    url = hf_server.add_plain("m.bin", old)
    r = rig()
    r.download(url)
    rec = read_sidecar(r.part)
    write_sidecar(r.part, ResumeRecord(size=rec.size, sha256=None, etag=rec.etag, validator=rec.validator,
                                       done=((0, SIZE // 2),)))
    hf_server.add_plain("m.bin", new)  # same size, new ETag and Last-Modified
    hf_server.reset_log()
    got = r.download(url)
    assert r.part.read_bytes() == new and got.resumed_bytes == 0


# ---- item 5: bounded liveness --------------------------------------------------------------------

def test_slow_loris_server_fails_in_bounded_time(hf_server, rig):
    data = payload()
    hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.trickle_bps = 4_000  # alive and always progressing, but far too slow
    hf_server.faults.trickle_times = None  # every response
    r = rig(min_throughput_bps=100_000, throughput_window_s=0.3, max_attempts=3)
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as ei:
        r.download(f"hf://{REPO}@{REV}/{PATH}")
    assert time.monotonic() - t0 < 20
    assert "too slow" in str(ei.value) and "3 failed attempts" in str(ei.value)


def test_hour_long_retry_after_on_the_hub_is_capped(hf_server, rig):
    data = payload()
    hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.status, hf_server.faults.status_on_resolve = 429, True
    hf_server.faults.status_times, hf_server.faults.retry_after = 2, "3600"
    r = rig(retry_after_max_s=30)
    r.download(f"hf://{REPO}@{REV}/{PATH}")
    assert r.part.read_bytes() == data
    assert len(r.clock.calls) == 2 and all(29 <= s <= 31 for s in r.clock.calls), r.clock.calls


@pytest.mark.timeout(20)
def test_retry_after_wait_on_the_hub_is_cancellable(hf_server, rig):
    hf_server.add_file(REPO, REV, PATH, payload())
    hf_server.faults.status, hf_server.faults.status_on_resolve = 503, True
    hf_server.faults.status_times, hf_server.faults.retry_after = None, "3600"
    r = rig(clock=SystemClock())
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(TransferCancelled):
        r.download(f"hf://{REPO}@{REV}/{PATH}", cancel=cancel)
    assert time.monotonic() - t0 < 3


@pytest.mark.timeout(20)
def test_backoff_wait_of_a_range_is_cancellable(hf_server, rig):
    hf_server.add_file(REPO, REV, PATH, payload())
    hf_server.faults.status, hf_server.faults.status_times, hf_server.faults.retry_after = 503, None, "3600"
    r = rig(clock=SystemClock())
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(TransferCancelled):
        r.download(f"hf://{REPO}@{REV}/{PATH}", cancel=cancel)
    assert time.monotonic() - t0 < 3


# ---- item 6: resume keeps every completed range ---------------------------------------------------

def test_resume_fetches_only_the_missing_ranges_wherever_they_are(hf_server, rig):
    data = payload()
    hf_server.add_file(REPO, REV, PATH, data)
    r = rig()
    r.download(f"hf://{REPO}@{REV}/{PATH}")
    rec = read_sidecar(r.part)
    done = ((0, 3 * CHUNK), (5 * CHUNK + 17, 8 * CHUNK), (10 * CHUNK, SIZE))  # what a kill leaves
    write_sidecar(r.part, ResumeRecord(size=rec.size, sha256=rec.sha256, etag=rec.etag, validator=rec.validator,
                                       done=done))
    with open(r.part, "r+b") as f:  # bytes outside the record are not trustworthy
        for a, b in ((3 * CHUNK, 5 * CHUNK + 17), (8 * CHUNK, 10 * CHUNK)):
            f.seek(a)
            f.write(b"\0" * (b - a))
    hf_server.reset_log()
    got = r.download(f"hf://{REPO}@{REV}/{PATH}")
    kept = sum(b - a for a, b in done)
    assert r.part.read_bytes() == data and got.sha256 == sha(data)
    assert got.resumed_bytes == kept and got.fetched_bytes == SIZE - kept
    assert got.connections == 2  # the gaps are fetched in parallel too
    assert hf_server.bytes_served == SIZE - kept  # only the two gaps were fetched


def test_cancelled_download_records_scattered_ranges_and_resumes_them(hf_server, rig):
    data = payload()
    hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.rate_limit_bps = 300_000
    r = rig(connections_per_file=4, initial_connections=4)
    cancel = threading.Event()

    def half(done, total):
        if done >= SIZE // 2:
            cancel.set()

    with pytest.raises(TransferCancelled):
        r.download(f"hf://{REPO}@{REV}/{PATH}", cancel=cancel, progress=half)
    rec = read_sidecar(r.part)
    assert rec.verified > 0
    hf_server.faults.rate_limit_bps = None
    hf_server.reset_log()
    got = r.download(f"hf://{REPO}@{REV}/{PATH}")
    assert r.part.read_bytes() == data and got.resumed_bytes == rec.verified
    assert hf_server.bytes_served == SIZE - rec.verified


def test_part_adopted_under_another_name_resumes(hf_server, rig, tmp_path):
    """What a store does when it takes over a dead writer's part: move part + record, download."""
    data = payload()
    hf_server.add_file(REPO, REV, PATH, data)
    hf_server.faults.rate_limit_bps = 1_500_000
    r = rig()
    cancel = threading.Event()
    threading.Timer(0.8, cancel.set).start()
    with pytest.raises(TransferCancelled):
        r.download(f"hf://{REPO}@{REV}/{PATH}", cancel=cancel)
    kept = read_sidecar(r.part).verified
    mine = tmp_path / ".m.bin.otherhost-2-bbbbbb.part"
    r.part.rename(mine)
    sidecar_path(r.part).rename(sidecar_path(mine))
    hf_server.faults.rate_limit_bps = None
    src = r.resolver.resolve(f"hf://{REPO}@{REV}/{PATH}")
    got = r.downloader.download(src, mine, model="m")
    assert mine.read_bytes() == data and got.resumed_bytes == kept > 0


# ---- item 8: connections adapt to the link ---------------------------------------------------------

def test_connections_grow_while_each_connection_is_capped(hf_server, rig):
    big = payload(12 * 2**20, seed=5)
    hf_server.add_file(REPO, REV, "big.bin", big)
    hf_server.faults.rate_limit_bps = 1_000_000  # a CDN capping each connection
    r = rig(connections_per_file=8, initial_connections=2, adapt_interval_s=0.3)
    got = r.download(f"hf://{REPO}@{REV}/big.bin")
    assert r.part.read_bytes() == big
    assert got.connections == 8 and hf_server.max_active_cdn_gets == 8


def test_connections_stop_growing_when_the_link_is_full(hf_server, rig):
    big = payload(12 * 2**20, seed=5)
    hf_server.add_file(REPO, REV, "big.bin", big)
    hf_server.faults.aggregate_bps = 3_000_000  # the link, not the connection, is the limit
    r = rig(connections_per_file=16, initial_connections=2, adapt_interval_s=0.3)
    got = r.download(f"hf://{REPO}@{REV}/big.bin")
    assert r.part.read_bytes() == big
    assert got.connections <= 8, got.connections  # stops at most one doubling past saturation (noise)


# ---- item 9: URL credentials ----------------------------------------------------------------------

def test_url_credentials_are_sent_on_every_request_and_never_logged(hf_server, rig, caplog):
    data = payload()
    hf_server.add_plain("m.bin", data)
    hf_server.plain_auth = ("alice", "s3cr3t-pw")
    r = rig()
    caplog.set_level(logging.DEBUG)
    got = r.download(hf_server.plain_url("m.bin", "alice:s3cr3t-pw"))
    assert r.part.read_bytes() == data and got.sha256 == sha(data)
    reqs = hf_server.plain_requests()
    assert len(reqs) > 2 and all(q.status in (200, 206) for q in reqs)
    assert "s3cr3t-pw" not in caplog.text


def test_wrong_url_credentials_fail_fast_without_printing_them(hf_server, rig):
    hf_server.add_plain("m.bin", payload())
    hf_server.plain_auth = ("alice", "s3cr3t-pw")
    r = rig()
    with pytest.raises(DownloadError) as ei:
        r.download(hf_server.plain_url("m.bin", "alice:wrong-pw"))
    assert ei.value.permanent and ei.value.status == 401 and "wrong-pw" not in str(ei.value)
    assert "user:password" in str(ei.value)


@pytest.mark.parametrize("url", ["https://bob:hunter2@example.com:99999/x.bin", "https://bob:hunter2@/x.bin",
                                 "https://bob:hunter2@[::1/x.bin", "https://bob:hunter2@example.com:port/x.bin"])
def test_bad_url_errors_never_print_credentials(url, tmp_path):
    from i2v_worker.config import Settings
    from i2v_worker.store.get import get_url

    with pytest.raises(StoreError) as ei:
        get_url(url, tmp_path / "out.bin", settings=Settings(model_dir=tmp_path / "store"), show_progress=False)
    assert "hunter2" not in str(ei.value) and "bad URL" in str(ei.value)


def test_ranges_not_yet_durable_are_kept_only_on_the_same_running_kernel(hf_server, rig):
    """`written` ranges survive a SIGKILL (the kernel has the pages), not a crash/reboot (new boot id)."""
    data = payload()
    hf_server.add_file(REPO, REV, PATH, data)
    r = rig()
    r.download(f"hf://{REPO}@{REV}/{PATH}")
    rec = read_sidecar(r.part)
    done, written = ((0, 4 * CHUNK),), ((4 * CHUNK, 9 * CHUNK),)
    for boot, kept in ((rec.boot_id, 9 * CHUNK), ("another-boot", 4 * CHUNK)):
        write_sidecar(r.part, ResumeRecord(size=rec.size, sha256=rec.sha256, etag=rec.etag, validator=rec.validator,
                                           done=done, written=written, boot_id=boot))
        hf_server.reset_log()
        got = r.download(f"hf://{REPO}@{REV}/{PATH}")
        assert r.part.read_bytes() == data and got.resumed_bytes == kept
        assert hf_server.bytes_served == SIZE - kept


def test_resume_record_naming_another_cdn_validator_starts_over_instead_of_failing(hf_server, rig):
    """hf:// with a known sha256: a record whose validator the CDN no longer presents (another edge,
    another object id for the same content) must cost a restart, never a permanent failure."""
    data = payload()
    hf_server.add_file(REPO, REV, PATH, data)
    r = rig()
    r.download(f"hf://{REPO}@{REV}/{PATH}")
    rec = read_sidecar(r.part)
    from i2v_worker.store.sources import Validator
    write_sidecar(r.part, ResumeRecord(size=rec.size, sha256=rec.sha256, etag=rec.etag,
                                       validator=Validator(etag='"another-edge"'), done=((0, SIZE // 2),)))
    hf_server.reset_log()
    got = r.download(f"hf://{REPO}@{REV}/{PATH}")
    assert r.part.read_bytes() == data and got.sha256 == sha(data) and got.resumed_bytes == 0


@pytest.mark.timeout(30)
def test_store_cancel_ends_an_hour_long_retry_after_and_releases_the_lease(hf_server, tmp_path):
    """The SRE's drill: the hub answers every HEAD with 429 Retry-After: 3600 while a worker holds
    the lease; cancelling the job ends the wait at once and frees the lease."""
    hf_server.add_file(REPO, REV, PATH, payload())
    hf_server.faults.status, hf_server.faults.status_on_resolve = 429, True
    hf_server.faults.status_times, hf_server.faults.retry_after = None, "3600"
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", {"m.bin": {"source": f"hf://{REPO}@{REV}/{PATH}"}}),
                             env={})
    store = make_store(tmp_path / "store", manifest, hf=hf_server)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(StoreError) as ei:
        store.ensure(["m.bin"], cancel=cancel)
    assert time.monotonic() - t0 < 5
    assert "cancel" in str(ei.value)
    assert store._lease("m.bin").read() is None  # released: another worker may start at once


def test_transport_is_a_replaceable_seam(hf_server, rig):
    """Downloader(transport=...) opens every connection through the given transport (httpx-style seam)."""
    from i2v_worker.store.transfer import Transport

    class CountingTransport(Transport):
        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            self.origins: list[tuple[str, str, int]] = []

        def connect(self, scheme, host, port):
            self.origins.append((scheme, host, port))
            return super().connect(scheme, host, port)

    data = payload()
    hf_server.add_file(REPO, REV, PATH, data)
    r = rig()
    transport = CountingTransport(connect_timeout_s=5, read_timeout_s=5)
    dl = Downloader(r.config, clock=r.clock, transport=transport)
    got = dl.download(r.resolver.resolve(f"hf://{REPO}@{REV}/{PATH}"), r.part, model="m")
    assert got.sha256 == sha(data)
    assert 1 <= len(transport.origins) <= r.config.connections_per_file  # keep-alive: one per worker
    assert {o[1] for o in transport.origins} == {"127.0.0.1"}


@pytest.mark.timeout(30)
def test_server_dripping_its_headers_fails_in_bounded_time(hf_server, rig):
    """Slow-loris on the headers: every read gets a few bytes well within the read timeout, but the
    headers as a whole must arrive within it."""
    hf_server.add_file(REPO, REV, PATH, payload())
    hf_server.faults.slow_headers_bps = 20  # ~250 header bytes: 12 s per response
    r = rig(read_timeout_s=1.0, max_attempts=2)
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as ei:
        r.download(f"hf://{REPO}@{REV}/{PATH}")
    assert time.monotonic() - t0 < 8
    assert "2 failed attempts" in str(ei.value)
