"""Write a sample as one mp4: H.264 video + AAC mono audio, with torchcodec's multi-stream ``Encoder``.

torchcodec 0.13 is needed (docs/environment.md gotcha 1). The audio is resampled by
FFmpeg to ``out_sample_rate`` (48 kHz) when the codec's rate differs (e.g. the tiny test DAC at 1600 Hz). AAC
adds priming/padding samples, so a decoded track is slightly longer than what was written (gotcha 4); the
container durations match the video within one frame.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["probe_mp4", "write_mp4"]


def _frames_nchw(frames: torch.Tensor) -> torch.Tensor:
    if frames.dtype != torch.uint8 or frames.dim() != 4:
        raise ValueError(
            f"frames must be uint8 [F, 3, H, W] or [F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}"
        )
    if frames.shape[1] == 3:
        return frames.contiguous()
    if frames.shape[-1] == 3:
        return frames.permute(0, 3, 1, 2).contiguous()
    raise ValueError(f"frames must have 3 channels ([F, 3, H, W] or [F, H, W, 3]), got {tuple(frames.shape)}")


def write_mp4(
    path: str | Path,
    frames: torch.Tensor,
    audio: torch.Tensor | None,
    fps: float,
    sample_rate: int,
    *,
    out_sample_rate: int = 48000,
    crf: float | None = 18,
    preset: str | None = "medium",
    audio_bit_rate: int | None = 192000,
) -> Path:
    """Encode frames (and audio) into ``path`` (written to a temporary name, then renamed).

    Args:
        path: Output ``.mp4`` path (parent folders are created).
        frames: uint8 [F, 3, H, W] or [F, H, W, 3]; H and W even (yuv420p).
        audio: float waveform [S] or [1, S] in [-1, 1] (clipped), or None for a silent video.
        fps: Frame rate of the video.
        sample_rate: Sample rate of ``audio``.
        out_sample_rate: Sample rate of the AAC track (48000, as released samples have).
        crf: x264 constant rate factor (lower is better; None = encoder default).
        preset: x264 preset.
        audio_bit_rate: AAC bit rate (upstream uses 192k).

    Returns:
        The written path.
    """
    from torchcodec.encoders import Encoder

    path = Path(path)
    video = _frames_nchw(frames.detach().cpu())
    _, _, height, width = video.shape
    if height % 2 or width % 2:
        raise ValueError(f"H.264 (yuv420p) needs even height and width, got {height}x{width}")
    enc = Encoder()
    vstream = enc.add_video(
        height=height, width=width, frame_rate=float(fps), codec="libx264", pixel_format="yuv420p", crf=crf,
        preset=preset,
    )  # fmt: skip
    astream = None
    if audio is not None:
        wave = audio.detach().float().cpu()
        if wave.dim() == 1:
            wave = wave[None]
        if wave.dim() != 2 or wave.shape[0] != 1:
            raise ValueError(f"audio must be mono [S] or [1, S], got {tuple(audio.shape)}")
        wave = wave.clamp(-1.0, 1.0).contiguous()
        astream = enc.add_audio(
            sample_rate=int(sample_rate),
            num_channels=1,
            bit_rate=audio_bit_rate,
            out_sample_rate=out_sample_rate,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    with enc.open_file(tmp):
        vstream.add_frames(video)
        if astream is not None:
            astream.add_samples(wave)
    tmp.replace(path)
    logger.debug("wrote %s (%d frames at %g fps)", path, video.shape[0], fps)
    return path


def probe_mp4(path: str | Path) -> dict[str, Any]:
    """Decode an mp4 back and report what it holds (used by tests and the sidecar checks).

    Returns:
        ``num_frames``, ``fps``, ``height``, ``width``, ``video_duration`` (s), ``video_codec``, and when an audio
        track exists ``audio_codec``, ``sample_rate``, ``num_channels``, ``audio_duration`` (container, s),
        ``audio_samples`` (decoded, AAC padding included).
    """
    from torchcodec.decoders import AudioDecoder, VideoDecoder

    vmeta = VideoDecoder(str(path)).metadata
    info: dict[str, Any] = {
        "num_frames": vmeta.num_frames,
        "fps": vmeta.average_fps,
        "height": vmeta.height,
        "width": vmeta.width,
        "video_duration": vmeta.duration_seconds,
        "video_codec": vmeta.codec,
    }
    try:
        adec = AudioDecoder(str(path))
    except (RuntimeError, ValueError):
        return info
    ameta = adec.metadata
    samples = adec.get_all_samples()
    info.update(
        audio_codec=ameta.codec,
        sample_rate=ameta.sample_rate,
        num_channels=ameta.num_channels,
        audio_duration=ameta.duration_seconds,
        audio_samples=int(samples.data.shape[-1]),
    )
    return info
