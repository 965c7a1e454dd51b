"""Summarize a folder of raw shards and draw a contact sheet of a few samples (behind
`python -m data_tools.inspect_shards`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mova_train.data import schema
from mova_train.data.buckets import BucketPlan, plan_buckets
from mova_train.data.options import DataOptions

logger = logging.getLogger(__name__)


def iter_samples(
    folder: str | Path, *, with_video: bool = False
) -> Iterator[tuple[str, str, dict, bytes | None]]:
    """Yield `(shard_name, key, record, video_bytes or None)` for every sample, in shard order."""
    index = schema.read_index(folder)
    for shard in index["shards"]:
        with tarfile.open(Path(folder) / shard["name"]) as tar:
            pending: dict[str, dict[str, bytes]] = {}
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext == schema.RECORD_KEY or (with_video and ext == schema.VIDEO_KEY):
                    pending.setdefault(key, {})[ext] = tar.extractfile(member).read()
                want = {schema.RECORD_KEY, schema.VIDEO_KEY} if with_video else {schema.RECORD_KEY}
                if key in pending and want <= pending[key].keys():
                    parts = pending.pop(key)
                    yield (
                        shard["name"],
                        key,
                        json.loads(parts[schema.RECORD_KEY]),
                        parts.get(schema.VIDEO_KEY),
                    )


def summarize(folder: str | Path) -> dict[str, Any]:
    """Count samples, durations, resolutions, frame rates, audio and skip reasons of a shard folder."""
    index = schema.read_index(folder)
    per_shard: Counter[str] = Counter()
    durations: list[float] = []
    resolutions: Counter[str] = Counter()
    fps: Counter[str] = Counter()
    sample_rates: Counter[str] = Counter()
    channels: Counter[str] = Counter()
    with_audio = 0
    vfr = 0
    separate = with_cuts = from_scenes = 0
    for shard_name, _, record, _ in tqdm(iter_samples(folder), desc="read", unit="sample"):
        per_shard[shard_name] += 1
        durations.append(float(record["duration"]))
        resolutions[f"{record['width']}x{record['height']}"] += 1
        fps[f"{record['fps_num']}/{record['fps_den']}"] += 1
        if record["has_audio"]:
            with_audio += 1
            sample_rates[str(record["sample_rate"])] += 1
            channels[str(record["num_channels"])] += 1
        vfr += bool(record.get("variable_frame_rate"))
        separate += bool(record.get("separate_audio"))
        with_cuts += bool(record.get("cuts"))
        from_scenes += record.get("scene_of") is not None
    mismatched = [s["name"] for s in index["shards"] if per_shard[s["name"]] != s["count"]]
    if mismatched:
        logger.warning("shards whose sample count differs from index.json: %s", mismatched)
    n = len(durations)
    return {
        "folder": str(folder),
        "shards": len(index["shards"]),
        "samples": n,
        "inputs": index.get("inputs", n),
        "duration_total": sum(durations),
        "duration_min": min(durations) if n else 0.0,
        "duration_mean": sum(durations) / n if n else 0.0,
        "duration_max": max(durations) if n else 0.0,
        "resolutions": dict(resolutions.most_common()),
        "fps": dict(fps.most_common()),
        "with_audio": with_audio,
        "without_audio": n - with_audio,
        "sample_rates": dict(sample_rates.most_common()),
        "channels": dict(channels.most_common()),
        "variable_frame_rate": vfr,
        "separate_audio": separate,
        "with_scene_cuts": with_cuts,
        "scene_samples": from_scenes,
        "skipped": {reason: len(items) for reason, items in index.get("skipped", {}).items()},
        "flags": {flag: len(items) for flag, items in index.get("flags", {}).items()},
        "count_mismatch": mismatched,
    }


BUCKET_OPTIONS = (
    "height",
    "width",
    "num_frames",
    "fps",
    "sample_rate",
    "batch_size",
    "bucket_tokens",
    "bucket_lengths",
    "audio_hop",
)
"""The `DataOptions` that change the automatic buckets (command-line options of `inspect_shards`)."""


def bucket_report(folder: str | Path, options: DataOptions) -> BucketPlan:
    """The automatic buckets of a shard folder (raw: proposed from its records; a latent cache: the sizes it was
    encoded at) for `options`, with clips per bucket.
    """
    index = schema.read_index(folder)
    plan = plan_buckets(
        dataclasses.replace(options, buckets="auto"),
        schema.shard_urls(folder),
        cached=index.get("kind") == schema.CACHE_KIND,
    )
    assert plan is not None
    return plan


def format_table(summary: dict[str, Any]) -> str:
    """Render a summary as a two-column text table."""

    def fmt(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value) if value != [] else "-"

    rows = [(name.replace("_", " "), fmt(value)) for name, value in summary.items()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _waveform(data: bytes, width: int, height: int):
    """Draw the clip's audio (mixed to mono) as a min/max envelope; a grey strip without audio."""
    from PIL import Image, ImageDraw
    from torchcodec.decoders import AudioDecoder

    strip = Image.new("RGB", (width, height), (16, 16, 16))
    draw = ImageDraw.Draw(strip)
    mid = height // 2
    try:
        wave = AudioDecoder(data).get_all_samples().data.mean(dim=0)
    except (ValueError, RuntimeError):
        draw.text((4, 2), "no audio", fill=(160, 160, 160))
        return strip
    draw.line([(0, mid), (width, mid)], fill=(60, 60, 60))
    if wave.numel() == 0:
        return strip
    columns = (
        wave[: (wave.numel() // width) * width].view(width, -1) if wave.numel() >= width else wave.view(-1, 1)
    )
    for x, col in enumerate(columns):
        lo, hi = float(col.min()), float(col.max())
        draw.line([(x, mid - hi * (mid - 1)), (x, mid - lo * (mid - 1))], fill=(90, 200, 120))
    return strip


def contact_sheet(
    folder: str | Path,
    out_png: str | Path,
    *,
    num_samples: int = 4,
    frames_per_sample: int = 4,
    thumb_height: int = 72,
    wave_height: int = 40,
) -> Path:
    """Save a PNG with, per sample, a row of evenly spaced frames, its audio waveform and its caption.

    Returns:
        The PNG path.
    """
    from PIL import Image, ImageDraw
    from torchcodec.decoders import VideoDecoder

    rows = []
    for _, key, record, data in iter_samples(folder, with_video=True):
        if len(rows) >= num_samples:
            break
        decoder = VideoDecoder(data)
        n = decoder.metadata.num_frames or 1
        count = min(frames_per_sample, n)
        indices = [round(i * (n - 1) / max(1, count - 1)) for i in range(count)]
        thumbs = []
        for frame in decoder.get_frames_at(indices).data:
            image = Image.fromarray(frame.permute(1, 2, 0).numpy())
            thumb_width = max(1, round(image.width * thumb_height / image.height))
            thumbs.append(image.resize((thumb_width, thumb_height), Image.BILINEAR))
        row_width = max(320, sum(t.width for t in thumbs))
        row = Image.new("RGB", (row_width, thumb_height + wave_height + 16), (0, 0, 0))
        x = 0
        for thumb in thumbs:
            row.paste(thumb, (x, 0))
            x += thumb.width
        row.paste(_waveform(data, row_width, wave_height), (0, thumb_height))
        label = f"{key} {record['width']}x{record['height']} {record['fps']:.2f}fps {record['caption'][:60]}"
        ImageDraw.Draw(row).text((2, thumb_height + wave_height + 2), label, fill=(230, 230, 230))
        rows.append(row)
    if not rows:
        raise ValueError(f"{folder} holds no samples to draw; build shards first")
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), (0, 0, 0))
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    logger.info("wrote contact sheet of %d samples to %s", len(rows), out_png)
    return out_png


