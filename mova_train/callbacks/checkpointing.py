"""Checkpoint plumbing: atomic checkpoint files and a clean stop on SIGTERM (LoRA exports: `lora_export.py`).

* :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin, ``Trainer(plugins=[...])``): writes to
  ``<path>.tmp``, fsyncs, then ``os.replace``-s; a save killed mid-write leaves the previous file intact.
* :class:`SigtermCheckpoint`: on a plain SIGTERM (Lightning already notices it and stops after the current
  batch), waits for the next gradient-accumulation boundary, saves a checkpoint and lets Lightning exit.
  SLURM pre-emption (``SIGUSR1`` with ``SLURMEnvironment(auto_requeue=True)``) is Lightning's own
  ``SignalConnector``: it saves an ``hpc_ckpt`` through the same module hooks and IO, then requeues.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

__all__ = ["AtomicCheckpointIO", "SigtermCheckpoint"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file in the same folder, fsync, then an atomic rename."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically (see the class docstring)."""
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def _stepped(trainer: Trainer, last: int) -> bool:
    return trainer.global_step != last


class SigtermCheckpoint(Callback):
    """Save ``<dirpath>/<filename>`` at the first optimizer-step boundary after a SIGTERM, then stop.

    Lightning's signal connector sets ``trainer.received_sigterm`` and raises ``SIGTERMException`` (a
    ``SystemExit``) after the current batch. In the middle of a gradient accumulation this callback holds
    the flag back until the accumulation completes (single process; under DDP it saves at once), so the
    checkpoint resumes exactly.

    Args:
        dirpath: checkpoint folder (default: the trainer's ``default_root_dir``/checkpoints).
        filename: checkpoint file name.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str = "sigterm.ckpt") -> None:
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.filename = filename
        self._pending = False
        self._step_at_start = -1
        self.saved_path: Path | None = None

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_at_start = trainer.global_step

    def _path(self, trainer: Trainer) -> Path:
        root = self.dirpath or Path(trainer.default_root_dir) / "checkpoints"
        return root / self.filename

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        connector = trainer._signal_connector
        if not (connector.received_sigterm or self._pending):
            return
        boundary = _stepped(trainer, self._step_at_start)
        if not boundary and trainer.world_size == 1:
            if not self._pending:
                log.info("SIGTERM received mid-accumulation; saving at the next optimizer step")
            self._pending = True
            connector.received_sigterm = False
            return
        self._pending = False
        path = self._path(trainer)
        trainer.save_checkpoint(path)
        self.saved_path = path
        log.info("SIGTERM: checkpoint saved to %s at step %d; stopping", path, trainer.global_step)
        connector.received_sigterm = True
        trainer.should_stop = True
