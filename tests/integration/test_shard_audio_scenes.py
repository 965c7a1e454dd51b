"""build_shards with separate sound files, audio offsets and scene cuts, read back through the real stream."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch
from helpers.av_media import concat_two_scenes, ffmpeg, flash_clip

from data_tools.build_shards import main as build_shards_cli
from mova_train.data import schema
from mova_train.data.inspection import iter_samples, summarize
from mova_train.data.pipeline import StreamConfig, ValStream, resolve_shards
from mova_train.data.shard_builder import build_shards
from mova_train.data.synthetic import make_clip


def _val_batches(shards, **kw) -> list[dict]:
    cfg = StreamConfig(
        shards=resolve_shards(shards), num_frames=9, height=32, width=48, batch_size=1,
        buckets=[(32, 48, 9)], video_output="float", **kw,
    )  # fmt: skip
    return list(ValStream(cfg))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same synthetic content as (video-only mp4 + wav) and muxed in one file; folder with a manifest."""
    root = tmp_path_factory.mktemp("pair")
    src = make_clip(root / "src.mp4", num_frames=24, flashes_at=[0.3, 0.7], seed=11).path
    ffmpeg("-i", str(src), "-map", "0:v", "-c", "copy", str(root / "video.mp4"))
    ffmpeg("-i", str(src), "-map", "0:a", "-c:a", "pcm_s16le", str(root / "sound.wav"))
    ffmpeg("-i", str(root / "video.mp4"), "-i", str(root / "sound.wav"), "-map", "0:v", "-map", "1:a",
           "-c", "copy", str(root / "muxed.mov"))  # fmt: skip
    lines = [
        {"video_path": "video.mp4", "audio_path": "sound.wav", "caption": "pair"},
        {"video_path": "muxed.mov", "caption": "muxed"},
        {"video_path": "video.mp4", "audio_path": "sound.wav", "audio_offset": 0.1, "caption": "late"},
    ]
    (root / "all.jsonl").write_text("\n".join(json.dumps(x) for x in lines[:2]))
    (root / "late.jsonl").write_text(json.dumps(lines[2]))
    return root


def test_clip_plus_wav_trains_exactly_like_the_muxed_file(pair, tmp_path):
    index = build_shards(pair / "all.jsonl", tmp_path / "shards")
    assert index["total"] == 2, index["skipped"]
    records = {r["caption"]: r for _, _, r, _ in iter_samples(tmp_path / "shards")}
    assert records["pair"]["separate_audio"] and not records["muxed"]["separate_audio"]
    assert records["pair"]["sample_rate"] == 48000 and records["pair"]["has_audio"]
    assert summarize(tmp_path / "shards")["separate_audio"] == 1
    build_shards(pair / "late.jsonl", tmp_path / "late")
    batches = {b["caption"][0]: b for d in ("shards", "late") for b in _val_batches(tmp_path / d)}
    assert torch.equal(batches["pair"]["video"], batches["muxed"]["video"])
    assert torch.equal(batches["pair"]["audio"], batches["muxed"]["audio"])
    assert batches["pair"]["audio"].abs().max() > 0.5  # the clicks are there
    # audio_offset 0.1 s delays the sound: sample k of the shifted clip is sample k - 4800 of the aligned one
    late, aligned = batches["late"]["audio"][0, 0], batches["pair"]["audio"][0, 0]
    assert torch.equal(late[4800:], aligned[: late.numel() - 4800])
    assert torch.count_nonzero(late[:4800]) == 0


