"""Where a training window may start: inside one scene of the clip, on the source frame grid.

A window of `F` frames at `fps` lasts `F / fps` seconds and starts at a source frame time `k / src_fps` (so that the
first output frame starts exactly when its audio does, as `decode_clip` draws it). A clip's record may carry
`cuts` (`ClipRecord.cuts`, `SCENE_CUTS_KEY`): sorted cut times in seconds from the first video frame, each the
start of a new scene (written by `build_shards --detect-cuts`, `mova_train.data.scenes`; None or [] = one scene).
A window never spans a cut:

- the latent cache (`data_tools.encode --windows stride|slide|N`) encodes the fixed windows of `window_starts`;
- raw-mode training draws a random start among every in-scene start (`random_start`); clips without cuts keep
  `decode_clip`'s own draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from mova_train.data.decode import ClipTooShort
from mova_train.data.scenes import scene_spans

SCENE_CUTS_KEY = "cuts"  # `ClipRecord.cuts`
WINDOW_POLICIES = ("stride", "slide")
_EPS = 1e-6

Policy = str | int  # "stride", "slide" or a number of windows


def parse_policy(value: str | int | None) -> Policy | None:
    """`--windows` as given: None, "stride", "slide" or a positive number of windows per clip.

    Raises:
        ValueError: Anything else (naming the option and its forms).
    """
    if value is None or value in WINDOW_POLICIES:
        return value
    text = str(value)
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ValueError(
        f"--windows {value!r}: use stride (back-to-back windows), slide (windows every half window) or a "
        "positive number of evenly spaced windows per clip"
    )


def record_scenes(record: Mapping[str, Any]) -> list[tuple[float, float]]:
    """The clip's scenes as `(start, end)` seconds, from its `duration` and `cuts` (`scenes.scene_spans`)."""
    return [(a, b) for a, b in scene_spans(record.get(SCENE_CUTS_KEY), float(record["duration"])) if b > a]


def longest_scene(record: Mapping[str, Any]) -> float:
    """Seconds of the clip's longest scene (its duration without cuts): the longest window that fits."""
    return max((b - a for a, b in record_scenes(record)), default=0.0)


def _source_fps(record: Mapping[str, Any], fps: float) -> float:
    value = record.get("fps")
    return float(value) if isinstance(value, int | float) and value > 0 else fps


def _start_frames(span: tuple[float, float], window: float, src_fps: float) -> range:
    """Source frames `k` whose time `k / src_fps` starts a window inside `span`."""
    first = math.ceil(span[0] * src_fps - _EPS)
    last = math.floor((span[1] - window) * src_fps + _EPS)
    return range(first, last + 1)


def window_starts(record: Mapping[str, Any], num_frames: int, fps: float, policy: Policy) -> list[float]:
    """Fixed window starts (seconds, in clip order) of a clip for the latent cache.

    Args:
        record: The clip's record (`duration`, `fps`, optional `cuts`).
        num_frames: Frames per window `F`.
        fps: Target frame rate (the window lasts `F / fps` seconds).
        policy: "stride": back-to-back windows from the start of every scene; "slide": a window every half
            window; N: N windows evenly spread over every in-scene start (fewer when fewer starts exist).

    Returns:
        The starts; empty when no scene holds a window.
    """
    window = num_frames / fps
    src_fps = _source_fps(record, fps)
    spans = record_scenes(record)
    if isinstance(policy, int):
        starts = [k for span in spans for k in _start_frames(span, window, src_fps)]
        n = min(policy, len(starts))
        if n <= 1:
            return [starts[0] / src_fps] if starts else []
        return [starts[round(i * (len(starts) - 1) / (n - 1))] / src_fps for i in range(n)]
    hop = window if policy == "stride" else window / 2
    out = []
    for span in spans:
        frames = _start_frames(span, window, src_fps)
        k = frames.start
        while k in frames:
            out.append(k / src_fps)
            k = max(k + 1, math.ceil((k / src_fps + hop) * src_fps - _EPS))
    return out


def first_start(
    record: Mapping[str, Any], num_frames: int, fps: float, not_before: float = 0.0
) -> float | None:
    """The earliest in-scene window start at or after `not_before` seconds: `not_before` itself for a clip without
    cuts (the decoder checks the end), None when no scene holds the window there.
    """
    if not record.get(SCENE_CUTS_KEY):
        return not_before
    window = num_frames / fps
    src_fps = _source_fps(record, fps)
    for span in record_scenes(record):
        frames = _start_frames((max(span[0], not_before), span[1]), window, src_fps)
        if frames:
            return frames[0] / src_fps
    return None


def random_start(
    record: Mapping[str, Any], num_frames: int, fps: float, generator: torch.Generator | None
) -> float | None:
    """A start drawn uniformly among every in-scene window start of the clip, or None when it has no cuts
    (`decode_clip` then draws over the whole clip, as before cuts existed).

    Raises:
        ClipTooShort: No scene holds the window.
    """
    if not record.get(SCENE_CUTS_KEY):
        return None
    window = num_frames / fps
    src_fps = _source_fps(record, fps)
    ranges = [_start_frames(span, window, src_fps) for span in record_scenes(record)]
    total = sum(len(r) for r in ranges)
    if total == 0:
        raise ClipTooShort(
            f"{record.get('source_path', '<clip>')}: no scene between the cuts {record[SCENE_CUTS_KEY]} holds "
            f"{num_frames} frames at {fps:g} fps"
        )
    i = int(torch.randint(total, (1,), generator=generator).item())
    for frames in ranges:
        if i < len(frames):
            return frames[i] / src_fps
        i -= len(frames)
    raise AssertionError("unreachable")
