"""Adoption (issue 10): the store uses model files the machine already has, verified, without
copying, never touching the source. The caches are REAL Hugging Face caches written by
huggingface_hub itself (`hf_hub_download` against the local HF-style server), the ComfyUI folder is
laid out like another worker template leaves a network volume, and the bytes the server served are
counted (zero for an adopted model)."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from i2v_worker.config import Settings, hf_cache_dirs
from i2v_worker.store import ModelState, OfflineError, load_manifest
from i2v_worker.store.errors import StoreLayoutError
from i2v_worker.store.adopt import Adopter, plan_fetch
from i2v_worker.store.records import read_record
from tests.support.store_helpers import blob, cli_env, make_store, run_cli, sha256, tmpfs, write_manifest

pytestmark = pytest.mark.timeout(120)

MB = 2**20
UPSTREAM = "upstream/wan"  # the repo the manifest names
MINE = "me/my-five-files"  # a user's own repo holding the same bytes under other paths


@pytest.fixture
def files(hf_server):
    """Three model files on the HF server: a pinned VAE, a pinned text encoder, an unpinned expert."""
    out = {}
    for i, (name, path) in enumerate([("vae.safetensors", "split_files/vae/wan_vae.safetensors"),
                                      ("te.safetensors", "split_files/text_encoders/umt5.safetensors"),
                                      ("high.gguf", "HighNoise/Wan-HighNoise-Q5_0.gguf")]):
        data = blob((1 + i) * MB + 17 * i, seed=10 + i)
        hf_server.add_file(UPSTREAM, "main", path, data)
        hf_server.add_file(MINE, "main", f"models/{name}", data)
        out[name] = (path, data, sha256(data))
    return out


def _manifest(tmp_path: Path, files, *, pin: bool = True, unpinned: tuple[str, ...] = ("high.gguf",),
              revision: str = "main"):
    folders = {"vae.safetensors": ("vae", "vae"), "te.safetensors": ("text_encoders", "text_encoder"),
               "high.gguf": ("unet", "high_noise")}
    models = {}
    for name, (path, data, sha) in files.items():
        folder, role = folders[name]
        m = {"folder": folder, "role": role, "source": f"hf://{UPSTREAM}@{revision}/{path}"}
        if pin and name not in unpinned:
            m.update(size=len(data), sha256=sha)
        models[name] = m
    return load_manifest(write_manifest(tmp_path / "manifest.toml", models), env={})


def hf_cache(hf, cache: Path, repo: str, paths: list[str], revision: str = "main") -> list[Path]:
    """A real HF cache: huggingface_hub downloads `paths` of `repo` into `cache`; the server's
    request log is then cleared so the test counts only what the store fetches."""
    from huggingface_hub import hf_hub_download

    out = [Path(hf_hub_download(repo, p, revision=revision, cache_dir=cache, endpoint=hf.endpoint))
           for p in paths]
    hf.reset_log()
    return out


def fingerprint(root: Path) -> dict[str, tuple]:
    """Everything under `root` that must not change: per entry its kind, link target or (sha256,
    size, mtime_ns, inode). (ctime and the link count do change when the store hard-links a blob.)"""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            if os.path.islink(p):
                out[str(p)] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[str(p)] = ("dir", st.st_ino, st.st_mtime_ns)
            else:
                out[str(p)] = ("file", sha256(p), st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def store_with(tmp_path, manifest, hf, *, caches=(), comfy=(), offline=False, root=None, **kw):
    root = root or tmp_path / "store"
    return make_store(root, manifest, hf=hf, offline=offline,
                      adopter=Adopter(caches, comfy, store_root=root), **kw)


def reasons(caplog) -> list[str]:
    return [r.fields.get("reason", "") for r in caplog.records
            if getattr(r, "fields", None) and r.getMessage() == "not adopting a candidate copy"]


# --- Hugging Face caches ---------------------------------------------------------------------------

def test_pinned_models_are_adopted_from_a_hf_cache_by_hard_link_with_zero_bytes_downloaded(tmp_path, hf_server, files):
    cache = tmp_path / "hf-cache"
    hf_cache(hf_server, cache, UPSTREAM, [p for p, _, _ in files.values()])
    before = fingerprint(cache)
    store = store_with(tmp_path, _manifest(tmp_path, files), hf_server, caches=[cache])
    paths = store.ensure(list(files))
    assert hf_server.bytes_served == 0
    # pinned entries need no network at all; the unpinned one is verified against its blob's etag
    assert hf_server.resolve_requests() == []
    for name, (path, data, sha) in files.items():
        p = paths[name]
        assert p.read_bytes() == data and not p.is_symlink()
        blob_path = Path(os.path.realpath(cache / f"models--{UPSTREAM.replace('/', '--')}" / "blobs" / sha))
        assert os.stat(p).st_ino == os.stat(blob_path).st_ino  # a hard link: no copy
        rec = read_record(store.root, name)
        assert rec.adopted_link == "hardlink" and rec.sha256 == sha and rec.source.startswith("hf://")
        assert rec.adopted_from.endswith(path) and "/snapshots/" in rec.adopted_from
    assert {s.state for s in store.status()} == {ModelState.PRESENT}
    assert fingerprint(cache) == before
    # presence afterwards is the usual stat + record: a second ensure does nothing
    store.ensure(list(files))
    assert hf_server.bytes_served == 0 and fingerprint(cache) == before


def test_unpinned_branch_entry_is_found_through_refs_and_checked_against_the_blob_etag(tmp_path, hf_server, files):
    cache = tmp_path / "hf-cache"
    hf_cache(hf_server, cache, UPSTREAM, [files["high.gguf"][0]])
    refs = cache / f"models--{UPSTREAM.replace('/', '--')}" / "refs" / "main"
    assert refs.read_text().strip() == hf_server.commit_of(UPSTREAM, "main")
    store = store_with(tmp_path, _manifest(tmp_path, files, pin=False), hf_server, caches=[cache])
    store.ensure(["high.gguf"])
    rec = read_record(store.root, "high.gguf")
    assert rec.pinned is False and rec.sha256 == files["high.gguf"][2] and rec.adopted_from
    assert hf_server.bytes_served == 0 and hf_server.resolve_requests() == []
    # the record's source is the entry's, so the unpinned presence rule (source unchanged) holds
    assert store.status(["high.gguf"])[0].state is ModelState.PRESENT


def test_commit_pinned_revision_uses_the_snapshot_directly(tmp_path, hf_server, files):
    cache = tmp_path / "hf-cache"
    hf_cache(hf_server, cache, UPSTREAM, [files["vae.safetensors"][0]])
    commit = hf_server.commit_of(UPSTREAM, "main")
    (cache / f"models--{UPSTREAM.replace('/', '--')}" / "refs" / "main").unlink()  # no branch ref at all
    store = store_with(tmp_path, _manifest(tmp_path, files, revision=commit), hf_server, caches=[cache])
    store.ensure(["vae.safetensors"])
    assert commit in read_record(store.root, "vae.safetensors").adopted_from
    assert hf_server.bytes_served == 0


def test_pinned_entry_is_found_by_content_in_a_users_own_repository(tmp_path, hf_server, files):
    """RunPod cached models name ONE repository: a user's repo with the five files under other paths."""
    cache = tmp_path / "runpod-volume" / "huggingface-cache" / "hub"
    hf_cache(hf_server, cache, MINE, [f"models/{n}" for n in files])
    store = store_with(tmp_path, _manifest(tmp_path, files), hf_server, caches=[cache])
    store.ensure(["vae.safetensors", "te.safetensors"])
    assert hf_server.bytes_served == 0
    rec = read_record(store.root, "te.safetensors")
    assert "models--me--my-five-files/blobs/" + files["te.safetensors"][2] in rec.adopted_from
    # the unpinned expert is matched by repo and path only: another repo is not the same source
    plan = plan_fetch(store, ["high.gguf"])
    assert [(i.action, i.bytes_to_download) for i in plan.items] == [("download", None)]


