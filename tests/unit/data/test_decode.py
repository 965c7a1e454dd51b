"""Frame- and sample-accurate clip decoding (`mova_train.data.decode`)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from mova_train.data.decode import (
    ClipTooShort,
    DecodeError,
    MissingAudio,
    audio_num_samples,
    crop_size,
    decode_clip,
)
from mova_train.data.synthetic import make_clip, read_barcode

SR = 48000
CLICKS = [0.5, 1.0, 1.7, 2.2]
SOURCE_RATES = [Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(60)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[Fraction, bytes]:
    """3 s barcode clips (frame index in the top band) with clicks at `CLICKS`, one per source rate."""
    out = tmp_path_factory.mktemp("clips")
    result = {}
    for fps in SOURCE_RATES:
        clip = make_clip(
            out / f"c{float(fps):.3f}.mp4",
            width=128,
            height=64,
            fps=fps,
            num_frames=math.ceil(3 * fps),
            index_barcode=True,
            clicks_at=CLICKS,
        )
        result[fps] = clip.path.read_bytes()
    return result


def _click_peaks(audio: torch.Tensor, expected: list[int], radius: int) -> list[int]:
    """Index of the loudest sample within `radius` of each expected click position."""
    wave = audio[0].abs()
    peaks = []
    for e in expected:
        lo, hi = max(0, e - radius), min(wave.shape[0], e + radius)
        peaks.append(lo + int(wave[lo:hi].argmax()))
    return peaks


@pytest.mark.parametrize("src_fps", SOURCE_RATES, ids=lambda f: f"{float(f):.3f}fps")
@pytest.mark.parametrize("start", [0.0, 0.3])
def test_frames_and_clicks_land_at_the_right_times(clips, src_fps, start):
    num_frames, fps = 33, 24.0
    out = decode_clip(clips[src_fps], {}, num_frames=num_frames, fps=fps, height=32, width=64, start=start)
    assert out["video"].shape == (3, num_frames, 32, 64)
    assert out["audio"].shape == (1, audio_num_samples(num_frames, fps))

    # video: output frame i is the source frame on screen at start + i / fps
    expected = [math.floor((start + i / fps) * src_fps + 1e-6) for i in range(num_frames)]
    got = [read_barcode(out["video"][:, i]) for i in range(num_frames)]
    assert got == expected
    assert out["frame_indices"].tolist() == expected

    # audio: each click sits at (t - start) * sr in the window, well within one video frame
    inside = [t for t in CLICKS if start <= t < start + num_frames / fps]
    want = [round((t - start) * SR) for t in inside]
    peaks = _click_peaks(out["audio"], want, radius=round(SR / fps))
    for p, w in zip(peaks, want, strict=True):
        assert abs(p - w) <= 96, (p, w)  # 2 ms; one video frame is 2000 samples at 24 fps

    # A/V: the frame on screen at each click was shown no more than one output frame before the click
    for t, p in zip(inside, peaks, strict=True):
        i = math.floor(p / SR * fps + 1e-9)
        shown_at = got[i] / float(src_fps)
        assert 0 <= t - shown_at < 1 / fps + 1 / float(src_fps)


def test_random_start_is_on_the_source_grid_and_seeded(clips):
    data = clips[Fraction(25)]
    kwargs = dict(num_frames=9, fps=24.0, height=32, width=64, start=None)
    a = decode_clip(data, {}, generator=torch.Generator().manual_seed(3), **kwargs)
    b = decode_clip(data, {}, generator=torch.Generator().manual_seed(3), **kwargs)
    assert a["start"] == b["start"] and torch.equal(a["video"], b["video"])
    starts = {
        decode_clip(data, {}, generator=torch.Generator().manual_seed(s), **kwargs)["start"] for s in range(8)
    }
    assert len(starts) > 1
    for s in starts:
        assert abs(s * 25 - round(s * 25)) < 1e-9
        assert s + 9 / 24 <= 3.0 + 1e-6


def test_too_short_clip_raises_unless_padding_is_asked(clips):
    data = clips[Fraction(24)]  # 3 s
    with pytest.raises(ClipTooShort, match="lower data.num_frames"):
        decode_clip(data, {"source_path": "x.mp4"}, num_frames=81, fps=24.0, height=32, width=64)
    out = decode_clip(data, {}, num_frames=81, fps=24.0, height=32, width=64, pad_short=True)
    assert out["video"].shape[1] == 81
    assert read_barcode(out["video"][:, -1]) == 71  # last source frame repeated
    assert out["audio"].shape == (1, audio_num_samples(81, 24.0))


def test_missing_audio_policies(tmp_path):
    clip = make_clip(tmp_path / "mute.mp4", width=64, height=32, num_frames=12, audio=False)
    data = clip.path.read_bytes()
    kw = dict(num_frames=5, fps=24.0, height=32, width=64)
    with pytest.raises(MissingAudio, match="missing_audio"):
        decode_clip(data, {"has_audio": False}, missing_audio="skip", **kw)
    with pytest.raises(MissingAudio):  # record says nothing: the decoder finds no audio stream
        decode_clip(data, {}, missing_audio="skip", **kw)
    out = decode_clip(data, {}, missing_audio="silence", **kw)
    assert out["audio_mask"] is False
    assert out["audio"].shape == (1, audio_num_samples(5, 24.0)) and not out["audio"].any()
    # the shard record promised audio: an unopenable stream is corruption, never trained as silence
    with pytest.raises(DecodeError, match="audio stream but it could not be opened"):
        decode_clip(data, {"has_audio": True}, missing_audio="silence", **kw)


def test_crop_size_matches_upstream_center_crop():
    assert crop_size(352, 624, 352, 640) == (343, 624)
    assert crop_size(1080, 1920, 352, 640) == (1056, 1920)  # 16:9 is narrower than 640:352
    assert crop_size(352, 700, 352, 640) == (352, 640)
    assert crop_size(720, 720, 352, 640) == (396, 720)


def test_shared_media_clip_decodes_to_the_release_shapes(media_dir):
    data = (media_dir / "mova_360p_sample.mp4").read_bytes()
    out = decode_clip(data, {}, num_frames=193, fps=24.0, height=352, width=640, output="uint8")
    assert out["video"].shape == (3, 193, 352, 640) and out["video"].dtype == torch.uint8
    assert out["audio"].shape == (1, 386000)
    assert out["frame_indices"].tolist() == list(range(193))
    assert out["audio"].abs().max() > 0.01  # real sound, not padding
    assert torch.equal(out["first_frame"], out["video"][:, 0])


# Issue 14.8: a variable-frame-rate clip whose packets carry no true durations (12 frames at 24 fps, then 18 at
# 12 fps; the mkv muxer writes 33 ms for every packet). Frame k shows the gray level 16 + 7k.
VFR_PTS = [k / 24 for k in range(12)] + [0.5 + (k - 12) / 12 for k in range(12, 30)]


@pytest.fixture(scope="module")
def vfr_mkv(tmp_path_factory) -> bytes:
    import subprocess

    path = tmp_path_factory.mktemp("vfr") / "vfr.mkv"
    setpts = "if(lt(N,12),N/24,0.5+(N-12)/12)/TB"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
         "color=c=black:s=32x32:r=30:d=1,format=gray,geq=lum='16+N*7'",
         "-vf", f"settb=1/1000,setpts='{setpts}'", "-fps_mode", "passthrough", "-enc_time_base:v", "1/1000",
         "-c:v", "libx264", "-g", "1", "-bf", "0", "-qp", "0", "-pix_fmt", "yuv444p", "-an", str(path)],
        check=True,
    )  # fmt: skip
    return path.read_bytes()


def test_vfr_clip_without_durations_shows_the_frame_on_screen(vfr_mkv):
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(vfr_mkv, seek_mode="exact", dimension_order="NCHW")
    source = decoder.get_frames_at(list(range(len(decoder))))
    assert len(decoder) == 30
    assert source.pts_seconds.tolist() == pytest.approx(VFR_PTS, abs=1.5e-3)  # ms timestamps in mkv
    assert set(source.duration_seconds.tolist()) == {0.033}  # the wrong durations that caused it
    out = decode_clip(vfr_mkv, {}, num_frames=41, fps=24.0, height=32, width=32, missing_audio="silence",
                      output="uint8")  # fmt: skip
    for i in range(41):
        t = i / 24
        want = max(k for k, p in enumerate(source.pts_seconds.tolist()) if p <= t + 1e-6)
        assert torch.equal(out["video"][:, i], source.data[want]), (i, t, want)
