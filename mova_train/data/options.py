"""`DataOptions`: every setting of the data streams, defined once.

The Hydra schema (`mova_train.config.schema.DataConfig`) extends this class with the keys that say *where* the
data is (`shards`, `val_shards`, `sources`, `synthetic`), `MovaDataModule(**cfg.data)` builds one from its keyword
arguments, and the streams' `StreamConfig` extends it with the resolved shard list. A new option is one field
here (with its docstring line and its check in `validate`), nothing else.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MODES = ("raw", "cached")
MISSING_AUDIO_POLICIES = ("skip", "silence")
VIDEO_OUTPUTS = ("uint8", "float")
RESIZE_MODES = ("crop", "stretch")


class DataConfigError(ValueError):
    """A data setting cannot work; the message names the `data.<key>` and the fix."""


@dataclass
class DataOptions:
    """How clips become batches (the same in raw and cached mode unless said otherwise).

    Attributes:
        mode: "raw" (decode clips in the workers) or "cached" (read latents written by `data_tools.encode`).
        num_frames: Frames per clip `F` (4k + 1) when `buckets` is empty.
        fps: Target frame rate (> 0).
        height: Output height (multiple of 16) when `buckets` is empty.
        width: Output width (multiple of 16) when `buckets` is empty.
        sample_rate: Audio rate in Hz (> 0).
        batch_size: Samples per training batch (one bucket per batch).
        val_batch_size: Samples per validation batch (default `batch_size`).
        num_workers: DataLoader workers per rank.
        seed: Training stream seed.
        missing_audio: "skip" clips without audio, or keep them with "silence" (`audio_mask=False`).
        max_skip_rate: Stop with an error past this fraction of skipped samples (per worker), in [0, 1].
        skip_rate_min_samples: Samples seen before the skip rate is checked.
        buckets: `[height, width, num_frames]` entries for aspect / resolution / length bucketing, or "auto":
            proposed from the training clips' records (`mova_train.data.buckets`) near `height x width` pixels
            and up to `num_frames` frames, with a batch size per bucket from `bucket_tokens`.
        bucket_tokens: Token budget per batch (video + audio DiT tokens, `buckets.TokenCost`); when set (or
            with `buckets: auto`) each bucket's batch size is the most samples within it (at least one sample
            must fit). None: `batch_size` samples everywhere (with `auto`: `batch_size` samples of
            `height x width x num_frames`).
        bucket_lengths: Frame-count tiers of `buckets: auto` (quantiles of the clips' lengths).
        audio_hop: Audio samples per audio token (the DAC hop: 960 at 48 kHz for the release, 8 for the tiny
            DAC), for `bucket_tokens`.
        shuffle_buffer: Samples in each worker's shuffle buffer.
        text_len: Text rows after padding (cached mode).
        batches_per_epoch: Training batches per Lightning epoch (None: infinite, use `trainer.max_steps`).
        video_output: "uint8" (converted on the device) or "float" (converted in the workers).
        resize_mode: "crop" (center crop to the aspect, then resize) or "stretch".
    """

    mode: str = "raw"
    num_frames: int = 193
    fps: float = 24.0
    height: int = 352
    width: int = 640
    sample_rate: int = 48000
    batch_size: int = 1
    val_batch_size: int | None = None
    num_workers: int = 2
    seed: int = 0
    missing_audio: str = "skip"
    max_skip_rate: float = 0.1
    skip_rate_min_samples: int = 32
    buckets: Any = None
    bucket_tokens: int | None = None
    bucket_lengths: int = 3
    audio_hop: int = 960
    shuffle_buffer: int = 8
    text_len: int = 512
    batches_per_epoch: int | None = None
    video_output: str = "uint8"
    resize_mode: str = "crop"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(DataOptions))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DataOptions:
        """Build validated options from a mapping holding (at least) the option names; other keys are ignored."""
        names = set(cls.names())
        return cls(**{k: v for k, v in values.items() if k in names}).validate()

    def options(self) -> dict[str, Any]:
        """The option values only (no subclass fields), as a plain dict."""
        return {name: getattr(self, name) for name in DataOptions.names()}

    def validate(self) -> DataOptions:
        """Check every option; raise `DataConfigError` naming `data.<key>` and the fix. Returns self."""
        _choice("mode", self.mode, MODES)
        _choice("missing_audio", self.missing_audio, MISSING_AUDIO_POLICIES)
        _choice("video_output", self.video_output, VIDEO_OUTPUTS)
        _choice("resize_mode", self.resize_mode, RESIZE_MODES)
        _positive_int("num_frames", self.num_frames)
        if (self.num_frames - 1) % 4:
            raise DataConfigError(f"data.num_frames={self.num_frames} must be 4k + 1 (e.g. 17, 97, 193)")
        for key in ("height", "width"):
            value = getattr(self, key)
            _positive_int(key, value)
            if value % 16:
                raise DataConfigError(f"data.{key}={value} must be divisible by 16 (e.g. 352x640, 720x1280)")
        if isinstance(self.fps, bool) or not isinstance(self.fps, int | float) or not math.isfinite(self.fps):
            raise DataConfigError(f"data.fps={self.fps!r} must be a positive frame rate (e.g. 24)")
        if self.fps < 1.0:
            raise DataConfigError(
                f"data.fps={self.fps!r} is not a usable frame rate: give the training rate in frames per second "
                "(>= 1, e.g. 24); it sets which source frames are taken, not the clips' own rate"
            )
        _positive_int("sample_rate", self.sample_rate, hint="the audio rate in Hz, e.g. 48000")
        _positive_int("batch_size", self.batch_size, hint="samples per batch, at least 1")
        if self.val_batch_size is not None:
            _positive_int("val_batch_size", self.val_batch_size, hint="or null to use data.batch_size")
        _non_negative_int("num_workers", self.num_workers)
        _non_negative_int("skip_rate_min_samples", self.skip_rate_min_samples)
        _positive_int("shuffle_buffer", self.shuffle_buffer)
        _positive_int("text_len", self.text_len)
        if self.batches_per_epoch is not None:
            _positive_int("batches_per_epoch", self.batches_per_epoch, hint="or null for an endless stream")
        rate = self.max_skip_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= float(rate) <= 1.0:
            raise DataConfigError(f"data.max_skip_rate={rate!r} must be a fraction in [0, 1] (e.g. 0.1)")
        if self.bucket_tokens is not None:
            _positive_int("bucket_tokens", self.bucket_tokens, hint="video + audio tokens per batch, or null")
        _positive_int("bucket_lengths", self.bucket_lengths, hint="frame-count tiers of buckets: auto")
        _positive_int(
            "audio_hop", self.audio_hop, hint="audio samples per audio token: 960 for the release DAC"
        )
        self.buckets = normalize_buckets(self.buckets)
        return self


AUTO_BUCKETS = "auto"


def normalize_buckets(buckets: Any) -> list[tuple[int, int, int]] | str | None:
    """Check `data.buckets` and return it as a list of int tuples, "auto" or None.

    Raises:
        DataConfigError: An entry is not `[height % 16, width % 16, 4k + 1 frames]`.
    """
    if buckets is None or buckets == AUTO_BUCKETS:
        return buckets
    if isinstance(buckets, str):
        raise DataConfigError(
            f"data.buckets={buckets!r}: use null, auto or a list of [height, width, frames]"
        )
    out = []
    for b in buckets:
        entry = tuple(b) if isinstance(b, list | tuple) else (b,)
        ints = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in entry)
        if len(entry) != 3 or not ints or entry[0] % 16 or entry[1] % 16 or (entry[2] - 1) % 4:
            raise DataConfigError(
                f"data.buckets entry {list(entry)} must be [height%16, width%16, 4k+1 frames]"
            )
        out.append(tuple(int(v) for v in entry))
    return out or None


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DataConfigError(f"data.{key}={value!r} must be one of {list(allowed)}")


def _positive_int(key: str, value: Any, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DataConfigError(
            f"data.{key}={value!r} must be a positive integer" + (f" ({hint})" if hint else "")
        )


def _non_negative_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataConfigError(f"data.{key}={value!r} must be an integer >= 0")
