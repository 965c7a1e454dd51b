"""data_tools.encode: latent cache == raw decode + the same encoders (acceptance 4), staleness, ranks, resume."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import data_tools.encode as encode_tool
from mova_train.codecs.encoders import tiny_encoders
from mova_train.data.cache import (
    CacheSettings,
    StaleCacheError,
    cache_fingerprint,
    check_cache,
    read_cached_sample,
)
from mova_train.data.cache_writer import checkpoint_hashes, encode_cache, module_hashes
from mova_train.data.datamodule import MovaDataModule
from mova_train.data.shard_builder import build_shards
from mova_train.data.synthetic import make_dataset

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SEED = 0
TEXT_LEN = 160
CLI = ["--num-frames", "9", "--height", "48", "--width", "64", "--fps", "8", "--sample-rate", "1600"]
SETTINGS = CacheSettings(num_frames=9, height=48, width=64, fps=8.0, sample_rate=1600, text_len=TEXT_LEN)
# cheaper settings for the rank / resume tests (center crop 48x64 -> 32x32, 5 frames)
SMALL = CacheSettings(num_frames=5, height=32, width=32, fps=8.0, sample_rate=1600, text_len=TEXT_LEN)


def read_cache(folder: Path) -> dict[str, tuple[bytes, bytes, str]]:
    """Key -> (latents bytes, json bytes, shard name) over every shard listed in index.json."""
    index = json.loads((folder / "index.json").read_text())
    out = {}
    for shard in index["shards"]:
        with tarfile.open(folder / shard["name"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in members:
            if name.endswith(".latents.safetensors"):
                key = name.split(".", 1)[0]
                out[key] = (members[name], members[f"{key}.json"], shard["name"])
    return out


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> Path:
    """5 synthetic clips (48x64, 12 frames at 8 fps, 16 kHz AAC) in 3 raw shards (2, 2, 1)."""
    root = tmp_path_factory.mktemp("encode")
    meta = make_dataset(root / "clips", count=5, width=64, height=48, fps=8, seconds=1.5, sample_rate=16000)
    build_shards(meta, root / "raw", max_count=2)
    return root / "raw"


@pytest.fixture(scope="module")
def encoders():
    return tiny_encoders(SEED, text_len=TEXT_LEN)


@pytest.fixture(scope="module")
def cache_dir(raw_dir, encoders, tmp_path_factory) -> Path:
    """The cache written by the command line (in-process; the tiny encoders are built once per module)."""
    out = tmp_path_factory.mktemp("cache") / "cache"
    mp = pytest.MonkeyPatch()
    built = []

    def shared_tiny(seed: int, text_len: int = 16):
        assert (seed, text_len) == (SEED, TEXT_LEN)
        built.append(seed)
        return encoders

    mp.setattr("mova_train.codecs.encoders.tiny_encoders", shared_tiny)
    try:
        argv = [
            "--shards",
            str(raw_dir),
            "--out",
            str(out),
            "--tiny-seed",
            str(SEED),
            "--text-len",
            str(TEXT_LEN),
        ]
        summary = encode_tool.main([*argv, *CLI, "--batch-size", "2", "--device", "cpu", "--no-progress"])
    finally:
        mp.undo()
    assert built == [SEED]
    assert summary["count"] == 5 and summary["index"]["total"] == 5
    return out


def test_cli_help_runs_as_module():
    result = subprocess.run(
        [sys.executable, "-m", "data_tools.encode", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for flag in (
        "--shards",
        "--out",
        "--checkpoint",
        "--tiny-seed",
        "--world-size",
        "--resume",
        "--window-start",
    ):
        assert flag in result.stdout


def test_cache_layout_and_index(cache_dir, encoders):
    index = json.loads((cache_dir / "index.json").read_text())
    assert index["kind"] == "mova_latent_cache"
    assert [s["name"] for s in index["shards"]] == [f"shard-00000{i}.tar" for i in range(3)]
    assert [s["count"] for s in index["shards"]] == [2, 2, 1]
    assert index["skipped"] == {} and index["total"] == 5
    assert index["fingerprint"] == cache_fingerprint(module_hashes(encoders), SETTINGS)
    assert index["inputs"]["settings"]["num_frames"] == 9
    samples = read_cache(cache_dir)
    assert len(samples) == 5
    latents, record_bytes, _ = next(iter(samples.values()))
    assert b"pickle" not in latents[:200]
    record = json.loads(record_bytes)
    assert record["fingerprint"] == index["fingerprint"]
    assert (record["num_frames"], record["height"], record["width"]) == (9, 48, 64)
    assert record["source_num_frames"] == 12 and record["cache"]["fps"] == 8.0
    from safetensors.torch import load

    tensors = load(latents)
    assert {k: v.dtype for k, v in tensors.items()} == dict.fromkeys(
        ("video_latents", "cond_latents", "audio_latents", "context"), torch.bfloat16
    )
    assert tensors["video_latents"].shape == (4, 3, 6, 8) == tensors["cond_latents"].shape
    assert tensors["audio_latents"].shape[0] == 8
    assert tensors["context"].shape == (record["n_tokens"], 32)
    assert 0 < record["n_tokens"] < TEXT_LEN, "text states must be trimmed to the real token count"


def test_acceptance_cached_equals_raw_plus_encoders(raw_dir, cache_dir, encoders):
    """Acceptance 4: the cached datamodule yields exactly the bf16 cast of raw decode + the same tiny encoders."""
    common = dict(num_frames=9, fps=8.0, height=48, width=64, sample_rate=1600, batch_size=2, num_workers=0)
    raw_dm = MovaDataModule(shards=raw_dir, val_shards=raw_dir, mode="raw", video_output="float", **common)
    cached_dm = MovaDataModule(
        shards=cache_dir, val_shards=cache_dir, mode="cached", text_len=TEXT_LEN, **common
    )
    raw_dm.setup()
    cached_dm.setup()
    expected = {}
    for batch in raw_dm.val_dataloader():
        batch = raw_dm.finalize_batch(batch, consumed=False)
        with torch.no_grad():
            enc = encoders.encode_batch(batch)
        _, mask = encoders.text_encoder.tokenize(batch["caption"])
        for i, key in enumerate(batch["key"]):
            expected[key] = {
                "video_latents": enc["video_latents"][i],
                "cond": enc["cond"][i],
                "audio_latents": enc["audio_latents"][i],
                "context": enc["context"][i],
                "n_tokens": int(mask[i].sum()),
                "caption": batch["caption"][i],
            }
    assert len(expected) == 5
    seen = set()
    for batch in cached_dm.val_dataloader():
        batch = cached_dm.finalize_batch(batch, consumed=False)
        assert set(batch) >= {"video_latents", "cond", "audio_latents", "context", "text_lens"}
        assert batch["context"].shape[1:] == (TEXT_LEN, 32)
        for i, key in enumerate(batch["key"]):
            want = expected[key]
            bf16 = torch.bfloat16
            assert torch.equal(batch["video_latents"][i].to(bf16), want["video_latents"].to(bf16)), key
            assert torch.equal(batch["video_latents"][i], want["video_latents"].to(bf16).float())
            assert torch.equal(batch["cond"][i].to(bf16), want["cond"].to(bf16)), key
            assert torch.equal(batch["audio_latents"][i].to(bf16), want["audio_latents"].to(bf16)), key
            assert torch.equal(batch["context"][i].to(bf16), want["context"].to(bf16)), key
            assert int(batch["text_lens"][i]) == want["n_tokens"]
            assert batch["caption"][i] == want["caption"] and bool(batch["audio_mask"][i])
            seen.add(key)
    assert seen == set(expected)


def test_cached_datamodule_matches_cache_and_loads_no_encoder(cache_dir):
    """The cached datamodule's batches are the cache contents; it imports no model/encoder code at all."""
    script = f"""
import sys, torch
from mova_train.data.cache import cond_with_mask, read_cached_sample
from mova_train.data.datamodule import MovaDataModule
import json, tarfile
dm = MovaDataModule(shards={str(cache_dir)!r}, val_shards={str(cache_dir)!r}, mode="cached", num_frames=9, fps=8.0,
                    height=48, width=64, sample_rate=1600, batch_size=2, num_workers=0, text_len={TEXT_LEN})
dm.setup()
got = {{}}
for batch in dm.val_dataloader():
    batch = dm.finalize_batch(batch, consumed=False)
    for i, key in enumerate(batch["key"]):
        got[key] = {{n: batch[n][i] for n in ("video_latents", "cond", "audio_latents", "context")}}
        got[key]["text_lens"] = int(batch["text_lens"][i])
index = json.load(open({str(cache_dir / "index.json")!r}))
n = 0
for shard in index["shards"]:
    tar = tarfile.open({str(cache_dir)!r} + "/" + shard["name"])
    m = {{x.name: tar.extractfile(x).read() for x in tar.getmembers()}}
    for name in m:
        if name.endswith(".latents.safetensors"):
            key = name.split(".")[0]
            want = read_cached_sample(m[name], m[key + ".json"], text_len={TEXT_LEN})
            want["cond"] = cond_with_mask(want.pop("cond_latents"))
            for t in ("video_latents", "cond", "audio_latents", "context"):
                assert torch.equal(got[key][t], want[t].float()), (key, t)
            assert got[key]["text_lens"] == want["text_lens"]
            n += 1
assert n == len(got) == 5, (n, len(got))
loaded = sorted(m for m in sys.modules if m.startswith("mova_train.models") or m == "diffusers")
assert not loaded, loaded
print("OK")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, env=env,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_stale_cache_is_refused(raw_dir, cache_dir, encoders):
    fingerprint = cache_fingerprint(module_hashes(encoders), SETTINGS)
    assert check_cache(cache_dir, fingerprint, settings=SETTINGS)["total"] == 5
    # a cached datamodule knows only its settings: a subset is enough
    check_cache(cache_dir, settings={"num_frames": 9, "height": 48, "width": 64, "fps": 8})

    with pytest.raises(StaleCacheError, match=r"num_frames 9 != 33.*re-run `python -m data_tools.encode"):
        check_cache(cache_dir, settings={"num_frames": 33})
    other = CacheSettings(**{**SETTINGS.to_dict(), "num_frames": 17})
    with pytest.raises(StaleCacheError, match="num_frames 9 != 17"):
        check_cache(cache_dir, cache_fingerprint(module_hashes(encoders), other), settings=other)
    with pytest.raises(StaleCacheError, match="fingerprint"):
        check_cache(cache_dir, cache_fingerprint(module_hashes(encoders), other))

    # one changed weight in one component changes its hash, the fingerprint, and is named in the message
    hashes = module_hashes(encoders)
    changed = copy.deepcopy(encoders)
    with torch.no_grad():
        next(changed.audio_vae.parameters()).view(-1)[0] += 1e-3
    new_hashes = module_hashes(changed)
    assert new_hashes["audio_vae"] != hashes["audio_vae"]
    assert (
        new_hashes["video_vae"] == hashes["video_vae"]
        and new_hashes["text_encoder"] == hashes["text_encoder"]
    )
    with pytest.raises(StaleCacheError, match="component audio_vae weights"):
        check_cache(cache_dir, cache_fingerprint(new_hashes, SETTINGS), components=new_hashes)

    # captions are per sample: an override that differs from the cached caption is refused at read time
    latents, record, _ = next(iter(read_cache(cache_dir).values()))
    caption = json.loads(record)["caption"]
    assert read_cached_sample(latents, record, caption=caption)["caption"] == caption
    with pytest.raises(StaleCacheError, match="caption"):
        read_cached_sample(latents, record, caption=caption + " Now it rains.")
    with pytest.raises(StaleCacheError, match="fingerprint"):
        read_cached_sample(latents, record, fingerprint="0" * 32)

    # a raw shard folder is not a cache
    with pytest.raises(StaleCacheError, match="not a latent cache"):
        check_cache(raw_dir, settings={})


def test_rank_split_and_resume(raw_dir, encoders, tmp_path):
    out = tmp_path / "cache"
    hashes = module_hashes(encoders)
    kw = dict(batch_size=2, device="cpu", progress=False)
    first = encode_cache(raw_dir, out, encoders, hashes, SMALL, rank=1, world_size=2, **kw)
    assert first["shards"] == ["shard-000001.tar"] and first["index"] is None
    assert not (out / "index.json").exists(), "index.json must wait for every rank"
    zero = encode_cache(raw_dir, out, encoders, hashes, SMALL, rank=0, world_size=2, **kw)
    assert zero["shards"] == ["shard-000000.tar", "shard-000002.tar"]
    assert set(zero["shards"]).isdisjoint(first["shards"])
    assert zero["index"] is not None and zero["index"]["total"] == 5
    samples = read_cache(out)
    by_rank = {0: {k for k, v in samples.items() if v[2] in zero["shards"]},
               1: {k for k, v in samples.items() if v[2] in first["shards"]}}  # fmt: skip
    assert by_rank[0].isdisjoint(by_rank[1]) and len(by_rank[0]) + len(by_rank[1]) == 5
    raw_keys = set()
    for shard in sorted(raw_dir.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            raw_keys |= {m.name.split(".", 1)[0] for m in tar.getmembers()}
    assert set(samples) == raw_keys
    one = read_cached_sample(*samples[next(iter(by_rank[1]))][:2])
    assert one["video_latents"].shape == (4, 2, 4, 4)

    # resume: finished shards are kept untouched; a shard without its marker is encoded again
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    again = encode_cache(raw_dir, out, encoders, hashes, SMALL, rank=0, world_size=1, resume=True, **kw)
    assert again["encoded"] == [] and len(again["reused"]) == 3 and again["index"]["total"] == 5
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")} == mtimes
    (out / "shard-000001.tar.done").unlink()
    partial = encode_cache(raw_dir, out, encoders, hashes, SMALL, resume=True, **kw)
    assert partial["encoded"] == ["shard-000001.tar"] and partial["count"] == 5
    assert read_cache(out).keys() == samples.keys()

    # resume with other settings re-encodes everything (and the new index carries the new fingerprint)
    changed = CacheSettings(**{**SMALL.to_dict(), "window_start": 0.125})
    redo = encode_cache(raw_dir, out, encoders, hashes, changed, resume=True, **kw)
    assert len(redo["encoded"]) == 3
    check_cache(out, cache_fingerprint(hashes, changed))
    with pytest.raises(StaleCacheError, match="window_start 0.125 != 0.0"):
        check_cache(out, settings=SMALL)


def test_checkpoint_folder_path(raw_dir, encoders, tmp_path):
    """`--checkpoint`: components load from a release-layout folder, hashed by their files; same latents."""
    from mova_train.models.checkpoint import save_component

    root = tmp_path / "MOVA-tiny"
    save_component(encoders.video_vae, root, "video_vae")
    save_component(encoders.audio_vae, root, "audio_vae")
    encoders.text_encoder.encoder.save_pretrained(root / "text_encoder")
    encoders.text_encoder.tokenizer.save_pretrained(root / "tokenizer")
    hashes = checkpoint_hashes(root)
    assert hashes == checkpoint_hashes(root)
    out = tmp_path / "cache"
    small = ["--num-frames", "5", "--height", "32", "--width", "32", "--fps", "8", "--sample-rate", "1600"]
    argv = [
        "--shards",
        str(raw_dir),
        "--out",
        str(out),
        "--checkpoint",
        str(root),
        "--text-len",
        str(TEXT_LEN),
    ]
    summary = encode_tool.main([*argv, *small, "--dtype", "fp32", "--device", "cpu", "--no-progress"])
    assert summary["index"]["total"] == 5
    assert summary["index"]["inputs"]["components"] == hashes
    ref = encode_cache(raw_dir, tmp_path / "ref", encoders, hashes, SMALL, batch_size=1, progress=False)
    assert ref["fingerprint"] == summary["fingerprint"]
    got, want = read_cache(out), read_cache(tmp_path / "ref")
    for key in want:
        a, b = read_cached_sample(got[key][0]), read_cached_sample(want[key][0])
        for name in ("video_latents", "cond_latents", "audio_latents", "context"):
            assert torch.equal(a[name], b[name]), (key, name)

    # editing a weight file of one component changes only that component's hash
    path = root / "audio_vae" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    first = sorted(state)[0]
    state[first] = torch.cat([state[first].reshape(-1), torch.zeros(1)])
    save_file(state, path)
    changed = checkpoint_hashes(root)
    assert changed["audio_vae"] != hashes["audio_vae"] and changed["video_vae"] == hashes["video_vae"]
    with pytest.raises(StaleCacheError, match="component audio_vae"):
        check_cache(out, components=changed)


def test_skipped_clips_are_counted_by_reason(raw_dir, encoders, tmp_path):
    """13 frames at 8 fps need 1.625 s; the 1.5 s clips are skipped as too_short and listed in index.json."""
    too_long = CacheSettings(**{**SMALL.to_dict(), "num_frames": 13})
    summary = encode_cache(
        raw_dir, tmp_path / "c", encoders, module_hashes(encoders), too_long, progress=False
    )
    assert summary["count"] == 0 and summary["skipped"] == {"too_short": 5}
    index = summary["index"]
    assert index["total"] == 0 and index["shards"] == [] and index["skipped_total"] == 5
    assert {e["shard"] for e in index["skipped"]["too_short"]} == {f"shard-00000{i}.tar" for i in range(3)}
    assert all("1.625" in e["detail"] for e in index["skipped"]["too_short"])


def test_cached_datamodule_refuses_other_settings_before_training(cache_dir):
    dm = MovaDataModule(
        shards=cache_dir,
        mode="cached",
        num_frames=13,
        fps=8.0,
        height=48,
        width=64,
        sample_rate=1600,
        num_workers=0,
    )
    with pytest.raises(StaleCacheError, match="num_frames 9 != 13"):
        dm.setup()


def test_cache_stores_the_empty_clip_latent_for_t2av(raw_dir, cache_dir, encoders, tmp_path):
    """Cached t2av needs the latent of an all-zero clip without a VAE: the cache stores it per size, the cached
    datamodule adds it to each sample, an old cache gets it with --resume alone, a foreign file is refused.
    """
    from mova_train.codecs.encoders import latents_from_cached
    from mova_train.data.cache import EMPTY_LATENTS_FILE, read_empty_latents, size_key, write_empty_latents
    from mova_train.models.builders import mova_tiny
    from mova_train.objectives import FlowMatchingObjective

    with torch.no_grad():
        want = encoders.video_vae.encode_empty(9, 48, 64)[0].to(torch.bfloat16).float()
    assert torch.equal(read_empty_latents(cache_dir)[(4, 3, 6, 8)], want)
    dm = MovaDataModule(shards=str(cache_dir), val_shards=str(cache_dir), mode="cached", num_frames=9, fps=8.0,
                        height=48, width=64, sample_rate=1600, batch_size=2, num_workers=0, text_len=TEXT_LEN)  # fmt: skip
    dm.setup()
    batch = dm.finalize_batch(next(iter(dm.val_dataloader())), consumed=False)
    assert batch["empty_latents"].shape == (2, 4, 3, 6, 8) and torch.equal(batch["empty_latents"][1], want)
    objective = FlowMatchingObjective(mode="t2av")
    out = objective(mova_tiny(seed=0), latents_from_cached(batch), 0, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.modes == ("t2av", "t2av")

    # a cache made before the file existed: t2av refuses with the fix; --resume adds it without re-encoding
    old = tmp_path / "old"
    kw = dict(batch_size=2, device="cpu", progress=False)
    encode_cache(raw_dir, old, encoders, module_hashes(encoders), SMALL, **kw)
    (old / EMPTY_LATENTS_FILE).unlink()
    dm = MovaDataModule(shards=str(old), mode="cached", num_frames=5, fps=8.0, height=32, width=32,
                        sample_rate=1600, batch_size=2, num_workers=0, text_len=TEXT_LEN)  # fmt: skip
    dm.setup()
    stale = dm.finalize_batch(next(iter(dm.train_dataloader())), consumed=False)
    assert "empty_latents" not in stale
    with pytest.raises(KeyError, match="--resume"):
        objective(mova_tiny(seed=0), latents_from_cached(stale), 0, torch.Generator().manual_seed(0))
    again = encode_cache(raw_dir, old, encoders, module_hashes(encoders), SMALL, resume=True, **kw)
    assert again["encoded"] == [] and (4, 2, 4, 4) in read_empty_latents(old)
    write_empty_latents(old, {size_key(5, 32, 32): torch.zeros(4, 2, 4, 4)}, "another-fingerprint")
    with pytest.raises(StaleCacheError, match="another-fingerprint"):
        read_empty_latents(old)
