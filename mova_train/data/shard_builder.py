"""Probe every input clip once and pack the usable ones into webdataset tar shards.

Inputs (one of):

- upstream MOVA's `metadata.json` (a list of `{"video_path", "caption"}`, paths relative to its folder), or a folder
  holding one;
- a folder of clips (`.mp4 .mov .mkv .webm .m4v .avi`, searched recursively) with same-named `.txt` captions (and
  same-named `.wav`, `.flac` or `.m4a` sound files, used instead of the clip's own audio);
- a JSONL manifest, one `{"video_path", "caption"}` per line (paths relative to the manifest's folder).

Entries may add `"audio_path"` (a separate sound file, relative like `video_path`) and `"audio_offset"` (seconds
after the first video frame at which the sound starts; default 0 = the starts of both files line up).

Output: `shard-000000.tar`, ... (each sample: the original clip bytes as `mp4`, a separate sound file's bytes as
`audio`, and its `ClipRecord` as `json`, see `mova_train/data/schema.py`) and `index.json` with per-shard counts, every skipped input grouped by reason and the
flags of kept clips; inputs = kept + skipped, always. Shards are planned deterministically from the inputs, so a
re-run keeps every finished shard (marked by `shard-N.tar.done`) and rewrites only what changed or is missing.

Analysis (see `ProbePolicy`): `detect_cuts` stores each clip's scene cuts in its record; `split_scenes` then cuts
every clip with cuts into one mp4 per scene (`out_dir/scenes/<key>-<n>.mp4`, `mova_train.data.scenes`) and keeps
the scenes as samples instead (records carry `scene_of` and `scene_span`); the A/V audit (`av_audit`,
`max_av_offset_ms`) stores each clip's offset and confidence and flags (or, with `skip_av_offset`, skips) clips that
are confidently further off. `index.json` reports both under "scenes" and "av_audit".

`python -m data_tools.build_shards` is the command line of `build_shards`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tarfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mova_train.data import schema
from mova_train.data.probe import (
    ProbeError,
    ProbePolicy,
    av_offset_too_large,
    probe_clip,
    read_caption,
    record_flags,
)
from mova_train.data.scenes import scene_spans, write_scene_clip

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".m4v", ".avi")
AUDIO_EXTENSIONS = (".wav", ".flac", ".m4a")
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


@dataclass
class InputItem:
    """One input clip as listed by the user.

    Attributes:
        source: The name as given (relative path in metadata.json, or the path in the folder).
        path: Absolute path of the clip.
        caption: Inline caption (metadata.json / JSONL), or None when it comes from `caption_path`.
        caption_path: Path of a `.txt` caption file, if any.
        error: (reason, detail) when the listing itself is broken (e.g. an entry without `video_path`).
        audio_path: Absolute path of a separate sound file, if any.
        audio_offset: Seconds after the first video frame at which the sound starts.
    """

    source: str
    path: str
    caption: str | None = None
    caption_path: str | None = None
    error: tuple[str, str] | None = None
    audio_path: str | None = None
    audio_offset: float = 0.0


@dataclass
class Outcome:
    """The probe result of one input: a record to keep, or a skip reason."""

    source: str
    path: str
    record: dict[str, Any] | None = None
    flags: tuple[str, ...] = ()
    reason: str | None = None
    detail: str = ""
    size: int = 0
    audio_path: str | None = None
    audio_size: int = 0


def _entry_to_item(entry: Any, root: Path, where: str) -> InputItem:
    """Turn one metadata.json / JSONL entry into an InputItem (with an error for malformed entries)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("video_path"), str) or not entry["video_path"]:
        return InputItem(
            source=where,
            path="",
            error=(
                schema.SKIP_BAD_ENTRY,
                f"{where}: expected an object with a string 'video_path', got {entry!r}",
            ),
        )
    caption = entry.get("caption", "")
    if caption is None:
        caption = ""
    if not isinstance(caption, str):
        return InputItem(
            source=entry["video_path"],
            path="",
            error=(schema.SKIP_BAD_ENTRY, f"{where}: field 'caption' must be a string, got {caption!r}"),
        )
    audio_path, offset = entry.get("audio_path"), entry.get("audio_offset", 0.0)
    if audio_path is not None and (not isinstance(audio_path, str) or not audio_path):
        bad = f"field 'audio_path' must be a non-empty string path, got {audio_path!r}"
    elif isinstance(offset, bool) or not isinstance(offset, int | float) or not math.isfinite(offset):
        bad = f"field 'audio_offset' must be a number of seconds, got {offset!r}"
    else:
        bad = None
    if bad is not None:
        return InputItem(
            source=entry["video_path"], path="", error=(schema.SKIP_BAD_ENTRY, f"{where}: {bad}")
        )
    return InputItem(
        source=entry["video_path"],
        path=str(root / entry["video_path"]),
        caption=caption.strip(),
        audio_path=None if audio_path is None else str(root / audio_path),
        audio_offset=float(offset),
    )


