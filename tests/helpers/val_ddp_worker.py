"""Issue 14.5: DDP fit where rank 1 gets no validation batch (a validation set smaller than ranks x workers, as
`ValStream` slices it). Run: ``python -m torch.distributed.run --nproc_per_node 2 tests/helpers/val_ddp_worker.py
OUT`` (``PYTHONPATH=tests``); rank 0 writes ``OUT/val_loss.txt``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from helpers.tiny import cpu_trainer
from helpers.tiny_latents import make_batch, tiny_module
from mova_train.models.lora import LoraSpec


class _Stream(IterableDataset):
    """`count` tiny batches on rank 0 and none on the others (an iterable: its length is unknown, as ValStream's)."""

    def __init__(self, seed: int, count: int | None, only_rank0: bool) -> None:
        self.seed, self.count, self.only_rank0 = seed, count, only_rank0

    def __iter__(self) -> Iterator[dict]:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if self.only_rank0 and rank != 0:
            return
        i = 0
        while self.count is None or i < self.count:
            yield make_batch(self.seed + i, batch=1)
            i += 1


class _Data(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Stream(0, None, only_rank0=False), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Stream(1000, 1, only_rank0=True), batch_size=None)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    module = tiny_module(lora=LoraSpec(rank=4, alpha=4, preset="attn"))
    trainer = cpu_trainer(
        devices=2,
        strategy="ddp_find_unused_parameters_true",  # the tiny LoRA leaves some layers unused
        max_steps=2,
        val_check_interval=1,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=_Data())
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        (out / "val_loss.txt").write_text(str(float(trainer.callback_metrics["val/loss"])))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