def test_a_blob_whose_bytes_do_not_match_its_name_is_rehashed_rejected_and_downloaded(tmp_path, hf_server, files, caplog):
    """huggingface_hub names a blob by the server's etag and does not hash what it received: a
    damaged transfer leaves wrong bytes under the right name. Adoption rehashes, so it is caught."""
    path, data, sha = files["high.gguf"]
    hf_server.faults.corrupt_offsets = (12345,)
    cache = tmp_path / "hf-cache"
    [snap] = hf_cache(hf_server, cache, UPSTREAM, [path])
    hf_server.faults.clear()
    assert Path(os.path.realpath(snap)).name == sha and sha256(snap) != sha  # the premise, made by hf itself
    before = fingerprint(cache)
    store = store_with(tmp_path, _manifest(tmp_path, files, pin=False), hf_server, caches=[cache])
    with caplog.at_level(logging.WARNING):
        p = store.ensure(["high.gguf"])["high.gguf"]
    assert p.read_bytes() == data and not p.is_symlink() and os.stat(p).st_ino != os.stat(snap).st_ino
    assert hf_server.bytes_served == len(data)
    assert any("sha256 of" in r and "cache etag" in r for r in reasons(caplog))
    assert read_record(store.root, "high.gguf").adopted_from is None  # downloaded
    assert fingerprint(cache) == before
    assert list(store.root.rglob("*.adopting")) == []


