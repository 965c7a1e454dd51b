"""Validation sampling in the modes the run trains, with media from a training clip, and the leakage check."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers.tiny_latents import make_batch, tiny_module
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, IterableDataset
from torchcodec.decoders import AudioDecoder, VideoDecoder

from mova_train.callbacks.validation_sampling import ValidationSampling
from mova_train.codecs.encoders import tiny_encoders
from mova_train.models.lora import LoraSpec

SAMPLING = {"num_frames": 5, "height": 32, "width": 32, "fps": 8.0, "steps": 2, "cfg_scale": 1.0}
MIX = {"i2av": 0.25, "t2av": 0.25, "a2v": 0.25, "v2a": 0.25}


class _Fixed(IterableDataset):
    """Cached-mode batches the size of the requests: 5 frames of 32x32, 1000 samples at 1600 Hz (L = 125)."""

    def __iter__(self):
        while True:
            yield make_batch(0, audio_len=125)


class _DM(LightningDataModule):
    def train_dataloader(self):
        return DataLoader(_Fixed(), batch_size=None)


def _fit(tmp_path, lora: LoraSpec, **callback_kw) -> tuple[ValidationSampling, dict[str, float]]:
    torch.set_num_threads(1)
    callback = ValidationSampling(
        requests=[{"prompt": "a bell rings twice", "seed": 4}], every_n_steps=2, sampling=SAMPLING,
        output_dir=tmp_path / "samples", encoders=tiny_encoders(seed=0), **callback_kw,
    )  # fmt: skip
    trainer = Trainer(
        accelerator="cpu", max_steps=2, logger=CSVLogger(tmp_path, name="csv", version=0), callbacks=[callback],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(tiny_module(lora=lora, lr=3e-2, mode=MIX, expert_mode="by_timestep"), datamodule=_DM())
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    metrics = {k: float(v) for r in rows for k, v in r.items() if v not in ("", None) and k != "step"}
    return callback, metrics


@pytest.mark.slow
def test_samples_every_trained_mode_with_media_from_the_training_clip(tmp_path):
    callback, metrics = _fit(tmp_path, LoraSpec(rank=4, alpha=4, preset="attn"))
    media = tmp_path / "samples" / "media" / "rank0"
    assert (media / "clip.mp4").is_file() and (media / "clip.png").is_file()
    step = tmp_path / "samples" / "step0000002"
    by_mode = {json.loads(p.read_text())["mode"]: p.with_suffix(".mp4") for p in step.glob("*.json")}
    assert sorted(by_mode) == ["a2v", "i2av", "t2av", "v2a"]
    # v2a keeps the training clip's frames, a2v its audio track (same codecs: equal after decoding)
    clip_frames = VideoDecoder(str(media / "clip.mp4"))[:]
    assert (VideoDecoder(str(by_mode["v2a"]))[:].float() - clip_frames.float()).abs().mean() < 4.0
    clip_audio = AudioDecoder(str(media / "clip.mp4")).get_all_samples().data
    got_audio = AudioDecoder(str(by_mode["a2v"])).get_all_samples().data
    n = min(clip_audio.shape[1], got_audio.shape[1])
    err = (got_audio[:, :n] - clip_audio[:, :n]).norm() / clip_audio[:, :n].norm()
    assert err < 0.1, float(err)  # a second AAC generation of the same track
    i2av = json.loads(by_mode["i2av"].with_suffix(".json").read_text())["request"]
    assert i2av["first_frame"] == str(media / "clip.png")
    assert "val_samples/3_audio_latent_std" in metrics  # one metric row per sample and mode
    assert not any(k.startswith("val_leakage/") for k in metrics)  # the leakage check is opt-in


@pytest.mark.slow
def test_leakage_check_measures_each_side(tmp_path):
    """Full LoRA: both sides move the output, a held stream never moves. Video-only LoRA: its (empty) audio side
    moves nothing; its video side moves the video, and what it does to the audio is the reported leakage.
    """
    _, metrics = _fit(tmp_path / "full", LoraSpec(rank=4, alpha=4, preset="attn"), leakage_check=True)
    leak = {k: v for k, v in metrics.items() if k.startswith("val_leakage/")}
    assert len(leak) == 4 * 2 * 2, sorted(leak)  # 4 samples (one per mode) x 2 sides x 2 streams
    assert all(v >= 0 for v in leak.values()) and any(v > 0 for v in leak.values())
    for side in ("audio", "video"):  # samples come in mode order: i2av, t2av, a2v, v2a
        assert leak[f"val_leakage/2_a2v_{side}_side_off_audio_change"] == 0.0  # the given audio is held
        assert leak[f"val_leakage/3_v2a_{side}_side_off_video_change"] == 0.0  # the given video is held
    video_only = LoraSpec(rank=4, alpha=4, components={"video_dit": "attn", "video_dit_2": "attn"})
    _, metrics = _fit(tmp_path / "video_only", video_only, leakage_check=True, modes=["t2av"])
    assert metrics["val_leakage/0_t2av_audio_side_off_video_change"] == 0.0
    assert metrics["val_leakage/0_t2av_audio_side_off_audio_change"] == 0.0
    assert metrics["val_leakage/0_t2av_video_side_off_video_change"] > 1e-4
    assert metrics["val_leakage/0_t2av_video_side_off_audio_change"] >= 0.0
