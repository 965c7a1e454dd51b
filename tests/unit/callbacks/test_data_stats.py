"""`DataStats`: skip statistics come from the data side, per reason, through a real Trainer and real shards."""

from __future__ import annotations

import json

import torch
from lightning.pytorch import LightningModule, Trainer

from mova_train.callbacks.data_stats import DataStats
from mova_train.data.datamodule import MovaDataModule
from mova_train.data.shard_builder import build_shards
from mova_train.data.synthetic import make_clip


class PixelMean(LightningModule):
    """The smallest trainable module that consumes a raw video batch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return (self.w - batch["video"].mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_skip_counts_are_logged_by_reason_from_the_datamodule(tmp_path):
    src = tmp_path / "src"
    entries = []
    for i, frames in enumerate([12, 12, 2]):  # the 2-frame clip is shorter than the 5-frame window
        clip = make_clip(src / f"c{i}.mp4", width=32, height=32, num_frames=frames, seed=i)
        entries.append({"video_path": clip.path.name, "caption": f"clip {i}"})
    (src / "metadata.json").write_text(json.dumps(entries))
    build_shards(src / "metadata.json", tmp_path / "shards", max_count=3)
    dm = MovaDataModule(
        str(tmp_path / "shards"),
        num_frames=5,
        fps=24.0,
        height=32,
        width=32,
        num_workers=0,
        max_skip_rate=1.0,
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=4,
        log_every_n_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[DataStats()],
        default_root_dir=tmp_path,
    )
    trainer.fit(PixelMean(), datamodule=dm)
    m = trainer.callback_metrics
    assert m["data/skipped/too_short"] >= 1 and m["data/skipped"] == m["data/skipped/too_short"]
    assert m["data/seen"] >= 4 + m["data/skipped"]
    assert abs(float(m["data/skip_rate"]) - float(m["data/skipped"] / m["data/seen"])) < 1e-6
    assert "train/skipped_samples" not in m