def test_broken_symlink_in_a_snapshot_is_skipped_with_a_reason(tmp_path, hf_server, files, caplog):
    path, data, sha = files["vae.safetensors"]
    cache = tmp_path / "hf-cache"
    [snap] = hf_cache(hf_server, cache, UPSTREAM, [path])
    os.unlink(os.path.realpath(snap))  # the cache lost its blob (a partial cleanup): snapshot link dangles
    before = fingerprint(cache)
    store = store_with(tmp_path, _manifest(tmp_path, files), hf_server, caches=[cache])
    with caplog.at_level(logging.WARNING):
        store.ensure(["vae.safetensors"])
    assert hf_server.bytes_served == len(data)
    assert any("broken symlink" in r for r in reasons(caplog))
    assert fingerprint(cache) == before


def test_an_incomplete_blob_is_never_adopted(tmp_path, hf_server, files):
    from huggingface_hub import hf_hub_download

    path, data, sha = files["te.safetensors"]
    cache = tmp_path / "hf-cache"
    hf_server.faults.reset_after_bytes, hf_server.faults.reset_times = 200_000, None
    with pytest.raises(Exception):
        hf_hub_download(UPSTREAM, path, cache_dir=cache, endpoint=hf_server.endpoint)
    hf_server.faults.clear()
    hf_server.reset_log()
    blobs = cache / f"models--{UPSTREAM.replace('/', '--')}" / "blobs"
    assert [p.name for p in blobs.iterdir()] == [sha + ".incomplete"]  # left by the killed download
    before = fingerprint(cache)
    store = store_with(tmp_path, _manifest(tmp_path, files), hf_server, caches=[cache])
    assert [i.action for i in plan_fetch(store, ["te.safetensors"]).items] == ["download"]
    store.ensure(["te.safetensors"])
    assert hf_server.bytes_served == len(data)
    assert fingerprint(cache) == before


