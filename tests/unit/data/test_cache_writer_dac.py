"""Issue 9 items 4 and 10: the cache tool runs the DAC in fp32 whatever --dtype, at the DAC's own rate only."""

from __future__ import annotations

import pytest
import torch

from mova_train.codecs.encoders import tiny_encoders
from mova_train.data.cache import CacheSettings
from mova_train.data.cache_writer import check_dac_rate, encode_cache, module_hashes
from mova_train.data.shard_builder import build_shards
from mova_train.data.synthetic import make_dataset


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("dac")
    meta = make_dataset(root / "clips", count=1, width=32, height=32, fps=8, seconds=1.0, sample_rate=16000)
    build_shards(meta, root / "raw")
    return root / "raw"


def test_bf16_cache_runs_the_dac_in_fp32(raw, tmp_path):
    encoders = tiny_encoders(0)
    seen: list[tuple[torch.dtype, torch.dtype]] = []

    def record(module, args):
        seen.append((next(module.parameters()).dtype, args[0].dtype))

    encoders.audio_vae.encoder.register_forward_pre_hook(record)  # the DAC encoder network
    settings = CacheSettings(
        num_frames=5, height=32, width=32, fps=8.0, sample_rate=1600, text_len=16, compute_dtype="bf16"
    )
    summary = encode_cache(
        raw,
        tmp_path / "cache",
        encoders,
        module_hashes(encoders),
        settings,
        dtype=torch.bfloat16,
        progress=False,
    )
    assert summary["count"] == 1
    assert seen and all(s == (torch.float32, torch.float32) for s in seen)  # params and input
    assert next(encoders.video_vae.parameters()).dtype == torch.bfloat16  # the rest follows --dtype


def test_another_sample_rate_than_the_dacs_is_refused_before_encoding(raw, tmp_path):
    encoders = tiny_encoders(0)
    with pytest.raises(
        ValueError, match=r"--sample-rate 48000 but CKPT/audio_vae/config.json runs at 1600 Hz"
    ):
        check_dac_rate(encoders, 48000, where="CKPT/audio_vae/config.json")
    settings = CacheSettings(num_frames=5, height=32, width=32, fps=8.0, sample_rate=48000, text_len=16)
    with pytest.raises(ValueError, match="--sample-rate 1600"):
        encode_cache(raw, tmp_path / "cache", encoders, module_hashes(encoders), settings, progress=False)
    assert not (tmp_path / "cache").exists()
