"""Scene cuts: find them in a clip, and keep training windows inside one scene.

Record format (`ClipRecord.cuts`): sorted seconds from the first video frame, each the presentation time
`frame_index / fps` of the first frame of a new shot; None = never detected, [] = detected, one scene.

Detection (`detect_cuts`) works on decoded low-resolution frames (`read_low_res_frames`, 64x36 RGB by default,
scaled by the decoder): the mean absolute difference `d_i` between frame `i` and frame `i - 1` (0..1) marks a cut
at `i` when it is above `threshold`, `ratio` times above the median difference of the `2 * context` frames around
it (fast motion and camera pans raise the whole neighbourhood, a cut only one frame), and frames `i - 1 -> i + 1`
and `i - 2 -> i` differ too (a one-frame flash changes two consecutive frames and then returns: not a cut).

Splitting (`write_scene_clip`, behind `build_shards --split-scenes`): each scene becomes its own mp4, cut on its
frame range by FFmpeg's `trim` and re-encoded (x264 CRF 16, AAC), with the sound (the clip's own or a separate file,
shifted by `audio_offset`) cut to the same span, so one sample per scene needs no other field to be decoded.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CutSettings:
    """Knobs of `detect_cuts`.

    Attributes:
        threshold: Least mean absolute frame difference (0..1, RGB at low resolution) of a cut.
        ratio: Least ratio of that difference to the median of its neighbourhood.
        context: Frames on each side forming the neighbourhood.
        min_scene_frames: Cuts closer than this to the previous cut (or the start) are dropped.
        size: (height, width) the frames are scaled to before comparing.
    """

    threshold: float = 0.08
    ratio: float = 3.0
    context: int = 6
    min_scene_frames: int = 4
    size: tuple[int, int] = (36, 64)


def read_low_res_frames(
    source: bytes | str, size: tuple[int, int] = (36, 64)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every frame of a clip, scaled by the decoder (cheap even for long 1080p clips).

    Args:
        source: Clip bytes or path.
        size: Output (height, width).

    Returns:
        float32 frames `[N, 3, h, w]` in [0, 1] and float64 `[N]` presentation times in stream seconds.
    """
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    decoder = VideoDecoder(source, transforms=[Resize(size=list(size))], seek_mode="exact")
    batch = decoder.get_frames_in_range(0, len(decoder))
    pts = batch.pts_seconds.double()
    return batch.data.float().div_(255.0), pts


def frame_differences(frames: torch.Tensor, step: int = 1) -> torch.Tensor:
    """Mean absolute difference of each frame with the one `step` frames before.

    Args:
        frames: `[N, ...]` float.
        step: Distance in frames.

    Returns:
        `[N]`; the first `step` entries are 0.
    """
    out = torch.zeros(frames.shape[0], dtype=torch.float32)
    if frames.shape[0] > step:
        out[step:] = (frames[step:] - frames[:-step]).abs().flatten(1).mean(dim=1)
    return out


def cut_frames(frames: torch.Tensor, settings: CutSettings | None = None) -> list[int]:
    """Frame indices at which a new shot starts (see the module docstring).

    Args:
        frames: float `[N, C, h, w]` in [0, 1].
        settings: Detection knobs.
    """
    s = settings or CutSettings()
    n = frames.shape[0]
    diff = frame_differences(frames)
    skip = frame_differences(frames, step=2)  # frame i + 1 against frame i - 1 sits at index i + 1
    cuts: list[int] = []
    for i in range(1, n):
        if diff[i] < s.threshold:
            continue
        around = torch.cat([diff[max(1, i - s.context) : i], diff[i + 1 : i + 1 + s.context]])
        if around.numel() and diff[i] < s.ratio * float(around.median()):
            continue
        if (i + 1 < n and skip[i + 1] < s.threshold) or (i >= 2 and skip[i] < s.threshold):
            continue  # a flash: frame i + 1 looks like i - 1 again, or frame i like i - 2
        if i - (cuts[-1] if cuts else 0) < s.min_scene_frames:
            continue
        cuts.append(i)
    return cuts


