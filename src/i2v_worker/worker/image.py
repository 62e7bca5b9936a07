"""The input image: SSRF-safe URL fetch, base64 decoding, and safe decoding with Pillow.

Everything that reaches the engine is re-encoded here: the engine only ever sees a PNG that Pillow
produced from pixels it decoded under a pixel cap, EXIF-rotated and converted to RGB.

Why the fetch is hand-written on top of httpx rather than the runpod SDK's `rp_download`: the
SDK's helper is synchronous (it would block the event loop that cancellation needs), has no
allow-list or test-only loopback switch, and connects by host name after checking it, which leaves
a DNS-rebinding window. Here every hop is resolved once, every address is checked, and the
connection goes to the checked address (see `_pinned_request`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import binascii
import io
import math
import socket
import warnings
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

import httpx

from i2v_worker import __version__
from i2v_worker.egress import EgressDenied, check_target, checked, literal_address, unresolvable

MAX_REDIRECTS = 5
MAX_PIXELS = 40_000_000  # decoded-pixel cap (a 8K x 5K photo fits; a decompression bomb does not)
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)

# host, port -> the addresses the host resolves to. Injectable for tests.
Resolver = Callable[[str, int], Awaitable[list[str]]]


class ImageInputError(Exception):
    """A bad image input: `field` and `rule` go into the invalid_input details."""

    def __init__(self, field: str, rule: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.rule, self.message = field, rule, message


@dataclass(frozen=True)
class PreparedImage:
    png: bytes  # RGB, EXIF orientation applied, fitted to the video size (see decode_image), PNG
    width: int  # the original size after EXIF rotation: what the video's aspect ratio follows
    height: int
    source_format: str  # PNG, JPEG, ... as Pillow identified it
    png_width: int = 0  # the size of `png`
    png_height: int = 0


# (oriented image width, height) -> the video's (width, height)
SizeFor = Callable[[int, int], "tuple[int, int]"]


# --------------------------------------------------------------------------------------- base64


def decode_base64(value: str, field: str, max_bytes: int) -> bytes:
    """Plain base64 or a data URI (`data:image/png;base64,...`); standard or URL-safe alphabet."""
    s = value.strip()
    if s.startswith("data:"):
        header, sep, payload = s.partition(",")
        if not sep or ";base64" not in header:
            raise ImageInputError(field, "data_uri", "a data URI must look like data:image/png;base64,<data>")
        if not header[5:].lower().startswith("image/") and header[5:].split(";")[0]:
            raise ImageInputError(field, "data_uri", f"data URI media type {header[5:].split(';')[0]!r} is not an image")
        s = payload
    s = "".join(s.split())  # line breaks from MIME-style encoders
    if len(s) * 3 // 4 > max_bytes:
        raise ImageInputError(field, "too_large",
                              f"image is about {len(s) * 3 // 4} bytes, over the limit of {max_bytes} (I2V_IMAGE_MAX_BYTES)")
    s = s.replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(field, "base64", "is not valid base64 (expected the image file's bytes as base64, "
                              "plain or as data:image/...;base64,...)") from None
    if not data:
        raise ImageInputError(field, "base64", "decodes to zero bytes")
    return data


# ---------------------------------------------------------------------------------------- decode


def decode_image(data: bytes, field: str, max_pixels: int = MAX_PIXELS, size_for: SizeFor | None = None) -> PreparedImage:
    """Decode with Pillow under a pixel cap, apply EXIF orientation, convert to RGB, re-encode PNG.

    With `size_for` (oriented size -> the video's size), the image is fitted to exactly the video
    size here: centre-cropped to the video's aspect and resized with Lanczos (`fit_to`). This is
    THE start-image resize: both engines get an image of the video's size, so ComfyUI's
    common_upscale and the diffusers engine's fit are the identity and cannot disagree (they did
    for images smaller than the video). Large JPEGs decode in draft mode at the smallest scale
    that still covers the video.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than fails) between MAX_IMAGE_PIXELS and twice that: fail instead.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            fmt = img.format or "unknown"
            w, h = img.size  # from the header, before any pixel is decoded
            if w * h > max_pixels:
                raise ImageInputError(field, "too_many_pixels",
                                      f"image declares {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
            rotated = img.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientations that swap the axes
            ow, oh = (h, w) if rotated else (w, h)
            target = size_for(ow, oh) if size_for else None
            cover = _cover_size(ow, oh, target) if target else None
            if cover is not None and fmt == "JPEG":
                img.draft("RGB", (cover[1], cover[0]) if rotated else cover)  # decode at 1/2, 1/4, 1/8 scale
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                rgb.paste(rgba, mask=rgba.getchannel("A"))
            else:
                rgb = img.convert("RGB")
            if target is not None:
                rgb = fit_to(rgb, target)
            out = io.BytesIO()
            # Level 0: the PNG only travels to the engine on this machine; zlib would cost more than it saves.
            rgb.save(out, "PNG", compress_level=0)
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageInputError(field, "too_many_pixels", f"image rejected as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageInputError(field, "not_an_image",
                              f"is not an image in a supported format ({', '.join(ALLOWED_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt files
        raise ImageInputError(field, "corrupt_image", f"image could not be decoded: {exc}") from None
    return PreparedImage(out.getvalue(), ow, oh, fmt, rgb.width, rgb.height)


def fit_to(img, size: tuple[int, int]):
    """Centre-crop `img` (a PIL image) to the aspect of `size` and resize it to `size` (Lanczos) in
    one resampling step (PIL's resize with a sub-pixel box); the same size is returned unchanged."""
    from PIL import Image

    sw, sh = img.size
    tw, th = size
    if (sw, sh) == (tw, th):
        return img
    if sw * th > tw * sh:  # wider than the target: crop left and right
        cw = sh * tw / th
        box = ((sw - cw) / 2, 0.0, (sw + cw) / 2, float(sh))
    else:  # taller (or the same aspect): crop top and bottom
        ch = sw * th / tw
        box = (0.0, (sh - ch) / 2, float(sw), (sh + ch) / 2)
    downscale = tw < sw or th < sh
    return img.resize((tw, th), Image.Resampling.LANCZOS, box=box, reducing_gap=2.0 if downscale else None)


def _cover_size(w: int, h: int, target: tuple[int, int]) -> tuple[int, int] | None:
    """The smallest size with w:h's aspect that covers `target`; None when the image is not larger."""
    scale = max(target[0] / w, target[1] / h)
    if scale >= 1:
        return None
    return max(target[0], math.ceil(w * scale)), max(target[1], math.ceil(h * scale))


# ----------------------------------------------------------------------------------------- fetch


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


async def fetch_image(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    allowlist: tuple[str, ...] = (),
    allow_loopback: bool = False,
    resolver: Resolver | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    field: str = "image_url",
) -> bytes:
    """GET `url` with SSRF checks on every hop, a byte cap and a total time cap."""
    resolve = resolver or system_resolver
    async with _session(url, field, timeout_s, transport, setting="I2V_IMAGE_FETCH_TIMEOUT_S") as client:
        current = httpx.URL(url)
        for _hop in range(MAX_REDIRECTS + 1):
            result = await _fetch_hop(client, current, field, max_bytes, allowlist, allow_loopback, resolve)
            if isinstance(result, bytes):
                return result
            current = result
        raise ImageInputError(field, "too_many_redirects", f"more than {MAX_REDIRECTS} redirects fetching {url}")


@contextlib.asynccontextmanager
async def _session(url: str, field: str, timeout_s: float, transport: httpx.AsyncBaseTransport | None,
                   setting: str = "") -> AsyncIterator[httpx.AsyncClient]:
    """One fetch of `url` (all its hops) under a total time cap, with httpx's failures turned into
    the field's errors. No redirects followed by httpx (each hop is checked), no proxy from the
    environment (a proxy would connect by name, past the checked address)."""
    named = f" ({setting})" if setting else ""
    try:
        async with asyncio.timeout(timeout_s):
            async with httpx.AsyncClient(follow_redirects=False, transport=transport, trust_env=False,
                                         timeout=httpx.Timeout(timeout_s)) as client:
                yield client
    except (TimeoutError, httpx.TimeoutException):
        raise ImageInputError(field, "timeout", f"fetching {url} took longer than {timeout_s:g} s{named}") from None
    except httpx.InvalidURL as exc:
        raise ImageInputError(field, "url", f"{url} is not a valid URL (or redirected to an invalid one): {exc}") from None
    except httpx.HTTPError as exc:
        raise ImageInputError(field, "fetch_failed", f"fetching {url} failed: {type(exc).__name__}: {exc}") from None


async def checked_addresses(url: httpx.URL, field: str, allowlist: tuple[str, ...], allow_loopback: bool,
                            resolve: Resolver, *, setting: str = "") -> list[str]:
    """One hop under the egress rule (i2v_worker/egress.py) -> the checked addresses to connect to."""
    host = url.host
    try:
        check_target(str(url), url.scheme, host, allowlist, setting)
        addrs = literal_address(host)
        if addrs is None:
            try:
                addrs = await resolve(host, url.port or (443 if url.scheme == "https" else 80))
            except (OSError, UnicodeError) as exc:
                raise unresolvable(host, exc) from None
        return checked(host, addrs, allow_loopback)
    except EgressDenied as exc:
        raise ImageInputError(field, exc.rule, exc.message) from None


async def _fetch_hop(client: httpx.AsyncClient, url: httpx.URL, field: str, max_bytes: int,
                     allowlist: tuple[str, ...], allow_loopback: bool, resolve: Resolver) -> bytes | httpx.URL:
    """One request: returns the body, or the next URL when the server redirects."""
    addrs = await checked_addresses(url, field, allowlist, allow_loopback, resolve, setting="I2V_IMAGE_HOSTS")
    for i, addr in enumerate(addrs):  # every address was checked; try them in order until one connects
        try:
            return await _get(client, url, addr, field, max_bytes)
        except httpx.ConnectError:
            if i == len(addrs) - 1:
                raise
    raise AssertionError("unreachable")


async def _get(client: httpx.AsyncClient, url: httpx.URL, addr: str, field: str, max_bytes: int) -> bytes | httpx.URL:
    async with client.stream("GET", **_pinned_request(url, addr)) as response:
        if response.status_code in REDIRECT_STATUSES:
            location = response.headers.get("location")
            if not location:
                raise ImageInputError(field, "fetch_failed", f"{url} redirected without a Location header")
            return url.join(location)
        if response.status_code != 200:
            raise ImageInputError(field, "fetch_failed", f"GET {url} answered HTTP {response.status_code}")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise ImageInputError(field, "too_large", f"image at {url} is {declared} bytes, over the limit of "
                                  f"{max_bytes} (I2V_IMAGE_MAX_BYTES)")
        buf = bytearray()
        async for chunk in response.aiter_bytes():  # decoded: a gzip bomb counts at its real size
            buf += chunk
            if len(buf) > max_bytes:
                raise ImageInputError(field, "too_large", f"image at {url} is over the limit of {max_bytes} "
                                      "bytes (I2V_IMAGE_MAX_BYTES)")
        return bytes(buf)


def _pinned_request(url: httpx.URL, addr: str) -> dict:
    """Request arguments that connect to the CHECKED address while speaking to the original host.

    The URL's host is replaced by the address (so httpx does not resolve the name a second time,
    which a DNS-rebinding server could answer differently), the Host header keeps the name, and for
    https the `sni_hostname` extension makes TLS send the name as SNI and verify the certificate
    against it.
    """
    headers = {"Host": url.netloc.decode("ascii"), "User-Agent": f"i2v-worker/{__version__}",
               "Accept": "image/*", "Accept-Encoding": "identity"}
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}  # IDNA A-label
    return {"url": url.copy_with(host=addr), "headers": headers, "extensions": extensions}


# ------------------------------------------------------------------------- ranged probe (LoRAs)


@dataclass(frozen=True)
class ProbedRange:
    """The answer to one SSRF-checked ranged GET: where it ended after redirects, and the bytes."""

    final_url: str  # after every (checked) redirect
    status: int  # 206, or 200 when the server ignored Range (then `body` is still capped)
    total_size: int | None  # from Content-Range (206) or Content-Length (200)
    headers: dict[str, str]  # of the final response, lower-case names
    body: bytes


async def fetch_range(
    url: str,
    start: int,
    end: int,
    *,
    field: str,
    timeout_s: float,
    allowlist: tuple[str, ...] = (),
    allow_loopback: bool = False,
    resolver: Resolver | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ProbedRange:
    """GET bytes [start, end] of `url` with the image rules: every hop's host allow-listed and every
    address it resolves to public (loopback only with the test setting), connecting to the checked
    address. Used to read a LoRA's size and safetensors header before anything is downloaded."""
    resolve = resolver or system_resolver
    want = end - start + 1
    async with _session(url, field, timeout_s, transport) as client:
        current = httpx.URL(url)
        for _hop in range(MAX_REDIRECTS + 1):
            addrs = await checked_addresses(current, field, allowlist, allow_loopback, resolve)
            req = _pinned_request(current, addrs[0])
            req["headers"].update({"Accept": "*/*", "Range": f"bytes={start}-{end}"})
            async with client.stream("GET", **req) as response:
                if response.status_code in REDIRECT_STATUSES:
                    location = response.headers.get("location")
                    if not location:
                        raise ImageInputError(field, "fetch_failed", f"{current} redirected without a Location header")
                    current = current.join(location)
                    continue
                if response.status_code not in (200, 206):
                    raise ImageInputError(field, "fetch_failed",
                                          f"GET {current} answered HTTP {response.status_code}")
                total = None
                if response.status_code == 206:
                    cr = response.headers.get("content-range", "")
                    tail = cr.rsplit("/", 1)[-1] if "/" in cr else ""
                    total = int(tail) if tail.isdigit() else None
                else:
                    declared = response.headers.get("content-length")
                    total = int(declared) if declared and declared.isdigit() else None
                buf = bytearray()
                skip = start if response.status_code == 200 else 0  # Range ignored: cut ourselves
                async for chunk in response.aiter_raw():
                    buf += chunk
                    if len(buf) >= skip + want:
                        break
                body = bytes(buf[skip:skip + want])
                return ProbedRange(str(current), response.status_code, total,
                                   {k.lower(): v for k, v in response.headers.items()}, body)
        raise ImageInputError(field, "too_many_redirects", f"more than {MAX_REDIRECTS} redirects fetching {url}")
