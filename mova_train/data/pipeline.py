"""Shard streams for training and validation, built from small named stages.

Stages (each a plain function or generator, composed by the two stream classes):

1. `iter_shard`: tar file -> raw samples `{"__key__", "__url__", "mp4"|"latents.safetensors", "json"}`
   (webdataset's tar iterator; the member bytes are never written to disk).
2. `assign_bucket`: record -> `(height, width, num_frames)` bucket, or None when the clip is too short for every
   bucket (decided from the record, before any decoding).
3. `bucket_batches`: groups samples by bucket and emits a list of raw samples when a bucket holds `batch_size`.
4. `raw_stage` (decode with torchcodec, skip + count failures) or `cached_stage` (read the latent cache).
5. `collate`: stack into the batch layout of `mova_train/data/schema` docs.

Training (`TrainStream`) is infinite and resampled: each DataLoader worker draws shards from its own RNG seeded with
(seed, epoch, rank, worker), shuffles samples through a small buffer and decodes with per-sample seeds. Bucketing
happens before decoding and depends only on records, so a worker's batch sequence is a pure function of its seed:
resuming skips the first `n` batches of each worker without decoding them (`start_batches`). Validation
(`ValStream`) is finite: every (rank, worker) reads a contiguous slice of the global sample order, so each sample
is seen exactly once across all ranks and workers.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import random
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from mova_train.data.decode import ClipTooShort, DecodeError, decode_clip
from mova_train.data.options import DataOptions
from mova_train.data.schema import AUDIO_KEY
from mova_train.data.windows import first_start, longest_scene, random_start

logger = logging.getLogger(__name__)

STREAM_KEY = "_stream"  # per-batch bookkeeping: worker id, batch index, skip counters
Bucket = tuple[int, int, int]  # (height, width, num_frames)


@dataclass
class StreamConfig(DataOptions):
    """The `DataOptions` of one stream plus what it reads.

    Attributes:
        shards: Shard paths (see `resolve_shards`).
        epoch: Stream generation, part of every derived seed.
        bucket_batch: Samples per batch of each bucket (from a token budget, `buckets.BucketPlan`); None:
            `batch_size` everywhere.
        shard_sources: Source index of every shard (`data.sources`); empty: one source.
        source_weights: Sampling share of every source (normalized when drawn).
    """

    shards: list[str] = field(default_factory=list)
    epoch: int = 0
    bucket_batch: dict[Bucket, int] | None = None
    shard_sources: list[int] = field(default_factory=list)
    source_weights: list[float] = field(default_factory=list)

    def bucket_list(self) -> list[Bucket]:
        """The configured buckets, or the single `(height, width, num_frames)` one."""
        if self.buckets == "auto":
            raise ValueError("data.buckets=auto must be resolved to buckets (MovaDataModule.setup) first")
        if self.buckets:
            return [tuple(int(v) for v in b) for b in self.buckets]  # type: ignore[misc]
        return [(self.height, self.width, self.num_frames)]

    def batch_sizes(self) -> dict[Bucket, int] | int:
        """Per-bucket batch sizes, or the one `batch_size`."""
        return dict(self.bucket_batch) if self.bucket_batch else self.batch_size


# ----------------------------------------------------------------------------------------------- helpers


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of parts (stable across processes and Python runs)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolve_shards(spec: str | Path | Sequence[str | Path]) -> list[str]:
    """Expand a shard spec into a list of tar paths.

    Args:
        spec: A folder with `index.json`, a glob (`data/*.tar`), a brace pattern (`shard-{000000..000009}.tar`),
            or a list of any of these.

    Raises:
        FileNotFoundError: The spec matches no file.
    """
    if isinstance(spec, list | tuple):
        return [url for item in spec for url in resolve_shards(item)]
    spec = str(spec)
    if os.path.isdir(spec):
        from mova_train.data.schema import shard_urls

        return shard_urls(spec)
    if any(ch in spec for ch in "*?["):
        urls = sorted(glob.glob(spec))
    elif "{" in spec:
        import braceexpand

        urls = list(braceexpand.braceexpand(spec))
    else:
        urls = [spec]
    missing = [u for u in urls if not os.path.isfile(u)]
    if not urls or missing:
        raise FileNotFoundError(
            f"data.shards={spec!r} matches no shard file (missing: {missing[:3]}); "
            "give a folder with index.json, a glob or a list of .tar files"
        )
    return urls


def shard_counts(urls: Sequence[str]) -> list[int]:
    """Samples per shard, from the folder's `index.json` when it lists the shard, else by reading tar headers
    (an unreadable tar counts 0 samples, with a warning; the stream skips and counts it when it reads it).
    """
    from mova_train.data.schema import read_index

    counts: list[int] = []
    index_cache: dict[str, dict[str, int]] = {}
    for url in urls:
        folder, name = os.path.split(url)
        if folder not in index_cache:
            index_cache[folder] = {}
            if os.path.isfile(os.path.join(folder, "index.json")):
                index_cache[folder] = {s["name"]: int(s["count"]) for s in read_index(folder)["shards"]}
        if name in index_cache[folder]:
            counts.append(index_cache[folder][name])
            continue
        try:
            with tarfile.open(url) as tar:
                keys = {m.name.split(".", 1)[0] for m in tar.getmembers() if m.isreg()}
        except (tarfile.TarError, OSError) as err:
            logger.warning("%s is not a readable tar (%s): counted as empty", url, err)
            keys = set()
        counts.append(len(keys))
    return counts


def worker_slot() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker, (0, 1) in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class SkipCounter:
    """Counts samples seen and skipped (by reason) in one worker and enforces `max_skip_rate`."""

    def __init__(
        self, max_rate: float, min_samples: int, seen: int = 0, skipped: dict[str, int] | None = None
    ):
        self.max_rate = max_rate
        self.min_samples = min_samples
        self.seen = seen
        self.skipped: dict[str, int] = dict(skipped or {})

    @property
    def total_skipped(self) -> int:
        """Skipped samples over all reasons."""
        return sum(self.skipped.values())

    def add_seen(self, n: int = 1) -> None:
        """Count `n` samples entering the stream."""
        self.seen += n

    def skip(self, reason: str, where: str, detail: str) -> None:
        """Count one skipped sample and raise when the skip rate passes the threshold.

        Raises:
            RuntimeError: The skipped fraction is above `max_rate` after `min_samples` samples.
        """
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        logger.warning("skipping %s (%s): %s", where, reason, detail)
        rate = self.total_skipped / max(1, self.seen)
        if self.seen >= self.min_samples and rate > self.max_rate:
            raise RuntimeError(
                f"data skip rate {rate:.1%} ({self.total_skipped}/{self.seen}, by reason {self.skipped}) passed "
                f"data.max_skip_rate={self.max_rate:g}; last skipped: {where} ({reason}: {detail}). "
                "Fix or drop the bad clips (data_tools.inspect_shards), or raise data.max_skip_rate"
            )

    def state(self) -> dict[str, Any]:
        """Counters as plain data (carried with every batch)."""
        return {"seen": self.seen, "skipped": dict(self.skipped)}


# ------------------------------------------------------------------------------------------------ stages


def iter_shard(url: str) -> Iterator[dict[str, Any]]:
    """Stage 1: yield the samples of one tar shard as `{"__key__", "__url__", <ext>: bytes}`.

    Raises:
        tarfile.TarError, OSError: The file is not a readable tar (see `read_shard`, which skips and counts).
    """
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with open(url, "rb") as stream:
        files = tar_file_expander([{"url": url, "stream": stream}])
        yield from group_by_keys(files)


def read_shard(url: str, counter: SkipCounter, expected: int | None = None) -> Iterator[dict[str, Any]]:
    """`iter_shard` that survives a corrupt or truncated tar: the samples before the damage are yielded, the rest
    of the shard counts as one skipped sample (`corrupt_shard`) and the stream goes on with other shards.

    Args:
        url: The tar file.
        counter: Where the skip is counted.
        expected: Samples the shard should hold (its `index.json` count); a tar that ends early (truncated on a
            block boundary, which tar readers take for a normal end) is then damaged too.
    """
    n = 0
    try:
        for sample in iter_shard(url):
            n += 1
            yield sample
    except (tarfile.TarError, OSError, EOFError) as err:
        counter.add_seen()
        counter.skip("corrupt_shard", url, f"{type(err).__name__}: {err}; rebuild or re-copy this shard")
        return
    if expected is not None and n < expected:
        counter.add_seen()
        counter.skip("corrupt_shard", url, f"ends after {n} of {expected} samples (truncated?); re-copy it")


def parse_record(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample's JSON record (bytes or already parsed)."""
    raw = sample.get("json")
    if raw is None:
        raise DecodeError(f"{sample.get('__url__')}:{sample.get('__key__')}: no json member")
    return json.loads(raw) if isinstance(raw, bytes | str) else raw


