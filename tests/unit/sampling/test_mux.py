"""mp4 muxing: decoded back, the file has the requested frames/fps and an AAC 48 kHz mono track of matching length."""

from __future__ import annotations

import math

import pytest
import torch
from torchcodec.decoders import AudioDecoder, VideoDecoder

from mova_train.sampling.mux import probe_mp4, write_mp4


@pytest.mark.parametrize(("num_frames", "fps", "sample_rate"), [(17, 8.0, 1600), (9, 24.0, 48000)])
def test_frames_fps_and_audio_duration(tmp_path, num_frames, fps, sample_rate):
    frames = torch.zeros(num_frames, 3, 32, 48, dtype=torch.uint8)
    frames[:, 0] = torch.linspace(0, 255, num_frames).round().to(torch.uint8)[:, None, None]  # red ramp
    n = int(sample_rate * num_frames / fps)
    audio = 0.5 * torch.sin(2 * math.pi * 220 * torch.arange(n) / sample_rate)
    path = write_mp4(tmp_path / "s.mp4", frames, audio[None], fps, sample_rate)
    info = probe_mp4(path)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["num_frames"] == num_frames and info["fps"] == pytest.approx(fps)
    assert (info["height"], info["width"]) == (32, 48)
    assert info["sample_rate"] == 48000 and info["num_channels"] == 1
    video_seconds = num_frames / fps
    assert abs(info["video_duration"] - video_seconds) < 1e-6
    assert abs(info["audio_duration"] - video_seconds) <= 1.0 / fps
    assert abs(info["audio_samples"] / 48000 - video_seconds) <= 1.0 / fps  # decoded, AAC padding included
    decoded = VideoDecoder(str(path)).get_frames_in_range(0, num_frames).data
    assert decoded[-1, 0].float().mean() > decoded[0, 0].float().mean() + 200  # the ramp survived
    wave = AudioDecoder(str(path)).get_all_samples().data
    assert 0.3 < wave.abs().max() < 0.7  # the tone survived


def test_nhwc_input_and_bad_shapes(tmp_path):
    frames = torch.full((5, 16, 16, 3), 200, dtype=torch.uint8)
    path = write_mp4(tmp_path / "nhwc.mp4", frames, None, 8.0, 1600)
    assert probe_mp4(path)["num_frames"] == 5 and "sample_rate" not in probe_mp4(path)
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "x.mp4", frames.float(), None, 8.0, 1600)
    with pytest.raises(ValueError, match="mono"):
        write_mp4(tmp_path / "x.mp4", frames, torch.zeros(2, 100), 8.0, 1600)
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "x.mp4", torch.zeros(5, 3, 15, 16, dtype=torch.uint8), None, 8.0, 1600)
