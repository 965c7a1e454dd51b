"""inspect_shards: summary numbers, table, JSON and contact sheet of real shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data_tools.inspect_shards import main
from mova_train.data.inspection import contact_sheet, format_table, summarize
from mova_train.data.shard_builder import build_shards
from mova_train.data.synthetic import make_clip


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    make_clip(root / "a.mp4", num_frames=12, seed=1)
    make_clip(root / "b.mp4", num_frames=6, width=48, height=64, audio=False, seed=2)
    make_clip(root / "c.mp4", num_frames=12, sample_rate=44100, channels=2, seed=3)
    (root / "zero.mp4").write_bytes(b"")
    entries = [{"video_path": n, "caption": n} for n in ("a.mp4", "b.mp4", "c.mp4", "zero.mp4")]
    (root / "metadata.json").write_text(json.dumps(entries))
    build_shards(root / "metadata.json", root / "out", max_count=2)
    return root / "out"


def test_summary_counts(shards):
    s = summarize(shards)
    assert (s["shards"], s["samples"], s["inputs"]) == (2, 3, 4)
    assert s["duration_total"] == pytest.approx(0.5 + 0.25 + 0.5)
    assert s["duration_min"] == pytest.approx(0.25) and s["duration_max"] == pytest.approx(0.5)
    assert s["resolutions"] == {"64x48": 2, "48x64": 1}
    assert s["fps"] == {"24/1": 3}
    assert (s["with_audio"], s["without_audio"]) == (2, 1)
    assert s["sample_rates"] == {"48000": 1, "44100": 1} and s["channels"] == {"1": 1, "2": 1}
    assert s["skipped"] == {"empty_file": 1} and s["flags"] == {"no_audio_stream": 1}
    assert s["count_mismatch"] == []


def test_table_and_json_cli(shards, capsys):
    table = format_table(summarize(shards))
    assert "resolutions" in table and "64x48: 2" in table and "empty_file: 1" in table
    main([str(shards), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["samples"] == 3 and out["skipped"] == {"empty_file": 1}


def test_contact_sheet(shards, tmp_path):
    path = contact_sheet(shards, tmp_path / "sheet.png", num_samples=2, frames_per_sample=3, thumb_height=48)
    image = Image.open(path).convert("RGB")
    pixels = np.asarray(image).astype(int)
    rows = 2 * (48 + 40 + 16)
    assert image.height == rows and image.width >= 3 * 64
    # the waveform strip of the first sample (it has audio) holds green envelope pixels
    strip = pixels[48 : 48 + 40]
    assert ((strip[..., 1] > 150) & (strip[..., 0] < 150)).any()
    # the frames are not blank
    assert len(np.unique(pixels[:48, :64].reshape(-1, 3), axis=0)) > 2