def assign_bucket(
    record: dict[str, Any], buckets: Sequence[Bucket], fps: float, cached: bool
) -> Bucket | None:
    """Stage 2: the bucket a clip goes to, or None when it is too short for all of them.

    Raw mode: among buckets whose `num_frames / fps` fits in the clip's longest scene, the one nearest the clip's aspect
    ratio (log scale), then the most frames, then the most pixels. Cached mode: the clip's encoded size.
    """
    if cached:
        return (int(record["height"]), int(record["width"]), int(record["num_frames"]))
    duration = longest_scene(record) if "duration" in record else math.inf
    aspect = math.log(float(record.get("width", 1)) / float(record.get("height", 1)))
    fitting = [b for b in buckets if b[2] / fps <= duration + 1e-6]
    if not fitting:
        return None
    return min(fitting, key=lambda b: (round(abs(math.log(b[1] / b[0]) - aspect), 6), -b[2], -b[0] * b[1]))


def bucket_batches(
    samples: Iterable[tuple[Bucket, dict[str, Any]]], batch_size: int | Mapping[Bucket, int], flush: bool
) -> Iterator[tuple[Bucket, list[dict[str, Any]]]]:
    """Stage 3: emit `(bucket, samples)` whenever a bucket holds its batch size (one for all, or per bucket) of
    samples; flush leftovers at the end.
    """
    pending: dict[Bucket, list[dict[str, Any]]] = {}
    for bucket, sample in samples:
        group = pending.setdefault(bucket, [])
        group.append(sample)
        if len(group) == (batch_size if isinstance(batch_size, int) else batch_size[bucket]):
            yield bucket, pending.pop(bucket)
    if flush:
        for bucket in sorted(pending):
            yield bucket, pending[bucket]


