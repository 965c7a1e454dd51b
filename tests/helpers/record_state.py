"""A callback the fault and resume tests add from the command line (``+callbacks.record._target_=...``): it writes
the trainable weights and the optimizer state of rank 0 to a file when training starts (after a resume restored
them) and when it ends, so a subprocess run can be compared bit for bit with another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def trainable_and_optimizer(trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
    """Trainable parameters by name (full tensors) and the first optimizer's index-keyed state."""
    weights = {}
    for name, p in pl_module.named_parameters():
        if p.requires_grad:
            t = p.detach()
            weights[name] = (t.full_tensor() if hasattr(t, "full_tensor") else t).cpu().clone()
    optim: dict[int, dict[str, torch.Tensor]] = {}
    if trainer.optimizers:
        opt = trainer.optimizers[0]
        params = [p for g in opt.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            st = opt.state.get(p, {})
            optim[i] = {
                k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu().clone()
                for k, v in st.items()
                if isinstance(v, torch.Tensor)
            }
    return {"global_step": trainer.global_step, "weights": weights, "optimizer": optim}


class RecordState(Callback):
    """Write ``{global_step, weights, optimizer}`` to ``<dirpath>/start.pt`` and ``<dirpath>/end.pt``."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def _write(self, trainer: Trainer, pl_module: LightningModule, name: str) -> None:
        state = trainable_and_optimizer(trainer, pl_module)  # collective for sharded tensors
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            torch.save(state, self.dirpath / name)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module, "start.pt")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module, "end.pt")
