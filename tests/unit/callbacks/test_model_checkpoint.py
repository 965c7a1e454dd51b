"""Issue 14 item 2: checkpoint rotation never deletes the newest checkpoint with finite weights; `ckpt_path=last`
resumes from it although newer, non-finite ones exist. Item 1 (unit level): the callback state carries the step
of its last save, and no save happens in a batch that did not step the optimizer.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from mova_train.callbacks.checkpointing import MovaModelCheckpoint
from mova_train.checkpoints.io import MovaCheckpointIO
from mova_train.checkpoints.manifest import read_manifest
from mova_train.checkpoints.resume import resolve_ckpt_path


class _Diverges(pl.LightningModule):
    """A linear model whose loss turns NaN from optimizer step ``nan_from`` on (weights then go NaN)."""

    def __init__(self, nan_from: int | None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.nan_from = nan_from
        self.saved_at: list[tuple[int, int]] = []  # (global_step, batch_idx) of every save

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch[0]).pow(2).mean()
        if self.nan_from is not None and self.global_step >= self.nan_from:
            loss = loss * float("nan")
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.saved_at.append(
            (self.trainer.global_step, self.trainer.fit_loop.epoch_loop.batch_progress.current.completed)
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(
    module: pl.LightningModule, folder: Path, max_steps: int, accumulate: int = 1, ckpt_path=None
) -> None:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[MovaCheckpointIO()],
        callbacks=[
            MovaModelCheckpoint(
                dirpath=folder,
                filename="step{step:03d}",
                auto_insert_metric_name=False,
                every_n_train_steps=1,
                save_top_k=1,
                save_last=True,
            )
        ],
    )
    data = DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=4)
    trainer.fit(module, data, ckpt_path=ckpt_path)


def test_rotation_keeps_the_newest_finite_checkpoint(tmp_path: Path) -> None:
    _fit(_Diverges(nan_from=2), tmp_path, max_steps=5)
    kept = {p.name: read_manifest(p).finite for p in tmp_path.glob("*.ckpt")}
    assert kept == {"step002.ckpt": True, "step005.ckpt": False, "last.ckpt": False}
    assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "step002.ckpt")


def test_saves_only_at_optimizer_steps_and_resumes_its_last_saved_step(tmp_path: Path) -> None:
    first = _Diverges(nan_from=None)
    _fit(first, tmp_path, max_steps=2, accumulate=2)
    assert [step for step, _ in first.saved_at] == [1, 1, 2, 2]  # step file + last.ckpt at each step
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]
    assert [v["last_global_step_saved"] for k, v in state.items() if "MovaModelCheckpoint" in k] == [2]
    resumed = _Diverges(nan_from=None)
    _fit(resumed, tmp_path, max_steps=3, accumulate=2, ckpt_path=tmp_path / "last.ckpt")
    assert [step for step, _ in resumed.saved_at] == [3, 3]  # not again at step 2 after the first micro-batch
