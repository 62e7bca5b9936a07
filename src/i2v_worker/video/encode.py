"""The one encoder of the final file, for every engine: frames -> MP4 (h264), WebM (VP9) or GIF.

`encode_video(frames, path_stem, fps=..., format=..., quality=...)` consumes an iterable of
(H, W, 3) uint8 RGB frames (so interpolated frames stream in without holding the whole video) and
writes `<path_stem>.<extension>` atomically (temp name, then rename). `FORMATS` is the one table of
format -> codec, MIME type, file extension and quality scale; the job schema, the delivery (S3 key,
ContentType) and the base64 result all read it.

- mp4: libx264, yuv420p, `quality` = x264 crf (0..51, lower is better), default 19, preset medium,
  +faststart (plays while downloading).
- webm: libvpx-vp9 in constant-quality mode (crf with b:v 0), yuv420p, `quality` = VP9 crf
  (0..63), default 31, cpu-used 4 with row multithreading.
- gif: Pillow, one adaptive 256-colour palette per frame (fast octree, then Floyd-Steinberg
  dithering onto it: about 20 ms a 832x480 frame here, median cut took 600 ms for a similar result).
  PyAV's bundled `gif` encoder only takes palettized input and PyAV's converter gives a fixed
  palette, which bands badly. No quality scale. GIF stores delays in 1/100 s: the delays are
  spread so the average rate is the requested fps; players cap very high rates (over ~50 fps).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np


class VideoFormat(str, enum.Enum):
    MP4 = "mp4"
    WEBM = "webm"
    GIF = "gif"


@dataclass(frozen=True)
class FormatSpec:
    format: VideoFormat
    mime_type: str
    extension: str  # with the dot
    codec: str
    quality_min: int | None  # None: the format has no quality scale
    quality_max: int | None
    default_quality: int | None
    description: str


FORMATS: dict[VideoFormat, FormatSpec] = {
    VideoFormat.MP4: FormatSpec(VideoFormat.MP4, "video/mp4", ".mp4", "libx264", 0, 51, 19,
                                "H.264 MP4 (yuv420p): plays everywhere"),
    VideoFormat.WEBM: FormatSpec(VideoFormat.WEBM, "video/webm", ".webm", "libvpx-vp9", 0, 63, 31,
                                 "VP9 WebM (yuv420p): smaller files at the same quality, slower to encode"),
    VideoFormat.GIF: FormatSpec(VideoFormat.GIF, "image/gif", ".gif", "gif (Pillow)", None, None, None,
                                "animated GIF, 256 colours per frame: large files, for previews"),
}
DEFAULT_FORMAT = VideoFormat.MP4


def spec(fmt: VideoFormat | str) -> FormatSpec:
    return FORMATS[VideoFormat(fmt)]


def check_quality(fmt: VideoFormat | str, quality: int | None) -> str | None:
    """None when `quality` is acceptable for `fmt`, else the rule it breaks (one readable line)."""
    s = spec(fmt)
    if quality is None:
        return None
    if s.quality_min is None:
        return f"format {s.format.value} has no quality setting (leave output.quality out)"
    if not s.quality_min <= quality <= s.quality_max:
        return (f"must be between {s.quality_min} and {s.quality_max} for {s.format.value} "
                f"(a crf: lower is better, default {s.default_quality}), got {quality}")
    return None


@dataclass(frozen=True)
class EncodedVideo:
    path: Path
    format: VideoFormat
    mime_type: str
    frames: int
    fps: int
    width: int
    height: int
    quality: int | None
    size_bytes: int


def encode_video(frames: Iterable[np.ndarray], path_stem: Path, *, fps: int, format: VideoFormat | str = DEFAULT_FORMAT,
                 quality: int | None = None, threads: int = 0) -> EncodedVideo:
    """Encode `frames` ((H, W, 3) uint8 RGB each, all the same size) to `<path_stem><extension>`.

    `threads` 0 lets the encoder choose (deterministic for a given machine); 1 gives the same
    bytes everywhere. Raises ValueError for bad frames, a bad quality or an empty video."""
    s = spec(format)
    problem = check_quality(s.format, quality)
    if problem:
        raise ValueError(f"quality: {problem}")
    q = s.default_quality if quality is None else quality
    if int(fps) < 1:
        raise ValueError(f"fps must be at least 1, got {fps}")
    path = Path(path_stem).with_name(Path(path_stem).name + s.extension)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    it = _checked(iter(frames))
    try:
        if s.format is VideoFormat.GIF:
            n, (h, w) = _write_gif(it, tmp, int(fps))
        else:
            n, (h, w) = _write_av(it, tmp, int(fps), s, q, threads)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return EncodedVideo(path=path, format=s.format, mime_type=s.mime_type, frames=n, fps=int(fps), width=w, height=h,
                        quality=q, size_bytes=path.stat().st_size)


def _checked(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    shape = None
    for i, f in enumerate(frames):
        if not isinstance(f, np.ndarray) or f.ndim != 3 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise ValueError(f"frame {i} must be an (H, W, 3) uint8 array, got {getattr(f, 'shape', None)} "
                             f"{getattr(f, 'dtype', type(f))}")
        if shape is None:
            shape = f.shape
            if f.shape[0] % 2 or f.shape[1] % 2:
                raise ValueError(f"yuv420p needs an even width and height, got {f.shape[1]}x{f.shape[0]}")
        elif f.shape != shape:
            raise ValueError(f"frame {i} is {f.shape[1]}x{f.shape[0]}, frame 0 is {shape[1]}x{shape[0]}")
        # PyAV copies planes by row stride: hand it C-contiguous memory (a permuted view is not)
        yield np.ascontiguousarray(f)


def _write_av(frames: Iterator[np.ndarray], tmp: Path, fps: int, s: FormatSpec, quality: int,
              threads: int) -> tuple[int, tuple[int, int]]:
    import av

    first = next(frames, None)
    if first is None:
        raise ValueError("no frames to encode")
    h, w = first.shape[:2]
    n = 0
    container_format = "mp4" if s.format is VideoFormat.MP4 else "webm"
    options = {"movflags": "+faststart"} if s.format is VideoFormat.MP4 else {}
    with av.open(str(tmp), mode="w", format=container_format, options=options) as container:
        stream = container.add_stream(s.codec, rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if s.format is VideoFormat.MP4:
            stream.options = {"crf": str(quality), "preset": "medium"}
        else:
            stream.options = {"crf": str(quality), "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
        stream.codec_context.thread_count = int(threads)
        for arr in _chain(first, frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts, frame.time_base = n, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
            n += 1
        for packet in stream.encode():
            container.mux(packet)
    return n, (h, w)


def _write_gif(frames: Iterator[np.ndarray], tmp: Path, fps: int) -> tuple[int, tuple[int, int]]:
    from PIL import Image

    images = []
    for arr in frames:
        rgb = Image.fromarray(arr, "RGB")
        palette = rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE)
        images.append(rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG))
    if not images:
        raise ValueError("no frames to encode")
    # Delays in whole 1/100 s (GIF's unit), spread so that frame i ends at round(100 * (i+1) / fps).
    ends = [round(100 * (i + 1) / fps) for i in range(len(images))]
    delays = [max(1, e - b) * 10 for b, e in zip([0, *ends[:-1]], ends)]
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=delays, loop=0,
                   optimize=False, disposal=1)
    return len(images), (images[0].height, images[0].width)


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def decode_video(path: Path) -> tuple[np.ndarray, float | None]:
    """The frames of a written file as (T, H, W, 3) uint8 RGB, and its average fps (tests, tools)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        rate = float(stream.average_rate) if stream.average_rate else None
    return np.stack(frames), rate
