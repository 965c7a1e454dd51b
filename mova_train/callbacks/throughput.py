"""`train/samples_per_s` and `train/tokens_per_s`, averaged over each logging interval.

The LightningModule's ``training_step`` returns ``{"loss", "samples", "tokens"}`` (tokens: video patches + audio
latent frames of the micro-batch, the sequence the towers attend over); this callback sums them and logs the rates
on the steps Lightning writes to the loggers (every ``trainer.log_every_n_steps``, and the first step).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["Throughput"]


class Throughput(Callback):
    """Log training throughput (samples and tokens per second of wall time) every logging interval.

    Args:
        every_n_steps: Logging period in optimizer steps (None: ``trainer.log_every_n_steps``).
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self._last_time: float | None = None
        self._samples = 0
        self._tokens = 0
        self._step = 0

    def _due(self, trainer: Trainer) -> bool:
        """Whether the batch's step is a logging step (the step as `training_step` saw it)."""
        every = self.every_n_steps or trainer.log_every_n_steps or 1
        return every <= 1 or (self._step + 1) % every == 0 or self._step == 0

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Remember the optimizer step this micro-batch belongs to (the step counter moves before batch end)."""
        self._step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Add the micro-batch's samples and tokens; on a logging step, log the rates since the last one."""
        if not isinstance(outputs, Mapping) or "samples" not in outputs:
            return
        self._samples += int(outputs["samples"])
        self._tokens += int(outputs.get("tokens", 0))
        if not self._due(trainer):
            return
        now = time.perf_counter()
        if self._last_time is not None:
            dt = max(now - self._last_time, 1e-9)
            kw = dict(on_step=True, on_epoch=False, batch_size=int(outputs["samples"]))
            pl_module.log("train/samples_per_s", self._samples / dt, **kw)
            pl_module.log("train/tokens_per_s", self._tokens / dt, **kw)
        self._last_time = now
        self._samples = self._tokens = 0
