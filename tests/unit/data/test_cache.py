"""mova_train.data.cache: hashing, fingerprints, staleness messages, reading one cached sample."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save, save_file

from mova_train.data.cache import (
    CACHE_KIND,
    CACHE_VERSION,
    CacheSettings,
    CorruptCacheError,
    StaleCacheError,
    cache_fingerprint,
    caption_hash,
    check_cache,
    component_hash,
    cond_with_mask,
    fingerprint_inputs,
    latents_checksum,
    pad_text,
    read_cached_sample,
)

SETTINGS = CacheSettings(num_frames=17, height=32, width=48, fps=24.0)
HASHES = {"video_vae": "a" * 32, "audio_vae": "b" * 32, "text_encoder": "c" * 32}


def write_index(folder, settings=SETTINGS, hashes=HASHES):
    index = {
        "version": CACHE_VERSION,
        "kind": CACHE_KIND,
        "fingerprint": cache_fingerprint(hashes, settings),
        "inputs": fingerprint_inputs(hashes, settings),
        "shards": [],
        "total": 0,
    }
    (folder / "index.json").write_text(json.dumps(index))
    return index


def test_pad_text_and_cond_mask():
    embeds = torch.randn(3, 5)
    padded = pad_text(embeds, 6)
    assert padded.shape == (6, 5) and torch.equal(padded[:3], embeds) and not padded[3:].any()
    assert torch.equal(pad_text(embeds, 2), embeds[:2])
    with pytest.raises(ValueError, match="text states"):
        pad_text(torch.randn(1, 3, 5), 6)
    cond = torch.randn(2, 4, 3, 2, 2)
    y = cond_with_mask(cond)
    assert y.shape == (2, 8, 3, 2, 2) and torch.equal(y[:, 4:], cond)
    assert (y[:, :4, 0] == 1).all() and not y[:, :4, 1:].any()
    assert torch.equal(cond_with_mask(cond[0]), y[0])


def test_fingerprint_changes_with_every_input():
    base = cache_fingerprint(HASHES, SETTINGS)
    assert base == cache_fingerprint(dict(reversed(list(HASHES.items()))), SETTINGS.to_dict())
    for field, value in [("num_frames", 33), ("height", 48), ("fps", 25.0), ("sample_rate", 44100),
                         ("window_start", 0.5), ("text_len", 256), ("compute_dtype", "bf16")]:  # fmt: skip
        changed = CacheSettings(**{**SETTINGS.to_dict(), field: value})
        assert cache_fingerprint(HASHES, changed) != base, field
    assert cache_fingerprint({**HASHES, "audio_vae": "d" * 32}, SETTINGS) != base


def test_component_hash_module_and_folder(tmp_path):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(2, 3, 1)
    h = component_hash(conv)
    assert h == component_hash(conv) and len(h) == 32
    with torch.no_grad():
        conv.weight[0, 0, 0] += 1e-6
    assert component_hash(conv) != h
    assert component_hash(conv.to(torch.bfloat16)) != component_hash(conv.float())

    folder = tmp_path / "audio_vae"
    folder.mkdir()
    (folder / "config.json").write_text('{"latent_dim": 8}')
    save_file({"w": torch.zeros(4, 2)}, folder / "diffusion_pytorch_model.safetensors")
    h = component_hash(folder)
    assert h == component_hash(str(folder))
    (folder / "config.json").write_text('{"latent_dim": 16}')
    h2 = component_hash(folder)
    assert h2 != h
    save_file({"w": torch.zeros(4, 3)}, folder / "diffusion_pytorch_model.safetensors")
    assert component_hash(folder) != h2
    assert component_hash([folder, folder]) != component_hash(folder)
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        component_hash(tmp_path / "missing")


def test_check_cache_names_what_changed(tmp_path):
    with pytest.raises(StaleCacheError, match="not found.*data_tools.encode"):
        check_cache(tmp_path)
    index = write_index(tmp_path)
    assert check_cache(tmp_path, index["fingerprint"]) == index
    check_cache(tmp_path, settings={"num_frames": 17, "fps": 24})
    with pytest.raises(StaleCacheError, match=r"num_frames 17 != 33 .*re-run `python -m data_tools.encode"):
        check_cache(tmp_path, settings={"num_frames": 33})
    with pytest.raises(StaleCacheError, match="height 32 != 64; width 48 != 64"):
        check_cache(tmp_path, settings={"height": 64, "width": 64})
    with pytest.raises(StaleCacheError, match="component video_vae weights aaaaaaaaaaaa != eeeeeeeeeeee"):
        check_cache(tmp_path, components={"video_vae": "e" * 32})
    with pytest.raises(StaleCacheError, match="fingerprint"):
        check_cache(tmp_path, "f" * 32)
    (tmp_path / "index.json").write_text(json.dumps({"version": 1, "shards": []}))
    with pytest.raises(StaleCacheError, match="not a latent cache"):
        check_cache(tmp_path)


def test_read_cached_sample():
    tensors = {
        "video_latents": torch.randn(4, 2, 3, 3).bfloat16(),
        "cond_latents": torch.randn(4, 2, 3, 3).bfloat16(),
        "audio_latents": torch.randn(8, 5).bfloat16(),
        "context": torch.randn(3, 6).bfloat16(),
    }
    record = {
        "caption": "a cat",
        "caption_sha256": caption_hash("a cat"),
        "fingerprint": "x",
        "audio_mask": False,
        "latents_sha256": latents_checksum(save(tensors)),
    }
    out = read_cached_sample(
        save(tensors), json.dumps(record).encode(), text_len=5, caption="a cat", fingerprint="x"
    )
    assert out["context"].shape == (5, 6) and out["text_lens"] == 3 and out["audio_mask"] is False
    assert torch.equal(out["video_latents"], tensors["video_latents"])
    assert read_cached_sample(save(tensors))["context"].shape == (3, 6)
    with pytest.raises(StaleCacheError, match="caption"):
        read_cached_sample(save(tensors), record, caption="a dog")
    with pytest.raises(KeyError, match="cond_latents"):
        read_cached_sample(save({k: v for k, v in tensors.items() if k != "cond_latents"}))


def test_corrupt_cached_tensors_are_refused_never_read(tmp_path):
    """Issue 14.2/14.10: one flipped byte in a cached tensor must not reach training (it gave 1.5e31 values)."""
    tensors = {
        "video_latents": torch.randn(4, 2, 3, 3).bfloat16(),
        "cond_latents": torch.randn(4, 2, 3, 3).bfloat16(),
        "audio_latents": torch.randn(8, 5).bfloat16(),
        "context": torch.randn(3, 6).bfloat16(),
    }
    good = save(tensors)
    record = {"caption": "", "latents_sha256": latents_checksum(good)}
    assert read_cached_sample(good, record)["context"].shape == (3, 6)
    flipped = bytearray(good)
    flipped[-7] ^= 0x40  # inside the last tensor's payload: safetensors itself would read it happily
    assert read_cached_sample(bytes(flipped))["context"].shape == (3, 6)
    with pytest.raises(CorruptCacheError, match="does not match its checksum"):
        read_cached_sample(bytes(flipped), record)
    with pytest.raises(CorruptCacheError, match="no latents_sha256"):
        read_cached_sample(good, {"caption": ""})
    bad = save({**tensors, "audio_latents": torch.full((8, 5), float("nan")).bfloat16()})
    with pytest.raises(CorruptCacheError, match="non-finite"):
        read_cached_sample(bad, {"latents_sha256": latents_checksum(bad)})
    truncated = good[: len(good) // 2]
    with pytest.raises(CorruptCacheError, match="cannot be read"):
        read_cached_sample(truncated, {"latents_sha256": latents_checksum(truncated)})


def test_old_cache_format_is_refused_with_the_fix(tmp_path):
    (tmp_path / "index.json").write_text(
        json.dumps({"version": 1, "kind": "mova_latent_cache", "shards": []})
    )
    with pytest.raises(StaleCacheError, match="format version 1.*re-run"):
        check_cache(tmp_path)
