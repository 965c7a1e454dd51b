"""A/V sync audit without model weights: how far is a clip's sound off its picture?

Both streams are reduced to one "something starts now" signal per video frame, and the two are cross-correlated:

- video motion onsets (`motion_onsets`): the mean absolute difference of consecutive low-resolution frames (the
  motion energy), and of that its rises `relu(m_k - m_(k-1))`; a flash, a cut-in, a hand hitting a table start a
  burst of motion at one frame (a one-frame flash rises once, then stays or falls);
- audio onsets (`audio_onsets`): the log RMS energy in hops of 1/8 frame, its rises `relu(l_j - l_(j-1))`, each
  spread linearly onto the two nearest video frames by the hop's centre time (so that the sub-frame position of a
  sound survives the frame grid).

The normalized cross-correlation `c(L)` over lags `|L| <= max_lag` frames peaks at the lag by which the sound
follows the picture; a parabola through the peak and its neighbours gives the sub-frame lag. `offset_ms > 0`
means the sound lags the picture (fix it with `audio_offset = -offset_ms / 1000` in the manifest).

Confidence in [0, 1]: the peak correlation times its prominence `1 - c2 / c*` (`c2`: the best correlation two or
more frames away from the peak), so periodic or unrelated signals score low; clips with no motion (motion energy
under 1/255 everywhere), no sound (RMS under -60 dBFS) or no sound onsets score 0, and a peak at the edge of the
searched lags counts half.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mova_train.data.scenes import frame_differences, read_low_res_frames

logger = logging.getLogger(__name__)

AUDIT_SAMPLE_RATE = 16000
HOPS_PER_FRAME = 8
_LOG_FLOOR = 1e-3  # -60 dBFS: quieter hops count as silence
_MIN_MOTION = 1.0 / 255.0  # mean absolute frame difference below one grey level: a still picture
_MIN_AUDIO_ONSET = 0.05  # log-energy rise of 5 %: nothing starts in the sound


@dataclass(frozen=True)
class OffsetEstimate:
    """What the audit says about one clip.

    Attributes:
        offset_ms: Milliseconds by which the sound lags the picture (negative: it leads).
        offset_frames: The same in video frames (sub-frame).
        confidence: In [0, 1]; below about 0.3 the offset means little.
        correlation: Normalized cross-correlation at the peak, in [-1, 1].
        fps: Video frame rate used.
        note: "ok", "no motion", "no sound", "no sound onsets", "too short" or "peak at the search limit" (the
            true offset may lie beyond `max_lag_seconds`; the confidence is halved).
    """

    offset_ms: float
    offset_frames: float
    confidence: float
    correlation: float
    fps: float
    note: str = "ok"


def motion_onsets(frames: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Rises of the motion energy, one per frame.

    Args:
        frames: float `[N, C, h, w]` in [0, 1].

    Returns:
        float `[N]` onsets (0 for the first two frames) and the largest motion energy.
    """
    energy = frame_differences(frames)
    onsets = torch.zeros_like(energy)
    if energy.numel() > 2:
        onsets[2:] = (energy[2:] - energy[1:-1]).clamp_min(0.0)
    return onsets, float(energy.max()) if energy.numel() else 0.0