def test_two_caches_holding_the_same_file(tmp_path, hf_server, files, caplog):
    path, data, sha = files["vae.safetensors"]
    damaged, good = tmp_path / "cache-a", tmp_path / "cache-b"
    [a] = hf_cache(hf_server, damaged, UPSTREAM, [path])
    hf_cache(hf_server, good, UPSTREAM, [path])
    blob_a = Path(os.path.realpath(a))
    with open(blob_a, "r+b") as fh:  # a bit flipped on the volume: same size, same name
        fh.seek(100)
        b = fh.read(1)
        fh.seek(100)
        fh.write(bytes([b[0] ^ 1]))
    alias = tmp_path / "cache-a-again"
    alias.symlink_to(damaged)  # HF_HOME/hub and HF_HUB_CACHE naming one cache: one candidate
    store = store_with(tmp_path, _manifest(tmp_path, files), hf_server, caches=[damaged, alias, good])
    assert [str(c.root) for c in store.adopter.candidates(store.manifest.get("vae.safetensors"))] == \
        [str(damaged), str(good)]
    with caplog.at_level(logging.WARNING):
        store.ensure(["vae.safetensors"])
    assert hf_server.bytes_served == 0
    assert read_record(store.root, "vae.safetensors").adopted_from.startswith(str(good))
    assert len(reasons(caplog)) == 1  # the damaged copy, rejected once
    # two good copies: the first in search order wins
    store2 = store_with(tmp_path, _manifest(tmp_path, files), hf_server, caches=[good, damaged],
                        root=tmp_path / "store2")
    store2.ensure(["vae.safetensors"])
    assert read_record(store2.root, "vae.safetensors").adopted_from.startswith(str(good))


# --- another filesystem, read-only, vanished or changed source ---------------------------------------

def test_read_only_cache_on_another_filesystem_is_symlinked_and_a_vanished_source_makes_it_missing(tmp_path, hf_server, files):
    path, data, sha = files["vae.safetensors"]
    mnt = tmp_path / "mnt"
    with tmpfs(mnt, 64 * MB):
        cache = mnt / "hub"
        hf_cache(hf_server, cache, UPSTREAM, [path])
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        with pytest.raises(OSError):
            (cache / "probe").write_text("x")  # really read-only
        before = fingerprint(cache)
        store = store_with(tmp_path, _manifest(tmp_path, files), hf_server, caches=[cache])
        p = store.ensure(["vae.safetensors"])["vae.safetensors"]
        assert p.is_symlink() and p.read_bytes() == data
        assert read_record(store.root, "vae.safetensors").adopted_link == "symlink"
        assert hf_server.bytes_served == 0 and fingerprint(cache) == before
        r = run_cli("models", "status", "--json", env=cli_env(store.root, hf=hf_server, manifest=tmp_path / "manifest.toml",
                                                             I2V_ADOPT="0"))
        [row] = [x for x in __import__("json").loads(r.stdout) if x["name"] == "vae.safetensors"]
        assert row["state"] == "present" and row["origin"].startswith(f"adopted from {cache}")
        assert row["origin"].endswith("(symlink)")
        r = run_cli("models", "verify", "--full", env=cli_env(store.root, hf=hf_server,
                                                              manifest=tmp_path / "manifest.toml", I2V_ADOPT="0"))
        assert r.returncode == 0, r.stderr
        assert read_record(store.root, "vae.safetensors").adopted_from  # verify keeps the origin
    # the cache is gone (unmounted): missing again, never corrupt; the next ensure downloads
    [st] = store.status(["vae.safetensors"])
    assert st.state is ModelState.MISSING
    assert store.verify(full=True, names=["vae.safetensors"])[0].state is ModelState.MISSING
    p = store.ensure(["vae.safetensors"])["vae.safetensors"]
    assert not p.is_symlink() and p.read_bytes() == data and hf_server.bytes_served == len(data)
    assert read_record(store.root, "vae.safetensors").adopted_from is None


def test_a_changed_source_is_not_trusted_and_the_download_replaces_the_link_not_the_source(tmp_path, hf_server, files):
    path, data, sha = files["vae.safetensors"]
    mnt = tmp_path / "mnt"
    with tmpfs(mnt, 64 * MB):
        cache = mnt / "hub"
        [snap] = hf_cache(hf_server, cache, UPSTREAM, [path])
        store = store_with(tmp_path, _manifest(tmp_path, files), hf_server, caches=[cache])
        p = store.ensure(["vae.safetensors"])["vae.safetensors"]
        assert p.is_symlink()
        other = blob(len(data), seed=99)
        Path(os.path.realpath(snap)).write_bytes(other)  # someone rewrote the cache's file in place
        [st] = store.status(["vae.safetensors"])
        assert st.state is not ModelState.PRESENT and st.state is not ModelState.CORRUPT
        from i2v_worker.store.adopt.plan import status_origin

        assert "source changed" in status_origin(store, "vae.safetensors", st.state)
        p = store.ensure(["vae.safetensors"])["vae.safetensors"]  # rehash rejects it -> download
        assert not p.is_symlink() and p.read_bytes() == data and hf_server.bytes_served == len(data)
        assert Path(os.path.realpath(snap)).read_bytes() == other  # nothing was written through the link


