"""The shard schema shared by `data_tools/build_shards.py`, the latent encoder and the datamodule.

Raw shards hold one tar sample per clip, named the webdataset way (`<key>.<ext>` members):

- `__key__`: the first 16 hex digits of the sha256 of the clip bytes (`key_for_sha256`).
- `mp4` (`VIDEO_KEY`): the original clip bytes, unchanged, whatever the container.
- `json` (`RECORD_KEY`): a `ClipRecord` as JSON.
- `audio` (`AUDIO_KEY`, only for clips whose sound came as a separate file): that file's bytes, unchanged
  (wav, flac, m4a, ...); the record's `separate_audio` is true and `audio_offset` says how it lines up.

Latent-cache shards use the same `__key__`, a `latents.safetensors` member (`LATENTS_KEY`) and a `json` record that
extends the raw record. Every shard folder carries an `index.json` (`INDEX_NAME`, format `INDEX_VERSION`) with
per-shard counts and, for raw shards, every skipped input grouped by reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    import torch

VIDEO_KEY = "mp4"
AUDIO_KEY = "audio"
RECORD_KEY = "json"
LATENTS_KEY = "latents.safetensors"
INDEX_NAME = "index.json"
INDEX_VERSION = 1
CACHE_KIND = (
    "mova_latent_cache"  # `kind` of a latent cache's index.json (its version is checked by data.cache)
)
SHARD_PATTERN = "shard-{index:06d}.tar"
KEY_LENGTH = 16

# Skip reasons written by `build_shards` (index.json "skipped" keys).
SKIP_BAD_ENTRY = "bad_entry"
SKIP_MISSING_FILE = "missing_file"
SKIP_EMPTY_FILE = "empty_file"
SKIP_UNREADABLE = "unreadable"
SKIP_TRUNCATED = "truncated"
SKIP_NO_VIDEO_STREAM = "no_video_stream"
SKIP_NO_AUDIO_STREAM = "no_audio_stream"
SKIP_TOO_SHORT = "too_short"
SKIP_BAD_CAPTION_ENCODING = "bad_caption_encoding"
SKIP_EMPTY_CAPTION = "empty_caption"
SKIP_VARIABLE_FRAME_RATE = "variable_frame_rate"
SKIP_DUPLICATE = "duplicate"
SKIP_AV_OFFSET = "av_offset"  # the A/V audit measured more than --max-av-offset-ms and --skip-av-offset is on
SKIP_REASONS = (
    SKIP_BAD_ENTRY,
    SKIP_MISSING_FILE,
    SKIP_EMPTY_FILE,
    SKIP_UNREADABLE,
    SKIP_TRUNCATED,
    SKIP_NO_VIDEO_STREAM,
    SKIP_NO_AUDIO_STREAM,
    SKIP_TOO_SHORT,
    SKIP_BAD_CAPTION_ENCODING,
    SKIP_EMPTY_CAPTION,
    SKIP_VARIABLE_FRAME_RATE,
    SKIP_DUPLICATE,
    SKIP_AV_OFFSET,
)

# Flags of kept clips (index.json "flags" keys): kept, but worth knowing about.
FLAG_NO_AUDIO = "no_audio_stream"
FLAG_AUDIO_SHORTER = "audio_shorter_than_video"
FLAG_EMPTY_CAPTION = "empty_caption"
FLAG_VARIABLE_FRAME_RATE = "variable_frame_rate"
FLAG_AV_OFFSET = "av_offset"  # the A/V audit measured an offset above --max-av-offset-ms (kept, flagged)

logger = logging.getLogger(__name__)
_HEX = re.compile(r"^[0-9a-f]{64}$")


class Batch(TypedDict, total=False):
    """The keys of a batch, from the datamodule to the objective (one name per quantity, nowhere renamed).

    Raw mode fills `video`, `first_frame`, `audio`; cached mode fills `video_latents`, `cond`, `audio_latents`,
    `context`, `text_lens`; the encoders (`mova_train.codecs.encoders.MovaEncoders.encode_batch`) turn the first
    kind into the second. Shapes: `B` samples, `F` frames, `H x W` pixels, `S` audio samples, `z` video latent
    channels, `T' = (F - 1) / 4 + 1`, `Ca` audio latent channels, `L` audio latent length, `Lt` text rows,
    `D` text width.

    Attributes:
        video: uint8 (from the loader) or float in [-1, 1] (on the device) `[B, 3, F, H, W]`.
        first_frame: The conditioning frame, same dtype, `[B, 3, H, W]`.
        audio: float32 mono waveform `[B, 1, S]`.
        audio_mask: bool `[B]`, False for clips kept with silence (`data.missing_audio=silence`).
        caption: The B captions.
        key: The B shard keys (`__key__`).
        video_latents: Normalized video latents `[B, z, T', H/8, W/8]`.
        cond: First-frame condition with its 4 mask channels `[B, 4 + z, T', H/8, W/8]`.
        audio_latents: DAC latents `[B, Ca, L]`.
        context: Text-encoder states `[B, Lt, D]` (zero rows past each caption's length).
        text_lens: long `[B]`, real token count of each caption.
        empty_latents: Normalized latent of an all-zero clip of the batch's size `[B, z, T', H/8, W/8]`, for
            the no-frame condition (text-to-audio-video mode).
    """

    video: torch.Tensor
    first_frame: torch.Tensor
    audio: torch.Tensor
    audio_mask: torch.Tensor
    caption: list[str]
    key: list[str]
    video_latents: torch.Tensor
    cond: torch.Tensor
    audio_latents: torch.Tensor
    context: torch.Tensor
    text_lens: torch.Tensor
    empty_latents: torch.Tensor


class SchemaError(ValueError):
    """A shard record or index does not follow the schema."""


def key_for_sha256(sha256: str) -> str:
    """Return the webdataset `__key__` of a clip: the first 16 hex digits of its sha256."""
    return sha256[:KEY_LENGTH]


def shard_name(index: int) -> str:
    """Return the file name of shard number `index` (`shard-000000.tar`, ...)."""
    return SHARD_PATTERN.format(index=index)


@dataclass
class ClipRecord:
    """The JSON record stored beside each raw clip (member `json`).

    Attributes:
        caption: The text prompt ("" when the input had none).
        source_path: Where the clip came from (as given by the input listing).
        fps: Average video frame rate, `fps_num / fps_den`.
        fps_num: Frame-rate numerator (e.g. 30000).
        fps_den: Frame-rate denominator (e.g. 1001).
        num_frames: Number of decodable video frames.
        duration: Video duration in seconds.
        width: Display width in pixels (after rotation).
        height: Display height in pixels (after rotation).
        has_audio: Whether the container has an audio stream.
        sample_rate: Audio sample rate in Hz, or None without audio.
        num_channels: Audio channel count, or None without audio.
        audio_duration: Audio duration in seconds, or None without audio (or when unknown).
        sha256: Hex sha256 of the clip bytes.
        variable_frame_rate: True when frame timestamps deviate from a constant rate.
        separate_audio: The sound is the sample's `audio` member (a separate file), not the clip's own stream;
            `sample_rate`, `num_channels` and `audio_duration` then describe that file.
        audio_sha256: Hex sha256 of the separate audio file (None for muxed audio); part of the key.
        audio_offset: Seconds after the first video frame at which the audio starts (ffmpeg's `-itsoffset`
            sense: positive delays the sound). Video time `t` plays audio (file or stream) time
            `t - audio_offset`; 0 lines up the start of both files (separate audio) or keeps the container's
            own timing (muxed audio).
        cuts: Scene cuts, in seconds from the first video frame: each is the presentation time
            `frame_index / fps` of the first frame of a new shot, sorted, none at 0. None = never detected
            (`build_shards --detect-cuts` fills it), [] = detected, one scene. A window of frames
            `[a, b)` stays inside one scene iff no cut `c` has `a / fps < c < b / fps` (up to rounding; compare
            frame indices `round(c * fps)`).
        scene_of: For samples written by `--split-scenes`: the key of the clip the scene was cut from.
        scene_span: For such samples: `[start, end]` seconds of the scene in that clip.
        av_offset_ms: The A/V audit's estimate (`mova_train.data.av_sync`): milliseconds by which the sound
            lags the picture (negative: it leads), or None when not audited.
        av_confidence: The audit's confidence in [0, 1] (low for clips without motion or sound).
    """

    caption: str
    source_path: str
    fps: float
    fps_num: int
    fps_den: int
    num_frames: int
    duration: float
    width: int
    height: int
    has_audio: bool
    sample_rate: int | None
    num_channels: int | None
    audio_duration: float | None
    sha256: str
    variable_frame_rate: bool = False
    separate_audio: bool = False
    audio_sha256: str | None = None
    audio_offset: float = 0.0
    cuts: list[float] | None = None
    scene_of: str | None = None
    scene_span: list[float] | None = None
    av_offset_ms: float | None = None
    av_confidence: float | None = None

    @property
    def key(self) -> str:
        """The sample's webdataset `__key__` (of the clip bytes, and of the audio file when separate)."""
        if self.audio_sha256 is None:
            return key_for_sha256(self.sha256)
        return key_for_sha256(hashlib.sha256(f"{self.sha256}:{self.audio_sha256}".encode()).hexdigest())

    def validate(self) -> ClipRecord:
        """Check types and ranges; raise `SchemaError` naming the field and the fix. Returns self."""
        where = f"record of {self.source_path!r}"
        if not isinstance(self.caption, str):
            raise SchemaError(
                f"{where}: field 'caption' must be a string (got {type(self.caption).__name__})"
            )
        for name in ("fps_num", "fps_den", "num_frames", "width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SchemaError(f"{where}: field {name!r} must be a positive int (got {value!r})")
        for name in ("fps", "duration"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise SchemaError(f"{where}: field {name!r} must be a positive finite number (got {value!r})")
        if abs(self.fps - self.fps_num / self.fps_den) > 1e-3:
            raise SchemaError(
                f"{where}: 'fps' {self.fps} disagrees with fps_num/fps_den {self.fps_num}/{self.fps_den}"
            )
        if not isinstance(self.sha256, str) or not _HEX.match(self.sha256):
            raise SchemaError(
                f"{where}: field 'sha256' must be 64 lowercase hex digits (got {self.sha256!r})"
            )
        if self.has_audio:
            for name in ("sample_rate", "num_channels"):
                value = getattr(self, name)
                if not isinstance(value, int) or value <= 0:
                    raise SchemaError(
                        f"{where}: has_audio is true but {name!r} is {value!r}; re-run build_shards"
                    )
        elif self.sample_rate is not None or self.num_channels is not None:
            raise SchemaError(f"{where}: has_audio is false but sample_rate/num_channels are set")
        if self.separate_audio and not (
            self.has_audio and isinstance(self.audio_sha256, str) and _HEX.match(self.audio_sha256)
        ):
            raise SchemaError(f"{where}: separate_audio needs has_audio and a hex 'audio_sha256'; rebuild")
        if not isinstance(self.audio_offset, int | float) or not math.isfinite(self.audio_offset):
            raise SchemaError(f"{where}: field 'audio_offset' must be a finite number of seconds")
        if self.cuts is not None and (
            not isinstance(self.cuts, list)
            or not all(isinstance(c, int | float) and 0 < c < self.duration for c in self.cuts)
            or self.cuts != sorted(self.cuts)
        ):
            raise SchemaError(
                f"{where}: field 'cuts' must be a sorted list of seconds inside (0, duration), got {self.cuts!r}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a plain JSON-serializable dict."""
        return dataclasses.asdict(self)

    def to_json_bytes(self) -> bytes:
        """Return the record encoded as UTF-8 JSON (stable key order), as stored in the shard."""
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True).encode("utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipRecord:
        """Build a validated record from a dict; extra keys (e.g. latent-cache fields) are ignored.

        Raises:
            SchemaError: A required field is missing or has a bad value.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            src = data.get("source_path", "<unknown>")
            raise SchemaError(
                f"record of {src!r} lacks fields {missing}; rebuild the shards with build_shards"
            )
        return cls(**{n: data[n] for n in names if n in data}).validate()

    @classmethod
    def from_json_bytes(cls, raw: bytes) -> ClipRecord:
        """Parse a `json` member of a raw shard."""
        return cls.from_dict(json.loads(raw.decode("utf-8")))


def read_index(folder: str | Path) -> dict[str, Any]:
    """Read and check `index.json` of a shard folder.

    Raises:
        SchemaError: The index is missing, not JSON, or of an unknown version.
    """
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise SchemaError(f"{path} not found; build the shards with `python -m data_tools.build_shards`")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SchemaError(
            f"{path} is not valid JSON ({err}); rebuild the shards (build_shards, or encode for a cache)"
        ) from err
    if not isinstance(index, dict):
        raise SchemaError(f"{path} must hold a JSON object; rebuild the shards")
    if index.get("kind") != CACHE_KIND and index.get("version") != INDEX_VERSION:
        raise SchemaError(f"{path}: field 'version' is {index.get('version')!r}, expected {INDEX_VERSION}")
    shards = index.get("shards")
    if not isinstance(shards, list) or not all(
        isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("count"), int)
        for e in shards
    ):
        raise SchemaError(
            f"{path}: field 'shards' must be a list of {{name, count, bytes}}; rebuild the shards"
        )
    return index


def shard_urls(folder: str | Path) -> list[str]:
    """Return the shard paths listed in a folder's `index.json`, in order.

    Raises:
        SchemaError: The index is unusable.
        FileNotFoundError: A listed shard is missing (found here, at setup, not when the stream first draws it).
    """
    index = read_index(folder)
    missing = [e["name"] for e in index["shards"] if not (Path(folder) / e["name"]).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{Path(folder) / INDEX_NAME} lists {len(missing)} shard(s) that are not there: {missing[:5]}; "
            "copy them too, or rebuild the folder (build_shards / encode)"
        )
    for e in index["shards"]:
        size = e.get("bytes")
        if isinstance(size, int) and (Path(folder) / e["name"]).stat().st_size != size:
            logger.warning(
                "%s has %d bytes but index.json says %d (truncated or changed copy?): its unreadable part will "
                "be skipped and counted as corrupt_shard",
                Path(folder) / e["name"],
                (Path(folder) / e["name"]).stat().st_size,
                size,
            )
    return [str(Path(folder) / shard["name"]) for shard in index["shards"]]


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add one member to a shard with fixed metadata (mtime 0), so the same inputs give byte-identical tars."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
