"""Decode one clip (video + audio) from its bytes into the tensors the model trains on.

Everything happens in memory: the shard member bytes go straight to torchcodec's decoders (no temp files), only the
frames of the requested time window are decoded, one at a time at source resolution, and each is center-cropped
(a view) and resized with PyTorch's uint8 antialiased bilinear kernel (the same filter as
`torchcodec.transforms.Resize`, at about half the CPU; see docs/data.md). FFmpeg threads per decoder split the
cores among DataLoader workers (`decode_threads`).

Time model. Frame `i` of the output is the source frame on screen at `t_i = start + i / fps` (seconds from the
first video frame), so any source rate (24, 25, 30000/1001, 60, variable) is resampled to the target `fps` by
nearest-previous-frame selection instead of being time-warped. The audio covers exactly the same window
`[start, start + num_frames / fps)`, resampled to `sample_rate` mono by the decoder (which also drops the AAC
priming samples), left-padded when the audio stream starts late and cropped/padded to
`round(sample_rate * num_frames / fps)` samples (386000 for 193 frames at 24 fps). A clip whose sound came as a
separate file (`audio_data`, the shard's `audio` member) reads it from there, the file's start lined up with the
first video frame; the record's `audio_offset` (seconds, positive delays the sound) shifts either kind.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# Frame times are queried a hair after the exact instant so that `t_i` landing on a frame boundary picks the frame
# that starts there despite float rounding (1 µs is far below any frame duration).
_TIME_EPS = 1e-6
_PTS_EPS = 1e-9  # presentation times compare exactly (up to float rounding)
MISSING_AUDIO_POLICIES = ("skip", "silence")


class DecodeError(RuntimeError):
    """A clip could not be decoded; the pipeline skips it and counts the reason."""

    reason = "decode_error"


class ClipTooShort(DecodeError):
    """The clip does not cover the requested window of `num_frames / fps` seconds."""

    reason = "too_short"


class MissingAudio(DecodeError):
    """The clip has no audio stream and the missing-audio policy is "skip"."""

    reason = "missing_audio"


def audio_num_samples(num_frames: int, fps: float, sample_rate: int = 48000) -> int:
    """Samples of audio that go with `num_frames` video frames: `round(sample_rate * num_frames / fps)`."""
    return round(sample_rate * num_frames / fps)


def crop_size(src_h: int, src_w: int, height: int, width: int) -> tuple[int, int]:
    """Largest centered (h, w) crop of a `src_h x src_w` frame with the aspect ratio `height : width`.

    Example: a 352x624 source for a 352x640 target crops to 343x624 (upstream's integer center crop).
    """
    if src_w * height > width * src_h:  # source is wider than the target: crop the width
        return src_h, min(src_w, round(src_h * width / height))
    return min(src_h, round(src_w * height / width)), src_w


def window_bounds(duration: float, num_frames: int, fps: float) -> float:
    """Latest window start (seconds) that keeps `num_frames / fps` seconds inside a clip of `duration` seconds.

    Returns a negative number when the clip is too short.
    """
    return duration - num_frames / fps


def to_model_range(video: torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels in [0, 255] to float32 in [-1, 1] (any shape)."""
    return video.float().div_(127.5).sub_(1.0)


def decode_threads() -> int:
    """FFmpeg threads for one video decoder: this process's CPU cores split among the DataLoader workers.

    Each worker decodes one clip at a time, so `cores // workers` threads keep every core busy without
    oversubscription (1 per worker on a 2-core machine with 2 workers); capped at 8, where H.264 frame threading
    stops paying off.
    """
    from torch.utils.data import get_worker_info

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    info = get_worker_info()
    workers = info.num_workers if info is not None else 1
    return max(1, min(8, cores // max(1, workers)))


def _crop_box(src_h: int, src_w: int, height: int, width: int, resize_mode: str) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of the source region that is resized to `height x width`."""
    if resize_mode == "crop":
        ch, cw = crop_size(src_h, src_w, height, width)
        return (src_h - ch) // 2, (src_w - cw) // 2, ch, cw
    if resize_mode == "stretch":
        return 0, 0, src_h, src_w
    raise ValueError(f"resize_mode must be 'crop' or 'stretch', got {resize_mode!r}")


def _resize_frame(
    frame: torch.Tensor, box: tuple[int, int, int, int], height: int, width: int
) -> torch.Tensor:
    """Crop and resize one decoded frame (bilinear with antialiasing on uint8, the filter of the decoder's `Resize`).

    Args:
        frame: uint8 `[h, w, 3]` at source resolution.
        box: (top, left, crop height, crop width).
        height: Output height `H`.
        width: Output width `W`.

    Returns:
        uint8 `[3, H, W]` (channels-last strides).
    """
    top, left, ch, cw = box
    x = frame[top : top + ch, left : left + cw].permute(2, 0, 1).unsqueeze(0)  # [1, 3, ch, cw] view
    if (ch, cw) == (height, width):
        return x[0]
    # PyTorch's fast uint8 kernel wants channels-last contiguous input; a column crop breaks that, so copy it
    x = x.contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True)[0]


class _FramesByPts:
    """The frame on screen at time `t` by presentation times alone: the last frame (in pts order) with pts <= t.

    Used when a container's packets carry no (or wrong) durations, e.g. variable-frame-rate mkv/mp4: torchcodec's
    `get_frame_played_at` trusts `pts + duration` and then returns the *next* frame (video ahead of its audio by up
    to a source frame interval). Frames are read by index, forward; a binary search finds the first one.
    """

    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder
        self.count = len(decoder)
        self.index = -1
        self.frame: Any = None
        self.next: Any = None

    def _get(self, index: int) -> Any:
        return self.decoder.get_frame_at(index) if index < self.count else None

    def _seek(self, t: float) -> None:
        lo, hi = 0, self.count - 1  # the last index with pts <= t (0 when t is before the first frame)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.decoder.get_frame_at(mid).pts_seconds <= t + _PTS_EPS:
                lo = mid
            else:
                hi = mid - 1
        self.index, self.frame, self.next = lo, self._get(lo), self._get(lo + 1)

    def at(self, t: float) -> Any:
        """The frame shown at `t` (calls with non-decreasing `t` read forward only)."""
        if self.frame is None or t < self.frame.pts_seconds - _PTS_EPS:
            self._seek(t)
        while self.next is not None and self.next.pts_seconds <= t + _PTS_EPS:
            self.index += 1
            self.frame, self.next = self.next, self._get(self.index + 1)
        return self.frame


def _decode_frames(
    data: bytes, times: list[float], box: tuple[int, int, int, int], height: int, width: int, threads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frames on screen at `times` (non-decreasing, stream seconds), cropped and resized.

    Frames are decoded one at a time at source resolution (torchcodec's single-frame call converts a 1080p frame to
    RGB about 2x cheaper than its batch calls) and resized right away with PyTorch's uint8 kernel, so only one
    source frame is in memory. The decoder reads forward only; a frame shown at several output times is decoded
    once. Overall about 2x less CPU than the decoder-side `CenterCrop` + `Resize` transforms.

    A frame is the one on screen at `t` when its pts is at most `t`: if torchcodec returns a later frame (packets
    without durations, variable frame rate), the rest of the clip is read by pts (`_FramesByPts`).

    Returns:
        uint8 video `[3, F, H, W]` and float64 `[F]` presentation times (seconds) of the frames used.
    """
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(data, dimension_order="NHWC", num_ffmpeg_threads=threads, seek_mode="exact")
    n = len(times)
    video = torch.empty(3, n, height, width, dtype=torch.uint8)
    pts = torch.empty(n, dtype=torch.float64)
    by_pts: _FramesByPts | None = None
    last_pts, last_end = 0.0, -math.inf
    for i, t in enumerate(times):
        if i > 0 and t < last_end:  # the previous frame is still on screen
            video[:, i] = video[:, i - 1]
        else:
            if by_pts is None:
                frame = decoder.get_frame_played_at(t)
                if frame.pts_seconds > t + _PTS_EPS and t >= (decoder.metadata.begin_stream_seconds or 0.0):
                    by_pts = _FramesByPts(decoder)  # durations are missing or wrong: trust pts only
            if by_pts is not None:
                frame = by_pts.at(t)
                nxt = by_pts.next
                end = nxt.pts_seconds if nxt is not None else frame.pts_seconds + frame.duration_seconds
            else:
                end = frame.pts_seconds + frame.duration_seconds
            if i > 0 and frame.pts_seconds == last_pts:
                video[:, i] = video[:, i - 1]
            else:
                video[:, i] = _resize_frame(frame.data, box, height, width)
            last_pts, last_end = frame.pts_seconds, end
        pts[i] = last_pts
    return video, pts


def _decode_audio(
    data: bytes, t0: float, seconds: float, num_samples: int, sample_rate: int
) -> torch.Tensor | None:
    """Mono audio for `[t0, t0 + seconds)` in stream time, exactly `num_samples` long; None without audio.

    Returns:
        float32 `[1, num_samples]`, or None when the container has no audio stream.
    """
    from torchcodec.decoders import AudioDecoder

    try:
        decoder = AudioDecoder(data, sample_rate=sample_rate, num_channels=1)
    except (RuntimeError, ValueError) as err:
        if "audio" in str(err).lower() or "stream" in str(err).lower():
            return None
        raise
    out = torch.zeros(1, num_samples, dtype=torch.float32)
    end_of_audio = decoder.metadata.duration_seconds
    begin = decoder.metadata.begin_stream_seconds or 0.0
    if (end_of_audio is not None and t0 >= begin + end_of_audio) or t0 + seconds <= begin:
        return out  # the audio ended before the window, or starts after it: silence
    samples = decoder.get_samples_played_in_range(max(t0, begin), t0 + seconds)
    wave = samples.data
    if wave.shape[0] != 1:  # the decoder downmixes already; keep a guard for odd layouts
        wave = wave.mean(dim=0, keepdim=True)
    # a stream that starts after the window start is left-padded so that sample k stays at time t0 + k / sr
    offset = max(0, round((samples.pts_seconds - t0) * sample_rate))
    if offset < num_samples:
        n = min(num_samples - offset, wave.shape[1])
        out[:, offset : offset + n] = wave[:, :n]
    return out


def decode_clip(
    data: bytes,
    record: dict[str, Any],
    *,
    num_frames: int,
    fps: float,
    height: int,
    width: int,
    start: float | None = 0.0,
    generator: torch.Generator | None = None,
    resize_mode: str = "crop",
    sample_rate: int = 48000,
    missing_audio: str = "skip",
    pad_short: bool = False,
    output: str = "float",
    num_threads: int | None = None,
    audio_data: bytes | None = None,
) -> dict[str, Any]:
    """Decode the `num_frames / fps` second window of a clip into model-ready tensors.

    Args:
        data: The clip's bytes (any container torchcodec reads).
        record: The clip's shard record (`ClipRecord` fields); `source_path` names the clip in errors.
        num_frames: Output frames `F` (4k + 1 for the video VAE).
        fps: Target frame rate; the source is resampled to it.
        height: Output height `H`.
        width: Output width `W`.
        start: Window start in seconds from the first video frame; None draws it uniformly (with `generator`)
            among the source frame times that keep the window inside the clip (training); 0 for validation.
        generator: RNG for the random start.
        resize_mode: "crop" (center crop to the `H:W` aspect, then resize, as upstream) or "stretch".
        sample_rate: Output audio rate in Hz.
        missing_audio: "skip" raises `MissingAudio` for a clip without audio; "silence" returns zeros and
            `audio_mask=False`.
        pad_short: Repeat the last frame and pad audio with silence when the clip is shorter than the window,
            instead of raising `ClipTooShort` (off by default: padded clips teach the model frozen endings).
        output: "float" for video in [-1, 1] float32, "uint8" for raw pixels (4x less memory between processes;
            convert later with `to_model_range`).
        num_threads: FFmpeg decoding threads; None splits the cores among DataLoader workers
            (`decode_threads`).
        audio_data: The separate audio file of the clip (the shard's `audio` member), or None to use the clip's
            own audio stream. Its start plays with the first video frame, shifted by `record["audio_offset"]`.

    Returns:
        dict with `video` `[3, F, H, W]`, `first_frame` `[3, H, W]` (same dtype as video), `audio` float32
        `[1, S]` with `S = round(sample_rate * F / fps)`, `audio_mask` bool, `start` float (seconds),
        `frame_indices` long `[F]` (source frames used).

    Raises:
        ClipTooShort: The window does not fit and `pad_short` is off.
        MissingAudio: No audio stream and `missing_audio="skip"`.
        DecodeError: The bytes could not be decoded.
    """
    if missing_audio not in MISSING_AUDIO_POLICIES:
        raise ValueError(f"missing_audio must be one of {MISSING_AUDIO_POLICIES}, got {missing_audio!r}")
    if output not in ("float", "uint8"):
        raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
    source = record.get("source_path", record.get("__key__", "<clip>"))
    window = num_frames / fps
    try:
        from torchcodec.decoders import VideoDecoder

        probe = VideoDecoder(data, seek_mode="approximate").metadata
    except Exception as err:  # torchcodec raises RuntimeError/ValueError for corrupt input
        raise DecodeError(f"{source}: cannot open the video stream ({err})") from err
    src_h, src_w = probe.height, probe.width
    v0 = probe.begin_stream_seconds or 0.0
    v_end = probe.end_stream_seconds
    if v_end is None or src_h is None or src_w is None:
        raise DecodeError(f"{source}: video stream has no duration or size in its metadata")
    duration = v_end - v0
    src_fps = probe.average_fps or fps

    # 1. choose the window start
    latest = window_bounds(duration, num_frames, fps)
    if latest < -1e-6 and not pad_short:
        raise ClipTooShort(
            f"{source}: clip lasts {duration:.3f} s but {num_frames} frames at {fps:g} fps need {window:.3f} s; "
            "lower data.num_frames or drop the clip (pad_short=True pads it instead)"
        )
    latest = max(0.0, latest)
    if start is None:
        # draw on the source frame grid so the first output frame starts exactly when its audio does
        n_starts = int(math.floor(latest * src_fps + 1e-6)) + 1
        k = int(torch.randint(n_starts, (1,), generator=generator).item())
        start = k / src_fps
    elif start > latest + 1e-6 and not pad_short:
        raise ClipTooShort(
            f"{source}: window start {start:.3f} s + {window:.3f} s passes the end ({duration:.3f} s)"
        )

    # 2. video: frames on screen at t_i = start + i / fps
    box = _crop_box(src_h, src_w, height, width, resize_mode)
    try:
        last_time = v_end - 0.5 / src_fps  # inside the last frame's display interval
        times = [min(v0 + start + i / fps + _TIME_EPS, last_time) for i in range(num_frames)]
        video, pts = _decode_frames(
            data, times, box, height, width, decode_threads() if num_threads is None else num_threads
        )
    except Exception as err:
        raise DecodeError(f"{source}: video decoding failed ({err})") from err
    frame_indices = torch.round((pts - v0) * src_fps).long()

    # 3. audio for the same window
    num_samples = audio_num_samples(num_frames, fps, sample_rate)
    audio_mask = True
    if record.get("has_audio", True) is False:
        audio = None
    else:
        try:
            audio = _decode_audio(
                data if audio_data is None else audio_data,
                (v0 if audio_data is None else 0.0) + start - float(record.get("audio_offset") or 0.0),
                window,
                num_samples,
                sample_rate,
            )
        except Exception as err:
            raise DecodeError(f"{source}: audio decoding failed ({err})") from err
        if audio is None and record.get("has_audio") is True:
            # build_shards saw an audio stream: failing to open it now is corruption, not a silent clip
            raise DecodeError(f"{source}: the record has an audio stream but it could not be opened")
    if audio is None:
        if missing_audio == "skip":
            raise MissingAudio(
                f"{source}: no audio stream (data.missing_audio='skip'; use 'silence' to keep it)"
            )
        audio = torch.zeros(1, num_samples, dtype=torch.float32)
        audio_mask = False

    if output == "float":
        video = to_model_range(video)
    return {
        "video": video,
        "first_frame": video[:, 0].clone(),
        "audio": audio,
        "audio_mask": audio_mask,
        "start": float(start),
        "frame_indices": frame_indices,
    }
