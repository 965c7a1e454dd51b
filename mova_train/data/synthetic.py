"""Generate a small real dataset of mp4 clips (H.264 + AAC) with captions, in upstream MOVA's format.

Each clip shows one coloured shape moving across a dark background and bouncing off the walls. The sound is tied to
what is seen: a tone whose pitch is set by the colour, whose loudness follows the shape's speed, and a click at every
bounce. The caption says all of this in words. Optionally each frame carries its index as a binary barcode along the
top edge, and clicks are placed at given times, so that a data pipeline can be checked frame- and sample-exactly.
For the A/V sync audit, clips can carry one-frame flashes (a bright block) at irregular times with a click at each,
delayed by a known `audio_offset` (`make_dataset(audio_offset_ms=...)`, `make_synthetic --audio-offset-ms`).

`make_dataset` writes `OUT_DIR/clip_000000.mp4`, ... plus `OUT_DIR/metadata.json` (a list of
`{"video_path", "caption"}`); `python -m data_tools.make_synthetic` is its command line. `prepare_synthetic` makes
the embedded dataset of the synthetic recipes (clips, raw shards and, in cached mode, the latent cache) once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mova_train.data.options import DataOptions

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
FLASH_RGB = (250, 250, 250)
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
        flashes_at: Times (seconds, on the frame grid) of the one-frame flashes.
        audio_offset: Seconds by which the clicks of the flashes lag them.
    """

    path: Path
    caption: str
    num_frames: int
    fps: Fraction
    sample_rate: int
    clicks_at: list[float] = field(default_factory=list)
    bounces_at: list[float] = field(default_factory=list)
    flashes_at: list[float] = field(default_factory=list)
    audio_offset: float = 0.0


def irregular_times(
    seconds: float, rng: random.Random, margin: float, gaps: tuple[float, float] = (0.25, 0.6)
) -> list[float]:
    """Event times in `[margin, seconds - margin]` separated by random gaps (no period for a correlation to lock
    onto).
    """
    times, t = [], margin + rng.uniform(0.0, gaps[0])
    while t <= seconds - margin:
        times.append(t)
        t += rng.uniform(*gaps)
    return times


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
    flashes_at: Sequence[float] | None = None,
    audio_offset: float = 0.0,
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
        clicks_at: Click times in seconds; None puts a click at every bounce, or at every flash when there are
            flashes.
        flashes_at: Times (seconds) of one-frame flashes: a bright block over the middle of the frame on the frame
            shown at that time.
        audio_offset: Seconds added to the click times of the flashes (positive: the sound lags the picture).
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
    flash_frames = sorted({math.floor(t * fps + 1e-6) for t in flashes_at or ()})
    for i in flash_frames:
        if 0 <= i < num_frames:
            for c in range(3):
                frames[i, c, max(top, height // 4) : 3 * height // 4, width // 4 : 3 * width // 4] = (
                    FLASH_RGB[c]
                )
    flashes = [i / fps for i in flash_frames]

    if clicks_at is not None:
        clicks = list(clicks_at)
    else:
        clicks = [float(t) + audio_offset for t in flashes] if flashes else list(bounces)
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
    if flashes:
        caption += f" It flashes {len(flashes)} times."
    return SyntheticClip(
        path, caption, num_frames, fps, sample_rate if audio else 0, clicks, bounces, [float(t) for t in flashes],
        audio_offset,
    )  # fmt: skip


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
    audio_offset_ms: float | None = None,
) -> Path:
    """Write `count` clips and a MOVA-style `metadata.json` into `out_dir`; return the metadata path.

    With `audio_offset_ms`, every clip flashes at irregular times (`irregular_times`, seeded) with a click
    `audio_offset_ms` after each flash: clips with a known A/V offset for `mova_train.data.av_sync`.
    """
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
            **_flash_options(seconds, audio_offset_ms, seed * 100003 + i),
        )
        entries.append({"video_path": clip.path.name, "caption": clip.caption})
    metadata = out_dir / "metadata.json"
    metadata.write_text(json.dumps(entries, indent=1, ensure_ascii=False), encoding="utf-8")
    logger.info("wrote %d clips and %s", count, metadata)
    return metadata


def _flash_options(seconds: float, audio_offset_ms: float | None, seed: int) -> dict[str, Any]:
    """`make_clip` arguments of a clip with flashes and clicks `audio_offset_ms` later (none without an offset)."""
    if audio_offset_ms is None:
        return {}
    offset = audio_offset_ms / 1000.0
    times = irregular_times(seconds, random.Random(seed + 7), margin=abs(offset) + 0.1)
    return {"flashes_at": times, "audio_offset": offset}


# ------------------------------------------------------------------------------------ embedded dataset


