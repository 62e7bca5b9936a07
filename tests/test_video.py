"""The worker's video stage, the same for both engines: the float -> uint8 rule, RIFE frame
interpolation (cccv's real IFNet v4.26 architecture with the tiny random-weight checkpoint the
project generates in the public file's layout) and the one encoder (mp4 / webm / gif).

Properties (hypothesis): interpolating a video whose frames are all equal changes nothing, for
every factor; k=1 is the identity for any video.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from i2v_worker.engines.base import ModelRole
from i2v_worker.tiny import TINY_FILES
from i2v_worker.video.encode import FORMATS, VideoFormat, check_quality, decode_video, encode_video
from i2v_worker.video.frames import psnr, to_uint8
from i2v_worker.video.interpolate import InterpolationError, InterpolationStats, RifeModel, interpolate, output_length

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def rife(tiny_models_dir) -> RifeModel:
    return RifeModel.load(tiny_models_dir / TINY_FILES[ModelRole.INTERPOLATION], "cpu")


def textured(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """A moving gradient with noise: neighbouring frames differ, as in a real video."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(t):
        base = np.stack([(x * 4 + i * 9) % 256, (y * 5 + i * 3) % 256, (x + y + i * 7) % 256], -1)
        frames.append(np.clip(base + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


# --- frames ----------------------------------------------------------------------------------------


def test_to_uint8_is_comfyuis_rule_for_numpy_and_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(0.5, 0.4, (4, 8, 8, 3)).astype(np.float32)  # incl. <0 and >1
    comfy = np.clip(255.0 * x, 0, 255).astype(np.uint8)  # ComfyUI's SaveImage / SaveAnimatedPNG
    assert np.array_equal(to_uint8(x), comfy)
    assert np.array_equal(to_uint8(torch.from_numpy(x)), comfy)
    assert to_uint8(np.array([0.0, 0.999 / 255, 1.0, 1.5, -0.2])).tolist() == [0, 0, 255, 255, 0]


def test_psnr():
    a = textured(2, 16, 16)
    assert psnr(a, a) == float("inf")
    b = a.copy()
    b[0, 0, 0, 0] ^= 1
    assert 70 < psnr(a, b) < 100


# --- interpolation: properties ----------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=arrays(np.uint8, st.tuples(st.integers(2, 12).map(lambda n: 2 * n), st.integers(2, 12).map(lambda n: 2 * n),
                                        st.just(3))),
       count=st.integers(1, 6), k=st.sampled_from([1, 2, 4]))
def test_all_equal_frames_are_unchanged_for_every_factor(frame, count, k):
    """A still video stays exactly still: equal neighbours give copies, the model is never asked
    (model=None would raise if it were)."""
    frames = [frame.copy() for _ in range(count)]
    stats = InterpolationStats()
    out = list(interpolate(frames, k, None, stats=stats))
    assert len(out) == output_length(count, k)
    assert all(np.array_equal(o, frame) for o in out)
    assert stats.model_pairs == 0


@settings(max_examples=25, deadline=None)
@given(video=arrays(np.uint8, st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6), st.just(3))))
def test_factor_one_is_the_identity(video):
    out = list(interpolate(list(video), 1, None))
    assert len(out) == len(video) and all(np.array_equal(a, b) for a, b in zip(out, video))


def test_equal_frames_stay_unchanged_with_the_real_model_loaded(rife):
    frame = textured(1, 48, 80)[0]
    out = list(interpolate([frame] * 4, 4, rife))
    assert len(out) == 13 and all(np.array_equal(o, frame) for o in out)


def test_factors_other_than_1_2_4_are_refused():
    with pytest.raises(ValueError, match="one of"):
        list(interpolate([np.zeros((2, 2, 3), np.uint8)] * 2, 3, None))


