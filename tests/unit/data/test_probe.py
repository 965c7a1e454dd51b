"""probe_clip / read_caption / ClipRecord: every decision on real files."""

from __future__ import annotations

import subprocess
from fractions import Fraction

import pytest

from mova_train.data import schema
from mova_train.data.probe import ProbeError, ProbePolicy, probe_clip, read_caption, record_flags
from mova_train.data.schema import ClipRecord, SchemaError
from mova_train.data.synthetic import make_clip


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    return {
        "good": make_clip(root / "good.mp4", num_frames=12, fps=24).path,
        "silent": make_clip(root / "silent.mp4", num_frames=12, audio=False).path,
        "ntsc": make_clip(root / "ntsc.mp4", num_frames=12, fps=Fraction(30000, 1001)).path,
        "root": root,
    }


def _vfr_clip(path):
    # frames 0-11 one period apart, then two periods apart: a real variable-frame-rate mp4
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=24:duration=1",
         "-vf", "setpts='(N+if(gte(N,12),N-12,0))/24/TB'", "-fps_mode", "passthrough",
         "-video_track_timescale", "24000", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    return path


def test_good_clip_record(clips):
    record = probe_clip(clips["good"], caption="a clip")
    assert (record.num_frames, record.fps_num, record.fps_den, record.width, record.height) == (
        12,
        24,
        1,
        64,
        48,
    )
    assert record.duration == pytest.approx(0.5)
    assert record.has_audio and record.sample_rate == 48000 and record.num_channels == 1
    assert record.audio_duration == pytest.approx(0.5, abs=0.03)
    assert not record.variable_frame_rate and record_flags(record) == []
    assert record.key == record.sha256[:16] and record.source_path == str(clips["good"])


def test_bytes_and_path_give_the_same_record(clips):
    from_path = probe_clip(clips["ntsc"], source_path="x.mp4")
    from_bytes = probe_clip(clips["ntsc"].read_bytes(), source_path="x.mp4")
    assert from_path == from_bytes
    assert (from_path.fps_num, from_path.fps_den) == (30000, 1001)


def test_missing_empty_and_corrupt(clips, tmp_path):
    with pytest.raises(ProbeError) as info:
        probe_clip(tmp_path / "nope.mp4")
    assert info.value.reason == schema.SKIP_MISSING_FILE and "nope.mp4" in info.value.detail
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(ProbeError, match="empty_file"):
        probe_clip(tmp_path / "zero.mp4")
    data = clips["good"].read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])  # torchcodec writes moov last: unopenable
    with pytest.raises(ProbeError) as info:
        probe_clip(tmp_path / "half.mp4")
    assert info.value.reason == schema.SKIP_UNREADABLE and "half.mp4" in info.value.detail
    assert ".cpp" not in info.value.detail


def test_silent_clip_kept_unless_audio_required(clips):
    record = probe_clip(clips["silent"])
    assert not record.has_audio and record.sample_rate is None and record.audio_duration is None
    assert record_flags(record) == [schema.FLAG_NO_AUDIO, schema.FLAG_EMPTY_CAPTION]
    with pytest.raises(ProbeError) as info:
        probe_clip(clips["silent"], policy=ProbePolicy(require_audio=True))
    assert info.value.reason == schema.SKIP_NO_AUDIO_STREAM


def test_short_clip_policy(clips):
    assert probe_clip(clips["good"], policy=ProbePolicy(min_frames=12)).num_frames == 12
    with pytest.raises(ProbeError, match="too_short"):
        probe_clip(clips["good"], policy=ProbePolicy(min_frames=13))
    with pytest.raises(ProbeError, match="too_short"):
        probe_clip(clips["good"], policy=ProbePolicy(min_duration=0.6))


def test_empty_caption_policy(clips):
    assert schema.FLAG_EMPTY_CAPTION in record_flags(probe_clip(clips["good"], caption=""))
    with pytest.raises(ProbeError, match="empty_caption"):
        probe_clip(clips["good"], caption="  ", policy=ProbePolicy(skip_empty_caption=True))


def test_variable_frame_rate_detected(tmp_path):
    path = _vfr_clip(tmp_path / "vfr.mp4")
    record = probe_clip(path)
    assert record.variable_frame_rate and schema.FLAG_VARIABLE_FRAME_RATE in record_flags(record)
    with pytest.raises(ProbeError, match="variable_frame_rate"):
        probe_clip(path, policy=ProbePolicy(skip_variable_frame_rate=True))


def test_read_caption(tmp_path):
    (tmp_path / "ok.txt").write_bytes("\ufeff  un café  \n".encode())
    assert read_caption(tmp_path / "ok.txt") == "un café"
    (tmp_path / "bad.txt").write_bytes("un caf\xe9".encode("latin-1"))
    with pytest.raises(ProbeError) as info:
        read_caption(tmp_path / "bad.txt")
    assert info.value.reason == schema.SKIP_BAD_CAPTION_ENCODING
    assert "bad.txt" in info.value.detail and "0xe9" in info.value.detail


def test_record_round_trip_and_validation(clips):
    record = probe_clip(clips["good"], caption="é")
    assert ClipRecord.from_json_bytes(record.to_json_bytes()) == record
    assert ClipRecord.from_dict({**record.to_dict(), "fingerprint": "extra keys are ignored"}) == record
    bad = record.to_dict()
    del bad["num_frames"]
    with pytest.raises(SchemaError, match="num_frames"):
        ClipRecord.from_dict(bad)
    with pytest.raises(SchemaError, match="'width'"):
        ClipRecord.from_dict({**record.to_dict(), "width": 0})
    with pytest.raises(SchemaError, match="sample_rate"):
        ClipRecord.from_dict({**record.to_dict(), "sample_rate": None})


def test_read_index_errors(tmp_path):
    with pytest.raises(SchemaError, match="build_shards"):
        schema.read_index(tmp_path)
    (tmp_path / "index.json").write_text('{"version": 7, "shards": []}')
    with pytest.raises(SchemaError, match="version"):
        schema.read_index(tmp_path)
