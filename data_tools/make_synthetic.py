"""Generate a small real dataset of mp4 clips (H.264 + AAC) with captions, in upstream MOVA's format.

Each clip shows one coloured shape moving across a dark background and bouncing off the walls. The sound is tied to
what is seen: a tone whose pitch is set by the colour, whose loudness follows the shape's speed, and a click at every
bounce. The caption says all of this in words. Optionally each frame carries its index as a binary barcode along the
top edge, and clicks are placed at given times, so that a data pipeline can be checked frame- and sample-exactly.

Usage::

    python -m data_tools.make_synthetic OUT_DIR --count 8 --width 64 --height 48 --fps 24 --seconds 1

writes `OUT_DIR/clip_000000.mp4`, ... plus `OUT_DIR/metadata.json` (a list of `{"video_path", "caption"}`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)

# colour name -> (RGB, tone frequency in Hz). Warmer colours sound lower.
COLORS: dict[str, tuple[tuple[int, int, int], float]] = {
    "red": ((230, 40, 40), 220.0),
    "orange": ((240, 140, 30), 277.2),
    "yellow": ((235, 225, 40), 329.6),
    "green": ((40, 200, 60), 392.0),
    "blue": ((40, 80, 230), 493.9),
    "purple": ((160, 60, 220), 587.3),
}
SHAPES = ("circle", "square")
BACKGROUND = (24, 24, 28)
CLICK_SECONDS = 0.002
CLICK_AMPLITUDE = 0.9
TONE_AMPLITUDE = 0.25


@dataclass
class SyntheticClip:
    """What `make_clip` wrote.

    Attributes:
        path: The mp4 file.
        caption: A sentence describing the shape, its motion and its sound.
        num_frames: Video frames written.
        fps: Frame rate as an exact fraction.
        sample_rate: Audio sample rate in Hz (0 without audio).
        clicks_at: Times (seconds) of the clicks in the audio track.
        bounces_at: Times (seconds) at which the shape hit a wall.
    """

    path: Path
    caption: str
    num_frames: int
    fps: Fraction
    sample_rate: int
    clicks_at: list[float] = field(default_factory=list)
    bounces_at: list[float] = field(default_factory=list)


def barcode_band_height(height: int) -> int:
    """Height in pixels of the top band that carries the frame-index barcode."""
    return max(8, height // 6)


def draw_barcode(frame: torch.Tensor, index: int, bits: int = 8) -> None:
    """Write `index` as `bits` black/white blocks (most significant first) across the top band, in place.

    Args:
        frame: uint8 `[3, H, W]`.
        index: Frame index, `0 <= index < 2**bits`.
        bits: Number of blocks.
    """
    _, height, width = frame.shape
    if not 0 <= index < 2**bits:
        raise ValueError(f"frame index {index} does not fit in a {bits}-bit barcode; raise barcode_bits")
    band = barcode_band_height(height)
    for bit in range(bits):
        x0, x1 = bit * width // bits, (bit + 1) * width // bits
        on = (index >> (bits - 1 - bit)) & 1
        frame[:, :band, x0:x1] = 255 if on else 0


def read_barcode(frame: torch.Tensor, bits: int = 8) -> int:
    """Read the frame index written by `draw_barcode` from a decoded (possibly resized) frame.

    Args:
        frame: `[3, H, W]` uint8 in [0, 255] or float in [-1, 1]; the barcode band must span the full width.
        bits: Number of blocks.

    Returns:
        The frame index.
    """
    frame = frame.float()
    if frame.min() < 0:
        frame = (frame + 1.0) * 127.5
    _, height, width = frame.shape
    band = barcode_band_height(height)
    luma = frame.mean(dim=0)
    value = 0
    for bit in range(bits):
        # sample the middle half of each block to stay clear of compression ringing at the edges
        x0, x1 = bit * width // bits, (bit + 1) * width // bits
        q = max(1, (x1 - x0) // 4)
        patch = luma[band // 4 : max(band // 4 + 1, 3 * band // 4), x0 + q : max(x0 + q + 1, x1 - q)]
        value = (value << 1) | int(patch.mean().item() > 127.5)
    return value


def _trajectory(
    num_frames: int, fps: Fraction, width: int, height: int, top: int, size: int, rng: random.Random
) -> tuple[list[tuple[float, float]], list[float], list[float]]:
    """Positions (top-left corner) per frame, speed per frame (pixels/s) and bounce times in seconds."""
    x = rng.uniform(0, width - size)
    y = rng.uniform(top, height - size)
    speed = rng.uniform(0.6, 1.2) * max(width, height)  # pixels per second
    angle = rng.uniform(0, 2 * math.pi)
    vx, vy = speed * math.cos(angle), speed * math.sin(angle)
    dt = 1.0 / float(fps)
    positions, speeds, bounces = [], [], []
    for i in range(num_frames):
        positions.append((x, y))
        speeds.append(math.hypot(vx, vy))
        x, y = x + vx * dt, y + vy * dt
        bounced = False
        if x < 0 or x > width - size:
            vx, x, bounced = -vx, min(max(x, 0.0), float(width - size)), True
        if y < top or y > height - size:
            vy, y, bounced = -vy, min(max(y, float(top)), float(height - size)), True
        if bounced:
            bounces.append((i + 1) * dt)
    return positions, speeds, bounces


def _draw_shape(
    frame: torch.Tensor, shape: str, x: float, y: float, size: int, rgb: tuple[int, int, int]
) -> None:
    """Draw a filled circle or square of side `size` with its top-left corner at (x, y), in place."""
    _, height, width = frame.shape
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, -1)
    if shape == "circle":
        r = size / 2
        mask = (xs - x - r + 0.5) ** 2 + (ys - y - r + 0.5) ** 2 <= r * r
    else:
        mask = (xs >= x) & (xs < x + size) & (ys >= y) & (ys < y + size)
    for c in range(3):
        frame[c][mask] = rgb[c]


def _audio(
    num_samples: int,
    sample_rate: int,
    channels: int,
    freq: float,
    speeds: list[float],
    fps: Fraction,
    clicks: Sequence[float],
    max_speed: float,
) -> torch.Tensor:
    """Tone at `freq`, loudness following the per-frame speed, plus clicks. Returns float `[channels, S]`."""
    t = torch.arange(num_samples, dtype=torch.float64) / sample_rate
    frame_of_sample = torch.clamp((t * float(fps)).long(), max=len(speeds) - 1)
    loudness = torch.tensor(speeds, dtype=torch.float64)[frame_of_sample] / max_speed
    wave = TONE_AMPLITUDE * loudness * torch.sin(2 * math.pi * freq * t)
    click_len = max(1, round(CLICK_SECONDS * sample_rate))
    for when in clicks:
        start = round(when * sample_rate)
        if 0 <= start < num_samples:
            wave[start : start + click_len] = CLICK_AMPLITUDE
    return wave.float().clamp(-1, 1).unsqueeze(0).repeat(channels, 1)


def make_clip(
    path: str | Path,
    *,
    width: int = 64,
    height: int = 48,
    fps: float | Fraction = 24,
    num_frames: int = 24,
    sample_rate: int = 48000,
    channels: int = 1,
    audio: bool = True,
    audio_seconds: float | None = None,
    index_barcode: bool = False,
    barcode_bits: int = 8,
    clicks_at: Sequence[float] | None = None,
    color: str | None = None,
    shape: str | None = None,
    seed: int = 0,
) -> SyntheticClip:
    """Write one synthetic H.264 (+ AAC) mp4 clip.

    Args:
        path: Output file (`.mp4`).
        width: Frame width (even, for yuv420p).
        height: Frame height (even).
        fps: Frame rate; a `Fraction` (e.g. `Fraction(30000, 1001)`) is kept exactly.
        num_frames: Number of video frames.
        sample_rate: Audio sample rate in Hz.
        channels: Audio channels (the same signal in each).
        audio: Whether to add an audio stream.
        audio_seconds: Audio length; default the video duration `num_frames / fps`.
        index_barcode: Write each frame's index as a barcode along the top edge (see `read_barcode`).
        barcode_bits: Blocks in the barcode (frame indices up to `2**bits - 1`).
        clicks_at: Click times in seconds; None puts a click at every bounce.
        color: One of `COLORS`; default drawn from `seed`.
        shape: One of `SHAPES`; default drawn from `seed`.
        seed: Seed of the random colour, shape, start position and velocity.

    Returns:
        A `SyntheticClip` describing what was written.
    """
    from torchcodec.encoders import Encoder

    rng = random.Random(seed)
    color = color or rng.choice(sorted(COLORS))
    shape = shape or rng.choice(SHAPES)
    if color not in COLORS or shape not in SHAPES:
        raise ValueError(
            f"color must be one of {sorted(COLORS)} and shape one of {SHAPES}; got {color!r}, {shape!r}"
        )
    fps = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    rgb, freq = COLORS[color]
    top = barcode_band_height(height) if index_barcode else 0
    size = max(4, min(width, height - top) // 3)
    positions, speeds, bounces = _trajectory(num_frames, fps, width, height, top, size, rng)

    frames = torch.empty(num_frames, 3, height, width, dtype=torch.uint8)
    for i, (x, y) in enumerate(positions):
        frame = frames[i]
        for c in range(3):
            frame[c].fill_(BACKGROUND[c])
        _draw_shape(frame, shape, x, y, size, rgb)
        if index_barcode:
            draw_barcode(frame, i, barcode_bits)

    clicks = list(bounces if clicks_at is None else clicks_at)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = Encoder()
    # the encoder takes a float rate; FFmpeg turns 29.97002997 back into 30000/1001
    video = encoder.add_video(height=height, width=width, frame_rate=float(fps))
    stream = encoder.add_audio(sample_rate=sample_rate, num_channels=channels) if audio else None
    with encoder.open_file(str(path)):
        video.add_frames(frames)
        if stream is not None:
            seconds = num_frames / fps if audio_seconds is None else audio_seconds
            num_samples = round(float(seconds) * sample_rate)
            max_speed = 1.2 * max(width, height)
            stream.add_samples(
                _audio(num_samples, sample_rate, channels, freq, speeds, fps, clicks, max_speed)
            )

    motion = "bouncing off the edges" if bounces else "gliding"
    click_words = "at each bounce" if clicks_at is None else "at set moments"
    sound = (
        f"A steady {freq:.0f} Hz tone that swells with its speed plays, with a sharp click {click_words}."
        if audio
        else "There is no sound."
    )
    caption = f"A {color} {shape} moves across a dark background, {motion}. {sound}"
    return SyntheticClip(path, caption, num_frames, fps, sample_rate if audio else 0, clicks, bounces)


def make_dataset(
    out_dir: str | Path,
    *,
    count: int = 8,
    width: int = 64,
    height: int = 48,
    fps: float | Fraction = 24,
    seconds: float = 1.0,
    sample_rate: int = 48000,
    seed: int = 0,
    index_barcode: bool = False,
) -> Path:
    """Write `count` clips and a MOVA-style `metadata.json` into `out_dir`; return the metadata path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_frames = max(1, round(seconds * float(fps)))
    entries = []
    for i in tqdm(range(count), desc="synthetic clips", unit="clip"):
        clip = make_clip(
            out_dir / f"clip_{i:06d}.mp4",
            width=width,
            height=height,
            fps=fps,
            num_frames=num_frames,
            sample_rate=sample_rate,
            seed=seed * 100003 + i,
            index_barcode=index_barcode,
        )
        entries.append({"video_path": clip.path.name, "caption": clip.caption})
    metadata = out_dir / "metadata.json"
    metadata.write_text(json.dumps(entries, indent=1, ensure_ascii=False), encoding="utf-8")
    logger.info("wrote %d clips and %s", count, metadata)
    return metadata


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.make_synthetic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("out_dir", type=Path, help="folder to write clips and metadata.json into")
    parser.add_argument("--count", type=int, default=8, help="number of clips")
    parser.add_argument("--width", type=int, default=64, help="frame width (even)")
    parser.add_argument("--height", type=int, default=48, help="frame height (even)")
    parser.add_argument(
        "--fps", type=Fraction, default=Fraction(24), help="frame rate, e.g. 24 or 30000/1001"
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="clip length")
    parser.add_argument("--sample-rate", type=int, default=48000, help="audio sample rate in Hz")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--index-barcode", action="store_true", help="draw the frame index as a barcode")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    make_dataset(
        args.out_dir,
        count=args.count,
        width=args.width,
        height=args.height,
        fps=args.fps,
        seconds=args.seconds,
        sample_rate=args.sample_rate,
        seed=args.seed,
        index_barcode=args.index_barcode,
    )


if __name__ == "__main__":
    main()
