"""make_synthetic: real H.264+AAC clips whose frames and sounds can be checked exactly."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch
from torchcodec.decoders import AudioDecoder, VideoDecoder

from data_tools.make_synthetic import main
from mova_train.data.datamodule import MovaDataModule
from mova_train.data.schema import SchemaError
from mova_train.data.synthetic import (
    COLORS,
    SyntheticSpec,
    draw_barcode,
    make_clip,
    make_dataset,
    read_barcode,
)


def test_barcode_round_trip_in_memory():
    frame = torch.zeros(3, 48, 64, dtype=torch.uint8)
    for index in (0, 1, 77, 192, 255):
        draw_barcode(frame, index)
        assert read_barcode(frame) == index
        assert read_barcode(frame.float() / 127.5 - 1.0) == index  # the [-1, 1] form the dataset produces
    with pytest.raises(ValueError, match="barcode_bits"):
        draw_barcode(frame, 256)


def test_make_clip_frames_carry_their_index(tmp_path):
    clip = make_clip(tmp_path / "a.mp4", num_frames=20, fps=Fraction(30000, 1001), index_barcode=True, seed=3)
    decoder = VideoDecoder(str(clip.path))
    meta = decoder.metadata
    assert meta.num_frames == 20 and (meta.width, meta.height) == (64, 48)
    assert Fraction(meta.average_fps).limit_denominator(1001) == Fraction(30000, 1001)
    frames = decoder.get_frames_at(list(range(20))).data
    assert [read_barcode(f) for f in frames] == list(range(20))


def test_make_clip_clicks_at_known_times(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", num_frames=24, fps=24, clicks_at=[0.25, 0.5], color="red")
    samples = AudioDecoder(str(clip.path)).get_all_samples()
    assert samples.sample_rate == 48000 and samples.data.shape[0] == 1
    wave = samples.data[0]
    loud = (wave.abs() > 0.6).nonzero().flatten().float() / 48000
    # every loud sample is within 3 ms of a requested click, and both clicks are there
    assert loud.numel() > 0
    assert all(min(abs(t - 0.25), abs(t - 0.5)) < 0.003 for t in loud.tolist())
    assert (loud - 0.25).abs().min() < 0.001 and (loud - 0.5).abs().min() < 0.001
    # the tone under the clicks is quieter than the clicks
    assert wave[: int(0.2 * 48000)].abs().max() < 0.5
    assert "red" in clip.caption and "220 Hz" in clip.caption


def test_make_clip_options_change_the_streams(tmp_path):
    silent = make_clip(tmp_path / "s.mp4", audio=False, width=48, height=64)
    assert silent.sample_rate == 0 and "no sound" in silent.caption
    with pytest.raises(ValueError):
        AudioDecoder(str(silent.path))
    assert VideoDecoder(str(silent.path)).metadata.height == 64
    stereo = make_clip(tmp_path / "st.mp4", sample_rate=44100, channels=2, audio_seconds=0.5)
    meta = AudioDecoder(str(stereo.path)).metadata
    assert (meta.sample_rate, meta.num_channels) == (44100, 2)
    assert meta.duration_seconds == pytest.approx(0.5, abs=0.05)


def test_bounces_are_consistent_with_the_caption(tmp_path):
    clip = make_clip(tmp_path / "b.mp4", num_frames=48, seed=1)
    assert clip.bounces_at, "a 2 s clip of a fast shape in a 64x48 box must bounce"
    assert clip.clicks_at == clip.bounces_at and "bouncing" in clip.caption
    assert any(name in clip.caption for name in COLORS)


def test_make_dataset_writes_mova_metadata(tmp_path):
    metadata = make_dataset(tmp_path / "ds", count=2, seconds=0.5, fps=24, seed=5)
    entries = json.loads(metadata.read_text())
    assert [e["video_path"] for e in entries] == ["clip_000000.mp4", "clip_000001.mp4"]
    assert all(e["caption"] for e in entries)
    assert VideoDecoder(str(tmp_path / "ds" / entries[1]["video_path"])).metadata.num_frames == 12


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "--index-barcode" in capsys.readouterr().out


# ------------------------------------------------------------------------------ embedded dataset


SMALL = dict(num_frames=5, fps=12.0, height=32, width=32, sample_rate=1600, batch_size=1, num_workers=0)


def _spec(root, **kw) -> SyntheticSpec:
    return SyntheticSpec(root=str(root), count=2, width=32, height=32, fps=12.0, seconds=0.6, **kw)


@pytest.mark.parametrize("mode", ["raw", "cached"])
def test_prepare_data_makes_the_dataset_once_then_trains_on_it(tmp_path, mode):
    spec = _spec(tmp_path / "synthetic")
    target = spec.target(mode)
    dm = MovaDataModule(str(target), synthetic=spec, mode=mode, text_len=16, **SMALL)
    dm.prepare_data()
    index = json.loads((target / "index.json").read_text())
    assert index["total"] == 2 and not list((tmp_path / "synthetic").glob(".staging-*"))
    stamp = (target / "index.json").stat().st_mtime_ns
    dm.prepare_data()  # a second call (or a second node) finds it and writes nothing
    assert (target / "index.json").stat().st_mtime_ns == stamp
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert ("video" if mode == "raw" else "video_latents") in batch


@pytest.mark.parametrize("shards", ["{other}/*.tar", "{other}/shard-000000.tar", "{other}"])
def test_shards_elsewhere_never_generate_synthetic_data(tmp_path, shards):
    """Issue 14.9: a glob or a .tar with a synthetic recipe trained on synthetic clips and made a folder named
    like the glob; now those shards are used (or refused when missing) and nothing is generated.
    """
    other = tmp_path / "mine"
    spec = _spec(tmp_path / "synthetic")
    dm = MovaDataModule(shards.format(other=other), synthetic=spec, mode="raw", **SMALL)
    dm.prepare_data()
    assert not (tmp_path / "synthetic").exists() and not other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises((FileNotFoundError, SchemaError)):
        dm.setup("fit")
