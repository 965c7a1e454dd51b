"""Shard streams: round trip, buckets, resumable training stream, skip policy, cached mode."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch
from helpers.shards import encode_safetensors, write_tar
from helpers.streams import take_batches

from mova_train.data.cache import cond_with_mask, latents_checksum
from mova_train.data.datamodule import MovaDataModule
from mova_train.data.pipeline import (
    STREAM_KEY,
    StreamConfig,
    ValStream,
    assign_bucket,
    iter_shard,
    resolve_shards,
)
from mova_train.data.shard_builder import build_shards
from mova_train.data.synthetic import make_clip

BUCKETS = [(32, 48, 5), (48, 32, 5), (32, 48, 9)]


def _dataset(folder, specs) -> None:
    """Write clips `(width, height, num_frames)` at 24 fps plus a MOVA metadata.json into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (w, h, n) in enumerate(specs):
        clip = make_clip(folder / f"clip{i}.mp4", width=w, height=h, num_frames=n, seed=i)
        entries.append({"video_path": clip.path.name, "caption": f"clip number {i}"})
    (folder / "metadata.json").write_text(json.dumps(entries))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """8 landscape 64x48 clips + 4 portrait 48x64 clips (12 frames), 3 samples per shard."""
    root = tmp_path_factory.mktemp("data")
    _dataset(root / "src", [(64, 48, 12)] * 8 + [(48, 64, 12)] * 4)
    index = build_shards(root / "src" / "metadata.json", root / "shards", max_count=3)
    assert index["total"] == 12
    return root / "shards"


def _keys(shard_folder) -> list[str]:
    return [s["__key__"] for url in resolve_shards(shard_folder) for s in iter_shard(url)]


def _dm(shards, **kw) -> MovaDataModule:
    args = dict(num_frames=5, fps=24.0, height=32, width=48, batch_size=2, num_workers=2, shuffle_buffer=4)
    args.update(kw)
    dm = MovaDataModule(shards, **args)
    dm.setup("fit")
    return dm


def test_round_trip_returns_every_sample_with_its_caption(shards):
    cfg = StreamConfig(
        shards=resolve_shards(shards),
        num_frames=5,
        height=32,
        width=48,
        batch_size=2,
        buckets=BUCKETS[:2],
        video_output="float",
    )
    batches = list(ValStream(cfg))
    keys = [k for b in batches for k in b["key"]]
    assert sorted(keys) == sorted(_keys(shards)) and len(keys) == 12
    for b in batches:
        assert b["video"].dtype == torch.float32 and -1 <= b["video"].min() and b["video"].max() <= 1
        assert b["audio"].shape == (len(b["key"]), 1, 10000)
        assert torch.equal(b["first_frame"], b["video"][:, :, 0])
        assert all(c.startswith("clip number ") for c in b["caption"])
        assert b[STREAM_KEY]["skipped"] == {}


def test_buckets_group_by_aspect_and_length(shards):
    cfg = StreamConfig(shards=resolve_shards(shards), fps=24.0, batch_size=2, buckets=BUCKETS)
    shapes = {tuple(b["video"].shape[2:]) for b in ValStream(cfg)}
    # 12 frames at 24 fps hold 9 frames, so landscape clips take the longer bucket; portrait clips the portrait one
    assert shapes == {(9, 32, 48), (5, 48, 32)}
    assert assign_bucket({"width": 64, "height": 48, "duration": 0.25}, BUCKETS, 24.0, False) == (32, 48, 5)
    assert assign_bucket({"width": 64, "height": 48, "duration": 0.15}, BUCKETS, 24.0, False) is None


def _take(dm: MovaDataModule, n: int, consume: int | None = None) -> list[list[str]]:
    """The keys of n batches received from the train loader; the first `consume` (default all) trained on."""
    return [b["key"] for b in take_batches(dm, n, consume)]


def test_resumed_train_stream_continues_without_repeats_or_gaps(shards):
    reference = _take(_dm(shards, seed=7), 12)
    assert len({tuple(k) for k in reference}) > 1  # the stream moves on

    first = _dm(shards, seed=7)
    head = _take(first, 6, consume=5)  # the 6th batch was prefetched but never trained on
    state = first.state_dict()
    assert state["ranks"][0]["batches"] == {0: 3, 1: 2}  # round robin: w0 gave batches 0,1,2 and w1 gave 0,1

    resumed = _dm(shards, seed=7)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # as stored in a checkpoint (string keys survive)
    tail = _take(resumed, 7)
    assert head[:5] + tail == reference


def test_train_stream_is_seeded(shards):
    assert _take(_dm(shards, seed=1), 4) == _take(_dm(shards, seed=1), 4)
    assert _take(_dm(shards, seed=1), 4) != _take(_dm(shards, seed=2), 4)


def test_layout_change_restarts_with_a_new_stream_epoch(shards, caplog):
    dm = _dm(shards, seed=7)
    _take(dm, 2)
    state = dm.state_dict()
    other = _dm(shards, seed=7, num_workers=1)
    other.load_state_dict(state)
    assert other.epoch == 1 and "restarts with fresh seeds" in caplog.text


