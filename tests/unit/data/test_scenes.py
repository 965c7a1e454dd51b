"""Scene cuts on real mp4s: a concatenation of two different clips has one cut, found within a frame."""

from __future__ import annotations

import pytest
from helpers.av_media import concat_two_scenes

from mova_train.data.scenes import detect_cuts, scene_spans, window_crosses_cut
from mova_train.data.synthetic import make_clip


@pytest.fixture(scope="module")
def two_scenes(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenes") / "two_scenes.mp4"
    concat_two_scenes(path)
    return path


def test_cut_between_two_clips_is_found_within_one_frame(two_scenes):
    cuts = detect_cuts(two_scenes.read_bytes())
    assert len(cuts) == 1
    assert abs(cuts[0] - 36 / 24) <= 1 / 24 + 1e-6


def test_moving_shape_and_one_frame_flashes_are_not_cuts(tmp_path):
    clip = make_clip(tmp_path / "flashes.mp4", num_frames=48, flashes_at=[0.5, 1.2], seed=3)
    assert detect_cuts(str(clip.path)) == []


def test_scene_spans_and_window_crossing():
    assert scene_spans([1.5], 2.75) == [(0.0, 1.5), (1.5, 2.75)]
    assert scene_spans(None, 2.0) == [(0.0, 2.0)]
    assert not window_crosses_cut(0.0, 1.5, [1.5], 24)  # ends exactly at the cut
    assert not window_crosses_cut(1.5, 1.0, [1.5], 24)  # starts exactly at it
    assert window_crosses_cut(1.0, 1.0, [1.5], 24)
