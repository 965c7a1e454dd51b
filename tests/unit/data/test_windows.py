"""Window starts stay inside one scene: the cache's fixed windows and raw mode's random starts."""

from __future__ import annotations

import json

import pytest
import torch

from mova_train.data.pipeline import (
    SkipCounter,
    StreamConfig,
    assign_bucket,
    iter_shard,
    raw_stage,
    resolve_shards,
)
from mova_train.data.scenes import window_crosses_cut
from mova_train.data.shard_builder import build_shards
from mova_train.data.synthetic import make_clip
from mova_train.data.windows import first_start, parse_policy, random_start, window_starts

CLIP = {"duration": 30.0, "fps": 8.0, "cuts": [7.0, 19.0], "source_path": "talk.mp4"}


def _inside_one_scene(record, starts, window):
    """No window crosses a cut (data_av's check) and each lies inside the clip."""
    fps = record["fps"]
    inside = all(0 <= s and s + window <= record["duration"] + 1e-9 for s in starts)
    return inside and not any(window_crosses_cut(s, window, record["cuts"], fps) for s in starts)


def test_stride_slide_and_count_policies():
    window = 21 / 8  # 2.625 s
    stride = window_starts(CLIP, 21, 8.0, "stride")
    # scenes of 7, 12 and 11 s hold 2, 4 and 4 back-to-back windows (11 without the cuts)
    assert stride == [0.0, 2.625, 7.0, 9.625, 12.25, 14.875, 19.0, 21.625, 24.25, 26.875]
    assert len(window_starts({**CLIP, "cuts": []}, 21, 8.0, "stride")) == 11
    slide = window_starts(CLIP, 21, 8.0, "slide")
    assert len(slide) > len(stride) and _inside_one_scene(CLIP, slide, window)
    assert all(abs(s * 8 - round(s * 8)) < 1e-9 for s in slide)  # on the source frame grid
    four = window_starts(CLIP, 21, 8.0, 4)
    assert (
        len(four) == 4 and four[0] == 0.0 and four == sorted(four) and _inside_one_scene(CLIP, four, window)
    )
    assert window_starts({"duration": 1.0, "fps": 8.0}, 21, 8.0, "stride") == []  # too short: no window


def test_random_and_first_starts_stay_in_one_scene():
    gen = torch.Generator().manual_seed(0)
    starts = [random_start(CLIP, 21, 8.0, gen) for _ in range(300)]
    assert _inside_one_scene(CLIP, starts, 21 / 8) and len(set(starts)) > 100
    assert random_start({"duration": 30.0, "fps": 8.0}, 21, 8.0, gen) is None  # no cuts: decode_clip draws
    assert first_start(CLIP, 21, 8.0, not_before=5.0) == 7.0  # [5, 7.625) would cross the cut at 7 s
    assert first_start({"duration": 3.0, "fps": 8.0, "cuts": [1.0, 2.0]}, 21, 8.0) is None


def test_policy_is_checked():
    assert parse_policy("stride") == "stride" and parse_policy("3") == 3 and parse_policy(None) is None
    with pytest.raises(ValueError, match="--windows 'every'"):
        parse_policy("every")


def test_raw_mode_draws_starts_inside_one_scene(tmp_path):
    """A real 4 s clip whose record carries a cut at 1.5 s: the random starts of 1 s windows avoid it, and a clip
    whose scenes are all shorter than the window goes to no bucket.
    """
    clip = make_clip(tmp_path / "c.mp4", width=32, height=32, fps=8, num_frames=32, sample_rate=16000)
    (tmp_path / "metadata.json").write_text(json.dumps([{"video_path": clip.path.name, "caption": "c"}]))
    build_shards(tmp_path / "metadata.json", tmp_path / "shards")
    sample = next(iter_shard(resolve_shards(tmp_path / "shards")[0]))
    record = {**json.loads(sample["json"]), "cuts": [1.5]}
    sample["json"] = json.dumps(record).encode()
    cfg = StreamConfig(num_frames=9, fps=8.0, height=32, width=32, sample_rate=16000)
    items = raw_stage([sample] * 40, (32, 32, 9), cfg, SkipCounter(0.0, 1), list(range(40)))
    starts = [it["start"] for it in items]
    assert len(items) == 40 and _inside_one_scene(record, starts, 9 / 8)
    assert {s < 1.5 for s in starts} == {True, False}  # both scenes are drawn
    (first,) = raw_stage([sample], (32, 32, 9), cfg, SkipCounter(0.0, 1), None)  # validation: fixed start
    assert first["start"] == 0.0
    assert assign_bucket({**record, "cuts": [1.0, 2.0, 3.0]}, [(32, 32, 9)], 8.0, cached=False) is None