def _corrupt_shard(shards, tmp_path, n_bad: int) -> str:
    """A shard with the first sample of `shards` plus `n_bad` samples whose mp4 bytes are garbage."""
    good = next(iter_shard(resolve_shards(shards)[0]))
    samples = [{"__key__": good["__key__"], "mp4": good["mp4"], "json": good["json"]}]
    for i in range(n_bad):
        samples.append({"__key__": f"bad{i:013d}", "mp4": b"\x00not a video" * 50, "json": good["json"]})
    path = tmp_path / "corrupt.tar"
    write_tar(path, samples)
    return str(path)


def _corrupt_stream(shards, tmp_path, corrupt: int, **skip) -> StreamConfig:
    """A one-clip-per-batch raw stream (5 frames of 32 x 48) over a shard with ``corrupt`` undecodable samples."""
    shard = _corrupt_shard(shards, tmp_path, corrupt)
    return StreamConfig(shards=[shard], num_frames=5, height=32, width=48, batch_size=1, **skip)


def test_corrupt_sample_is_skipped_and_counted(shards, tmp_path):
    cfg = _corrupt_stream(shards, tmp_path, corrupt=1, max_skip_rate=0.6, skip_rate_min_samples=1)
    batches = list(ValStream(cfg))
    assert [b["key"] for b in batches] == [[next(iter_shard(resolve_shards(shards)[0]))["__key__"]]]
    assert batches[-1][STREAM_KEY]["skipped"] == {}  # counted after the only good batch
    counter_state = None
    for b in ValStream(StreamConfig(**{**cfg.__dict__, "batch_size": 2})):
        counter_state = b[STREAM_KEY]
    assert counter_state["skipped"] == {"decode_error": 1} and counter_state["seen"] == 2


def test_skip_rate_threshold_stops_with_a_clear_error(shards, tmp_path):
    cfg = _corrupt_stream(shards, tmp_path, corrupt=3, max_skip_rate=0.5, skip_rate_min_samples=2)
    with pytest.raises(RuntimeError, match=r"bad0000000000001.*decode_error|max_skip_rate=0.5"):
        list(ValStream(cfg))


def test_cached_mode_reads_latents_without_decoding(tmp_path):
    torch.manual_seed(0)
    samples, expected = [], []
    for i in range(3):
        t = {
            "video_latents": torch.randn(4, 2, 2, 3).bfloat16(),
            "cond_latents": torch.randn(4, 2, 2, 3).bfloat16(),
            "audio_latents": torch.randn(8, 11).bfloat16(),
            "context": torch.randn(3 + i, 6).bfloat16(),
        }
        expected.append(t)
        latents = encode_safetensors(t)
        record = {"caption": f"c{i}", "has_audio": i != 1, "height": 16, "width": 24, "num_frames": 5}
        record["latents_sha256"] = latents_checksum(latents)
        samples.append({"__key__": f"k{i}", "latents.safetensors": latents, "json": record})
    write_tar(tmp_path / "cache-000000.tar", samples)
    cfg = StreamConfig(shards=[str(tmp_path / "cache-000000.tar")], mode="cached", batch_size=3, text_len=8)
    (batch,) = list(ValStream(cfg))
    assert batch["key"] == ["k0", "k1", "k2"] and batch["caption"] == ["c0", "c1", "c2"]
    assert batch["video_latents"].shape == (3, 4, 2, 2, 3) and batch["audio_latents"].shape == (3, 8, 11)
    assert batch["context"].shape == (3, 8, 6)
    assert batch["text_lens"].tolist() == [3, 4, 5] and batch["audio_mask"].tolist() == [True, False, True]
    for i, t in enumerate(expected):
        assert torch.equal(batch["video_latents"][i], t["video_latents"].float())
        assert torch.equal(batch["cond"][i], cond_with_mask(t["cond_latents"].float()))
        assert torch.equal(batch["context"][i, : 3 + i], t["context"].float())
        assert not batch["context"][i, 3 + i :].any()
    assert "video" not in batch


def test_datamodule_converts_uint8_video_to_model_range(shards):
    dm = _dm(shards, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].dtype == torch.uint8  # travels between processes as uint8
    out = dm.finalize_batch(batch)
    assert out["video"].dtype == torch.float32 and out["video"].min() >= -1 and STREAM_KEY not in out


def test_shard_member_bytes_are_unchanged(shards, tmp_path):
    url = resolve_shards(shards)[0]
    with tarfile.open(url) as tar:
        names = [m.name for m in tar.getmembers()]
    sample = next(iter_shard(url))
    assert f"{sample['__key__']}.mp4" in names and sample["mp4"][4:8] == b"ftyp"


def test_resume_with_another_batch_size_is_refused(shards):
    """Issue 14.9: positions count batches; another data.batch_size would silently skip or repeat samples."""
    from mova_train.data.options import DataConfigError

    dm = _dm(shards, seed=7)
    _take(dm, 2)
    state = json.loads(json.dumps(dm.state_dict()))
    with pytest.raises(DataConfigError, match=r"data.batch_size=3 but the checkpoint .* data.batch_size=2"):
        _dm(shards, seed=7, batch_size=3).load_state_dict(state)
    _dm(shards, seed=7).load_state_dict(state)  # the same batch size continues