def test_a_store_that_cannot_link_downloads_instead(tmp_path, hf_server, files, caplog):
    """A store folder where no link can be made (read-only filesystem): adoption fails with a
    reason and the download path reports its own error; the source is untouched."""
    path, data, sha = files["vae.safetensors"]
    cache = tmp_path / "hf-cache"
    hf_cache(hf_server, cache, UPSTREAM, [path])
    before = fingerprint(cache)
    root = tmp_path / "store"
    with tmpfs(root / "vae", 8 * MB):  # the model's folder is a read-only mount; leases still work
        subprocess.run(["mount", "-o", "remount,ro", str(root / "vae")], check=True)
        store = store_with(tmp_path, _manifest(tmp_path, files), hf_server, caches=[cache], root=root)
        with caplog.at_level(logging.WARNING), pytest.raises(StoreLayoutError, match="not writable"):
            store.ensure(["vae.safetensors"])
    assert any("could not link it into the store" in r for r in reasons(caplog))
    assert fingerprint(cache) == before


# --- ComfyUI models folders ---------------------------------------------------------------------------

def _comfyui_volume(root: Path, files) -> Path:
    """`/runpod-volume/ComfyUI/models` as another ComfyUI template leaves it: diffusion_models/ and
    clip/ (the legacy/alias names), the upstream file names for some, the local names for others,
    empty folders the template creates, and an unrelated checkpoint."""
    models = root / "ComfyUI" / "models"
    for d in ("checkpoints", "diffusion_models", "clip", "vae", "loras", "upscale_models", "clip_vision"):
        (models / d).mkdir(parents=True, exist_ok=True)
    (models / "diffusion_models" / Path(files["high.gguf"][0]).name).write_bytes(files["high.gguf"][1])
    (models / "clip" / "te.safetensors").write_bytes(files["te.safetensors"][1])
    (models / "vae" / "vae.safetensors").write_bytes(files["vae.safetensors"][1][:-1])  # truncated copy
    (models / "checkpoints" / "sd15.safetensors").write_bytes(b"unrelated")
    return models


def test_comfyui_folder_with_aliases_pinned_by_hash_unpinned_by_the_servers_etag(tmp_path, hf_server, files, caplog):
    models = _comfyui_volume(tmp_path / "runpod-volume", files)
    before = fingerprint(models)
    store = store_with(tmp_path, _manifest(tmp_path, files), hf_server, comfy=[models])
    plan = {i.name: i for i in plan_fetch(store, list(files)).items}
    assert plan["te.safetensors"].action == "adopt" and "/clip/" in plan["te.safetensors"].source
    assert plan["high.gguf"].action == "adopt" and "/diffusion_models/" in plan["high.gguf"].source
    assert plan["vae.safetensors"].action == "download"
    assert any("bytes, expected" in r for r in plan["vae.safetensors"].rejected)
    with caplog.at_level(logging.WARNING):
        store.ensure(list(files))
    # only the truncated VAE came over the network; the unpinned expert cost one HEAD (its etag)
    assert hf_server.bytes_served == len(files["vae.safetensors"][1])
    assert len(hf_server.resolve_requests()) == 2  # the HEAD for the expert's etag, the VAE's download
    assert read_record(store.root, "high.gguf").adopted_from.endswith("diffusion_models/Wan-HighNoise-Q5_0.gguf")
    assert read_record(store.root, "te.safetensors").adopted_link == "hardlink"
    assert fingerprint(models) == before