def _sound_beside(clip: Path) -> str | None:
    """The same-named `.wav`, `.flac` or `.m4a` next to a clip in folder mode (the first found), or None."""
    found = [clip.with_suffix(ext) for ext in AUDIO_EXTENSIONS if clip.with_suffix(ext).is_file()]
    if len(found) > 1:
        logger.warning("%s has several sound files beside it; using %s", clip, found[0].name)
    return str(found[0]) if found else None


def gather_inputs(source: str | Path) -> list[InputItem]:
    """List the inputs of a metadata.json, a JSONL manifest or a folder of clips with `.txt` captions.

    Raises:
        ValueError: The listing cannot be read at all (not JSON, not a list, unknown kind of path).
    """
    source = Path(source)
    if source.is_dir() and (source / "metadata.json").is_file():
        source = source / "metadata.json"
    if source.is_file() and source.suffix == ".json":
        try:
            entries = json.loads(source.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{source} is not valid UTF-8 JSON ({err}); fix the file") from err
        if not isinstance(entries, list):
            raise ValueError(f"{source} must hold a JSON list of {{'video_path', 'caption'}} objects")
        root = source.parent
        return [_entry_to_item(e, root, f"{source.name}[{i}]") for i, e in enumerate(entries)]
    if source.is_file() and source.suffix == ".jsonl":
        items = []
        root = source.parent
        for i, line in enumerate(source.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            where = f"{source.name}:{i + 1}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                items.append(
                    InputItem(where, "", error=(schema.SKIP_BAD_ENTRY, f"{where}: not JSON ({err})"))
                )
                continue
            items.append(_entry_to_item(entry, root, where))
        return items
    if source.is_dir():
        items = []
        for path in sorted(
            p for p in source.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
        ):
            txt = path.with_suffix(".txt")
            items.append(
                InputItem(
                    source=str(path.relative_to(source)),
                    path=str(path),
                    caption=None if txt.is_file() else "",
                    caption_path=str(txt) if txt.is_file() else None,
                    audio_path=_sound_beside(path),
                )
            )
        return items
    raise ValueError(f"{source}: expected a metadata.json, a .jsonl manifest or a folder of clips")


def probe_item(item: InputItem, policy: ProbePolicy) -> Outcome:
    """Probe one input (runs in a worker process); never raises for a bad clip."""
    if item.error is not None:
        return Outcome(item.source, item.path, reason=item.error[0], detail=item.error[1])
    try:
        caption = item.caption if item.caption is not None else read_caption(item.caption_path)
        record = probe_clip(
            item.path,
            caption=caption,
            source_path=item.source,
            policy=policy,
            audio_source=item.audio_path,
            audio_offset=item.audio_offset,
        )
    except ProbeError as err:
        return Outcome(item.source, item.path, reason=err.reason, detail=err.detail)
    return Outcome(
        item.source,
        item.path,
        record=record.to_dict(),
        flags=tuple(record_flags(record, policy)),
        size=os.path.getsize(item.path),
        audio_path=item.audio_path,
        audio_size=0 if item.audio_path is None else os.path.getsize(item.audio_path),
    )


def _probe_star(args: tuple[InputItem, ProbePolicy]) -> Outcome:
    return probe_item(*args)


def probe_all(items: Sequence[InputItem], policy: ProbePolicy, workers: int = 1) -> list[Outcome]:
    """Probe every input, in input order, over `workers` processes."""
    jobs = [(item, policy) for item in items]
    bar = dict(total=len(jobs), desc="probe", unit="clip")
    if workers <= 1:
        return [_probe_star(job) for job in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(_probe_star, jobs, chunksize=4), **bar))


def _member_bytes(size: int) -> int:
    """Bytes one tar member takes: a header block plus the data rounded up to whole blocks."""
    return _BLOCK + math.ceil(size / _BLOCK) * _BLOCK


def _tar_bytes(member_sizes: Iterable[int]) -> int:
    """Exact size of a tar written by `write_shard` with members of these sizes."""
    body = sum(_member_bytes(s) for s in member_sizes) + 2 * _BLOCK
    return math.ceil(body / _RECORD) * _RECORD


def plan_shards(kept: Sequence[Outcome], max_count: int, max_bytes: int) -> list[list[Outcome]]:
    """Split kept clips, in order, into shards of at most `max_count` samples and `max_bytes` bytes.

    A single clip bigger than `max_bytes` gets a shard of its own (with a warning).
    """
    shards: list[list[Outcome]] = []
    current: list[Outcome] = []
    sizes: list[int] = []
    for out in kept:
        pair = [out.size, len(schema.ClipRecord.from_dict(out.record).to_json_bytes())]
        if out.audio_path is not None:
            pair.append(out.audio_size)
        if current and (len(current) >= max_count or _tar_bytes(sizes + pair) > max_bytes):
            shards.append(current)
            current, sizes = [], []
        if _tar_bytes(pair) > max_bytes:
            logger.warning("%s alone (%d bytes) exceeds --max-bytes %d", out.source, out.size, max_bytes)
        current.append(out)
        sizes += pair
    if current:
        shards.append(current)
    return shards


