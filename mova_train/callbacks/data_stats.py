"""`DataStats`: the data side's own report of what the training stream saw and skipped.

The counters live in the datamodule (`MovaDataModule.skip_stats`, carried with every batch from the workers);
this callback logs them, summed over data-parallel ranks (the context-parallel ranks of one group read the same samples: counted once):

- `data/seen`: samples that entered the stream so far;
- `data/skipped`: samples skipped so far (any reason), and `data/skipped/<reason>` per reason
  (`too_short`, `decode_error`, `missing_audio`, `cache_error`, `corrupt_shard`, ...);
- `data/skip_rate`: skipped / seen.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class DataStats(Callback):
    """Log the datamodule's skip counters every `every_n_steps` optimizer steps (default: the trainer's
    `log_every_n_steps`). A datamodule without `skip_stats` logs nothing.
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"callbacks.data_stats.every_n_steps={every_n_steps} must be >= 1 (or null)")
        self.every_n_steps = every_n_steps

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log the (rank-summed) counters on logging steps."""
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "skip_stats"):
            return
        every = self.every_n_steps or max(1, int(trainer.log_every_n_steps))
        if trainer.global_step % every and trainer.global_step > 1:
            return
        stats = [datamodule.skip_stats()]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            stats = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(stats, datamodule.skip_stats())
            stats = list({s["rank"]: s for s in stats}.values())
        seen = float(sum(s["seen"] for s in stats))
        skipped = float(sum(s["skipped"] for s in stats))
        metrics = {"data/seen": seen, "data/skipped": skipped, "data/skip_rate": skipped / max(1.0, seen)}
        for s in stats:
            for reason, n in s["by_reason"].items():
                metrics[f"data/skipped/{reason}"] = metrics.get(f"data/skipped/{reason}", 0.0) + float(n)
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=True, on_epoch=False, batch_size=1, rank_zero_only=True)
