"""Checkpoint callbacks: step checkpoints that resume exactly, and a clean, saved stop on SIGTERM.

The files themselves are written by :class:`mova_train.checkpoints.io.MovaCheckpointIO` (atomic, with a
manifest); LoRA exports are `lora_export.py`.

* :class:`MovaModelCheckpoint`: Lightning's ``ModelCheckpoint`` that saves only at optimizer-step boundaries,
  restores the step it last saved at (so a resumed run does not rewrite ``last.ckpt`` in the middle of a gradient
  accumulation) and never rotates away the newest checkpoint with finite weights.
* :class:`SigtermCheckpoint`: on SIGTERM (SLURM pre-emption, ``kill``, torchrun forwarding it) every rank
  waits for the next optimizer-step boundary, ``sigterm.ckpt`` is saved and the run exits with code 143.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from mova_train.checkpoints.manifest import CheckpointError, read_manifest
from mova_train.utils.dist import any_rank

log = logging.getLogger(__name__)

__all__ = ["SIGTERM_EXIT_CODE", "MovaModelCheckpoint", "SigtermCheckpoint", "SigtermExit"]

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # 143, what a shell reports for a process ended by SIGTERM


def _finite(path: str | Path) -> bool | None:
    """Whether the checkpoint's manifest says its weights were finite (None: no readable manifest)."""
    try:
        manifest = read_manifest(path)
    except CheckpointError:
        return None
    return None if manifest is None else manifest.finite


class MovaModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that resumes exactly with gradient accumulation and keeps the last finite weights.

    Same arguments as Lightning's ``ModelCheckpoint``. Differences:

    * train-step saves happen only in a batch that ran an optimizer step (never mid-accumulation);
    * the global step of the last save is part of the callback state, so after a resume from step N the
      next save is at the next multiple of ``every_n_train_steps`` after N, not at N again;
    * a checkpoint due for rotation is kept when it is the newest one whose weights are finite while the
      checkpoints that remain are not (the manifest records finiteness at save time).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._step_at_batch_start = -1

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Records the global step, to tell at batch end whether the optimizer stepped."""
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Saves at the optimizer-step boundary only (skipped mid-accumulation)."""
        if trainer.global_step == self._step_at_batch_start:
            return  # mid-accumulation: the optimizer has not stepped, the state would not resume exactly
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        self._last_global_step_saved = trainer.global_step  # part of the state written in this save
        super()._save_checkpoint(trainer, filepath)

    def state_dict(self) -> dict[str, Any]:
        """Lightning's state plus the global step of the last save."""
        return {**super().state_dict(), "last_global_step_saved": self._last_global_step_saved}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores Lightning's state and the global step of the last save (0 in older checkpoints)."""
        super().load_state_dict(state_dict)
        self._last_global_step_saved = int(state_dict.get("last_global_step_saved", 0))

    def _remove_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        if _finite(filepath):
            last = f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"  # overwritten next: does not count
            others = [
                p for p in Path(filepath).parent.glob("*.ckpt") if str(p) != str(filepath) and p.name != last
            ]
            if not any(_finite(p) for p in others):
                log.warning(
                    "keeping %s: it is the newest checkpoint with finite weights (the newer ones are not)",
                    filepath,
                )
                return
        super()._remove_checkpoint(trainer, filepath)


class SigtermExit(SystemExit):
    """Raised on every rank after ``sigterm.ckpt`` is saved; the process exits with code 143."""


class SigtermCheckpoint(Callback):
    """Save ``<dirpath>/<filename>`` at the first optimizer-step boundary after a SIGTERM, then exit 143.

    During fit this callback owns the SIGTERM handler: it only sets a flag (Lightning's own handler runs a
    collective inside the signal handler, which stalls multi-process runs) and forwards the signal to the
    processes Lightning launched. At the end of every training batch the ranks agree on the flag (one
    all-reduce); in the middle of a gradient accumulation they carry on to the boundary; there every rank
    saves the checkpoint (a collective for sharded strategies) and raises :class:`SigtermExit`.

    Args:
        dirpath: checkpoint folder (default: the trainer's ``default_root_dir``/checkpoints).
        filename: checkpoint file name.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str = "sigterm.ckpt") -> None:
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.filename = filename
        self._received = False
        self._forwarded = False
        self._pending = False
        self._step_at_start = -1
        self._previous: Any = None
        self._trainer: Trainer | None = None
        self.saved_path: Path | None = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._received = True
        launcher = self._trainer.strategy.launcher if self._trainer is not None else None
        if launcher is not None and not self._forwarded:
            self._forwarded = True
            launcher.kill(signum)  # the processes Lightning started (torchrun forwards by itself)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Installs this callback's SIGTERM handler (main thread only), after Lightning's own."""
        # After Lightning registered its own handler (it runs a collective inside the handler under DDP).
        if threading.current_thread() is threading.main_thread():
            self._trainer = trainer
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _restore(self) -> None:
        if self._previous is not None and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self._previous)
        self._previous = None

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Restores the previous SIGTERM handler."""
        self._restore()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Restores the previous SIGTERM handler."""
        self._restore()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Restores the previous SIGTERM handler."""
        self._restore()

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Records the global step, to tell at batch end whether the optimizer stepped."""
        self._step_at_start = trainer.global_step

    def _path(self, trainer: Trainer) -> Path:
        root = self.dirpath or Path(trainer.default_root_dir) / "checkpoints"
        return root / self.filename

    def _agreed(self, trainer: Trainer) -> bool:
        """True when any rank received SIGTERM (every rank calls this at the same batch)."""
        connector = trainer._signal_connector
        flag = self._received or self._pending or connector.received_sigterm
        connector.received_sigterm = False  # this callback decides when to stop
        return any_rank(flag, trainer.strategy.root_device)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """After a SIGTERM on any rank: saves at the optimizer-step boundary, raises :class:`SigtermExit`."""
        if not self._agreed(trainer):
            return
        if trainer.global_step == self._step_at_start:  # mid-accumulation: save at the boundary
            if not self._pending:
                log.info("SIGTERM received mid-accumulation; saving at the next optimizer step")
            self._pending = True
            return
        self._pending = False
        path = self._path(trainer)
        trainer.save_checkpoint(path)
        self.saved_path = path
        log.info("SIGTERM: checkpoint saved to %s at step %d; exiting", path, trainer.global_step)
        raise SigtermExit(SIGTERM_EXIT_CODE)
