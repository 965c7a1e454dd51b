"""build_shards on real bad inputs, the upstream sample, limits, resume and webdataset read-back."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from fractions import Fraction

import pytest
import webdataset as wds

from data_tools.build_shards import main
from mova_train.data import schema
from mova_train.data.probe import ProbePolicy
from mova_train.data.schema import ClipRecord
from mova_train.data.shard_builder import build_shards
from mova_train.data.synthetic import make_clip as _make_clip
from mova_train.data.synthetic import make_dataset


def make_clip(path, **kwargs):
    return _make_clip(path, **{"num_frames": 12, **kwargs})


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def _testsrc(rate: int = 24, size: str = "64x48") -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}:duration=0.5"]


def _sine() -> list[str]:
    return ["-f", "lavfi", "-i", "sine=f=440:sample_rate=48000:duration=0.5"]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """A metadata.json listing one real file per bad-input case; returns (root, index, records by source)."""
    root = tmp_path_factory.mktemp("bad")
    good = make_clip(root / "good.mp4", seed=1).path
    data = good.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    ffmpeg(*_testsrc(), *_sine(), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-movflags", "+faststart",
           str(root / "faststart.mp4"))  # fmt: skip
    fast = (root / "faststart.mp4").read_bytes()
    (root / "truncated_faststart.mp4").write_bytes(fast[: len(fast) * 2 // 3])
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (root / "zero.mp4").write_bytes(b"")
    make_clip(root / "no_audio.mp4", audio=False, seed=2)
    make_clip(root / "short_audio.mp4", audio_seconds=0.2, seed=3)
    ffmpeg(*_sine(), "-c:a", "aac", str(root / "audio_only.m4a"))
    ffmpeg(*_testsrc(), "-vf", "setpts='(N+if(gte(N,6),N-6,0))/24/TB'", "-fps_mode", "passthrough",
           "-video_track_timescale", "24000", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(root / "vfr.mp4"))  # fmt: skip
    make_clip(root / "ntsc.mp4", fps=Fraction(30000, 1001), seed=4)
    ffmpeg(
        *_testsrc(25),
        *_sine(),
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        str(root / "pal.mp4"),
    )
    make_clip(root / "short.mp4", num_frames=3, seed=5)
    make_clip(root / "portrait.mp4", width=48, height=64, seed=6)
    ffmpeg(*_testsrc(size="63x47"), "-c:v", "libx264", "-pix_fmt", "yuv444p", str(root / "odd.mp4"))
    make_clip(root / "stereo44k.mp4", sample_rate=44100, channels=2, seed=7)
    make_clip(root / "empty_caption.mp4", seed=8)
    shutil.copy(good, root / "duplicate.mp4")
    names = [
        "good.mp4", "truncated.mp4", "truncated_faststart.mp4", "corrupt.mp4", "zero.mp4", "no_audio.mp4",
        "short_audio.mp4", "audio_only.m4a", "vfr.mp4", "ntsc.mp4", "pal.mp4", "short.mp4", "portrait.mp4",
        "odd.mp4", "stereo44k.mp4", "empty_caption.mp4", "duplicate.mp4", "missing.mp4",
    ]  # fmt: skip
    entries = [
        {"video_path": n, "caption": "" if n == "empty_caption.mp4" else f"caption of {n}"} for n in names
    ]
    entries.append({"caption": "an entry without a path"})
    (root / "metadata.json").write_text(json.dumps(entries))
    index = build_shards(root / "metadata.json", root / "out", max_count=100)
    records = {}
    for tar_path in sorted((root / "out").glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    record = ClipRecord.from_json_bytes(tar.extractfile(member).read())
                    records[record.source_path] = record
    return root, index, records


EXPECTED_SKIPS = {
    "truncated.mp4": schema.SKIP_UNREADABLE,
    "truncated_faststart.mp4": schema.SKIP_TRUNCATED,
    "corrupt.mp4": schema.SKIP_UNREADABLE,
    "zero.mp4": schema.SKIP_EMPTY_FILE,
    "audio_only.m4a": schema.SKIP_NO_VIDEO_STREAM,
    "duplicate.mp4": schema.SKIP_DUPLICATE,
    "missing.mp4": schema.SKIP_MISSING_FILE,
    "metadata.json[18]": schema.SKIP_BAD_ENTRY,
}


@pytest.mark.parametrize("source,reason", sorted(EXPECTED_SKIPS.items()))
def test_bad_input_skipped_with_reason(bad_inputs, source, reason):
    _, index, records = bad_inputs
    assert source not in records
    by_source = {item["source"]: r for r, items in index["skipped"].items() for item in items}
    assert by_source[source] == reason
    detail = next(i["detail"] for i in index["skipped"][reason] if i["source"] == source)
    assert detail  # every skip says why


def test_every_input_is_accounted_for(bad_inputs):
    _, index, records = bad_inputs
    skipped = sum(len(v) for v in index["skipped"].values())
    assert index["inputs"] == 19 and index["total"] + skipped == 19
    assert index["total"] == len(records) == 19 - len(EXPECTED_SKIPS)
    assert "good.mp4" in index["skipped"][schema.SKIP_DUPLICATE][0]["detail"]


def test_kept_clips_recorded_as_they_are(bad_inputs):
    _, index, r = bad_inputs
    assert not r["no_audio.mp4"].has_audio and r["no_audio.mp4"].sample_rate is None
    assert r["short_audio.mp4"].audio_duration < 0.3 < r["short_audio.mp4"].duration
    assert r["vfr.mp4"].variable_frame_rate and not r["good.mp4"].variable_frame_rate
    assert (r["ntsc.mp4"].fps_num, r["ntsc.mp4"].fps_den) == (30000, 1001)
    assert (r["pal.mp4"].fps_num, r["pal.mp4"].fps_den, r["pal.mp4"].num_frames) == (25, 1, 13)
    assert r["short.mp4"].num_frames == 3
    assert (r["portrait.mp4"].width, r["portrait.mp4"].height) == (48, 64)
    assert (r["odd.mp4"].width, r["odd.mp4"].height, r["odd.mp4"].has_audio) == (63, 47, False)
    assert (r["stereo44k.mp4"].sample_rate, r["stereo44k.mp4"].num_channels) == (44100, 2)
    assert r["empty_caption.mp4"].caption == "" and r["good.mp4"].caption == "caption of good.mp4"
    flags = index["flags"]
    assert flags[schema.FLAG_AUDIO_SHORTER] == ["short_audio.mp4"]
    assert flags[schema.FLAG_EMPTY_CAPTION] == ["empty_caption.mp4"]
    assert flags[schema.FLAG_VARIABLE_FRAME_RATE] == ["vfr.mp4"]
    assert set(flags[schema.FLAG_NO_AUDIO]) == {"no_audio.mp4", "vfr.mp4", "odd.mp4"}


def test_policy_skips_short_and_silent(bad_inputs, tmp_path):
    root, _, _ = bad_inputs
    policy = ProbePolicy(min_frames=10, require_audio=True, skip_variable_frame_rate=True)
    index = build_shards(root / "metadata.json", tmp_path / "out", policy=policy)
    skipped = {item["source"]: r for r, items in index["skipped"].items() for item in items}
    assert skipped["short.mp4"] == schema.SKIP_TOO_SHORT
    assert skipped["no_audio.mp4"] == schema.SKIP_NO_AUDIO_STREAM
    assert skipped["vfr.mp4"] in (schema.SKIP_NO_AUDIO_STREAM, schema.SKIP_VARIABLE_FRAME_RATE)
    assert index["total"] + len(skipped) == index["inputs"]


def test_folder_with_txt_captions(tmp_path):
    src = tmp_path / "clips"
    make_clip(src / "a.mp4", seed=1)
    (src / "a.txt").write_bytes("un caf\xe9".encode("latin-1"))
    make_clip(src / "sub" / "b.mp4", seed=2)
    (src / "sub" / "b.txt").write_text("a blue circle\n", encoding="utf-8")
    make_clip(src / "c.mp4", seed=3)  # no caption file: kept with an empty caption
    index = build_shards(src, tmp_path / "out")
    assert [i["source"] for i in index["skipped"][schema.SKIP_BAD_CAPTION_ENCODING]] == ["a.mp4"]
    assert "0xe9" in index["skipped"][schema.SKIP_BAD_CAPTION_ENCODING][0]["detail"]
    assert index["total"] == 2 and index["flags"][schema.FLAG_EMPTY_CAPTION] == ["c.mp4"]
    samples = list(wds.WebDataset(str(tmp_path / "out" / "shard-000000.tar"), shardshuffle=False))
    captions = {json.loads(s["json"])["source_path"]: json.loads(s["json"])["caption"] for s in samples}
    assert captions == {"sub/b.mp4": "a blue circle", "c.mp4": ""}


def test_jsonl_manifest(tmp_path):
    make_clip(tmp_path / "x.mp4", seed=1)
    lines = [
        json.dumps({"video_path": "x.mp4", "caption": "x"}),
        "{not json",
        json.dumps({"video_path": "y.mp4"}),
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    index = build_shards(tmp_path / "m.jsonl", tmp_path / "out")
    assert index["total"] == 1 and index["inputs"] == 3
    assert index["skipped"][schema.SKIP_BAD_ENTRY][0]["source"] == "m.jsonl:2"
    assert index["skipped"][schema.SKIP_MISSING_FILE][0]["source"] == "y.mp4"


def test_upstream_sample_builds_one_shard(media_dir, tmp_path):
    index = build_shards(media_dir / "metadata.json", tmp_path / "out")
    assert index["total"] == 1 and index["inputs"] == 1 and index["skipped"] == {}
    assert [s["count"] for s in index["shards"]] == [1]
    [sample] = list(wds.WebDataset(str(tmp_path / "out" / "shard-000000.tar"), shardshuffle=False))
    record = ClipRecord.from_json_bytes(sample["json"])
    assert (record.num_frames, record.fps, record.width, record.height) == (193, 24.0, 624, 352)
    assert (record.sample_rate, record.num_channels, record.has_audio) == (48000, 1, True)
    assert record.caption.startswith("A photorealistic medium shot")
    assert sample["__key__"] == record.key
    assert sample["mp4"] == (media_dir / "mova_360p_sample.mp4").read_bytes()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("syn"), count=5, seconds=0.25, seed=11)


def test_count_limit_and_webdataset_read_back(synthetic, tmp_path):
    index = build_shards(synthetic, tmp_path / "out", max_count=2)
    assert [s["count"] for s in index["shards"]] == [2, 2, 1]
    urls = schema.shard_urls(tmp_path / "out")
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 5
    entries = json.loads(synthetic.read_text())
    for sample, entry in zip(samples, entries, strict=True):
        record = json.loads(sample["json"])
        assert record["source_path"] == entry["video_path"] and record["caption"] == entry["caption"]
        assert sample["mp4"] == (synthetic.parent / entry["video_path"]).read_bytes()


def test_size_limit(synthetic, tmp_path):
    one = (synthetic.parent / "clip_000000.mp4").stat().st_size
    max_bytes = 4 * one + 20480
    index = build_shards(synthetic, tmp_path / "out", max_bytes=max_bytes)
    assert len(index["shards"]) > 1 and sum(s["count"] for s in index["shards"]) == 5
    for shard in index["shards"]:
        size = (tmp_path / "out" / shard["name"]).stat().st_size
        assert size == shard["bytes"] <= max_bytes


def test_resume_keeps_finished_shards(synthetic, tmp_path):
    out = tmp_path / "out"
    first = build_shards(synthetic, out, max_count=2)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    contents = {p.name: p.read_bytes() for p in out.glob("shard-*.tar")}
    (out / "shard-000001.tar").unlink()  # an interrupted run: one shard missing
    (out / "shard-000002.tar.done").unlink()  # and one without its marker
    second = build_shards(synthetic, out, max_count=2)
    assert second == first
    assert (out / "shard-000000.tar").stat().st_mtime_ns == mtimes["shard-000000.tar"]
    assert {
        p.name: p.read_bytes() for p in out.glob("shard-*.tar")
    } == contents  # rewritten shards are identical
    third_mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    build_shards(synthetic, out, max_count=2)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")} == third_mtimes
    # a new plan (bigger shards) rewrites and drops the shard that is no longer needed
    index = build_shards(synthetic, out, max_count=5)
    assert [s["count"] for s in index["shards"]] == [5]
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-000000.tar", "shard-000000.tar.done"]


def test_workers_give_the_same_index_and_cli(synthetic, tmp_path):
    serial = build_shards(synthetic, tmp_path / "a", max_count=3)
    main([str(synthetic), str(tmp_path / "b"), "--max-count", "3", "--workers", "2"])
    assert json.loads((tmp_path / "b" / "index.json").read_text()) == serial
    assert (tmp_path / "a" / "shard-000000.tar").read_bytes() == (
        tmp_path / "b" / "shard-000000.tar"
    ).read_bytes()


def test_cli_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--max-bytes" in capsys.readouterr().out


def test_unknown_source_is_a_clear_error(tmp_path):
    (tmp_path / "list.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="metadata.json"):
        build_shards(tmp_path / "list.csv", tmp_path / "out")
