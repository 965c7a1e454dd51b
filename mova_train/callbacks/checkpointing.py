"""Checkpoint plumbing: atomic checkpoint files, LoRA exports, and a clean stop on SIGTERM.

* :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin, ``Trainer(plugins=[...])``): writes to
  ``<path>.tmp``, fsyncs, then ``os.replace``-s; a save killed mid-write leaves the previous file intact.
* :class:`LoraExport`: writes ``lora.safetensors`` (and optionally upstream's ``lora_weights.pt`` /
  ``lora_config.pt``) every N optimizer steps and at the end of fit.
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
from lightning.pytorch.utilities import rank_zero_only

from mova_train.models.lora import save_lora
from mova_train.models.lora_upstream import export_upstream

log = logging.getLogger(__name__)

__all__ = ["AtomicCheckpointIO", "LoraExport", "SigtermCheckpoint"]


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


class LoraExport(Callback):
    """Write the LoRA weights every ``every_n_steps`` optimizer steps and at the end of fit.

    Args:
        dirpath: output folder.
        every_n_steps: export period in optimizer steps (0: only at the end).
        upstream: also write upstream's ``lora_weights.pt`` / ``lora_config.pt`` into ``<folder>/upstream``.
        keep_history: write each export to ``step-XXXXXXXX/`` instead of overwriting ``dirpath``.
        use_ema: export the EMA weights when the module keeps an EMA.
    """

    def __init__(
        self,
        dirpath: str | Path,
        every_n_steps: int = 0,
        upstream: bool = False,
        keep_history: bool = False,
        use_ema: bool = False,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = int(every_n_steps)
        self.upstream = upstream
        self.keep_history = keep_history
        self.use_ema = use_ema
        self._last_exported = -1

    def folder_for(self, step: int) -> Path:
        """Where the export of optimizer step ``step`` goes."""
        return self.dirpath / f"step-{step:08d}" if self.keep_history else self.dirpath

    @rank_zero_only
    def export(self, trainer: Trainer, pl_module: LightningModule) -> Path | None:
        """Write the files now; returns the folder (None when the module has no LoRA)."""
        spec = getattr(pl_module, "lora", None)
        if spec is None:
            log.warning("LoraExport: the module trains no LoRA; nothing exported")
            return None
        folder = self.folder_for(trainer.global_step)
        swap = pl_module.ema_swapped() if self.use_ema else contextlib.nullcontext()
        with swap:
            save_lora(folder / "lora.safetensors", pl_module.model, spec, pl_module.base_fingerprint)
            if self.upstream:
                export_upstream(folder / "upstream", pl_module.model, spec)
        self._last_exported = trainer.global_step
        log.info("LoRA exported to %s (step %d)", folder, trainer.global_step)
        return folder

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if (
            self.every_n_steps > 0
            and step > 0
            and step % self.every_n_steps == 0
            and step != self._last_exported
        ):
            self.export(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step != self._last_exported:
            self.export(trainer, pl_module)


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
