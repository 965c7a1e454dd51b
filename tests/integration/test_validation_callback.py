"""Validation sampling during fit: mp4 + sidecar on disk, video media and latent stats in an offline W&B run."""

from __future__ import annotations

import json

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch.utils.data import DataLoader, TensorDataset

from mova_train.callbacks.validation_sampling import ValidationSampling
from mova_train.codecs.encoders import tiny_encoders
from mova_train.models.builders import mova_tiny


class _TinyFit(LightningModule):
    """Trains the tiny dual tower on a dummy velocity target (enough to move the weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = mova_tiny(seed=0)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        v, a = self.model(
            latents=x,
            y=torch.zeros(x.shape[0], 8, *x.shape[2:]),
            audio_latents=torch.zeros(x.shape[0], 8, 6),
            context=torch.zeros(x.shape[0], 4, 32),
            timestep=torch.tensor([500.0]),
            audio_timestep=torch.tensor([500.0]),
            expert="video_dit_2",
        )
        return v.pow(2).mean() + a.pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=1e-3)


def test_validation_sampling_logs_wandb_video_and_writes_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    callback = ValidationSampling(
        requests=[{"prompt": "a bell rings twice", "seed": 4}],
        every_n_steps=2,
        sampling={"num_frames": 5, "height": 32, "width": 32, "fps": 8.0, "steps": 2, "cfg_scale": 1.0},
        output_dir=tmp_path / "samples",
        encoders=tiny_encoders(seed=0),
    )
    logger = WandbLogger(project="mova_test", save_dir=str(tmp_path), offline=True)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=4,
        logger=[logger, CSVLogger(tmp_path, name="csv", version=0)],
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    data = DataLoader(TensorDataset(torch.randn(8, 4, 2, 4, 4)), batch_size=2)
    module = _TinyFit()
    trainer.fit(module, data)
    run_dir = logger.experiment.dir
    logger.experiment.finish()

    assert module.model.training  # restored to train mode after sampling
    mp4s = sorted(
        p.relative_to(tmp_path / "samples").as_posix() for p in (tmp_path / "samples").rglob("*.mp4")
    )
    req_id = callback.requests[0].id
    assert mp4s == [f"step0000002/{req_id}.mp4", f"step0000004/{req_id}.mp4"]
    meta = json.loads((tmp_path / "samples" / "step0000004" / f"{req_id}.json").read_text())
    assert meta["global_step"] == 4 and meta["request"]["prompt"] == "a bell rings twice"
    media = list((tmp_path / "wandb").rglob("media/videos/**/*.mp4"))
    assert len(media) == 2, f"no W&B video media under {run_dir}"
    assert any((tmp_path / "wandb").rglob("offline-run-*"))
    metrics = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert "val_samples/0_audio_latent_std" in metrics and "val_samples/seconds_per_step" in metrics
    assert "val/av_offset_ms" in metrics and "val/av_confidence" in metrics  # the A/V audit of the samples