def av_offsets(folder: str | Path, *, measure: bool = False, min_confidence: float = 0.3) -> list[float]:
    """The confident A/V offsets (ms) of a shard folder: from the records (`build_shards --av-audit`), or, with
    `measure`, estimated now for records that lack one (`mova_train.data.av_sync`; decodes those clips).
    """
    from mova_train.data.av_sync import estimate_clip_offset

    offsets = []
    for _, _, record, data in iter_samples(folder, with_video=measure):
        offset, confidence = record.get("av_offset_ms"), record.get("av_confidence")
        if offset is None and measure and record.get("has_audio") and not record.get("separate_audio"):
            estimate = estimate_clip_offset(data, audio_offset=float(record.get("audio_offset") or 0.0))
            offset, confidence = estimate.offset_ms, estimate.confidence
        if offset is not None and (confidence or 0.0) >= min_confidence:
            offsets.append(float(offset))
    return offsets


def offset_histogram(
    offsets: list[float], out_png: str | Path, *, bin_ms: float = 10.0, size=(480, 200)
) -> Path:
    """Save a PNG histogram of A/V offsets (ms; bars of `bin_ms`, 0 marked, counts and range labelled)."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    limit = max([bin_ms * 5, *(abs(o) for o in offsets)])
    bins = max(1, round(2 * limit / bin_ms))
    counts = [0] * bins
    for o in offsets:
        counts[min(bins - 1, int((o + limit) / (2 * limit) * bins))] += 1
    top, bottom = 16, height - 16
    peak = max(counts) or 1
    for i, c in enumerate(counts):
        x0, x1 = i * width // bins, max(i * width // bins + 1, (i + 1) * width // bins - 1)
        draw.rectangle([x0, bottom - (bottom - top) * c // peak, x1, bottom], fill=(90, 200, 120))
    draw.line([(width // 2, top), (width // 2, bottom)], fill=(220, 60, 60))
    draw.text(
        (2, 2), f"A/V offset (ms, + = sound late): {len(offsets)} clips, max bar {peak}", fill=(230, 230, 230)
    )
    draw.text((2, bottom + 2), f"-{limit:.0f}", fill=(200, 200, 200))
    draw.text((width - 40, bottom + 2), f"+{limit:.0f}", fill=(200, 200, 200))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_png)
    logger.info("wrote the A/V offset histogram of %d clips to %s", len(offsets), out_png)
    return out_png
