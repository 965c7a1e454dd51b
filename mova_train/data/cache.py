"""The latent cache: fingerprints, staleness checks and reading one cached sample.

`python -m data_tools.encode` turns raw shards into cache shards (one tar sample per clip, same `__key__`):

- `latents.safetensors`: bf16 tensors `video_latents` `[z, T', H', W']` (normalized posterior mean),
  `cond_latents` `[z, T', H', W']` (normalized first-frame conditioning latent; the 4 mask channels are rebuilt
  by `cond_with_mask`), `audio_latents` `[Ca, L]` (raw DAC posterior mean) and `context` `[n_tokens, D]`
  (trimmed to the real token count; `pad_text` zero-pads it back to `text_len` rows).
- `json`: the raw record with `num_frames`/`height`/`width` replaced by the encoded size (the source values move
  to `source_*`), plus `fingerprint`, `latents_sha256` (checked on every read), `n_tokens`, `text_len`, `audio_mask`, `caption_sha256` and a `cache` object
  with every encode setting. The top-level `fps`/`sample_rate` stay the source's (the record still validates as a
  `ClipRecord`); the encoded ones are in `cache`.

`empty_latents.safetensors` holds, per encoded size, the normalized latent of an all-zero clip (the "no frame"
condition of t2av training; `read_empty_latents`), and the pipeline adds it to cached batches as `empty_latents`.

The cache folder's `index.json` holds the fingerprint and its inputs (component hashes and settings), so a run
with other settings or other encoder weights is refused with a message naming what changed (`check_cache`).
Captions are fingerprinted per sample (`caption_sha256`) and checked at read time when a caption is given.

This module loads no encoder: cached training needs none of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mova_train.data.schema import CACHE_KIND

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: text states named `context`, per-sample `latents_sha256`
MASK_CHANNELS = 4  # first-frame mask channels in front of the cond latent (docs/model.md §2.5)
TENSOR_NAMES = ("video_latents", "cond_latents", "audio_latents", "context")
RERUN_HINT = (
    "re-run `python -m data_tools.encode --shards <raw shards> --out {cache}` with the current settings"
)
_SMALL_FILE = 64 << 20  # files up to this size are hashed in full (configs, tokenizers)


class StaleCacheError(RuntimeError):
    """The latent cache was made with other settings, weights or captions than the ones requested."""


class CorruptCacheError(RuntimeError):
    """A cached sample's bytes are not the ones the encoder wrote (checksum mismatch, non-finite values)."""

    reason = "corrupt_cache"


def latents_checksum(latents: bytes) -> str:
    """sha256 hex of a `latents.safetensors` member (stored in the record as `latents_sha256`)."""
    return hashlib.sha256(latents).hexdigest()