def test_folder_mode_takes_the_same_named_wav(pair, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.mp4").write_bytes((pair / "video.mp4").read_bytes())
    (folder / "a.wav").write_bytes((pair / "sound.wav").read_bytes())
    build_shards(folder, tmp_path / "shards")
    [(_, key, record, _)] = list(iter_samples(tmp_path / "shards"))
    assert record["separate_audio"] and record["has_audio"]
    names = [
        m for m in (tmp_path / "shards" / "shard-000000.tar").read_bytes().split(b"\0") if key.encode() in m
    ]
    assert any(f"{key}.{schema.AUDIO_KEY}".encode() in n for n in names)


def test_bad_audio_path_and_offset_are_refused_per_entry(pair, tmp_path):
    lines = [
        {"video_path": "video.mp4", "audio_path": "nope.wav"},
        {"video_path": "video.mp4", "audio_path": "video.mp4"},  # a file without an audio stream
        {"video_path": "video.mp4", "audio_path": "sound.wav", "audio_offset": "soon"},
    ]
    manifest = pair / "bad.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines))
    index = build_shards(manifest, tmp_path / "shards")
    assert index["total"] == 0
    assert "nope.wav" in index["skipped"][schema.SKIP_MISSING_FILE][0]["detail"]
    assert "audio_path" in index["skipped"][schema.SKIP_UNREADABLE][0]["detail"]
    assert "audio_offset" in index["skipped"][schema.SKIP_BAD_ENTRY][0]["detail"]


def test_split_scenes_writes_one_sample_per_scene(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    concat_two_scenes(src / "two.mp4")
    (src / "two.txt").write_text("two scenes")
    build_shards_cli([str(src), str(tmp_path / "cuts"), "--detect-cuts"])
    [(_, key, record, _)] = list(iter_samples(tmp_path / "cuts"))
    assert len(record["cuts"]) == 1 and abs(record["cuts"][0] - 1.5) <= 1 / 24 + 1e-6
    build_shards_cli([str(src), str(tmp_path / "split"), "--split-scenes"])
    index = schema.read_index(tmp_path / "split")
    assert (
        summarize(tmp_path / "cuts")["with_scene_cuts"] == 1
        and summarize(tmp_path / "split")["scene_samples"] == 2
    )
    assert index["total"] == 2 and index["scenes"] == {"split_inputs": 1, "scene_samples": 2}
    scenes = sorted((r["scene_span"], r) for _, _, r, _ in iter_samples(tmp_path / "split"))
    frames = [r["num_frames"] for _, r in scenes]
    assert frames == [36, 30], frames
    for span, r in scenes:
        assert r["scene_of"] == key and r["cuts"] == [] and r["has_audio"] and r["caption"] == "two scenes"
        assert (
            abs(r["duration"] - (span[1] - span[0])) < 1e-3
            and abs(r["audio_duration"] - r["duration"]) < 0.01
        )
    batches = _val_batches(tmp_path / "split")  # both scenes decode through the real stream
    assert len(batches) == 2 and all(b["audio"].abs().max() > 0.1 for b in batches)


def test_av_offset_is_flagged_or_skipped_and_counted(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    flash_clip(src / "in_sync.mp4", Fraction(24), 0)
    flash_clip(src / "late.mp4", Fraction(24), 5)  # 208 ms late
    build_shards_cli([str(src), str(tmp_path / "flag"), "--max-av-offset-ms", "100"])
    index = schema.read_index(tmp_path / "flag")
    assert index["total"] == 2 and index["flags"][schema.FLAG_AV_OFFSET] == ["late.mp4"]
    assert index["av_audit"]["audited"] == 2 and index["av_audit"]["flagged"] == 1
    records = {r["source_path"]: r for _, _, r, _ in iter_samples(tmp_path / "flag")}
    assert abs(records["late.mp4"]["av_offset_ms"] - 5000 / 24) < 1000 / 24
    assert abs(records["in_sync.mp4"]["av_offset_ms"]) < 1000 / 24
    build_shards_cli([str(src), str(tmp_path / "skip"), "--max-av-offset-ms", "100", "--skip-av-offset"])
    index = schema.read_index(tmp_path / "skip")
    assert index["total"] == 1 and index["av_audit"]["skipped"] == 1
    assert "fix it with audio_offset -0.2" in index["skipped"][schema.SKIP_AV_OFFSET][0]["detail"]


def test_skip_av_offset_without_a_limit_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        build_shards_cli([str(tmp_path), str(tmp_path / "out"), "--skip-av-offset"])


def test_split_scenes_cuts_a_separate_sound_file_with_its_offset(tmp_path):
    """Scenes of a clip whose sound is a wav starting 0.25 s late: the first scene's sound opens with silence."""
    concat_two_scenes(tmp_path / "two.mp4")
    ffmpeg("-i", str(tmp_path / "two.mp4"), "-map", "0:v", "-c", "copy", str(tmp_path / "video.mp4"))
    ffmpeg("-i", str(tmp_path / "two.mp4"), "-map", "0:a", "-c:a", "pcm_s16le", str(tmp_path / "sound.wav"))
    entry = {"video_path": "video.mp4", "audio_path": "sound.wav", "audio_offset": 0.25, "caption": "late"}
    (tmp_path / "m.jsonl").write_text(json.dumps(entry))
    index = build_shards(tmp_path / "m.jsonl", tmp_path / "split", split_scenes=True)
    assert index["scenes"] == {"split_inputs": 1, "scene_samples": 2} and index["total"] == 2
    records = sorted((r["scene_span"], key, r) for _, key, r, _ in iter_samples(tmp_path / "split"))
    assert all(not r["separate_audio"] and r["audio_offset"] == 0.0 for _, _, r in records)  # muxed in
    batches = {b["key"][0]: b for b in _val_batches(tmp_path / "split")}
    wave = batches[records[0][1]]["audio"][0, 0]  # the first scene's first 9 frames (0.375 s)
    quiet, loud = wave[: int(0.2 * 48000)].abs().max(), wave[int(0.3 * 48000) :].abs().max()
    assert quiet < 0.01 < 0.1 < loud, (float(quiet), float(loud))  # lavfi's sine is 1/8 of full scale
