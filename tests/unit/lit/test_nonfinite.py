"""Issue 14.2: a batch or loss with NaN/Inf is skipped and counted, never trained on; past the limit the run stops."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import cpu_trainer
from helpers.tiny_latents import make_batch, tiny_module
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from mova_train.lit.nonfinite import NonFiniteError, nonfinite_names
from mova_train.models.lora import LoraSpec

LORA = LoraSpec(rank=4, alpha=4, preset="attn")


class _Batches(LightningDataModule):
    """Batch i is `make_batch(i)`, with `damage[i]` applied to its video latents."""

    def __init__(self, damage: dict[int, float], n: int = 6) -> None:
        super().__init__()
        self.batches = []
        for i in range(n):
            b = make_batch(i)
            if i in damage:
                b["video_latents"][0, 0, 0, 0, 0] = damage[i]
            self.batches.append(b)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None, num_workers=0)


def _fit(mod, dm, tmp_path, steps: int) -> Trainer:
    trainer = cpu_trainer(
        max_steps=steps,
        max_epochs=1,
        logger=CSVLogger(tmp_path, name="csv"),
        log_every_n_steps=1,
        enable_checkpointing=False,
    )
    trainer.fit(mod, datamodule=dm)
    return trainer


def _trainable(mod) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in mod.named_parameters() if p.requires_grad}


def test_nonfinite_names_lists_only_bad_float_tensors():
    batch = make_batch(0)
    assert nonfinite_names(batch) == []
    batch["audio_latents"][0, 0, 0] = float("inf")
    batch["cond"][0, 0, 0, 0, 0] = float("nan")
    assert nonfinite_names(batch) == ["audio_latents", "cond"]


def test_nan_batch_and_overflowing_loss_are_skipped_counted_and_logged(tmp_path):
    """Batch 1 holds a NaN latent (skipped before the forward), batch 3 a 1e30 latent (finite, but the loss
    overflows: skipped before the backward). The weights stay finite and the run ends normally.
    """
    mod = tiny_module(lora=LORA, max_nonfinite_steps=2)
    trainer = _fit(mod, _Batches({1: float("nan"), 3: 1e30}), tmp_path, steps=6)
    assert mod.nonfinite.skipped == 2
    assert all(bool(torch.isfinite(p).all()) for p in _trainable(mod).values())
    metrics = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert "train/skipped_nonfinite" in metrics.splitlines()[0]
    assert trainer.state.status == "finished"


def test_a_skipped_step_changes_no_weight(tmp_path):
    """The NaN batch is the only one: nothing trains on it (no backward, no optimizer update)."""
    mod = tiny_module(lora=LORA)
    mod.configure_model()
    before = _trainable(mod)
    _fit(mod, _Batches({0: float("nan")}, n=1), tmp_path, steps=1)
    after = _trainable(mod)
    assert mod.nonfinite.skipped == 1
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_past_the_limit_the_run_stops_with_the_fix_named(tmp_path):
    mod = tiny_module(lora=LORA, max_nonfinite_steps=1)
    with pytest.raises(NonFiniteError, match="more than module.max_nonfinite_steps=1"):
        _fit(mod, _Batches({0: float("nan"), 2: float("inf")}), tmp_path, steps=6)
    with pytest.raises(ValueError, match="max_nonfinite_steps"):
        tiny_module(lora=LORA, max_nonfinite_steps=-1)