def write_shard(path: Path, samples: Sequence[Outcome]) -> int:
    """Write one shard atomically (`.tmp` then rename); return its size in bytes."""
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for out in samples:
            record = schema.ClipRecord.from_dict(out.record)
            data = Path(out.path).read_bytes()
            if hashlib.sha256(data).hexdigest() != record.sha256:
                raise RuntimeError(
                    f"{out.path} changed while the shards were being built; run build_shards again"
                )
            schema.add_member(tar, f"{record.key}.{schema.VIDEO_KEY}", data)
            if out.audio_path is not None:
                sound = Path(out.audio_path).read_bytes()
                if hashlib.sha256(sound).hexdigest() != record.audio_sha256:
                    raise RuntimeError(
                        f"{out.audio_path} changed while the shards were being built; run build_shards again"
                    )
                schema.add_member(tar, f"{record.key}.{schema.AUDIO_KEY}", sound)
            schema.add_member(tar, f"{record.key}.{schema.RECORD_KEY}", record.to_json_bytes())
    os.replace(tmp, path)
    return path.stat().st_size


def _marker(samples: Sequence[Outcome]) -> dict[str, Any]:
    """Content of a shard's `.done` marker: what it holds, so that a re-run can tell whether it still fits."""
    return {"version": schema.INDEX_VERSION, "sha256": [_content_id(out.record) for out in samples]}


def _content_id(record: dict[str, Any]) -> str:
    """What identifies a sample's bytes: the clip's sha256, plus the separate sound file's when there is one."""
    audio = record.get("audio_sha256")
    return record["sha256"] if audio is None else f"{record['sha256']}:{audio}"


