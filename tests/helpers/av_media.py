"""Real test media for the A/V audit and scene cuts, made with ffmpeg and the synthetic writer."""

from __future__ import annotations

import random
import subprocess
from fractions import Fraction
from pathlib import Path

from mova_train.data.synthetic import SyntheticClip, irregular_times, make_clip


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly (errors raise)."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=120)


def concat_two_scenes(path: Path, first_frames: int = 36, second_frames: int = 30, rate: int = 24) -> None:
    """An mp4 of `first_frames` of testsrc2 then `second_frames` of mandelbrot (both moving), with a tone."""
    first, second = first_frames / rate, second_frames / rate
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc2=size=128x72:rate={rate},trim=duration={first}",
        "-f", "lavfi", "-i", f"mandelbrot=size=128x72:rate={rate},trim=duration={second}",
        "-f", "lavfi", "-i", f"sine=f=440:sample_rate=48000:duration={first + second}",
        "-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]", "-map", "[v]", "-map", "2:a",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path),
    )  # fmt: skip


def flash_clip(
    path: Path, fps: Fraction, offset_frames: float, seconds: float = 3.0, audio: bool = True
) -> SyntheticClip:
    """A bouncing shape with one-frame flashes at irregular times and a click `offset_frames` after each."""
    offset = offset_frames / float(fps)
    times = irregular_times(seconds, random.Random(int(offset_frames * 10) + 3), margin=abs(offset) + 0.1)
    return make_clip(
        path, fps=fps, num_frames=round(seconds * float(fps)), flashes_at=times, audio_offset=offset, audio=audio,
        seed=int(offset_frames) + 40,
    )  # fmt: skip