def test_offline_unpinned_comfyui_file_cannot_be_verified_so_it_is_not_adopted(tmp_path, hf_server, files, caplog):
    models = _comfyui_volume(tmp_path / "vol", files)
    store = store_with(tmp_path, _manifest(tmp_path, files), hf_server, comfy=[models], offline=True)
    store.ensure(["te.safetensors"])  # pinned: adopted offline
    with caplog.at_level(logging.WARNING), pytest.raises(OfflineError):
        store.ensure(["high.gguf"])
    assert any("HF_HUB_OFFLINE" in r for r in reasons(caplog))
    assert hf_server.requests == []


# --- settings, CLI --------------------------------------------------------------------------------------

def test_the_caches_searched_and_their_order():
    env = {"HF_HUB_CACHE": "/a/hub", "HF_HOME": "/b", "XDG_CACHE_HOME": "/c", "I2V_HF_CACHES": "/d, /a/hub"}
    assert [str(p) for p in hf_cache_dirs(env)] == [
        "/runpod-volume/huggingface-cache/hub", "/a/hub", "/b/hub", "/c/huggingface/hub", "/d"]
    s = Settings.from_env({"I2V_COMFYUI_MODEL_DIRS": "/x/models,/y/models", "I2V_MODEL_DIR": "/s"})
    assert [str(p) for p in s.comfyui_model_dirs] == ["/x/models", "/y/models"] and s.adopt
    s = Settings.from_env({"I2V_MODEL_DIR": "/s", "I2V_ADOPT": "0"})
    assert not s.adopt and "/workspace/ComfyUI/models" in [str(p) for p in s.comfyui_model_dirs]


def test_fetch_dry_run_says_what_would_be_adopted_and_the_bytes_left_then_fetch_does_it(tmp_path, hf_server, files):
    cache = tmp_path / "hf-home" / "hub"  # the default user cache under HF_HOME (cli_env's HF_HOME)
    hf_cache(hf_server, cache, UPSTREAM, [files["te.safetensors"][0]])
    manifest = _manifest(tmp_path, files, unpinned=())
    store_dir = tmp_path / "store"
    env = cli_env(store_dir, hf=hf_server, manifest=tmp_path / "manifest.toml")
    r = run_cli("models", "fetch", "--dry-run", *files, env=env)
    assert r.returncode == 0, r.stderr
    assert "adopt" in r.stdout and str(cache) in r.stdout
    left = len(files["vae.safetensors"][1]) + len(files["high.gguf"][1])
    assert f"({left} bytes" in r.stdout
    assert hf_server.requests == []
    assert not store_dir.exists() or not [p for p in store_dir.rglob("*") if p.is_file()]
    r = run_cli("models", "fetch", *files, env=env)
    assert r.returncode == 0, r.stderr
    assert hf_server.bytes_served == left
    r = run_cli("models", "status", env=env)
    assert "adopted from" in r.stdout and "downloaded" in r.stdout
    assert manifest.get("te.safetensors").pinned


def test_two_workers_on_one_store_adopt_each_model_once(tmp_path, hf_server, files, caplog):
    """Adoption runs inside the download lease: two workers booting together on one volume adopt
    (hash and link) each model once; the other finds it present."""
    import threading

    cache = tmp_path / "hf-cache"
    hf_cache(hf_server, cache, UPSTREAM, [p for p, _, _ in files.values()])
    manifest = _manifest(tmp_path, files)
    stores = [store_with(tmp_path, manifest, hf_server, caches=[cache], lease_poll_s=0.02)
              for i in range(2)]
    errors: list[BaseException] = []

    def run(s):
        try:
            s.ensure(list(files))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with caplog.at_level(logging.INFO, logger="i2v_worker.store.adopt"):
        threads = [threading.Thread(target=run, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
    adopted = [r.fields["model"] for r in caplog.records if r.getMessage() == "model adopted"]
    assert sorted(adopted) == sorted(files)
    assert hf_server.bytes_served == 0
