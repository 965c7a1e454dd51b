"""A/V sync audit on real mp4s with known offsets (flashes with clicks), and on clips without motion or sound."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
import torch
from helpers.av_media import ffmpeg, flash_clip

from mova_train.data.av_sync import estimate_clip_offset, estimate_offset

NTSC = Fraction(30000, 1001)


@pytest.mark.parametrize("fps", [Fraction(24), NTSC], ids=["24", "ntsc"])
@pytest.mark.parametrize("offset_frames", [0, 2, -2, 5, -5])
def test_known_offsets_are_recovered_within_one_frame(tmp_path, fps, offset_frames):
    clip = flash_clip(tmp_path / "clip.mp4", fps, offset_frames)
    estimate = estimate_clip_offset(clip.path.read_bytes())
    assert abs(estimate.offset_frames - offset_frames) < 1.0, estimate
    assert abs(estimate.offset_ms - 1000 * offset_frames / float(fps)) < 1000 / float(fps)
    assert estimate.confidence > 0.3 and estimate.note == "ok", estimate


def test_sub_frame_offset_lands_between_the_frames(tmp_path):
    clip = flash_clip(tmp_path / "clip.mp4", Fraction(24), 2.5)
    estimate = estimate_clip_offset(str(clip.path))
    assert 2.0 < estimate.offset_frames < 3.0, estimate


def test_audio_offset_of_the_record_is_taken_into_account(tmp_path):
    """A clip whose sound lags 3 frames audits at 0 once `audio_offset` moves the sound back by 3 frames."""
    clip = flash_clip(tmp_path / "clip.mp4", Fraction(24), 3)
    assert abs(estimate_clip_offset(str(clip.path)).offset_frames - 3) < 1
    corrected = estimate_clip_offset(str(clip.path), audio_offset=-3 / 24)
    assert abs(corrected.offset_frames) < 1, corrected


def test_still_picture_with_clicks_has_no_confidence(tmp_path):
    path = tmp_path / "still.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x48:r=24:d=3",
           "-f", "lavfi", "-i", "aevalsrc=0.9*lt(mod(t\\,0.43)\\,0.002):s=48000:d=3",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path))  # fmt: skip
    estimate = estimate_clip_offset(str(path))
    assert estimate.confidence < 0.1 and estimate.note == "no motion", estimate


def test_flashes_in_silence_have_no_confidence(tmp_path):
    clip = flash_clip(tmp_path / "mute.mp4", Fraction(24), 0, audio=False)
    path = tmp_path / "silent.mp4"
    ffmpeg("-i", str(clip.path), "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-shortest",
           "-c:v", "copy", "-c:a", "aac", str(path))  # fmt: skip
    assert estimate_clip_offset(str(path)).confidence < 0.1
    assert estimate_clip_offset(str(clip.path)).note == "no sound"  # no audio stream at all


def test_unrelated_noise_scores_low():
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(72, 3, 36, 64, generator=gen)
    wave = torch.randn(3 * 16000, generator=gen) * 0.3
    assert estimate_offset(frames, wave, 16000, 24.0).confidence < 0.3


def test_make_synthetic_audio_offset_makes_clips_the_audit_measures(tmp_path):
    from data_tools.make_synthetic import main

    main(
        [str(tmp_path), "--count", "2", "--seconds", "3", "--fps", "30000/1001", "--audio-offset-ms", "-100"]
    )
    for name in ("clip_000000.mp4", "clip_000001.mp4"):
        estimate = estimate_clip_offset(str(tmp_path / name))
        assert abs(estimate.offset_ms + 100) < 1000 / 29.97 and estimate.confidence > 0.3, estimate


def test_inspect_shards_draws_the_offset_histogram_next_to_the_contact_sheet(tmp_path, capsys):
    from PIL import Image

    from data_tools.build_shards import main as build_shards_cli
    from data_tools.inspect_shards import main as inspect_cli

    for k in (0, 3):
        flash_clip(tmp_path / "src" / f"clip{k}.mp4", Fraction(24), k)
    build_shards_cli([str(tmp_path / "src"), str(tmp_path / "shards")])  # no audit in the records
    inspect_cli([str(tmp_path / "shards"), "--contact-sheet", str(tmp_path / "sheet.png"), "--av-audit"])
    out = capsys.readouterr().out
    assert "A/V offsets of 2 confident clips" in out, out
    largest = float(re.search(r"max (\d+) ms", out).group(1))
    assert abs(largest - 125) < 1000 / 24  # the clip 3 frames late
    histogram = Image.open(tmp_path / "sheet_av_offsets.png")
    assert histogram.size == (480, 200)


def test_generated_samples_are_audited_as_metrics(tmp_path):
    """A decoded clip 2 frames late, packed as a `GeneratedSample`, logs `val/av_offset_ms` of about +83 ms."""
    from mova_train.data.av_sync import sample_offset_metrics
    from mova_train.data.decode import decode_clip
    from mova_train.data.probe import probe_clip
    from mova_train.sampling.generator import GeneratedSample
    from mova_train.sampling.requests import make_request

    clip = flash_clip(tmp_path / "clip.mp4", Fraction(24), 2)
    data = clip.path.read_bytes()
    record = probe_clip(data).to_dict()
    item = decode_clip(data, record, num_frames=65, fps=24.0, height=48, width=64, output="uint8")
    request = make_request({"prompt": "flashes", "fps": 24.0, "num_frames": 65, "height": 48, "width": 64},
                           spatial_multiple=16)  # fmt: skip
    sample = GeneratedSample(request, item["video"].permute(1, 0, 2, 3), item["audio"], 48000,
                             torch.zeros(1), torch.zeros(1))  # fmt: skip
    metrics = sample_offset_metrics(
        [sample, GeneratedSample(request, None, None, 48000, *[torch.zeros(1)] * 2)]
    )
    assert abs(metrics["val/av_offset_ms"] - 2000 / 24) < 1000 / 24, metrics
    assert metrics["val/0_av_confidence"] > 0.3 and "val/1_av_offset_ms" not in metrics
