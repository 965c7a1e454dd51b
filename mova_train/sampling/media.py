"""Given media of a2v / v2a requests: decode a track or a clip at the request's length, rate and size.

Audio (a2v): the file's first audio stream (a ``.wav``/``.flac``/``.m4a`` or a video's track) is decoded by
torchcodec from 0 s for ``num_frames / fps`` seconds, resampled and downmixed to mono by the decoder, and cut to
exactly ``int(sample_rate * num_frames / fps)`` samples (the length `MovaGenerator` gives generated audio).

Video (v2a): frames on screen at ``i / fps`` from the first frame, centre-cropped to the request's aspect and
resized, exactly as training clips are decoded (`mova_train.data.decode.decode_clip`).

A file shorter than the request is refused (naming the file and the fix) rather than padded; only the last
partial video frame of audio (AAC decoders may stop a few ms early) is padded with silence.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

__all__ = ["check_media_length", "load_audio", "load_video", "media_seconds"]


def _audio_decoder(path: str | Path, sample_rate: int | None = None):
    from torchcodec.decoders import AudioDecoder

    try:
        return AudioDecoder(str(path), sample_rate=sample_rate, num_channels=1)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: no readable audio stream ({err})") from err


def media_seconds(path: str | Path, kind: str) -> float:
    """Duration in seconds of the audio (``kind="audio"``) or video (``"video"``) stream of ``path``.

    Raises:
        ValueError: the stream cannot be opened or has no duration.
    """
    if kind == "audio":
        meta = _audio_decoder(path).metadata
        if meta.duration_seconds is None:
            raise ValueError(f"{path}: the audio stream has no duration in its metadata")
        return float(meta.duration_seconds)
    from torchcodec.decoders import VideoDecoder

    try:
        meta = VideoDecoder(str(path), seek_mode="approximate").metadata
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: no readable video stream ({err})") from err
    if meta.end_stream_seconds is None:
        raise ValueError(f"{path}: the video stream has no duration in its metadata")
    return float(meta.end_stream_seconds) - float(meta.begin_stream_seconds or 0.0)


def check_media_length(path: str | Path, kind: str, seconds: float, fps: float) -> None:
    """Refuse media shorter than the request (within one video frame).

    Raises:
        ValueError: too short, or unreadable (the message says which and how to fix it).
    """
    have = media_seconds(path, kind)
    if have + 1.0 / fps < seconds - 1e-6:
        raise ValueError(
            f"lasts {have:.3f} s but the request needs {seconds:.3f} s (num_frames / fps); lower num_frames "
            "or give a longer file"
        )


def load_audio(path: str | Path, sample_rate: int, num_samples: int, fps: float) -> torch.Tensor:
    """The first ``num_samples`` samples of the file's audio, mono, at ``sample_rate``.

    Args:
        path: Audio or video file.
        sample_rate: Output rate (the decoder resamples).
        num_samples: Output length S.
        fps: The request's frame rate (one frame of shortfall is padded with silence, more is refused).

    Returns:
        float32 ``[1, S]`` in [-1, 1].

    Raises:
        ValueError: unreadable or too short.
    """
    decoder = _audio_decoder(path, sample_rate)
    try:
        samples = decoder.get_samples_played_in_range(0.0, num_samples / sample_rate).data
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: audio decoding failed ({err})") from err
    wave = samples.float().mean(dim=0, keepdim=True)[:, :num_samples]
    missing = num_samples - wave.shape[1]
    if missing > sample_rate / fps:
        raise ValueError(
            f"audio {path} gives {wave.shape[1]} samples at {sample_rate} Hz, the request needs {num_samples}; "
            "lower num_frames or give a longer file"
        )
    if missing > 0:
        wave = torch.nn.functional.pad(wave, (0, missing))
    return wave.clamp(-1.0, 1.0).contiguous()


def load_video(path: str | Path, num_frames: int, fps: float, height: int, width: int) -> torch.Tensor:
    """``num_frames`` frames at ``fps`` from the start of the file, cropped and resized to ``height x width``.

    Returns:
        uint8 ``[F, 3, H, W]``.

    Raises:
        ValueError: unreadable or shorter than ``num_frames / fps`` seconds.
    """
    from mova_train.data.decode import DecodeError, decode_clip

    try:
        clip = decode_clip(
            str(path),
            {"source_path": str(path), "has_audio": False},
            num_frames=num_frames,
            fps=fps,
            height=height,
            width=width,
            start=0.0,
            missing_audio="silence",
            output="uint8",
        )
    except DecodeError as err:
        raise ValueError(f"video {err}") from err
    return clip["video"].permute(1, 0, 2, 3).contiguous()