def raw_stage(
    batch: list[dict[str, Any]],
    bucket: Bucket,
    cfg: StreamConfig,
    counter: SkipCounter,
    seeds: Sequence[int] | None,
) -> list[dict[str, Any]]:
    """Stage 4 (raw): decode each sample of a batch; failures are skipped and counted, never padded.

    Args:
        batch: Raw samples of one bucket.
        bucket: `(height, width, num_frames)`.
        cfg: Stream settings.
        counter: The worker's skip counter.
        seeds: Per-sample seeds of the random window start (inside one scene), or None for the fixed start of
            validation (0, or the first in-scene start of a clip with cuts).
    """
    height, width, num_frames = bucket
    out = []
    for j, sample in enumerate(batch):
        where = f"{sample.get('__url__')}:{sample.get('__key__')}"
        try:
            record = parse_record(sample)
            gen, start = None, 0.0
            if seeds is not None:
                gen = torch.Generator().manual_seed(seeds[j])
                start = random_start(record, num_frames, cfg.fps, gen)  # in one scene (None: no cuts)
            else:
                start = first_start(record, num_frames, cfg.fps)
                if start is None:
                    raise ClipTooShort(f"{where}: no scene holds {num_frames} frames at {cfg.fps:g} fps")
            item = decode_clip(
                sample["mp4"],
                record,
                num_frames=num_frames,
                fps=cfg.fps,
                height=height,
                width=width,
                start=start,
                generator=gen,
                resize_mode=cfg.resize_mode,
                sample_rate=cfg.sample_rate,
                missing_audio=cfg.missing_audio,
                output=cfg.video_output,
                audio_data=sample.get(AUDIO_KEY),
            )
        except (DecodeError, KeyError, ValueError) as err:
            counter.skip(getattr(err, "reason", "decode_error"), where, str(err))
            continue
        item["caption"] = record.get("caption", "")
        item["key"] = sample["__key__"]
        out.append(item)
    return out


def cached_stage(
    batch: list[dict[str, Any]], cfg: StreamConfig, counter: SkipCounter
) -> list[dict[str, Any]]:
    """Stage 4 (cached): read `latents.safetensors` (no decoding, no encoders); zero-pad text to `text_len`;
    rebuild the 4 mask channels of the first-frame condition (`cond` = `[4 + z, T', H', W']`).
    """
    from mova_train.data.cache import cond_with_mask, empty_latents_for, read_cached_sample

    out = []
    for sample in batch:
        where = f"{sample.get('__url__')}:{sample.get('__key__')}"
        try:
            record = parse_record(sample)
            cached = read_cached_sample(sample["latents.safetensors"], record, text_len=cfg.text_len)
            item = {
                "video_latents": cached["video_latents"].float(),
                "cond": cond_with_mask(cached["cond_latents"].float()),
                "audio_latents": cached["audio_latents"].float(),
                "context": cached["context"].float(),
                "text_lens": cached["text_lens"],
                "audio_mask": cached["audio_mask"],
            }
            empty = empty_latents_for(str(sample.get("__url__", "")), item["video_latents"].shape)
            if empty is not None:  # the t2av "no frame" latent of this size (None for caches made before it)
                item["empty_latents"] = empty
        except Exception as err:  # noqa: BLE001 - any unreadable sample is skipped and counted, never trained on
            counter.skip(getattr(err, "reason", "cache_error"), where, f"{type(err).__name__}: {err}")
            continue
        item["caption"] = record.get("caption", "")
        item["key"] = sample["__key__"]
        out.append(item)
    return out


