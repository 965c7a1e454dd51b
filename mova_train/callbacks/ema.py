"""An exponential moving average of the trainable weights, as a callback (``callbacks.ema.decay=0.999``).

The EMA copies are float32 buffers of an `EmaWeights` module attached to the LightningModule as ``ema_weights``
when fitting starts, so they follow the device and every strategy's state dict: checkpoints hold them as
``ema_weights.<parameter name with . replaced by __>`` next to the trainable weights. They move once per
optimizer step (not per accumulation micro-step). `ema_swapped` puts them into the trainable parameters for a
while: the ``lora_export`` callback (``use_ema``) and validation sampling use it.

Restoring: strategies that restore before ``on_fit_start`` (single device, DDP) hand the checkpoint to
`EMA.on_load_checkpoint` before the buffers exist, so its entries are kept and copied in when they are made;
FSDP2 restores after ``on_fit_start`` into the existing buffers. A checkpoint without EMA entries starts the
EMA from the loaded weights (with a warning).

Order: list it before callbacks that save a checkpoint in ``on_train_batch_end`` (``SigtermCheckpoint``;
Lightning moves ``ModelCheckpoint`` last itself), so that a checkpoint taken at a step holds that step's EMA;
``conf/callbacks/default.yaml`` puts ``ema`` first.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)

__all__ = ["EMA", "EMA_PREFIX", "EmaWeights", "ema_swapped"]

EMA_PREFIX = "ema_weights."
"""State-dict prefix of the EMA buffers (the attribute name on the LightningModule)."""


def _key(name: str) -> str:
    return name.replace(".", "__")


class EmaWeights(nn.Module):
    """Float32 EMA copies of named parameters, as buffers named ``name.replace(".", "__")``.

    Args:
        params: Parameter name -> parameter (the LightningModule's trainable ones, e.g. ``model.video_dit...``).
    """

    def __init__(self, params: dict[str, nn.Parameter]) -> None:
        super().__init__()
        for name, p in params.items():
            self.register_buffer(_key(name), p.detach().float().clone())

    @torch.no_grad()
    def update(self, params: dict[str, nn.Parameter], decay: float) -> None:
        """``ema <- decay * ema + (1 - decay) * param`` for every parameter."""
        for name, p in params.items():
            getattr(self, _key(name)).lerp_(p.detach().float(), 1.0 - decay)

    def get(self, name: str) -> torch.Tensor:
        """The EMA of parameter ``name`` (float32)."""
        return getattr(self, _key(name))


def _trainable(pl_module: LightningModule) -> dict[str, nn.Parameter]:
    params = dict(pl_module.named_parameters())
    names = getattr(pl_module, "trainable_names", None) or [n for n, p in params.items() if p.requires_grad]
    return {n: params[n] for n in names}


class EMA(Callback):
    """Keep an EMA of the LightningModule's trainable weights (see the module docstring).

    Args:
        decay: EMA decay in (0, 1), e.g. 0.999; None turns the callback off (the default config's entry).
    """

    def __init__(self, decay: float | None = None) -> None:
        super().__init__()
        if decay is not None and not 0.0 < decay < 1.0:
            raise ValueError(f"callbacks.ema.decay must be in (0, 1) or null, got {decay}")
        self.decay = decay
        self._pending: dict[str, torch.Tensor] | None = None
        self._step = -1

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Attach the EMA buffers (from the current, possibly restored, weights or the checkpoint's EMA)."""
        if self.decay is None:
            return
        if getattr(pl_module, "ema_weights", None) is None:
            pl_module.ema_weights = EmaWeights(_trainable(pl_module)).to(pl_module.device)
        if self._pending is not None:
            self._load(pl_module.ema_weights, self._pending)
            self._pending = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start counting optimizer steps where the (possibly restored) loop stands."""
        self._step = trainer.global_step

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Take the checkpoint's ``ema_weights.*`` entries (now, or when the buffers are made)."""
        if self.decay is None:
            return
        state = checkpoint.get("state_dict", {})
        saved = {k[len(EMA_PREFIX) :]: v for k, v in state.items() if k.startswith(EMA_PREFIX)}
        if not saved:
            log.warning("checkpoint has no EMA weights; EMA restarts from the loaded weights")
            return
        ema = getattr(pl_module, "ema_weights", None)
        if ema is None:
            self._pending = saved
        else:
            self._load(ema, saved)

    @staticmethod
    def _load(ema: EmaWeights, saved: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(ema.state_dict()) - set(saved))
        if missing:
            log.warning(
                "checkpoint's EMA lacks %d weights (e.g. %s); those restart", len(missing), missing[:2]
            )
        with torch.no_grad():
            for name, buf in ema.named_buffers():
                if name in saved:
                    buf.copy_(saved[name].to(buf.device, buf.dtype))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Move the EMA after each optimizer step (not after accumulation micro-steps)."""
        ema = getattr(pl_module, "ema_weights", None)
        if self.decay is None or ema is None or trainer.global_step == self._step:
            return
        self._step = trainer.global_step
        ema.update(_trainable(pl_module), self.decay)


@contextlib.contextmanager
def ema_swapped(pl_module: LightningModule) -> Iterator[None]:
    """Temporarily put the EMA weights into the trainable parameters (no-op when the module keeps no EMA)."""
    ema: EmaWeights | None = getattr(pl_module, "ema_weights", None)
    if ema is None:
        yield
        return
    params = _trainable(pl_module)
    saved = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(ema.get(n).to(p.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