def detect_cuts(
    source: bytes | str,
    settings: CutSettings | None = None,
    decoded: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[float]:
    """Scene cuts of a clip in seconds from its first frame (the `ClipRecord.cuts` format).

    Args:
        source: Clip bytes or path.
        settings: Detection knobs.
        decoded: The clip's `read_low_res_frames(source, settings.size)`, when the caller has it already.
    """
    s = settings or CutSettings()
    frames, pts = decoded if decoded is not None else read_low_res_frames(source, s.size)
    return [round(float(pts[i] - pts[0]), 6) for i in cut_frames(frames, s)]


def scene_spans(cuts: Sequence[float] | None, duration: float) -> list[tuple[float, float]]:
    """The `(start, end)` seconds of each scene of a clip of `duration` seconds with these cuts."""
    bounds = [0.0, *(c for c in (cuts or ()) if 0.0 < c < duration), duration]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def window_crosses_cut(start: float, seconds: float, cuts: Sequence[float] | None, fps: float) -> bool:
    """Whether the window `[start, start + seconds)` holds frames of two scenes.

    Times are compared on the frame grid of `fps` (the record's rate), so float rounding of a cut or a start that
    sits exactly on a frame boundary never counts as crossing.
    """
    first = round(start * fps)
    end = round((start + seconds) * fps)
    return any(first < round(c * fps) < end for c in (cuts or ()))


def _audio_chain(audio_start: float, seconds: float) -> str:
    """FFmpeg audio filters taking `seconds` of sound from `audio_start` (silence before the sound's start)."""
    delay = f"adelay=delays={round(-audio_start * 1000)}:all=1," if audio_start < 0 else ""
    return (
        f"{delay}atrim=start={max(audio_start, 0.0):.6f},asetpts=PTS-STARTPTS,apad,"
        f"atrim=duration={seconds:.6f}"
    )


def write_scene_clip(
    video: str | Path,
    out: str | Path,
    frames: tuple[int, int],
    fps: float,
    *,
    audio: str | Path | None = None,
    has_audio: bool = True,
    audio_offset: float = 0.0,
    crf: int = 16,
) -> Path:
    """Cut frames `[first, end)` of a clip into their own mp4 (H.264 at `crf`, AAC), the sound lined up.

    Args:
        video: The clip.
        out: The scene's mp4 (kept when it exists already, so that a re-run writes the same bytes).
        frames: First and end frame index of the scene.
        fps: The clip's frame rate.
        audio: A separate sound file (`ClipRecord.separate_audio`), else the clip's own sound is used.
        has_audio: False for a clip without sound (the scene has none either).
        audio_offset: Seconds after the first video frame at which the sound starts.
        crf: x264 quality (lower is better; 16 is visually lossless).
    """
    out = Path(out)
    if out.is_file():
        return out
    first, end = frames
    start, seconds = first / fps, (end - first) / fps
    graph = f"[0:v:0]trim=start_frame={first}:end_frame={end},setpts=PTS-STARTPTS[v]"
    inputs = ["-i", str(video)]
    maps = ["-map", "[v]"]
    if has_audio:
        if audio is not None:
            inputs += ["-i", str(audio)]
        graph += f";[{1 if audio is not None else 0}:a:0]{_audio_chain(start - audio_offset, seconds)}[a]"
        maps += ["-map", "[a]", "-c:a", "aac", "-b:a", "192k"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.mp4")
    command = ["ffmpeg", "-v", "error", "-y", *inputs, "-filter_complex", graph, *maps]
    command += [
        "-c:v",
        "libx264",
        "-crf",
        str(crf),
        "-preset",
        "fast",
        "-pix_fmt",
        "yuv420p",
        "-threads",
        "1",
    ]
    result = subprocess.run([*command, str(tmp)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"ffmpeg could not cut {video} frames [{first}, {end}): {result.stderr.strip()[-500:]}"
        )
    os.replace(tmp, out)
    return out