_LIST_KEYS = ("caption", "key")
_DROP_KEYS = ("start", "frame_indices")


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stage 5: stack per-sample dicts into a batch (`[B, ...]` tensors, lists for captions and keys)."""
    batch: dict[str, Any] = {}
    for name in items[0]:
        if name in _DROP_KEYS:
            continue
        values = [item[name] for item in items]
        if name in _LIST_KEYS:
            batch[name] = values
        elif name == "audio_mask":
            batch[name] = torch.tensor(values, dtype=torch.bool)
        elif name == "text_lens":
            batch[name] = torch.tensor(values, dtype=torch.long)
        else:
            batch[name] = _stack(values)
    return batch


def _stack(values: list[torch.Tensor]) -> torch.Tensor:
    """`torch.stack`, straight into shared memory inside a DataLoader worker (as `default_collate` does), so
    the batch is not copied again on its way to the main process (a 193-frame 360p clip is 132 MB).
    """
    if torch.utils.data.get_worker_info() is None:
        return torch.stack(values)
    numel = sum(v.numel() for v in values)
    storage = (
        values[0].untyped_storage()._new_shared(numel * values[0].element_size(), device=values[0].device)
    )
    out = values[0].new(storage).resize_(len(values), *values[0].shape)
    return torch.stack(values, out=out)


def _decode_batch(
    cfg: StreamConfig,
    bucket: Bucket,
    group: list[dict[str, Any]],
    counter: SkipCounter,
    seeds: list[int] | None,
) -> list[dict[str, Any]]:
    if cfg.mode == "cached":
        return cached_stage(group, cfg, counter)
    return raw_stage(group, bucket, cfg, counter, seeds)


def _bucketed(
    samples: Iterable[dict[str, Any]], cfg: StreamConfig, counter: SkipCounter
) -> Iterator[tuple[Bucket, dict[str, Any]]]:
    """Stage 2 over a stream: count every sample as seen and drop (counting) those that fit no bucket."""
    buckets = cfg.bucket_list()
    for sample in samples:
        counter.add_seen()
        where = f"{sample.get('__url__')}:{sample.get('__key__')}"
        try:
            record = parse_record(sample)
            bucket = assign_bucket(record, buckets, cfg.fps, cfg.mode == "cached")
        except (DecodeError, KeyError, ValueError) as err:
            counter.skip("bad_record", where, str(err))
            continue
        if bucket is None:
            counter.skip("too_short", where, f"duration {record.get('duration')} s fits no bucket {buckets}")
            continue
        sample["json"] = record  # parsed once; the decode stages read it through `parse_record`
        yield bucket, sample


# ---------------------------------------------------------------------------------------------- streams


class TrainStream(IterableDataset):
    """Infinite, resampled, resumable training stream (one instance per rank; split over DataLoader workers).

    Each yielded batch carries `batch["_stream"] = {"worker", "batch", "seen", "skipped"}` so the main process can
    record how far every worker got (`start_batches`) and restore that position later.
    """

    def __init__(self, cfg: StreamConfig, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.start_batches: dict[int, int] = {}
        self.start_counters: dict[int, dict[str, Any]] = {}
        # DataLoader worker w plays stream worker (w + worker_offset) % num_workers: a resumed loader starts its
        # round robin at worker 0, so the offset makes it ask the stream that was next in line
        self.worker_offset = 0
        self.counts = shard_counts(cfg.shards)

    def _sources(self) -> list[list[int]]:
        """Shard indices of every source, in source order (one source when `shard_sources` is empty)."""
        if not self.cfg.shard_sources:
            return [list(range(len(self.cfg.shards)))]
        groups: dict[int, list[int]] = {}
        for k, source in enumerate(self.cfg.shard_sources):
            groups.setdefault(source, []).append(k)
        return [groups[source] for source in sorted(groups)]

    def _shard_samples(
        self, shards: list[int], rng: random.Random, counter: SkipCounter
    ) -> Iterator[dict[str, Any]]:
        """The samples of shards drawn with replacement from `shards` (indices into `cfg.shards`); never ends."""
        while True:
            k = shards[rng.randrange(len(shards))]
            yield from read_shard(self.cfg.shards[k], counter, self.counts[k])

    def _mixed_samples(
        self, sources: list[list[int]], rng: random.Random, counter: SkipCounter
    ) -> Iterator[dict[str, Any]]:
        """Each next sample from a source drawn with `source_weights` (own RNGs for the draw and every source)."""
        base = rng.getrandbits(63)
        draw = random.Random(derive_seed(base, "mix"))
        streams = [
            self._shard_samples(shards, random.Random(derive_seed(base, "source", i)), counter)
            for i, shards in enumerate(sources)
        ]
        choices = list(range(len(streams)))
        while True:
            yield next(streams[draw.choices(choices, weights=self.cfg.source_weights)[0]])

    def _raw_samples(self, rng: random.Random, counter: SkipCounter) -> Iterator[dict[str, Any]]:
        """Resampled shards (drawn with replacement; per source when mixing) through a shuffle buffer; never
        ends.
        """
        sources = self._sources()
        if len(sources) == 1:
            samples = self._shard_samples(sources[0], rng, counter)
        else:
            samples = self._mixed_samples(sources, rng, counter)
        buffer: list[dict[str, Any]] = []
        for sample in samples:
            if len(buffer) < self.cfg.shuffle_buffer:
                buffer.append(sample)
                continue
            k = rng.randrange(len(buffer))
            buffer[k], sample = sample, buffer[k]
            yield sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        loader_worker, num_workers = worker_slot()
        worker = (loader_worker + self.worker_offset) % num_workers
        cfg = self.cfg
        stream_seed = derive_seed(cfg.seed, cfg.epoch, self.rank, worker)
        rng = random.Random(stream_seed)
        skip_to = self.start_batches.get(worker, 0)
        restored = self.start_counters.get(worker)
        # while replaying, the counter only tracks; at the last replayed batch it takes the saved values, which
        # were recorded at exactly that point of the same deterministic sequence (decode skips included)
        counter = SkipCounter(math.inf if skip_to else cfg.max_skip_rate, cfg.skip_rate_min_samples)
        if skip_to:
            logger.info("rank %d worker %d resumes its stream at batch %d", self.rank, worker, skip_to)
        stream = _bucketed(self._raw_samples(rng, counter), cfg, counter)
        for index, (bucket, group) in enumerate(bucket_batches(stream, cfg.batch_sizes(), flush=False)):
            if index < skip_to:  # fast-forward without decoding
                if index == skip_to - 1:
                    if restored is not None:
                        counter.seen = int(restored["seen"])
                        counter.skipped = dict(restored["skipped"])
                    counter.max_rate = cfg.max_skip_rate
                continue
            seeds = [derive_seed(stream_seed, index, j) for j in range(len(group))]
            items = _decode_batch(cfg, bucket, group, counter, seeds)
            if not items:
                continue
            batch = collate(items)
            batch[STREAM_KEY] = {"split": "train", "worker": worker, "batch": index, **counter.state()}
            yield batch


class ValStream(IterableDataset):
    """Finite validation stream: every sample exactly once across ranks and workers, fixed window start 0.

    Global worker `g = rank * num_workers + worker` of `G` reads the contiguous slice `[g*N//G, (g+1)*N//G)` of the
    N samples in shard order, so slices differ by at most one sample and no shard needs to be split evenly.
    """

    def __init__(self, cfg: StreamConfig, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.counts = shard_counts(cfg.shards)

    def _slice(self, worker: int, num_workers: int, counter: SkipCounter) -> Iterator[dict[str, Any]]:
        total_workers = self.world_size * num_workers
        g = self.rank * num_workers + worker
        n = sum(self.counts)
        lo, hi = g * n // total_workers, (g + 1) * n // total_workers
        offset = 0
        for url, count in zip(self.cfg.shards, self.counts, strict=True):
            if offset + count > lo and offset < hi:
                reads_to_end = offset + count <= hi  # that worker can tell a shard that ends early
                for i, sample in enumerate(read_shard(url, counter, count if reads_to_end else None)):
                    if offset + i >= hi:
                        break  # the rest of the shard belongs to the next worker: don't read it
                    if offset + i >= lo:
                        yield sample
            offset += count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = worker_slot()
        cfg = self.cfg
        counter = SkipCounter(cfg.max_skip_rate, cfg.skip_rate_min_samples)
        stream = _bucketed(self._slice(worker, num_workers, counter), cfg, counter)
        for index, (bucket, group) in enumerate(bucket_batches(stream, cfg.batch_sizes(), flush=True)):
            items = _decode_batch(cfg, bucket, group, counter, None)
            if items:
                batch = collate(items)
                batch[STREAM_KEY] = {"split": "val", "worker": worker, "batch": index, **counter.state()}
                yield batch