@dataclass(frozen=True)
class CacheSettings:
    """Everything besides the encoder weights and the captions that changes what the cache holds.

    Attributes:
        num_frames: Frames per clip `F` (4k + 1).
        height: Frame height `H`.
        width: Frame width `W`.
        fps: Target frame rate.
        sample_rate: Audio rate in Hz fed to the DAC.
        window_start: Fixed window start in seconds.
        resize_mode: "crop" or "stretch" (see `decode_clip`).
        missing_audio: "skip" or "silence" (which clips exist, and their `audio_mask`).
        text_len: Rows of the text encoder output (tokens beyond it are truncated).
        compute_dtype: "bf16" or "fp32", the dtype the encoders ran in.
        buckets: None (every clip at `height x width x num_frames`) or "auto": each clip at its bucket of
            `mova_train.data.buckets.propose_buckets` over the raw shards (budget `height * width` pixels, at most
            `num_frames` frames).
        bucket_lengths: Frame-count tiers of `buckets="auto"`.
        windows: None (one window at `window_start`), "stride", "slide" or a number of windows per clip
            (`mova_train.data.windows.window_starts`); no window spans a scene cut.
    """

    num_frames: int
    height: int
    width: int
    fps: float
    sample_rate: int = 48000
    window_start: float = 0.0
    resize_mode: str = "crop"
    missing_audio: str = "skip"
    text_len: int = 512
    compute_dtype: str = "fp32"
    buckets: str | None = None
    bucket_lengths: int | None = None
    windows: str | int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable dict (the optional `buckets`/`bucket_lengths`/`windows` only when set, so that
        caches made before they existed keep their fingerprint).
        """
        out = dataclasses.asdict(self)
        for name in _OPTIONAL_SETTINGS:
            if out[name] is None:
                del out[name]
        return out


_OPTIONAL_SETTINGS = ("buckets", "bucket_lengths", "windows")


# ------------------------------------------------------------------------------------------------ hashing


def _update_json(h: Any, value: Any) -> None:
    h.update(json.dumps(value, sort_keys=True, default=str).encode("utf-8"))


def _hash_tensor(h: Any, name: str, tensor: torch.Tensor) -> None:
    t = tensor.detach().to("cpu").contiguous()
    _update_json(h, [name, str(t.dtype), list(t.shape)])
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _config_dict(module: torch.nn.Module) -> dict[str, Any]:
    """Config values of a module that are not in its state dict (e.g. the VAE's latent mean/std)."""
    out: dict[str, Any] = {}
    cfg = getattr(module, "cfg", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        out["cfg"] = cfg.to_dict()
    inner = getattr(getattr(module, "encoder", None), "config", None)
    if inner is not None and hasattr(inner, "to_dict"):
        drop = ("transformers_version", "torch_dtype", "dtype")
        out["config"] = {k: v for k, v in inner.to_dict().items() if not k.startswith("_") and k not in drop}
    if hasattr(module, "max_length"):
        out["max_length"] = int(module.max_length)
    tokenizer = getattr(module, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "get_vocab"):
        vocab = sorted(tokenizer.get_vocab().items())
        out["tokenizer"] = [type(tokenizer).__name__, hashlib.sha256(repr(vocab).encode("utf-8")).hexdigest()]
    return out


def _hash_file(h: Any, path: Path, rel: str) -> None:
    size = path.stat().st_size
    _update_json(h, [rel, size])
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            # header (names, dtypes, shapes, offsets) + size: cheap for multi-GB shards
            head = f.read(8)
            if len(head) == 8:
                (n,) = struct.unpack("<Q", head)
                h.update(f.read(min(n, size - 8)))
        elif size <= _SMALL_FILE:
            h.update(f.read())
        else:
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read())


def component_hash(component: torch.nn.Module | str | Path | Sequence[Any]) -> str:
    """Content hash of one encoder component.

    Args:
        component: A module (hash of every state-dict tensor's name, dtype, shape and bytes, plus its config and
            tokenizer vocabulary), a checkpoint folder (hash of every file: safetensors headers + sizes, small
            files in full), or a sequence of these (e.g. `[text_encoder_dir, tokenizer_dir]`).

    Returns:
        32 hex digits.

    Raises:
        FileNotFoundError: A folder does not exist.
    """
    h = hashlib.sha256()
    if isinstance(component, torch.nn.Module):
        _update_json(h, ["module", type(component).__name__, _config_dict(component)])
        for name, tensor in sorted(component.state_dict().items()):
            _hash_tensor(h, name, tensor)
    elif isinstance(component, str | Path):
        folder = Path(component)
        if not folder.exists():
            raise FileNotFoundError(f"component folder {folder} not found; check --checkpoint")
        files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
        _update_json(h, ["folder", folder.name])
        for path in files:
            rel = path.relative_to(folder).as_posix() if path != folder else path.name
            if any(part.startswith(".") for part in Path(rel).parts):
                continue
            _hash_file(h, path, rel)
    else:
        _update_json(h, ["group", len(component)])
        for part in component:
            h.update(component_hash(part).encode("ascii"))
    return h.hexdigest()[:32]


def fingerprint_inputs(
    components_hashes: Mapping[str, str], settings: CacheSettings | Mapping[str, Any]
) -> dict[str, Any]:
    """The dict a fingerprint is computed from (stored as `inputs` in the cache's `index.json`)."""
    values = settings.to_dict() if isinstance(settings, CacheSettings) else dict(settings)
    return {
        "version": CACHE_VERSION,
        "components": dict(sorted(components_hashes.items())),
        "settings": values,
    }


def cache_fingerprint(
    components_hashes: Mapping[str, str], settings: CacheSettings | Mapping[str, Any]
) -> str:
    """Fingerprint of a latent cache: sha256 (32 hex digits) of the component hashes and the settings.

    Args:
        components_hashes: `{"video_vae": ..., "audio_vae": ..., "text_encoder": ...}` from `component_hash`.
        settings: The `CacheSettings` (or its dict).
    """
    blob = json.dumps(fingerprint_inputs(components_hashes, settings), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def caption_hash(caption: str) -> str:
    """sha256 hex of the caption's UTF-8 bytes (stored per sample as `caption_sha256`)."""
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------ checking


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    return a == b


def describe_changes(cached: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Human-readable differences `"<name> <cache value> != <requested value>"` between two `inputs` dicts.

    Only names present in `expected` are compared, so a caller may check a subset (e.g. settings only).
    """
    changes = []
    for name, want in expected.get("settings", {}).items():
        have = cached.get("settings", {}).get(name, "<absent>")
        if not _same(have, want):
            changes.append(f"{name} {have} != {want}")
    for name, want in expected.get("components", {}).items():
        have = cached.get("components", {}).get(name, "<absent>")
        if have != want:
            changes.append(f"component {name} weights {str(have)[:12]} != {str(want)[:12]}")
    if "version" in expected and cached.get("version") != expected["version"]:
        changes.append(f"cache version {cached.get('version')} != {expected['version']}")
    return changes


def read_cache_index(cache_dir: str | Path) -> dict[str, Any]:
    """Read the cache folder's `index.json`.

    Raises:
        StaleCacheError: It is missing (encoding unfinished), unreadable or not a latent-cache index.
    """
    path = Path(cache_dir) / "index.json"
    if not path.is_file():
        raise StaleCacheError(
            f"{path} not found: the latent cache is missing or unfinished (every rank must complete); "
            + RERUN_HINT.format(cache=cache_dir)
            + " --resume"
        )
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise StaleCacheError(
            f"{path} is not valid JSON ({err}); " + RERUN_HINT.format(cache=cache_dir)
        ) from err
    if index.get("kind") != CACHE_KIND:
        raise StaleCacheError(
            f"{path}: field 'kind' is {index.get('kind')!r}, not {CACHE_KIND!r}: this is not a latent cache "
            "(raw shards need data.mode=raw)"
        )
    if index.get("version") != CACHE_VERSION:
        raise StaleCacheError(
            f"{path}: cache format version {index.get('version')!r}, this mova_train reads {CACHE_VERSION}; "
            + RERUN_HINT.format(cache=cache_dir)
        )
    return index


def check_cache(
    cache_dir: str | Path,
    expected_fingerprint: str | None = None,
    *,
    settings: CacheSettings | Mapping[str, Any] | None = None,
    components: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Refuse a stale latent cache with a message naming what changed.

    Args:
        cache_dir: The cache folder (with `index.json`).
        expected_fingerprint: The fingerprint of the current run (`cache_fingerprint`), or None to check only the
            given `settings`/`components`.
        settings: Current settings (all or a subset, e.g. `{"num_frames": 33}` from a cached datamodule, which
            loads no encoder); used to compare and to name the differences.
        components: Current component hashes (all or a subset).

    Returns:
        The cache's `index.json` dict.

    Raises:
        StaleCacheError: The fingerprint or any given value differs, e.g.
            `"num_frames 17 != 33 (cache != requested): re-run data_tools.encode ..."`.
    """
    index = read_cache_index(cache_dir)
    cached_inputs = index.get("inputs", {})
    expected: dict[str, Any] = {}
    if settings is not None:
        expected["settings"] = settings.to_dict() if isinstance(settings, CacheSettings) else dict(settings)
    if components is not None:
        expected["components"] = dict(components)
    changes = describe_changes(cached_inputs, expected)
    fingerprint_differs = (
        expected_fingerprint is not None and index.get("fingerprint") != expected_fingerprint
    )
    if changes or fingerprint_differs:
        what = (
            "; ".join(changes)
            if changes
            else (
                f"fingerprint {index.get('fingerprint')} != {expected_fingerprint} "
                f"(cache made with {json.dumps(cached_inputs, sort_keys=True)})"
            )
        )
        raise StaleCacheError(
            f"latent cache {cache_dir} is stale: {what} (cache != requested): "
            + RERUN_HINT.format(cache=cache_dir)
            + ", or point data.shards at a cache made with these settings"
        )
    return index


# ------------------------------------------------------------------------------------------------ reading


def pad_text(embeds: torch.Tensor, text_len: int) -> torch.Tensor:
    """Zero-pad (or truncate) trimmed text states back to `text_len` rows, as the text encoder outputs them.

    Args:
        embeds: `[n, D]` (n = real token count).
        text_len: Output rows.

    Returns:
        `[text_len, D]`, rows `n..` zero.
    """
    if embeds.ndim != 2:
        raise ValueError(f"pad_text expects text states [n, D], got shape {tuple(embeds.shape)}")
    n = min(embeds.shape[0], text_len)
    out = embeds.new_zeros(text_len, embeds.shape[1])
    out[:n] = embeds[:n]
    return out


def cond_with_mask(cond_latents: torch.Tensor) -> torch.Tensor:
    """Rebuild the first-frame conditioning `y` from the cached latent (docs/model.md §2.5).

    Args:
        cond_latents: `[z, T', H', W']` or `[B, z, T', H', W']`.

    Returns:
        `[4 + z, T', H', W']` (or batched): 4 mask channels, 1 on latent frame 0 and 0 after, then the latent.
    """
    batched = cond_latents.ndim == 5
    x = cond_latents if batched else cond_latents.unsqueeze(0)
    if x.ndim != 5:
        raise ValueError(f"cond_latents must be [z, T', H', W'] or [B, z, T', H', W'], got {tuple(x.shape)}")
    mask = x.new_zeros(x.shape[0], MASK_CHANNELS, *x.shape[2:])
    mask[:, :, 0] = 1.0
    y = torch.cat([mask, x], dim=1)
    return y if batched else y[0]


def read_cached_sample(
    latents: bytes,
    record: Mapping[str, Any] | bytes | None = None,
    *,
    text_len: int | None = None,
    caption: str | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """Read one cache sample.

    Args:
        latents: The `latents.safetensors` member bytes.
        record: The `json` member (bytes or parsed), needed for the caption/fingerprint checks and metadata.
        text_len: Zero-pad `context` to this many rows (None keeps the trimmed `[n_tokens, D]`).
        caption: A caption override: refused (`StaleCacheError`) unless it hashes to the record's
            `caption_sha256`, since the cached text states belong to the original caption.
        fingerprint: Refuse a sample whose record carries another fingerprint.

    Returns:
        dict with the bf16 tensors `video_latents` `[z, T', H', W']`, `cond_latents` `[z, T', H', W']`,
        `audio_latents` `[Ca, L]`, `context` `[n_tokens or text_len, D]`, and `text_lens` int,
        `audio_mask` bool, `caption` str, `key` str (when the record has them).

    Raises:
        StaleCacheError: Caption or fingerprint mismatch.
        CorruptCacheError: The bytes do not match the record's `latents_sha256` (checked whenever a record is
            given), cannot be parsed, or hold non-finite values.
        KeyError: A tensor is missing from the safetensors bytes.
    """
    from safetensors.torch import load

    rec: dict[str, Any] = {}
    if isinstance(record, bytes | str):
        rec = json.loads(record)
    elif record is not None:
        rec = dict(record)
    where = rec.get("source_path", "<cached sample>")
    expected_sha = rec.get("latents_sha256")
    if record is not None and expected_sha is None:
        raise CorruptCacheError(f"{where}: the record has no latents_sha256; re-run data_tools.encode")
    if expected_sha is not None and latents_checksum(latents) != expected_sha:
        raise CorruptCacheError(
            f"{where}: latents.safetensors does not match its checksum (corrupt bytes on disk or in transfer); "
            "re-run data_tools.encode on this shard"
        )
    try:
        tensors = load(latents)
    except Exception as err:  # safetensors raises several error types for bad bytes
        raise CorruptCacheError(f"{where}: latents.safetensors cannot be read ({err})") from err
    missing = [n for n in TENSOR_NAMES if n not in tensors]
    if missing:
        raise KeyError(
            f"cached sample lacks tensors {missing} (has {sorted(tensors)}); re-run data_tools.encode"
        )
    bad = [n for n in TENSOR_NAMES if tensors[n].is_floating_point() and not torch.isfinite(tensors[n]).all()]
    if bad:
        raise CorruptCacheError(
            f"{where}: cached tensors {bad} hold non-finite values; re-run data_tools.encode"
        )
    if fingerprint is not None and rec.get("fingerprint") != fingerprint:
        raise StaleCacheError(
            f"{where}: cached with fingerprint {rec.get('fingerprint')} != {fingerprint}; re-run data_tools.encode"
        )
    if caption is not None:
        stored = rec.get("caption_sha256")
        if stored is None or stored != caption_hash(caption):
            raise StaleCacheError(
                f"{where}: caption {caption[:60]!r} differs from the one the text states were cached with "
                f"({rec.get('caption', '<unknown>')[:60]!r}); re-run data_tools.encode with the new captions"
            )
    text = tensors["context"]
    n_tokens = text.shape[0]
    out: dict[str, Any] = {name: tensors[name] for name in TENSOR_NAMES}
    if text_len is not None:
        out["context"] = pad_text(text, text_len)
        n_tokens = min(n_tokens, text_len)
    out["text_lens"] = n_tokens
    out["audio_mask"] = bool(rec.get("audio_mask", rec.get("has_audio", True)))
    out["caption"] = rec.get("caption", "")
    if "key" in rec:
        out["key"] = rec["key"]
    return out


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to `path` through a per-process temporary file and `os.replace` (safe with several ranks)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ empty clips

EMPTY_LATENTS_FILE = "empty_latents.safetensors"
"""Per cache folder: the normalized latent of an all-zero clip for every encoded size (the "no frame" condition of
text-to-audio+video training, `objective.mode=t2av`), so cached training needs no VAE for it."""


def size_key(num_frames: int, height: int, width: int) -> str:
    """The key of one encoded size in `EMPTY_LATENTS_FILE`: ``"FxHxW"`` (pixels)."""
    return f"{num_frames}x{height}x{width}"


def write_empty_latents(cache_dir: str | Path, latents: Mapping[str, torch.Tensor], fingerprint: str) -> Path:
    """Add empty-clip latents ``{size_key: [z, T', H', W']}`` to the cache folder's file (atomic, bf16).

    Entries already in the file for the same fingerprint are kept (another rank or bucket wrote them); a file of
    another fingerprint is replaced.
    """
    from safetensors.torch import load_file, save_file

    path = Path(cache_dir) / EMPTY_LATENTS_FILE
    tensors: dict[str, torch.Tensor] = {}
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            same = (f.metadata() or {}).get("fingerprint") == fingerprint
        if same:
            tensors = load_file(str(path))
    tensors.update({k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in latents.items()})
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"fingerprint": fingerprint, "kind": "empty_clip_latents"})
    os.replace(tmp, path)
    return path


_EMPTY_CACHE: dict[str, tuple[int, dict[tuple[int, ...], torch.Tensor]]] = {}


def read_empty_latents(cache_dir: str | Path) -> dict[tuple[int, ...], torch.Tensor]:
    """The cache folder's empty-clip latents keyed by latent shape ``(z, T', H', W')`` (float32; read again only
    when the file changes).

    Returns an empty dict for a cache made before they were stored.

    Raises:
        StaleCacheError: The file belongs to another fingerprint than the folder's `index.json`.
    """
    path = Path(cache_dir) / EMPTY_LATENTS_FILE
    try:
        stamp = path.stat().st_mtime_ns
    except FileNotFoundError:
        return {}
    key = str(path.resolve())
    if key in _EMPTY_CACHE and _EMPTY_CACHE[key][0] == stamp:
        return _EMPTY_CACHE[key][1]
    from safetensors import safe_open

    want = read_cache_index(cache_dir).get("fingerprint")
    table: dict[tuple[int, ...], torch.Tensor] = {}
    with safe_open(str(path), "pt") as f:
        have = (f.metadata() or {}).get("fingerprint")
        if have != want:
            raise StaleCacheError(
                f"{path}: written for fingerprint {have}, the cache is {want}; "
                + RERUN_HINT.format(cache=cache_dir)
            )
        for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            tensor = f.get_tensor(name).float()
            table[tuple(tensor.shape)] = tensor
    _EMPTY_CACHE[key] = (stamp, table)
    return table


def empty_latents_for(shard_url: str, latent_shape: Sequence[int]) -> torch.Tensor | None:
    """The empty-clip latent ``[z, T', H', W']`` for a sample of ``shard_url`` whose video latent has
    ``latent_shape``, or None when its cache folder has none of that size.
    """
    return read_empty_latents(Path(shard_url).parent).get(tuple(latent_shape))