def audio_onsets(
    wave: torch.Tensor, sample_rate: int, fps: float, num_frames: int, start: float = 0.0
) -> tuple[torch.Tensor, float]:
    """Rises of the audio log energy, spread onto the video frame grid.

    Args:
        wave: float mono `[S]`.
        sample_rate: Its rate in Hz.
        fps: Video frame rate.
        num_frames: Video frames `N` (the output length).
        start: Time of the first audio sample in seconds from the first video frame.

    Returns:
        float `[N]` onsets and the loudest hop's RMS.
    """
    hop = max(1, round(sample_rate / (fps * HOPS_PER_FRAME)))
    usable = (wave.numel() // hop) * hop
    out = torch.zeros(num_frames, dtype=torch.float64)
    if usable < 2 * hop:
        return out.float(), 0.0
    rms = wave[:usable].double().view(-1, hop).pow(2).mean(dim=1).sqrt()
    level = torch.log(rms + _LOG_FLOOR)
    rises = torch.zeros_like(level)
    rises[1:] = (level[1:] - level[:-1]).clamp_min(0.0)
    centre = start + (torch.arange(rms.numel(), dtype=torch.float64) + 0.5) * hop / sample_rate
    pos = centre * fps
    low = pos.floor()
    frac = pos - low
    low = low.long()
    for index, weight in ((low, 1.0 - frac), (low + 1, frac)):
        keep = (index >= 0) & (index < num_frames)
        out.index_add_(0, index[keep], (rises * weight)[keep])
    return out.float(), float(rms.max())


def _parabolic(c_left: float, c_peak: float, c_right: float) -> float:
    """Sub-sample position of a peak from its value and its neighbours', in [-0.5, 0.5]."""
    denom = c_left - 2.0 * c_peak + c_right
    if denom >= 0.0:
        return 0.0
    return max(-0.5, min(0.5, 0.5 * (c_left - c_right) / denom))


def correlate_onsets(video: torch.Tensor, audio: torch.Tensor, max_lag: int) -> tuple[float, float, float]:
    """Lag (frames, sub-frame) by which `audio` follows `video`, its correlation and the confidence.

    Args:
        video: `[N]` motion onsets.
        audio: `[N]` audio onsets.
        max_lag: Largest lag searched, in frames.
    """
    v = video.double() - video.double().mean()
    a = audio.double() - audio.double().mean()
    norm = float(v.norm() * a.norm())
    n = v.numel()
    max_lag = max(1, min(max_lag, n - 2))
    if norm <= 0.0:
        return 0.0, 0.0, 0.0
    lags = range(-max_lag, max_lag + 1)
    corr = torch.tensor(
        [
            float((v[max(0, -lag) : n - max(0, lag)] * a[max(0, lag) : n - max(0, -lag)]).sum()) / norm
            for lag in lags
        ]
    )
    best = int(corr.argmax())
    peak = float(corr[best])
    sub = 0.0
    if 0 < best < corr.numel() - 1:
        sub = _parabolic(float(corr[best - 1]), peak, float(corr[best + 1]))
    far = torch.cat([corr[: max(0, best - 1)], corr[best + 2 :]])
    second = max(0.0, float(far.max())) if far.numel() else 0.0
    confidence = 0.0 if peak <= 0.0 else max(0.0, min(1.0, peak * (1.0 - second / peak)))
    return best - max_lag + sub, peak, confidence


def estimate_offset(
    frames: torch.Tensor,
    wave: torch.Tensor,
    sample_rate: int,
    fps: float,
    *,
    audio_start: float = 0.0,
    max_lag_seconds: float = 0.5,
) -> OffsetEstimate:
    """Estimate how far the sound lags the picture.

    Args:
        frames: `[N, C, h, w]` video, float in [0, 1] or uint8 (any size; scaled down to at most 64 wide).
        wave: `[S]` or `[channels, S]` audio, float in [-1, 1].
        sample_rate: Audio rate in Hz.
        fps: Video frame rate.
        audio_start: Time of the first audio sample in seconds from the first frame.
        max_lag_seconds: Largest offset searched (either way).
    """
    frames = frames.float().div(255.0) if frames.dtype == torch.uint8 else frames.float()
    if frames.shape[-1] > 64:
        h = max(1, round(frames.shape[-2] * 64 / frames.shape[-1]))
        frames = F.interpolate(frames, size=(h, 64), mode="area")
    wave = wave.float().reshape(-1, wave.shape[-1]).mean(dim=0)
    n = frames.shape[0]
    nothing = dict(offset_ms=0.0, offset_frames=0.0, confidence=0.0, correlation=0.0, fps=float(fps))
    if n < 4:
        return OffsetEstimate(**nothing, note="too short")
    video, motion = motion_onsets(frames)
    audio, loudest = audio_onsets(wave, sample_rate, fps, n, audio_start)
    if motion < _MIN_MOTION:
        return OffsetEstimate(**nothing, note="no motion")
    if loudest < _LOG_FLOOR:
        return OffsetEstimate(**nothing, note="no sound")
    if float(audio.max()) < _MIN_AUDIO_ONSET:
        return OffsetEstimate(**nothing, note="no sound onsets")
    max_lag = max(1, math.ceil(max_lag_seconds * fps))
    lag, peak, confidence = correlate_onsets(video, audio, max_lag)
    at_limit = abs(lag) >= min(max_lag, n - 2) - 0.5
    return OffsetEstimate(
        offset_ms=1000.0 * lag / fps,
        offset_frames=lag,
        confidence=confidence / 2 if at_limit else confidence,
        correlation=peak,
        fps=float(fps),
        note="peak at the search limit" if at_limit else "ok",
    )


def estimate_clip_offset(
    data: bytes | str,
    audio_data: bytes | str | None = None,
    *,
    audio_offset: float = 0.0,
    max_lag_seconds: float = 0.5,
    decoded: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> OffsetEstimate:
    """`estimate_offset` of a clip as training decodes it (its own sound, or a separate file, plus `audio_offset`).

    Args:
        data: The clip (bytes or path).
        audio_data: A separate sound file (bytes or path) whose start plays with the first video frame.
        audio_offset: Seconds after the first video frame at which the sound starts (`ClipRecord.audio_offset`).
        max_lag_seconds: Largest offset searched.
        decoded: The clip's `read_low_res_frames(data)`, when the caller has it already.
    """
    from torchcodec.decoders import AudioDecoder

    frames, pts = decoded if decoded is not None else read_low_res_frames(data)
    steps = (pts[1:] - pts[:-1]) if pts.numel() > 1 else torch.ones(1)
    fps = 1.0 / float(steps.median()) if float(steps.median()) > 0 else 24.0
    try:
        samples = AudioDecoder(
            data if audio_data is None else audio_data, sample_rate=AUDIT_SAMPLE_RATE, num_channels=1
        ).get_all_samples()
    except (RuntimeError, ValueError):
        return OffsetEstimate(0.0, 0.0, 0.0, 0.0, fps, note="no sound")
    first_frame = 0.0 if audio_data is not None else float(pts[0])
    return estimate_offset(
        frames,
        samples.data,
        AUDIT_SAMPLE_RATE,
        fps,
        audio_start=float(samples.pts_seconds) - first_frame + audio_offset,
        max_lag_seconds=max_lag_seconds,
    )


def sample_offset_metrics(samples: list[Any], prefix: str = "val") -> dict[str, float]:
    """The audit of generated samples as metrics: `<prefix>/<i>_av_offset_ms`, `<prefix>/<i>_av_confidence`
    and their means `<prefix>/av_offset_ms`, `<prefix>/av_confidence`.

    Args:
        samples: Objects with `video` uint8 `[F, 3, H, W]`, `audio` float `[1, S]`, `sample_rate` and
            `request.fps` (`mova_train.sampling.generator.GeneratedSample`); those without both are left out.
        prefix: Metric namespace.
    """
    metrics: dict[str, float] = {}
    estimates = []
    for i, s in enumerate(samples):
        if getattr(s, "video", None) is None or getattr(s, "audio", None) is None:
            continue
        estimate = estimate_offset(s.video, s.audio, int(s.sample_rate), float(s.request.fps))
        metrics[f"{prefix}/{i}_av_offset_ms"] = estimate.offset_ms
        metrics[f"{prefix}/{i}_av_confidence"] = estimate.confidence
        estimates.append(estimate)
    if estimates:
        metrics[f"{prefix}/av_offset_ms"] = sum(e.offset_ms for e in estimates) / len(estimates)
        metrics[f"{prefix}/av_confidence"] = sum(e.confidence for e in estimates) / len(estimates)
    return metrics