@dataclass
class SyntheticSpec:
    """The embedded synthetic dataset of the synthetic recipes (`data.synthetic`).

    Raw shards go to `root/shards`, the latent cache (cached mode) to `root/cached`, the clips to `root/clips`.
    The dataset is made only when `data.shards` is one of those folders and has no `index.json` yet.

    Attributes:
        root: Folder of the dataset.
        count: Number of clips.
        width: Frame width in pixels.
        height: Frame height in pixels.
        fps: Frame rate of the clips.
        seconds: Clip length (at least `num_frames / fps` of the data options).
        sample_rate: Audio sample rate of the clips in Hz (decoded to `data.sample_rate`).
        seed: Seed of the generator (shapes, colours, motion).
        encoder_seed: Seed of the tiny random encoders that write the latent cache (cached mode); the model's
            `encoders.seed`, so that the cache matches the encoders the run decodes samples with.
    """

    root: str = "data/synthetic"
    count: int = 8
    width: int = 64
    height: int = 64
    fps: float = 12.0
    seconds: float = 1.5
    sample_rate: int = 48000
    seed: int = 0
    encoder_seed: int = 0

    @classmethod
    def from_any(cls, value: SyntheticSpec | Mapping[str, Any] | None) -> SyntheticSpec | None:
        """A spec from a spec, a mapping of its fields (e.g. the Hydra node) or None."""
        if value is None or isinstance(value, SyntheticSpec):
            return value
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown data.synthetic keys {unknown}")
        return cls(**dict(value))

    def target(self, mode: str) -> Path:
        """The folder `data.shards` points at for this mode: `root/cached` or `root/shards`."""
        return Path(self.root) / ("cached" if mode == "cached" else "shards")


def _staging(root: Path) -> Path:
    """A private work folder next to the dataset (unique per host and process)."""
    return root / f".staging-{socket.gethostname()}-{os.getpid()}"


def _publish(staged: Path, final: Path) -> None:
    """Rename a finished folder into place; when another writer was first, keep theirs and drop ours."""
    if (final / "index.json").is_file():
        shutil.rmtree(staged)
        return
    if final.exists():  # left by a crashed run (no index.json): ours replaces it
        shutil.rmtree(final)
    try:
        os.rename(staged, final)
    except OSError:
        if not (final / "index.json").is_file():
            raise
        shutil.rmtree(staged)


def prepare_synthetic(spec: SyntheticSpec, shards: Any, options: DataOptions) -> Path | None:
    """Make the embedded dataset once: clips -> raw shards -> (cached mode) latent cache with tiny encoders.

    Args:
        spec: What to generate.
        shards: The run's `data.shards`. Nothing is made unless it is `spec.target(options.mode)`: a run pointed at
            other shards (a folder, a glob, a `.tar`, a list) trains on those and never on synthetic clips.
        options: The run's data options (frames, size, fps, audio rate, text rows of the cache).

    Returns:
        The dataset folder, or None when `shards` points elsewhere.
    """
    from mova_train.data.shard_builder import build_shards

    target = spec.target(options.mode)
    if not isinstance(shards, str | Path) or Path(shards).resolve() != target.resolve():
        logger.info(
            "data.shards=%s is not the synthetic dataset's folder %s: nothing generated", shards, target
        )
        return None
    if (target / "index.json").is_file():
        return target
    root = Path(spec.root)
    raw = root / "shards"
    if not (raw / "index.json").is_file():
        staging = _staging(root)
        shutil.rmtree(staging, ignore_errors=True)
        logger.info("generating the synthetic dataset in %s (%d clips)", root, spec.count)
        metadata = make_dataset(
            staging / "clips",
            count=spec.count,
            width=spec.width,
            height=spec.height,
            fps=spec.fps,
            seconds=spec.seconds,
            sample_rate=spec.sample_rate,
            seed=spec.seed,
        )
        build_shards(metadata, staging / "shards", max_count=max(1, math.ceil(spec.count / 2)))
        _publish(staging / "shards", raw)
        clips = root / "clips"
        if not clips.exists():
            os.rename(staging / "clips", clips)
        shutil.rmtree(staging, ignore_errors=True)
    if options.mode == "cached":
        _encode_synthetic(spec, raw, target, options)
    logger.info("synthetic shards ready in %s", target)
    return target


def _encode_synthetic(spec: SyntheticSpec, raw: Path, target: Path, options: DataOptions) -> None:
    """Encode the raw synthetic shards into the latent cache with the tiny encoders (on CPU, fp32)."""
    from mova_train.codecs.encoders import tiny_encoders
    from mova_train.data.cache import CacheSettings
    from mova_train.data.cache_writer import encode_cache, module_hashes

    logger.info("encoding the synthetic clips into the latent cache %s (tiny encoders)", target)
    encoders = tiny_encoders(spec.encoder_seed, text_len=options.text_len)
    settings = CacheSettings(
        num_frames=options.num_frames,
        height=options.height,
        width=options.width,
        fps=float(options.fps),
        sample_rate=options.sample_rate,
        resize_mode=options.resize_mode,
        missing_audio=options.missing_audio,
        text_len=options.text_len,
        compute_dtype="fp32",
    )
    staging = _staging(Path(spec.root)) / "cached"
    shutil.rmtree(staging, ignore_errors=True)
    encode_cache(raw, staging, encoders, module_hashes(encoders), settings, device="cpu", progress=False)
    _publish(staging, target)
    shutil.rmtree(staging.parent, ignore_errors=True)