def _shard_is_done(path: Path, samples: Sequence[Outcome]) -> bool:
    done = path.with_name(path.name + ".done")
    if not (path.is_file() and done.is_file()):
        return False
    try:
        marker = json.loads(done.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    expected = _marker(samples)
    return marker.get("sha256") == expected["sha256"] and marker.get("bytes") == path.stat().st_size


def build_shards(
    source: str | Path,
    out_dir: str | Path,
    *,
    max_count: int = 1000,
    max_bytes: int = 1 << 30,
    workers: int = 1,
    policy: ProbePolicy | None = None,
    split_scenes: bool = False,
) -> dict[str, Any]:
    """Probe all inputs of `source`, write shards and `index.json` into `out_dir`; return the index.

    Args:
        source: metadata.json, JSONL manifest or folder (see module docstring).
        out_dir: Output folder (created; finished shards in it are kept).
        max_count: Most samples per shard.
        max_bytes: Most bytes per shard file.
        workers: Processes used for probing.
        policy: What to skip and what to analyze (default `ProbePolicy()`).
        split_scenes: One sample per scene (turns `policy.detect_cuts` on).
    """
    if max_count < 1 or max_bytes < 1:
        raise ValueError(f"--max-count ({max_count}) and --max-bytes ({max_bytes}) must be positive")
    policy = policy or ProbePolicy()
    if policy.skip_av_offset and policy.max_av_offset_ms is None:
        raise ValueError("skip_av_offset (--skip-av-offset) needs max_av_offset_ms (--max-av-offset-ms)")
    if split_scenes and not policy.detect_cuts:
        policy = dataclasses.replace(policy, detect_cuts=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = gather_inputs(source)
    logger.info("%d inputs from %s", len(items), source)
    outcomes = probe_all(items, policy, workers)
    scenes = {"split_inputs": 0, "scene_samples": 0}
    if split_scenes:
        outcomes, scenes = _split_into_scenes(outcomes, out_dir / "scenes", policy, workers)

    skipped: dict[str, list[dict[str, str]]] = {}
    flags: dict[str, list[str]] = {}
    kept: list[Outcome] = []
    first_by_hash: dict[str, str] = {}
    for out in outcomes:
        if out.record is not None:
            sha = _content_id(out.record)
            if sha in first_by_hash:
                out.reason, out.detail = schema.SKIP_DUPLICATE, f"same bytes as {first_by_hash[sha]}"
            else:
                first_by_hash[sha] = out.source
                kept.append(out)
                for flag in out.flags:
                    flags.setdefault(flag, []).append(out.source)
                continue
        skipped.setdefault(out.reason, []).append({"source": out.source, "detail": out.detail})
        logger.info("skip %s (%s): %s", out.source, out.reason, out.detail)

    plan = plan_shards(kept, max_count, max_bytes)
    shards, reused = [], 0
    for i, samples in enumerate(tqdm(plan, desc="write", unit="shard")):
        path = out_dir / schema.shard_name(i)
        if _shard_is_done(path, samples):
            reused += 1
            size = path.stat().st_size
        else:
            size = write_shard(path, samples)
            marker = {**_marker(samples), "bytes": size}
            path.with_name(path.name + ".done").write_text(json.dumps(marker), encoding="utf-8")
        shards.append({"name": path.name, "count": len(samples), "bytes": size})
    _remove_stale(out_dir, len(plan))

    index = {
        "version": schema.INDEX_VERSION,
        "shards": shards,
        "total": len(kept),
        "inputs": len(items),
        "skipped": {reason: skipped[reason] for reason in sorted(skipped)},
        "flags": {flag: flags[flag] for flag in sorted(flags)},
        "policy": dataclasses.asdict(policy),
        "scenes": scenes,
        "av_audit": _audit_summary(kept, skipped, policy),
        "max_count": max_count,
        "max_bytes": max_bytes,
    }
    accounted = index["total"] + sum(len(v) for v in skipped.values())
    expected = len(items) - scenes["split_inputs"] + scenes["scene_samples"]
    assert accounted == expected, f"accounting bug: {accounted} != {expected} inputs and scenes"
    tmp = out_dir / (schema.INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(index, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out_dir / schema.INDEX_NAME)
    logger.info(
        "%d inputs: %d kept in %d shards (%d reused), %d skipped %s",
        len(items),
        len(kept),
        len(plan),
        reused,
        accounted - len(kept),
        {k: len(v) for k, v in index["skipped"].items()},
    )
    return index


def _split_into_scenes(
    outcomes: list[Outcome], folder: Path, policy: ProbePolicy, workers: int
) -> tuple[list[Outcome], dict[str, int]]:
    """Replace every probed clip that has cuts by its scenes (cut, re-encoded and probed in turn)."""
    result: list[Outcome] = []
    split_inputs = scene_samples = 0
    scene_policy = dataclasses.replace(policy, detect_cuts=False)
    for out in outcomes:
        if out.record is None or not out.record.get("cuts"):
            result.append(out)
            continue
        record = schema.ClipRecord.from_dict(out.record)
        spans = scene_spans(record.cuts, record.duration)
        fps = record.fps_num / record.fps_den
        items = []
        for n, (a, b) in enumerate(spans):
            end = record.num_frames if n == len(spans) - 1 else round(b * fps)
            path = write_scene_clip(
                out.path,
                folder / f"{record.key}-{n:03d}.mp4",
                (round(a * fps), end),
                fps,
                audio=out.audio_path,
                has_audio=record.has_audio,
                audio_offset=record.audio_offset,
            )
            items.append(InputItem(f"{out.source}#scene{n}", str(path), caption=record.caption))
        scenes = probe_all(items, scene_policy, workers)
        for scene, (a, b) in zip(scenes, spans, strict=True):
            if scene.record is not None:
                scene.record.update(cuts=[], scene_of=record.key, scene_span=[round(a, 6), round(b, 6)])
        logger.info("%s: %d scenes", out.source, len(spans))
        result.extend(scenes)
        split_inputs += 1
        scene_samples += len(scenes)
    return result, {"split_inputs": split_inputs, "scene_samples": scene_samples}


def _audit_summary(
    kept: Sequence[Outcome], skipped: dict[str, list[dict[str, str]]], policy: ProbePolicy
) -> dict[str, Any]:
    """Counts of the A/V audit: clips audited, confident, flagged and skipped, and the confident offsets (ms)."""
    records = [schema.ClipRecord.from_dict(out.record) for out in kept]
    audited = [r for r in records if r.av_offset_ms is not None]
    confident = [r for r in audited if (r.av_confidence or 0.0) >= policy.min_av_confidence]
    return {
        "audited": len(audited),
        "confident": len(confident),
        "flagged": sum(av_offset_too_large(r, policy) for r in records),
        "skipped": len(skipped.get(schema.SKIP_AV_OFFSET, [])),
        "max_abs_offset_ms": max((abs(r.av_offset_ms) for r in confident), default=None),
    }


def _remove_stale(out_dir: Path, num_shards: int) -> None:
    """Delete shards (and markers) numbered past the current plan, left by an earlier, larger run."""
    for path in sorted(out_dir.glob("shard-*.tar*")):
        stem = path.name.split(".")[0]
        try:
            number = int(stem.removeprefix("shard-"))
        except ValueError:
            continue
        if number >= num_shards or path.name.endswith(".tmp"):
            logger.info("removing stale %s", path.name)
            path.unlink()
