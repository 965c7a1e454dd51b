"""Every data file kind damaged on disk: shard tar, cache tensor payload, index.json (issue 14.2 / 14.10).

A damaged sample is skipped and counted (never decoded into garbage, never a NaN batch); a damaged or incomplete
folder is refused at setup with the file and the fix named.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tarfile

import pytest
import torch

from mova_train.codecs.encoders import tiny_encoders
from mova_train.data.cache import CacheSettings, StaleCacheError
from mova_train.data.cache_writer import encode_cache, module_hashes
from mova_train.data.datamodule import MovaDataModule
from mova_train.data.pipeline import STREAM_KEY
from mova_train.data.schema import SchemaError
from mova_train.data.shard_builder import build_shards
from mova_train.data.synthetic import make_dataset

OPTS = dict(num_frames=5, fps=12.0, height=32, width=32, sample_rate=1600, num_workers=0, max_skip_rate=1.0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """4 clips in 2 raw shards, and their latent cache (tiny encoders)."""
    root = tmp_path_factory.mktemp("corrupt")
    meta = make_dataset(root / "clips", count=4, width=32, height=32, fps=12, seconds=0.6)
    build_shards(meta, root / "raw", max_count=2)
    settings = CacheSettings(num_frames=5, height=32, width=32, fps=12.0, sample_rate=1600, text_len=16)
    enc = tiny_encoders(0, text_len=16)
    encode_cache(root / "raw", root / "cache", enc, module_hashes(enc), settings, progress=False)
    return root


def _copy(folders, name, tmp_path):
    shutil.copytree(folders / name, tmp_path / name)
    return tmp_path / name


def _train_batches(folder, n, **kw):
    dm = MovaDataModule(str(folder), **{**OPTS, **kw})
    dm.setup("fit")
    return list(itertools.islice(iter(dm.train_dataloader()), n))


def _val_batches(folder, **kw):
    dm = MovaDataModule(str(folder), val_shards=str(folder), **{**OPTS, **kw})
    dm.setup("fit")
    return list(dm.val_dataloader())


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_shard_tar_is_skipped_and_counted(folders, tmp_path, damage):
    raw = _copy(folders, "raw", tmp_path)
    shard = raw / "shard-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(bytes(b ^ 0x5A for b in data) if damage == "garbage" else data[: len(data) // 3])
    batches = _train_batches(raw, 6)
    assert len(batches) == 6
    skipped = batches[-1][STREAM_KEY]["skipped"]
    assert skipped.get("corrupt_shard", 0) >= 1 and set(skipped) == {"corrupt_shard"}
    (val,) = _val_batches(raw, val_batch_size=4)  # one batch, flushed after the whole slice was read
    assert 2 <= len(val["key"]) < 4  # shard 0 whole, shard 1 up to the damage
    assert val[STREAM_KEY]["skipped"] == {"corrupt_shard": 1}


def test_flipped_byte_in_a_cached_tensor_is_a_counted_skip_never_a_nan(folders, tmp_path):
    cache = _copy(folders, "cache", tmp_path)
    shard = cache / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".latents.safetensors"))
    data = bytearray(shard.read_bytes())
    data[member.offset_data + member.size - 3] ^= 0xFF  # the last bytes of the last tensor's payload
    shard.write_bytes(bytes(data))
    batches = _val_batches(cache, mode="cached", text_len=16)
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == 3 and member.name.split(".")[0] not in keys
    for b in batches:
        for name in ("video_latents", "cond", "audio_latents", "context"):
            assert torch.isfinite(b[name]).all()
    assert batches[-1][STREAM_KEY]["skipped"] == {"corrupt_cache": 1}  # counters are cumulative
    train = _train_batches(cache, 24, mode="cached", text_len=16)
    assert train[-1][STREAM_KEY]["skipped"].get("corrupt_cache", 0) >= 1
    assert all(torch.isfinite(b["video_latents"]).all() for b in train)


def test_missing_shard_is_found_at_setup(folders, tmp_path):
    raw = _copy(folders, "raw", tmp_path)
    (raw / "shard-000001.tar").unlink()
    dm = MovaDataModule(str(raw), **OPTS)
    with pytest.raises(FileNotFoundError, match="shard-000001.tar"):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError, match="missing.*nope.tar"):
        MovaDataModule([str(raw / "shard-000000.tar"), str(raw / "nope.tar")], **OPTS).setup("fit")


@pytest.mark.parametrize("name", ["raw", "cache"])
@pytest.mark.parametrize("damage", ["not_json", "truncated", "bad_shards"])
def test_damaged_index_json_is_refused_at_setup_naming_it(folders, tmp_path, name, damage):
    folder = _copy(folders, name, tmp_path)
    index = folder / "index.json"
    text = index.read_text()
    if damage == "not_json":
        index.write_bytes(b"\xff\xfe garbage")
    elif damage == "truncated":
        index.write_text(text[: len(text) // 2])
    else:
        index.write_text(json.dumps({**json.loads(text), "shards": [{"name": 3}]}))
    mode = "cached" if name == "cache" else "raw"
    dm = MovaDataModule(str(folder), mode=mode, text_len=16, **{k: v for k, v in OPTS.items()})
    with pytest.raises((SchemaError, StaleCacheError), match=str(index)):
        dm.setup("fit")
