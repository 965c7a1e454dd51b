"""Encode raw shards into a latent cache (the library behind `python -m data_tools.encode`).

For every raw shard `shard-XXXXXX.tar` it writes a cache shard of the same name holding, per clip, the video
latents, the first-frame conditioning latents (the z channels only), the DAC audio latents and the text states
trimmed to the real token count, all bf16 in a `latents.safetensors` member (see `mova_train.data.cache`).

- Clips are decoded with `decode_clip` over the fixed window `[window_start, window_start + F / fps)`, and encoded
  in batches of `--batch-size` with the model's own components (`--checkpoint`) or random tiny ones (`--tiny-seed`).
- Several processes share the work: rank `r` of `W` (`--rank/--world-size`, default from `RANK`/`WORLD_SIZE`)
  encodes raw shards `r, r + W, ...`. Each finished shard gets a `.done` marker; the rank that finds every
  marker present writes `index.json` (fingerprint, its inputs and counts). Until then the cache is unusable.
- `--resume` keeps cache shards whose marker matches the fingerprint and the raw shard's size.
- Clips that fail to decode are skipped and counted by reason in the markers and `index.json`.
- `empty_latents.safetensors` holds the latent of an all-zero clip of the encoded size (t2av's "no frame").

Call `encode_cache(shards, out_dir, encoders, components_hashes, settings, ...)` with encoders from
`load_checkpoint_encoders(folder, ...)` (and `checkpoint_hashes(folder)`) or in-memory ones (`module_hashes`).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mova_train.data.buckets import Bucket, plan_buckets
from mova_train.data.cache import (
    CACHE_KIND,
    CACHE_VERSION,
    CacheSettings,
    cache_fingerprint,
    caption_hash,
    component_hash,
    fingerprint_inputs,
    latents_checksum,
    size_key,
    write_empty_latents,
    write_json_atomic,
)
from mova_train.data.decode import ClipTooShort, DecodeError, decode_clip
from mova_train.data.options import AUTO_BUCKETS, DataOptions
from mova_train.data.pipeline import assign_bucket, iter_shard, parse_record, resolve_shards, shard_counts
from mova_train.data.schema import AUDIO_KEY, LATENTS_KEY, RECORD_KEY, VIDEO_KEY, add_member
from mova_train.data.windows import first_start, window_starts

logger = logging.getLogger(__name__)

MARKER_SUFFIX = ".done"


# ------------------------------------------------------------------------------------------------ encoders


def load_checkpoint_encoders(checkpoint: str | Path, dtype: torch.dtype, device: torch.device) -> Any:
    """Load the video VAE, DAC and text encoder of a MOVA checkpoint folder into a `MovaEncoders`.

    The DAC is always loaded in fp32 (upstream computes it in fp32 whatever the pipeline dtype); `dtype` applies
    to the video VAE and the text encoder.
    """
    from mova_train.codecs.encoders import MovaEncoders
    from mova_train.codecs.text_encoder import MovaTextEncoder
    from mova_train.models.checkpoint import load_component

    root = Path(checkpoint)
    if not root.is_dir():
        raise FileNotFoundError(
            f"--checkpoint {root} is not a folder; give a MOVA checkpoint (e.g. MOVA-360p)"
        )
    video_vae = load_component(root, "video_vae", dtype=dtype, device=device)
    audio_vae = load_component(root, "audio_vae", dtype=torch.float32, device=device)
    text_encoder = MovaTextEncoder.from_pretrained(root / "text_encoder", root / "tokenizer", dtype=dtype)
    return MovaEncoders(video_vae=video_vae, audio_vae=audio_vae, text_encoder=text_encoder.to(device))


def check_dac_rate(encoders: Any, sample_rate: int, where: str = "the audio VAE (DAC)") -> None:
    """Refuse a `--sample-rate` the DAC does not run at (its latents would have the wrong length, silently).

    Args:
        encoders: A `MovaEncoders` (its `audio_vae.sample_rate` is compared).
        sample_rate: The requested rate (`--sample-rate`).
        where: Names the DAC's config in the message (e.g. `CKPT/audio_vae/config.json`).

    Raises:
        ValueError: naming both rates, the config field and the fix.
    """
    dac_rate = getattr(getattr(encoders, "audio_vae", None), "sample_rate", None)
    if dac_rate is not None and int(dac_rate) != int(sample_rate):
        raise ValueError(
            f"--sample-rate {sample_rate} but {where} runs at {dac_rate} Hz (field sample_rate): the audio "
            f"latents would have the wrong length; pass --sample-rate {dac_rate} (and train with "
            f"data.sample_rate={dac_rate})"
        )


def checkpoint_hashes(checkpoint: str | Path) -> dict[str, str]:
    """Component hashes of a checkpoint folder (safetensors headers + sizes, configs and tokenizer in full)."""
    root = Path(checkpoint)
    return {
        "video_vae": component_hash(root / "video_vae"),
        "audio_vae": component_hash(root / "audio_vae"),
        "text_encoder": component_hash([root / "text_encoder", root / "tokenizer"]),
    }


def module_hashes(encoders: Any) -> dict[str, str]:
    """Component hashes of an in-memory `MovaEncoders` (state-dict tensors, configs, tokenizer vocabulary)."""
    names = ("video_vae", "audio_vae", "text_encoder")
    missing = [n for n in names if getattr(encoders, n, None) is None]
    if missing:
        raise ValueError(f"encoding a latent cache needs every encoder; missing {missing}")
    return {n: component_hash(getattr(encoders, n)) for n in names}


# ------------------------------------------------------------------------------------------------ writing


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + MARKER_SUFFIX)


def _read_marker(path: Path) -> dict[str, Any] | None:
    marker = _marker_path(path)
    if not marker.is_file() or not path.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return data if data.get("bytes") == path.stat().st_size else None


def _readable_samples(url: str, skipped: dict[str, list[dict[str, str]]]) -> Iterator[dict[str, Any]]:
    """The samples of a raw shard up to any damage; a corrupt tail is listed under `corrupt_shard`."""
    try:
        yield from iter_shard(url)
    except (tarfile.TarError, OSError, EOFError) as err:
        detail = f"{type(err).__name__}: {err}; rebuild or re-copy this shard"
        skipped.setdefault("corrupt_shard", []).append({"key": "", "shard": Path(url).name, "detail": detail})
        logger.warning("%s is damaged, the rest of it is skipped: %s", url, detail)


class ShardEncoder:
    """Decodes and encodes the clips of raw shards into cache shards with fixed settings.

    Args:
        encoders: A `MovaEncoders` with all three components, already on `device` in `dtype`.
        settings: Decode/encode settings (part of the fingerprint).
        fingerprint: The cache fingerprint written into every record.
        batch_size: Clips per encoder call.
        device: Where the encoders run.
        dtype: Encoder compute dtype (inputs are cast to it).
        buckets: The `(height, width, num_frames)` buckets of `settings.buckets="auto"` (each clip is encoded at
            the one `assign_bucket` gives it), or None for the settings' single size.
    """

    def __init__(
        self,
        encoders: Any,
        settings: CacheSettings,
        fingerprint: str,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        buckets: Sequence[Bucket] | None = None,
    ):
        self.encoders = encoders
        self.settings = settings
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.buckets = list(buckets) if buckets else None

    def windows(self, record: dict[str, Any]) -> tuple[Bucket, list[float]]:
        """The clip's bucket and its window starts (seconds), none across a scene cut.

        Raises:
            ClipTooShort: No bucket or no scene holds a window.
        """
        s = self.settings
        where = record.get("source_path", "<clip>")
        bucket: Bucket | None = (s.height, s.width, s.num_frames)
        if self.buckets:
            bucket = assign_bucket(record, self.buckets, s.fps, cached=False)
            if bucket is None:
                raise ClipTooShort(
                    f"{where}: lasts {record.get('duration')} s, fits no bucket {self.buckets}"
                )
        if s.windows is None:
            start = first_start(record, bucket[2], s.fps, s.window_start)
            starts = [] if start is None else [start]
        else:
            starts = window_starts(record, bucket[2], s.fps, s.windows)
        if not starts:
            raise ClipTooShort(f"{where}: no scene holds {bucket[2]} frames at {s.fps:g} fps")
        return bucket, starts

    def _decode(self, sample: dict[str, Any], bucket: Bucket, start: float, index: int) -> dict[str, Any]:
        s = self.settings
        record = parse_record(sample)
        if VIDEO_KEY not in sample:
            raise DecodeError(f"{sample.get('__url__')}:{sample.get('__key__')}: no {VIDEO_KEY} member")
        height, width, num_frames = bucket
        item = decode_clip(
            sample[VIDEO_KEY],
            record,
            num_frames=num_frames,
            fps=s.fps,
            height=height,
            width=width,
            start=start,
            resize_mode=s.resize_mode,
            sample_rate=s.sample_rate,
            missing_audio=s.missing_audio,
            audio_data=sample.get(AUDIO_KEY),
        )
        item["record"] = record
        item["bucket"] = bucket
        item["window_index"] = index
        item["clip_key"] = sample["__key__"]
        # one window keeps the clip's key; several get `<key>_wNNN` (a webdataset key, no dot)
        item["key"] = sample["__key__"] if s.windows is None else f"{sample['__key__']}_w{index:03d}"
        return item

    @torch.no_grad()
    def encode_batch(self, items: list[dict[str, Any]]) -> list[tuple[str, bytes, bytes]]:
        """Encode decoded clips; return `(key, latents.safetensors bytes, json bytes)` per clip."""
        from safetensors.torch import save

        captions = [str(it["record"].get("caption", "")) for it in items]
        batch = {
            "video": torch.stack([it["video"] for it in items]).to(self.device, self.dtype),
            "first_frame": torch.stack([it["first_frame"] for it in items]).to(self.device, self.dtype),
            # the DAC runs in fp32 (as upstream's pipeline does), see `encode_cache`
            "audio": torch.stack([it["audio"] for it in items]).to(self.device, torch.float32),
            "caption": captions,
        }
        out = self.encoders.encode_batch(batch)
        _, mask = self.encoders.text_encoder.tokenize(captions)
        n_tokens = mask.sum(dim=1).tolist()
        z = out["video_latents"].shape[1]
        results = []
        for i, it in enumerate(items):
            cond = out["cond"][i]
            tensors = {
                "video_latents": out["video_latents"][i],
                "cond_latents": cond[cond.shape[0] - z :],  # drop the 4 mask channels (rebuilt when read)
                "audio_latents": out["audio_latents"][i],
                "context": out["context"][i, : int(n_tokens[i])],
            }
            tensors = {
                k: v.detach().to("cpu", torch.bfloat16).contiguous().clone() for k, v in tensors.items()
            }
            latents = save(tensors)
            results.append((it["key"], latents, self._record(it, int(n_tokens[i]), tensors, latents)))
        return results

    def _record(
        self, item: dict[str, Any], n_tokens: int, tensors: Mapping[str, torch.Tensor], latents: bytes
    ) -> bytes:
        s = self.settings
        record = dict(item["record"])
        for name in ("num_frames", "height", "width"):
            if name in record:
                record[f"source_{name}"] = record[name]
        caption = str(record.get("caption", ""))
        height, width, num_frames = item["bucket"]
        record.update(
            num_frames=num_frames,
            height=height,
            width=width,
            window_start=item["start"],
            window_index=item["window_index"],
            clip_key=item["clip_key"],
            fingerprint=self.fingerprint,
            latents_sha256=latents_checksum(latents),
            n_tokens=n_tokens,
            text_len=s.text_len,
            audio_mask=bool(item["audio_mask"]),
            caption_sha256=caption_hash(caption),
            key=item["key"],
            cache={
                **s.to_dict(),
                "fingerprint": self.fingerprint,
                "start": item["start"],
                "shapes": {k: list(v.shape) for k, v in tensors.items()},
            },
        )
        return json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8")

    def _batches(self, url: str, skipped: dict[str, list[dict[str, str]]], bar: Any) -> Iterator[list[dict]]:
        """Decoded windows in batches of one bucket, decoded one at a time; a failing window is skipped and
        counted under its key (a clip that fits no window: under the clip's key).
        """
        pending: dict[Bucket, list[dict[str, Any]]] = {}

        def skip(key: str, err: Exception) -> None:
            reason = getattr(err, "reason", "decode_error")
            skipped.setdefault(reason, []).append({"key": key, "shard": Path(url).name, "detail": str(err)})
            logger.warning("skip %s:%s (%s): %s", url, key, reason, err)

        for sample in _readable_samples(url, skipped):
            key = str(sample.get("__key__"))
            bar.update(1)
            try:
                bucket, starts = self.windows(parse_record(sample))
            except (DecodeError, KeyError, ValueError) as err:
                skip(key, err)
                continue
            for i, start in enumerate(starts):
                try:
                    item = self._decode(sample, bucket, start, i)
                except (DecodeError, KeyError, ValueError) as err:
                    skip(key if self.settings.windows is None else f"{key}_w{i:03d}", err)
                    continue
                group = pending.setdefault(bucket, [])
                group.append(item)
                if len(group) == self.batch_size:
                    yield pending.pop(bucket)
        for bucket in sorted(pending):
            yield pending[bucket]

    def encode_shard(self, url: str, out_path: Path, bar: Any) -> dict[str, Any]:
        """Encode one raw shard into `out_path` (written atomically) and its `.done` marker; return the marker."""
        skipped: dict[str, list[dict[str, str]]] = {}
        count = 0
        tmp = out_path.with_name(f"{out_path.name}.{os.getpid()}.tmp")
        try:
            with tarfile.open(tmp, "w") as tar:
                for items in self._batches(url, skipped, bar):
                    for key, latents, record in self.encode_batch(items):
                        add_member(tar, f"{key}.{LATENTS_KEY}", latents)
                        add_member(tar, f"{key}.{RECORD_KEY}", record)
                        count += 1
            os.replace(tmp, out_path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a crashed run leaves no partial shard behind
            raise
        marker = {
            "fingerprint": self.fingerprint,
            "name": out_path.name,
            "count": count,
            "bytes": out_path.stat().st_size,
            "source": str(url),
            "source_bytes": os.path.getsize(url),
            "skipped": skipped,
        }
        write_json_atomic(_marker_path(out_path), marker)
        return marker


# ------------------------------------------------------------------------------------------------ driver


def cache_buckets(settings: CacheSettings, urls: Sequence[str]) -> list[Bucket] | None:
    """The buckets of `settings.buckets="auto"`, proposed from every raw shard's records (the same on every rank),
    or None for the settings' single size.
    """
    if settings.buckets is None:
        return None
    if settings.buckets != AUTO_BUCKETS:
        raise ValueError(f"--buckets {settings.buckets!r}: only auto is supported (or leave it out)")
    sizes = {
        name: getattr(settings, name) for name in ("num_frames", "fps", "height", "width", "sample_rate")
    }
    lengths = settings.bucket_lengths or DataOptions.bucket_lengths
    options = DataOptions(buckets=AUTO_BUCKETS, bucket_lengths=lengths, **sizes).validate()
    plan = plan_buckets(options, urls, cached=False)
    assert plan is not None
    logger.info("encoding at the automatic buckets:\n%s", plan.table())
    return plan.buckets


def _write_index(
    out_dir: Path, urls: Sequence[str], fingerprint: str, inputs: dict[str, Any], shards_spec: str
) -> dict[str, Any] | None:
    """Write `index.json` once every shard has a current marker; return it (None while ranks are still busy)."""
    markers = []
    for url in urls:
        marker = _read_marker(out_dir / Path(url).name)
        if marker is None or marker.get("fingerprint") != fingerprint:
            return None
        markers.append(marker)
    skipped: dict[str, list[dict[str, str]]] = {}
    for marker in markers:
        for reason, entries in marker["skipped"].items():
            skipped.setdefault(reason, []).extend(entries)
    index = {
        "version": CACHE_VERSION,
        "kind": CACHE_KIND,
        "fingerprint": fingerprint,
        "inputs": inputs,
        "source": str(shards_spec),
        # empty cache shards stay on disk (for resume) but are not listed: a training stream must not draw them
        "shards": [
            {"name": m["name"], "count": m["count"], "bytes": m["bytes"]} for m in markers if m["count"]
        ],
        "total": sum(m["count"] for m in markers),
        "skipped": {reason: skipped[reason] for reason in sorted(skipped)},
        "skipped_total": sum(len(v) for v in skipped.values()),
    }
    write_json_atomic(out_dir / "index.json", index)
    return index


def encode_cache(
    shards: str | Path | Sequence[str],
    out_dir: str | Path,
    encoders: Any,
    components_hashes: Mapping[str, str],
    settings: CacheSettings,
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    rank: int = 0,
    world_size: int = 1,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode this rank's share of the raw shards into cache shards.

    Args:
        shards: Raw shards: a folder with `index.json`, a glob or a list (see `resolve_shards`).
        out_dir: Cache folder (created).
        encoders: `MovaEncoders` with all components (moved to `device`/`dtype` here).
        components_hashes: `{"video_vae", "audio_vae", "text_encoder"}` hashes (part of the fingerprint).
        settings: Decode/encode settings; `compute_dtype` must name `dtype`.
        batch_size: Clips per encoder call.
        device: Where the encoders run.
        dtype: Encoder compute dtype.
        rank: This process's rank; it encodes raw shards `rank, rank + world_size, ...`.
        world_size: Number of processes sharing the work.
        resume: Keep cache shards already finished with the same fingerprint.
        progress: Show a tqdm bar.

    Returns:
        Summary: `fingerprint`, `shards` (this rank's names), `encoded`/`reused` shard names, `count`,
        `skipped` (by reason), `index` (the written `index.json`, or None while other ranks are unfinished).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"--rank {rank} must be in [0, --world-size {world_size})")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    check_dac_rate(encoders, settings.sample_rate)
    urls = resolve_shards(shards if isinstance(shards, list | tuple) else str(shards))
    names = [Path(u).name for u in urls]
    if len(set(names)) != len(names):
        raise ValueError(
            f"raw shards {shards} have repeated file names; encode each folder into its own cache"
        )
    out_dir = Path(out_dir)
    if any(Path(u).resolve().parent == out_dir.resolve() for u in urls):
        raise ValueError(f"--out {out_dir} holds the raw shards; give a separate cache folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if (settings.num_frames - 1) % 4:
        raise ValueError(f"--num-frames must be 4k + 1 (e.g. 193), got {settings.num_frames}")

    fingerprint = cache_fingerprint(components_hashes, settings)
    inputs = fingerprint_inputs(components_hashes, settings)
    device = torch.device(device)
    encoders = encoders.to(device=device, dtype=dtype)
    encoders.audio_vae.float()  # DAC latents in fp32 whatever `dtype` (bf16 DAC latents differ from upstream's)
    buckets = cache_buckets(settings, urls)
    worker = ShardEncoder(encoders, settings, fingerprint, batch_size, device, dtype, buckets)

    mine = list(range(rank, len(urls), world_size))
    counts = shard_counts([urls[i] for i in mine])
    summary: dict[str, Any] = {
        "fingerprint": fingerprint,
        "shards": [names[i] for i in mine],
        "encoded": [],
        "reused": [],
        "count": 0,
        "skipped": {},
    }
    logger.info(
        "rank %d/%d: %d of %d raw shards, fingerprint %s", rank, world_size, len(mine), len(urls), fingerprint
    )
    with tqdm(total=sum(counts), desc=f"encode rank {rank}", unit="clip", disable=not progress) as bar:
        for i, n in zip(mine, counts, strict=True):
            out_path = out_dir / names[i]
            marker = _read_marker(out_path)
            done = (
                marker is not None
                and marker.get("fingerprint") == fingerprint
                and marker.get("source_bytes") == os.path.getsize(urls[i])
            )
            if resume and done:
                assert marker is not None
                summary["reused"].append(names[i])
                bar.update(n)
            else:
                if resume and marker is not None:
                    logger.info("%s: cached with other settings or another raw shard; re-encoding", out_path)
                _marker_path(out_path).unlink(missing_ok=True)
                marker = worker.encode_shard(urls[i], out_path, bar)
                summary["encoded"].append(names[i])
            summary["count"] += marker["count"]
            for reason, entries in marker["skipped"].items():
                summary["skipped"][reason] = summary["skipped"].get(reason, 0) + len(entries)
    empty = {}
    for height, width, frames in buckets or [(settings.height, settings.width, settings.num_frames)]:
        with torch.no_grad():  # the t2av "no frame" latent of each size (also when every shard was reused)
            empty[size_key(frames, height, width)] = encoders.video_vae.encode_empty(frames, height, width)[0]
    write_empty_latents(out_dir, empty, fingerprint)
    summary["buckets"] = buckets
    summary["index"] = _write_index(out_dir, urls, fingerprint, inputs, str(shards))
    if summary["index"] is None:
        logger.info("rank %d done; index.json is written by the last rank to finish", rank)
    else:
        skipped = {k: len(v) for k, v in summary["index"]["skipped"].items()}
        logger.info(
            "wrote %s: %d clips, skipped %s", out_dir / "index.json", summary["index"]["total"], skipped
        )
    return summary
