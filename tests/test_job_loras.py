"""Job LoRAs in the store (issue 11): fetched by hf://, http(s):// or named, stored once per content
under loras/job/, checked before download, evicted LRU within a budget, never while in use.

Real servers on 127.0.0.1: the HF-style server (tests/support/hf_server.py) and a plain ranged file
server (tests/support/file_server.py); loopback URLs are reachable only through the test setting
(`allow_loopback`, the same switch as I2V_ALLOW_LOOPBACK_IMAGES)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import pytest

from i2v_worker.engines.base import ModelRole
from i2v_worker.store.errors import OfflineError
from i2v_worker.store.job_loras import JobLoraError, JobLoraStore, LoraRequest
from i2v_worker.store.manifest import Manifest
from i2v_worker.tiny.generate import write_job_lora
from tests.support.file_server import file_server  # noqa: F401
from tests.support.store_helpers import make_store, part_files

pytestmark = pytest.mark.timeout(120)

REPO, REV = "someone/wan-loras", "main"


def sha(p: Path | bytes) -> str:
    return hashlib.sha256(p if isinstance(p, bytes) else p.read_bytes()).hexdigest()


@pytest.fixture
def loras(tmp_path) -> dict[str, Path]:
    d = tmp_path / "made"
    return {
        "a": write_job_lora(d / "a.safetensors", seed=1),
        "b": write_job_lora(d / "b.safetensors", seed=2, modules="all"),
        "c": write_job_lora(d / "c.safetensors", seed=3),
        "partial": write_job_lora(d / "partial.safetensors", seed=4, extra_unmatched=2),
        "sd15": write_job_lora(d / "sd15.safetensors", family="sd15"),
    }


def job_store(tmp_path, hf=None, *, offline=False, budget=10**9, max_bytes=10**9, loopback=True, **kw) -> JobLoraStore:
    store = make_store(tmp_path / "store", Manifest(file="t", entries=(), presets={}), hf=hf, offline=offline)
    return JobLoraStore(store, budget_bytes=budget, max_bytes=max_bytes, allow_loopback=loopback, **kw)


def prepare(js: JobLoraStore, *reqs: LoraRequest, **kw):
    return asyncio.run(js.prepare(list(reqs), **kw))


def published(js: JobLoraStore) -> list[Path]:
    return sorted(js.root.glob("*.safetensors"))


def error_of(js: JobLoraStore, *reqs: LoraRequest) -> JobLoraError:
    with pytest.raises(JobLoraError) as info:
        prepare(js, *reqs)
    return info.value


# --------------------------------------------------------------------------------- sources


def test_hf_source_is_fetched_verified_and_named_by_content(tmp_path, hf_server, loras):
    digest = hf_server.add_file(REPO, REV, "wan/a.safetensors", loras["a"].read_bytes())
    js = job_store(tmp_path, hf_server)
    events = []
    got = prepare(js, LoraRequest(0, f"hf://{REPO}@{REV}/wan/a.safetensors", None, 0.7, 0.3), progress=events.append)
    lora = got.loras[0]
    assert lora.sha256 == digest and lora.name == f"job/{digest}.safetensors"
    assert lora.path == js.root / f"{digest}.safetensors" and sha(lora.path) == digest
    assert (lora.strength_high, lora.strength_low) == (0.7, 0.3)
    assert got.warnings == [] and got.downloaded == [f"hf://{REPO}@{REV}/wan/a.safetensors"]
    assert any(e.model == "lora loras[0]" and e.phase == "published" for e in events), events
    assert part_files(js.root) == []


def test_a_job_whose_loras_are_present_does_no_network_in_milliseconds(tmp_path, hf_server, file_server, loras):
    hf_server.add_file(REPO, REV, "a.safetensors", loras["a"].read_bytes())
    url = file_server.add("b.safetensors", loras["b"])
    js = job_store(tmp_path, hf_server)
    reqs = [LoraRequest(0, f"hf://{REPO}@{REV}/a.safetensors"), LoraRequest(1, url, None, 1.0, 0.0)]
    prepare(js, *reqs).release()
    hf_server.reset_log()
    file_server.reset_log()
    # a fresh store object (another job, another process): only the files on disk and their records
    js2 = job_store(tmp_path, hf_server)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        got = prepare(js2, *reqs)
        times.append(time.perf_counter() - t0)
        got.release()
    assert hf_server.requests == [] and file_server.requests == [], "a present LoRA must not touch the network"
    assert got.downloaded == [] and len(got.loras) == 2
    assert min(times) < 0.05, f"present LoRAs took {min(times) * 1000:.1f} ms"
    print(f"\nall-present job LoRAs: best {min(times) * 1000:.2f} ms, median {sorted(times)[2] * 1000:.2f} ms")


def test_http_source_is_fetched_only_with_the_loopback_test_setting(tmp_path, file_server, loras):
    url = file_server.add("a.safetensors", loras["a"])
    err = error_of(job_store(tmp_path / "x", loopback=False), LoraRequest(0, url))
    assert err.rule == "blocked_address" and err.field == "loras[0].source" and "non-public" in str(err)
    got = prepare(job_store(tmp_path / "y"), LoraRequest(0, url))
    assert sha(got.loras[0].path) == sha(loras["a"])


def test_the_same_file_by_two_urls_is_stored_once(tmp_path, hf_server, file_server, loras):
    digest = hf_server.add_file(REPO, REV, "a.safetensors", loras["a"].read_bytes())
    url = file_server.add("copy-of-a.safetensors", loras["a"])
    js = job_store(tmp_path, hf_server)
    one = prepare(js, LoraRequest(0, f"hf://{REPO}@{REV}/a.safetensors"))
    two = prepare(js, LoraRequest(0, url))
    assert one.loras[0].path == two.loras[0].path == js.root / f"{digest}.safetensors"
    assert published(js) == [js.root / f"{digest}.safetensors"]
    assert not list((js.root / ".staging").glob("*.lora"))  # the second copy was dropped
    [st] = js.status()
    assert set(st.sources) == {f"hf://{REPO}@{REV}/a.safetensors", url} and st.size == loras["a"].stat().st_size


def test_a_lora_by_name_from_the_stores_loras_folder(tmp_path, loras):
    js = job_store(tmp_path)
    (js.models_root / "loras").mkdir(parents=True, exist_ok=True)
    (js.models_root / "loras" / "my_style.safetensors").write_bytes(loras["a"].read_bytes())
    got = prepare(js, LoraRequest(0, "my_style.safetensors", None, 1.0, 0.5))
    assert got.loras[0].name == "my_style.safetensors" and got.loras[0].path == js.models_root / "loras" / "my_style.safetensors"
    err = error_of(js, LoraRequest(0, "missing.safetensors"))
    assert err.rule == "not_found" and "my_style.safetensors" in str(err)


def test_a_partial_match_is_applied_and_reported_with_counts(tmp_path, file_server, loras):
    got = prepare(job_store(tmp_path), LoraRequest(0, file_server.add("p.safetensors", loras["partial"])))
    [w] = got.warnings
    assert "loras[0]" in w and "16 of 18 modules" in w and "2 match nothing" in w and "k_img" in w, w


# ------------------------------------------------------------------- refused, nothing published


def test_wrong_sha256_is_refused_and_nothing_is_published(tmp_path, hf_server, file_server, loras):
    wrong = "0" * 64
    js = job_store(tmp_path, hf_server)
    url = file_server.add("a.safetensors", loras["a"])
    err = error_of(js, LoraRequest(0, url, wrong))  # the file server announces no sha256: found after download
    assert err.code == "invalid_input" and err.field == "loras[0].sha256" and wrong in str(err), err
    hf_server.add_file(REPO, REV, "a.safetensors", loras["a"].read_bytes())
    hf_server.reset_log()
    err = error_of(js, LoraRequest(0, f"hf://{REPO}@{REV}/a.safetensors", wrong))  # the hub announces it: before
    assert err.rule == "sha256_mismatch" and "nothing was downloaded" in str(err)
    assert hf_server.cdn_requests() == []  # the hub's announced sha256 was enough
    assert published(js) == [] and part_files(js.root) == []


def test_a_file_that_is_not_safetensors_is_refused_before_download(tmp_path, file_server):
    js = job_store(tmp_path)
    for name, data in {"page.safetensors": b"<!DOCTYPE html><html>login</html>" * 100,
                       "ckpt.safetensors": b"PK\x03\x04" + b"\0" * 5000}.items():
        err = error_of(js, LoraRequest(2, file_server.add(name, data)))
        assert err.code == "invalid_input" and err.field == "loras[2].source" and err.rule == "not_safetensors"
        assert "not a safetensors LoRA" in str(err)
    assert "HTML" in str(error_of(js, LoraRequest(0, f"{file_server.url}/page.safetensors")))
    assert published(js) == [] and part_files(js.root) == []


def test_a_lora_for_another_model_family_is_refused_naming_it(tmp_path, file_server, loras):
    js = job_store(tmp_path)
    err = error_of(js, LoraRequest(1, file_server.add("sd.safetensors", loras["sd15"])))
    assert err.rule == "wrong_model_family" and err.field == "loras[1].source"
    assert "SD1.5/SDXL" in str(err) and "Wan2.2" in str(err)
    assert published(js) == [] and file_server.bytes_sent < loras["sd15"].stat().st_size


def test_too_large_a_file_and_larger_than_the_budget_are_refused(tmp_path, file_server, loras):
    url = file_server.add("a.safetensors", loras["a"])
    size = loras["a"].stat().st_size
    err = error_of(job_store(tmp_path / "1", max_bytes=size - 1), LoraRequest(0, url))
    assert err.rule == "too_large" and "I2V_LORA_MAX_BYTES" in str(err)
    err = error_of(job_store(tmp_path / "2", budget=size - 1), LoraRequest(0, url))
    assert err.rule == "over_budget" and "I2V_LORA_BUDGET_GB" in str(err)
    assert not list((tmp_path / "1").rglob("*.safetensors")) and not list((tmp_path / "2").rglob("*.safetensors"))


def test_private_addresses_are_refused_also_behind_a_redirect(tmp_path, file_server, loras):
    js = job_store(tmp_path)  # loopback allowed (the test setting); private and link-local never
    for url in ("http://10.1.2.3/lora.safetensors", "http://[fd00::1]/x.safetensors",
                f"{file_server.url}/redirect?to=http://169.254.169.254/latest/meta-data.safetensors"):
        err = error_of(js, LoraRequest(0, url))
        assert err.rule == "blocked_address" and err.code == "invalid_input", (url, err)

    async def resolver(host, port):  # a public-looking name that resolves to a private address
        return ["192.168.1.20"]

    js = job_store(tmp_path / "r", resolver=resolver)
    assert error_of(js, LoraRequest(0, "https://loras.example.com/x.safetensors")).rule == "blocked_address"
    allow = job_store(tmp_path / "h", allowlist=("huggingface.co",))
    assert error_of(allow, LoraRequest(0, file_server.add("a.safetensors", loras["a"]))).rule == "host_not_allowed"
    assert published(js) == []


def test_a_lora_download_connects_only_to_the_addresses_checked_for_its_host(tmp_path, file_server, loras):
    """The download (HEAD and ranged GETs) goes to the addresses the egress rule checked for the
    name, from the same resolver as the probe: the name is never looked up anywhere else (this
    machine's DNS does not know it, so a download connecting by name would fail)."""
    url = file_server.add("a.safetensors", loras["a"]).replace("127.0.0.1", "loras.example.test")
    asked = []

    async def resolver(host, port):
        asked.append(host)
        return ["127.0.0.1"]

    js = job_store(tmp_path, resolver=resolver)
    got = prepare(js, LoraRequest(0, url))
    assert len(got.loras) == 1 and len(published(js)) == 1
    assert set(asked) == {"loras.example.test"} and len(asked) >= 3  # two probe reads, then the download's


def test_a_dns_answer_that_turns_private_after_the_probe_stops_the_download(tmp_path, file_server, loras):
    """DNS rebinding: the name resolves to an allowed address for the probe, then to a private one."""
    url = file_server.add("a.safetensors", loras["a"]).replace("127.0.0.1", "loras.example.test")
    answers = iter(["127.0.0.1", "127.0.0.1"])  # the probe's two ranged reads

    async def resolver(host, port):
        return [next(answers, "10.0.0.7")]

    js = job_store(tmp_path, resolver=resolver)
    err = error_of(js, LoraRequest(0, url))
    assert err.rule == "blocked_address" and err.field == "loras[0].source" and "10.0.0.7" in str(err), err
    assert published(js) == [] and file_server.bytes_sent < loras["a"].stat().st_size


@pytest.mark.parametrize("honest", [2, 3], ids=["redirected-from-the-head", "redirected-from-the-ranges"])
def test_a_redirect_the_probe_did_not_see_is_refused_by_the_download(tmp_path, file_server, loras, honest):
    """A server that answers the probe honestly and then sends the download to the cloud metadata
    address: every hop of the download is checked (the HEAD's through httpx, the ranges' through
    the transfer engine's own connections), so nothing is fetched from there and nothing published."""
    url = file_server.add("a.safetensors", loras["a"])
    file_server.redirect_after("a.safetensors", honest, "http://169.254.169.254/latest/meta-data/x.safetensors")
    js = job_store(tmp_path)
    err = error_of(js, LoraRequest(0, url))
    assert err.rule == "blocked_address" and "169.254.169.254" in str(err), err
    assert err.code == "invalid_input" and published(js) == []


def test_an_https_download_under_the_egress_rule_keeps_the_hosts_name_for_tls(tmp_path, loras, monkeypatch):
    """Connecting to the checked address must not change what TLS checks: SNI and the certificate
    are the URL's host name, for the HEAD (httpx) and for every range (the transfer engine). A real
    TLS server with a certificate for one name only, from a test CA (trustme)."""
    import ssl

    import trustme

    from i2v_worker.egress import EgressPolicy
    from i2v_worker.store.errors import DownloadError
    from i2v_worker.store.manifest import ModelEntry
    from i2v_worker.store.types import ModelState
    from tests.support.file_server import FileServer

    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("loras.example.test").configure_cert(server_tls)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # what httpx's default context trusts
    srv = FileServer(tmp_path / "served", tls=server_tls)
    try:
        served = srv.add("a.safetensors", loras["a"])
        asked: list[str] = []

        def resolve(host: str, port: int) -> list[str]:
            asked.append(host)
            return ["127.0.0.1"]

        egress = EgressPolicy(allow_loopback=True, resolve=resolve)

        def store_of(host: str, root: str):
            entry = ModelEntry(name="a.safetensors", folder="loras", role=ModelRole.LORA, size=loras["a"].stat().st_size,
                               source=served.replace("127.0.0.1", host), sha256=sha(loras["a"]))
            return make_store(tmp_path / root, Manifest(file="t", entries=(entry,), presets={}), egress=egress)

        good = store_of("loras.example.test", "good")
        good.ensure(["a.safetensors"])
        assert good.status(["a.safetensors"])[0].state == ModelState.PRESENT
        assert set(asked) == {"loras.example.test"} and srv.bytes_sent >= loras["a"].stat().st_size

        wrong = store_of("other.example.test", "wrong")  # same address, a name the certificate lacks
        with pytest.raises(DownloadError, match="certificate|CERTIFICATE") as info:
            wrong.ensure(["a.safetensors"])
        assert info.value.permanent  # a refused certificate is never retried
        assert not (tmp_path / "wrong" / "loras" / "a.safetensors").exists()
    finally:
        srv.close()

def test_offline_uses_present_loras_and_names_the_missing_one(tmp_path, file_server, loras):
    url = file_server.add("a.safetensors", loras["a"])
    prepare(job_store(tmp_path), LoraRequest(0, url)).release()
    off = job_store(tmp_path, offline=True)
    assert len(prepare(off, LoraRequest(0, url)).loras) == 1
    with pytest.raises(OfflineError, match="loras\\[1\\]"):
        prepare(off, LoraRequest(0, url), LoraRequest(1, file_server.add("b.safetensors", loras["b"])))


def test_two_workers_on_one_volume_download_a_lora_once(tmp_path, file_server, loras):
    big = write_job_lora(tmp_path / "big.safetensors", seed=9, modules="all",
                         spec=__import__("i2v_worker.tiny.generate", fromlist=["TinySpec"]).TinySpec(lora_rank=64))
    url = file_server.add("big.safetensors", big)
    w1, w2 = job_store(tmp_path), job_store(tmp_path)  # two processes' stores on the same root

    async def both():
        return await asyncio.gather(w1.prepare([LoraRequest(0, url)]), w2.prepare([LoraRequest(0, url)]))

    r1, r2 = asyncio.run(both())
    assert r1.loras[0].path == r2.loras[0].path and sha(r1.loras[0].path) == sha(big)
    size = big.stat().st_size
    assert file_server.bytes_sent < 1.5 * size, (file_server.bytes_sent, size)  # one download (+ header probes)
    assert published(w1) == [r1.loras[0].path] and part_files(w1.root) == []


# ------------------------------------------------------------------------------- budget, eviction


def test_eviction_under_a_small_budget_never_touches_a_lora_in_use(tmp_path, file_server, loras):
    size = max(p.stat().st_size for p in loras.values())
    js = job_store(tmp_path, budget=2 * size + 10)
    a, b, c = (LoraRequest(0, file_server.add(f"{k}.safetensors", loras[k])) for k in "abc")
    job1 = prepare(js, a)  # a running job holds A
    job2 = prepare(js, b)  # a second job holds B: the budget is now full
    with pytest.raises(JobLoraError) as info:  # C needs room but both are in use
        prepare(js, c)
    assert info.value.code == "models_busy" and "running jobs" in str(info.value)
    job2.release()  # B is done: least recently used and not in use -> evicted for C
    job3 = prepare(js, c)
    assert {p.name for p in published(js)} == {f"{sha(loras['a'])}.safetensors", f"{sha(loras['c'])}.safetensors"}
    assert job1.loras[0].path.is_file(), "a LoRA in use was evicted"
    job1.release()
    job3.release()
    assert [s.sha256 for s in js.status()][0] == sha(loras["c"])  # most recently used first


def test_two_jobs_at_once_with_eviction_keep_each_others_loras(tmp_path, file_server, loras):
    size = max(p.stat().st_size for p in loras.values())
    js = job_store(tmp_path, budget=2 * size + 10)
    a, b, c = (LoraRequest(0, file_server.add(f"{k}.safetensors", loras[k])) for k in "abc")
    prepare(js, c).release()  # an old, unused LoRA fills part of the budget

    async def both():
        return await asyncio.gather(js.prepare([a]), js.prepare([b]))

    j1, j2 = asyncio.run(both())
    assert j1.loras[0].path.is_file() and j2.loras[0].path.is_file()
    assert not (js.root / f"{sha(loras['c'])}.safetensors").exists()  # the unused one made room
    j1.release()
    j2.release()


def test_gc_trims_to_the_budget_least_recently_used_first_but_not_in_use(tmp_path, file_server, loras):
    js = job_store(tmp_path)
    reqs = {k: LoraRequest(0, file_server.add(f"{k}.safetensors", loras[k])) for k in "abc"}
    held = None
    for k in "abc":
        got = prepare(js, reqs[k])
        if k == "a":
            held = got  # A is the oldest but in use
        else:
            got.release()
        time.sleep(0.01)
    size = max(loras[k].stat().st_size for k in "abc")
    js.budget_bytes = size + 10
    removed = js.gc()
    assert {p.name for p in removed} == {f"{sha(loras['b'])}.safetensors", f"{sha(loras['c'])}.safetensors"}
    assert {p.name for p in published(js)} == {f"{sha(loras['a'])}.safetensors"}
    held.release()


# ------------------------------------------------------------------------------------------ CLI


def test_models_status_lists_job_loras_and_gc_respects_the_budget(tmp_path, file_server, loras):
    import json

    from tests.support.store_helpers import cli_env, run_cli

    js = job_store(tmp_path)
    for k in "ab":
        prepare(js, LoraRequest(0, file_server.add(f"{k}.safetensors", loras[k]))).release()
        time.sleep(0.01)
    env = cli_env(js.models_root, I2V_PRESET="tiny", I2V_TINY_DIR=str(tmp_path / "no-tiny"))
    proc = run_cli("models", "status", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    listed = {m["sha256"]: m for m in json.loads(proc.stdout) if m.get("kind") == "job_lora"}
    assert set(listed) == {sha(loras["a"]), sha(loras["b"])}
    assert listed[sha(loras["a"])]["sources"] == [f"{file_server.url}/a.safetensors"] and listed[sha(loras["a"])]["last_used"] > 0
    proc = run_cli("models", "status", env=env)
    assert "job LoRAs" in proc.stdout and "last used" in proc.stdout and sha(loras["b"])[:16] in proc.stdout
    budget_gb = (max(loras[k].stat().st_size for k in "ab") + 10) / 1e9
    proc = run_cli("models", "gc", env={**env, "I2V_LORA_BUDGET_GB": f"{budget_gb:.9f}"})
    assert proc.returncode == 0, proc.stderr
    assert f"{sha(loras['a'])}.safetensors" in proc.stdout  # the least recently used one
    assert {p.name for p in published(js)} == {f"{sha(loras['b'])}.safetensors"}