# --- interpolation: the real architecture ------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 4])
def test_rife_keeps_the_originals_and_fills_between(rife, k):
    video = textured(4, 48, 80)  # not a multiple of 64: resized for IFNet and back, as cccv does
    t0 = time.perf_counter()
    stats = InterpolationStats()
    pairs: list[int] = []
    out = list(interpolate(list(video), k, rife, stats=stats, on_pair=pairs.append))
    elapsed = time.perf_counter() - t0
    assert len(out) == (4 - 1) * k + 1 and pairs == [1, 2, 3] and stats.model_pairs == 3
    assert all(o.shape == (48, 80, 3) and o.dtype == np.uint8 for o in out)
    for i, original in enumerate(video):
        assert np.array_equal(out[i * k], original)  # the originals stay, byte for byte
    mids = [out[j] for j in range(len(out)) if j % k]
    assert all(not np.array_equal(m, out[(j // k) * k]) for j, m in zip([j for j in range(len(out)) if j % k], mids))
    again = list(interpolate(list(video), k, rife))
    assert all(np.array_equal(a, b) for a, b in zip(out, again)), "deterministic"
    print(f"RIFE k={k}: 3 pairs of 80x48 on CPU in {elapsed:.2f}s (model {stats.seconds:.2f}s)")


def test_should_stop_ends_between_pairs(rife):
    from i2v_worker.video.interpolate import InterpolationStopped

    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(InterpolationStopped):
        list(interpolate(list(textured(4, 32, 32)), 2, rife, should_stop=stop))
    assert len(calls) == 2


def test_tiny_checkpoint_has_the_public_files_layout(tiny_models_dir):
    torch = pytest.importorskip("torch")
    from cccv.arch.vfi.ifnet_arch import IFNet

    state = torch.load(tiny_models_dir / TINY_FILES[ModelRole.INTERPOLATION], weights_only=True)
    assert all(k.startswith("module.") for k in state)
    expected = IFNet().state_dict()
    assert {k.removeprefix("module."): tuple(v.shape) for k, v in state.items()} == \
        {k: tuple(v.shape) for k, v in expected.items()}


def test_a_checkpoint_of_another_network_is_refused_naming_the_file(tmp_path, tiny_models_dir):
    torch = pytest.importorskip("torch")
    state = torch.load(tiny_models_dir / TINY_FILES[ModelRole.INTERPOLATION], weights_only=True)
    wrong = tmp_path / "rife47.pth"
    torch.save({k: v for k, v in state.items() if ".block4." not in k}, wrong)
    with pytest.raises(InterpolationError, match=r"rife47\.pth does not match RIFE IFNet v4\.26 heavy") as err:
        RifeModel.load(wrong)
    assert err.value.code == "model_error"
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InterpolationError, match="garbage.pth .* not a readable torch checkpoint"):
        RifeModel.load(garbage)


# --- the encoder --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,codec,fps_read", [("mp4", "h264", 16.0), ("webm", "vp9", 16.0), ("gif", "gif", None)])
def test_each_format_writes_its_container_extension_and_frames(tmp_path, fmt, codec, fps_read):
    import av

    video = textured(9, 48, 64)
    enc = encode_video(iter(video), tmp_path / "job-1", fps=16, format=fmt)  # a generator, streamed
    spec = FORMATS[VideoFormat(fmt)]
    assert enc.path == tmp_path / f"job-1{spec.extension}" and enc.mime_type == spec.mime_type
    assert (enc.frames, enc.fps, enc.width, enc.height) == (9, 16, 64, 48)
    with av.open(str(enc.path)) as c:
        assert c.streams.video[0].codec_context.name == codec
    frames, rate = decode_video(enc.path)
    assert frames.shape == (9, 48, 64, 3)
    if fps_read is not None:
        assert rate == fps_read
    assert psnr(frames, video) > (15 if fmt == "gif" else 24)  # hard content (wrapping gradients, noise)
    assert [p.name for p in tmp_path.iterdir()] == [enc.path.name], "no temp file left behind"


def test_gif_delays_average_to_the_requested_rate(tmp_path):
    from PIL import Image

    enc = encode_video(textured(10, 16, 16), tmp_path / "g", fps=32, format="gif")
    with Image.open(enc.path) as im:
        delays = []
        for i in range(im.n_frames):
            im.seek(i)
            delays.append(im.info["duration"])
    assert sum(delays) == 310 and set(delays) <= {30, 40}  # 10 frames at 32 fps = 312.5 ms, in 1/100 s


def test_quality_is_a_crf_lower_is_better(tmp_path):
    video = textured(5, 64, 64)
    sizes = {q: encode_video(video, tmp_path / f"q{q}", fps=8, quality=q).size_bytes for q in (10, 40)}
    assert sizes[10] > sizes[40]
    assert FORMATS[VideoFormat.MP4].default_quality == 19 and FORMATS[VideoFormat.WEBM].default_quality == 31
    assert check_quality("mp4", 52) and check_quality("webm", 63) is None and check_quality("gif", 1)
    with pytest.raises(ValueError, match="quality"):
        encode_video(video, tmp_path / "bad", fps=8, format="gif", quality=3)


@pytest.mark.parametrize("frames,match", [
    ([np.zeros((10, 10, 3), np.float32)], "uint8"),
    ([np.zeros((11, 10, 3), np.uint8)], "even"),
    ([np.zeros((10, 10, 3), np.uint8), np.zeros((12, 10, 3), np.uint8)], "frame 1"),
    ([], "no frames"),
])
def test_bad_frames_are_refused(tmp_path, frames, match):
    with pytest.raises(ValueError, match=match):
        encode_video(frames, tmp_path / "x", fps=8)
    assert not list(tmp_path.iterdir())
