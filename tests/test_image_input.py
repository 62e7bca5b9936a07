"""Image input: SSRF-safe fetching against a real HTTP server on 127.0.0.1, and safe decoding.

The server is Python's http.server on loopback; reaching it needs the test-only
`allow_loopback` switch, which is exactly what the loopback tests check is off by default.
Host names that resolve to private addresses are simulated with an injected resolver (the one
thing a loopback-only test machine cannot produce for real).
"""

from __future__ import annotations

import base64
import io
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from i2v_worker.egress import address_allowed, host_allowed
from i2v_worker.worker.image import ImageInputError, decode_base64, decode_image, fetch_image

pytestmark = pytest.mark.timeout(60)


def png_bytes(size=(32, 24), color=(200, 30, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    routes: dict = {}
    seen_hosts: list = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        self.seen_hosts.append(self.headers.get("Host"))
        parts = urlsplit(self.path)
        q = parse_qs(parts.query)
        if parts.path == "/img.png":
            return self._send(200, png_bytes(), "image/png")
        if parts.path == "/redirect":
            self.send_response(int(q.get("code", ["302"])[0]))
            self.send_header("Location", q["to"][0])
            self.end_headers()
            return
        if parts.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
            return
        if parts.path == "/big":  # declares its size
            return self._send(200, b"\0" * int(q["n"][0]), "image/png")
        if parts.path == "/big-undeclared":  # no Content-Length: only the streaming cap can stop it
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            for _ in range(int(q["n"][0]) // 65536):
                self.wfile.write(b"\0" * 65536)
            return
        if parts.path == "/slow":
            self.send_response(200)
            self.end_headers()
            for _ in range(100):
                time.sleep(0.1)
                try:
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                except OSError:
                    return
            return
        return self._send(404, b"not found", "text/plain")

    def _send(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 (free port)."""
    _Handler.seen_hosts = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def fetch(url, **kw):
    kw.setdefault("max_bytes", 1 << 20)
    kw.setdefault("timeout_s", 10)
    return fetch_image(url, **kw)


async def rule_of(coro) -> str:
    with pytest.raises(ImageInputError) as info:
        await coro
    assert info.value.field == "image_url"
    return info.value.rule


# --------------------------------------------------------------------------------------- fetching


async def test_fetch_from_loopback_with_the_test_setting(http_server):
    data = await fetch(f"{http_server}/img.png", allow_loopback=True)
    assert decode_image(data, "image_url").width == 32


async def test_loopback_is_blocked_by_default(http_server):
    assert await rule_of(fetch(f"{http_server}/img.png")) == "blocked_address"
    assert await rule_of(fetch("http://[::1]/img.png")) == "blocked_address"
    assert _Handler.seen_hosts == []  # no connection was made at all


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/a.png",
    "http://192.168.1.1/a.png",
    "http://100.64.0.1/a.png",
    "http://[fd00::1]/a.png",
    "http://[::ffff:169.254.169.254]/a.png",
    "http://0.0.0.0/a.png",
])
async def test_private_and_metadata_addresses_are_blocked(url):
    assert await rule_of(fetch(url, allow_loopback=True)) == "blocked_address"


@pytest.mark.parametrize("target", [
    "http://169.254.169.254/latest/meta-data/iam/",
    "http://10.0.0.5/secret",
    "http://[fe80::1]/x",
])
async def test_redirect_to_private_address_is_blocked(http_server, target):
    url = f"{http_server}/redirect?to={target}"
    assert await rule_of(fetch(url, allow_loopback=True)) == "blocked_address"


@pytest.mark.parametrize("target", ["file:///etc/passwd", "gopher://127.0.0.1:70/x", "ftp://example.com/a.png"])
async def test_redirect_to_other_schemes_is_refused(http_server, target):
    url = f"{http_server}/redirect?code=301&to={target}"
    assert await rule_of(fetch(url, allow_loopback=True)) == "scheme"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://example.com/"])
async def test_non_http_schemes_are_refused(url):
    assert await rule_of(fetch(url)) == "scheme"


async def test_redirect_within_allowed_hosts_is_followed(http_server):
    data = await fetch(f"{http_server}/redirect?code=307&to=/img.png", allow_loopback=True)
    assert data.startswith(b"\x89PNG")


async def test_too_many_redirects(http_server):
    assert await rule_of(fetch(f"{http_server}/loop", allow_loopback=True)) == "too_many_redirects"


async def test_hostname_resolving_to_private_is_blocked():
    async def resolver(host, port):
        return {"internal.example.com": ["10.1.2.3"], "mixed.example.com": ["93.184.215.14", "192.168.0.7"]}[host]

    for host in ("internal.example.com", "mixed.example.com"):
        assert await rule_of(fetch(f"http://{host}/a.png", resolver=resolver)) == "blocked_address"


async def test_connection_goes_to_the_checked_address_with_the_original_host(http_server):
    """DNS rebinding: the name is resolved once, checked, and the connection uses that address."""
    port = http_server.rsplit(":", 1)[1]
    calls = []

    async def resolver(host, p):
        calls.append(host)
        return ["127.0.0.1"]

    data = await fetch(f"http://images.test:{port}/img.png", resolver=resolver, allow_loopback=True)
    assert data.startswith(b"\x89PNG")
    assert calls == ["images.test"]  # resolved exactly once, by the checker
    assert _Handler.seen_hosts == [f"images.test:{port}"]


async def test_host_allow_list(http_server):
    port = http_server.rsplit(":", 1)[1]

    async def resolver(host, p):
        return ["127.0.0.1"]

    allow = ("images.test",)
    ok = await fetch(f"http://images.test:{port}/img.png", resolver=resolver, allow_loopback=True, allowlist=allow)
    assert ok.startswith(b"\x89PNG")
    assert await rule_of(fetch(f"http://other.test:{port}/img.png", resolver=resolver, allow_loopback=True,
                               allowlist=allow)) == "host_not_allowed"
    # a redirect to a host outside the list is refused too
    url = f"http://images.test:{port}/redirect?to=http://other.test:{port}/img.png"
    assert await rule_of(fetch(url, resolver=resolver, allow_loopback=True, allowlist=allow)) == "host_not_allowed"


def test_host_allow_list_wildcards():
    assert host_allowed("cdn.example.com", ("*.example.com",))
    assert host_allowed("example.com", (".example.com",))
    assert not host_allowed("example.com.evil.net", ("*.example.com",))
    assert not host_allowed("badexample.com", ("*.example.com",))


@pytest.mark.parametrize("path", ["/big?n=2097152", "/big-undeclared?n=2097152"])
async def test_download_size_is_capped(http_server, path):
    assert await rule_of(fetch(f"{http_server}{path}", allow_loopback=True, max_bytes=1 << 20)) == "too_large"


async def test_download_time_is_capped(http_server):
    assert await rule_of(fetch(f"{http_server}/slow", allow_loopback=True, timeout_s=0.5)) == "timeout"


async def test_http_error_status_is_reported(http_server):
    with pytest.raises(ImageInputError) as info:
        await fetch(f"{http_server}/missing.png", allow_loopback=True)
    assert info.value.rule == "fetch_failed" and "404" in info.value.message


@pytest.mark.parametrize("addr,allowed", [
    ("8.8.8.8", True), ("1.1.1.1", True), ("2606:4700:4700::1111", True),
    ("127.0.0.1", False), ("127.8.0.1", False), ("10.0.0.1", False), ("172.16.0.1", False), ("192.168.0.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("100.127.255.254", False), ("0.0.0.0", False),
    ("224.0.0.1", False), ("239.255.255.250", False), ("240.0.0.1", False), ("255.255.255.255", False),
    ("192.0.2.1", False), ("198.18.0.1", False),
    ("::1", False), ("::", False), ("fe80::1", False), ("fc00::1", False), ("fd12:3456::1", False), ("ff02::1", False),
    ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("::ffff:169.254.169.254", False),
    ("2002:7f00:1::1", False), ("2002:a9fe:a9fe::1", False), ("64:ff9b::a00:1", False), ("2001:db8::1", False),
    ("::ffff:8.8.8.8", True),
])
def test_address_policy(addr, allowed):
    assert address_allowed(addr) is allowed


def test_loopback_setting_allows_only_loopback():
    assert address_allowed("127.0.0.1", allow_loopback=True)
    assert address_allowed("::1", allow_loopback=True)
    for addr in ("10.0.0.1", "169.254.169.254", "192.168.0.1", "fd00::1", "0.0.0.0"):
        assert not address_allowed(addr, allow_loopback=True)


# --------------------------------------------------------------------------------------- decoding


def test_base64_plain_data_uri_and_urlsafe():
    raw = png_bytes()
    b64 = base64.b64encode(raw).decode()
    assert decode_base64(b64, "image_base64", 1 << 20) == raw
    assert decode_base64("data:image/png;base64," + b64, "image_base64", 1 << 20) == raw
    assert decode_base64(base64.urlsafe_b64encode(raw).decode().rstrip("="), "image_base64", 1 << 20) == raw
    wrapped = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    assert decode_base64(wrapped, "image_base64", 1 << 20) == raw


@pytest.mark.parametrize("value,rule", [
    ("this is not base64 !!", "base64"),
    ("data:image/png;base64,@@@@", "base64"),
    ("data:text/plain;base64,aGVsbG8=", "data_uri"),
    ("data:image/png,rawbytes", "data_uri"),
])
def test_garbage_base64_is_rejected(value, rule):
    with pytest.raises(ImageInputError) as info:
        decode_base64(value, "image_base64", 1 << 20)
    assert info.value.field == "image_base64" and info.value.rule == rule


def test_base64_size_cap():
    with pytest.raises(ImageInputError) as info:
        decode_base64(base64.b64encode(b"\0" * 4096).decode(), "image_base64", 1024)
    assert info.value.rule == "too_large"


@pytest.mark.parametrize("data,rule", [
    (b"hello, this is text", "not_an_image"),
    (b"%PDF-1.4\n" + b"\0" * 100, "not_an_image"),
    (png_bytes()[:60], "corrupt_image"),
])
def test_non_image_bytes_are_rejected(data, rule):
    with pytest.raises(ImageInputError) as info:
        decode_image(data, "image_base64")
    assert info.value.rule == rule and info.value.field == "image_base64"


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR declares `width` x `height` (a decompression bomb's header)."""
    raw = png_bytes((1, 1))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return raw[:8] + chunk + raw[8 + 25:]


@pytest.mark.parametrize("size", [(100_000, 100_000), (9_000, 9_000), (20_000, 2_500)])
def test_decompression_bomb_is_rejected_before_decoding(size):
    with pytest.raises(ImageInputError) as info:
        decode_image(_png_with_declared_size(*size), "image_base64")
    assert info.value.rule == "too_many_pixels"
    assert "pixels" in info.value.message


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    out = decode_image(buf.getvalue(), "image_base64")
    assert (out.width, out.height) == (20, 40)
    shown = Image.open(io.BytesIO(out.png))
    assert shown.format == "PNG" and shown.mode == "RGB" and shown.size == (20, 40)
    top, bottom = shown.getpixel((10, 5)), shown.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60
    assert out.source_format == "JPEG"


def test_transparent_image_becomes_rgb_on_white():
    out = decode_image(png_bytes((8, 8), (0, 0, 0, 0), mode="RGBA"), "image_base64")
    img = Image.open(io.BytesIO(out.png))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_large_image_is_fitted_to_the_video_size(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (1920, 1080), (20, 120, 220)).save(buf, fmt)
    seen = []

    def size_for(w, h):
        seen.append((w, h))
        return 848, 480

    out = decode_image(buf.getvalue(), "image_base64", size_for=size_for)
    assert seen == [(1920, 1080)] and (out.width, out.height) == (1920, 1080)  # the original's aspect
    assert (out.png_width, out.png_height) == (848, 480)  # centre-cropped to the video's aspect, resized
    assert Image.open(io.BytesIO(out.png)).size == (848, 480)


def test_downscale_respects_exif_rotation():
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (1600, 800), (200, 10, 10)).save(buf, "JPEG", exif=exif)
    out = decode_image(buf.getvalue(), "image_base64", size_for=lambda w, h: (320, 640))
    assert (out.width, out.height) == (800, 1600)
    assert (out.png_width, out.png_height) == (320, 640)


def test_small_image_is_upscaled_here_once_for_both_engines():
    """The one start-image resize: an image smaller than the video leaves the worker at the video's
    size, so neither engine resizes (ComfyUI's common_upscale and PIL's fit differ when upscaling)."""
    out = decode_image(png_bytes((40, 30)), "image_base64", size_for=lambda w, h: (832, 624))
    assert (out.png_width, out.png_height) == (832, 624)
    assert Image.open(io.BytesIO(out.png)).size == (832, 624)


def test_fit_centre_crops_to_the_target_aspect():
    from i2v_worker.worker.image import fit_to

    img = Image.new("RGB", (300, 100), (0, 0, 255))
    for x in range(100, 200):  # a red middle third: what a centre crop to a square keeps
        for y in range(100):
            img.putpixel((x, y), (255, 0, 0))
    out = fit_to(img, (64, 64))
    assert out.size == (64, 64)
    r, g, b = out.getpixel((32, 32))
    assert r > 240 and b < 15
    assert fit_to(img, (300, 100)) is img  # the video's size already: untouched


async def test_https_to_the_pinned_address_still_verifies_the_certificate_for_the_host():
    """Connecting to the checked IP keeps TLS honest: SNI and verification use the host name."""
    import ssl

    import httpx

    import trustme

    ca = trustme.CA()  # a test CA, and a certificate for one name only
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("images.test").configure_cert(server_ctx)
    _Handler.seen_hosts = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.socket = server_ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    port = srv.server_address[1]

    async def resolver(host, p):
        return ["127.0.0.1"]

    try:
        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        data = await fetch(f"https://images.test:{port}/img.png", resolver=resolver, allow_loopback=True,
                           transport=httpx.AsyncHTTPTransport(verify=trusting))
        assert data.startswith(b"\x89PNG") and _Handler.seen_hosts == [f"images.test:{port}"]
        # the same server under another name: the certificate does not match, the fetch fails
        with pytest.raises(ImageInputError) as info:
            await fetch(f"https://other.test:{port}/img.png", resolver=resolver, allow_loopback=True,
                        transport=httpx.AsyncHTTPTransport(verify=trusting))
        assert info.value.rule == "fetch_failed"
    finally:
        srv.shutdown()
        srv.server_close()


async def test_next_checked_address_is_tried_when_one_refuses(http_server):
    port = int(http_server.rsplit(":", 1)[1])
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.2", 0))
        dead = s.getsockname()[0]

    async def resolver(host, p):
        return [dead, "127.0.0.1"]

    assert (await fetch(f"http://images.test:{port}/img.png", resolver=resolver, allow_loopback=True)).startswith(b"\x89PNG")


async def test_invalid_url_is_reported():
    assert await rule_of(fetch("http://[::1/a.png")) == "url"
