"""`LoraGradNorms`: the gradient norm of each LoRA group (and of each fully fine-tuned component).

Logged every ``trainer.log_every_n_steps`` optimizer steps, after gradient accumulation and before clipping,
as ``train/grad_norm_<group>`` (``video``, ``audio``, ``bridge_a2v``, ``bridge_v2a``) and
``train/grad_norm_full_<component>``. Frozen groups (``lora.freeze_groups``) have no gradient and are not
logged. FSDP2 gradients are ``DTensor`` shards: their norms are reduced over the mesh (every rank takes part).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from mova_train.models.lora import lora_group

__all__ = ["LoraGradNorms", "group_grad_norms"]


def _norm(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    n = torch.linalg.vector_norm(t.detach().float())
    return n.full_tensor() if isinstance(n, DTensor) else n


def group_grad_norms(
    model: torch.nn.Module, full_finetune: tuple[str, ...] | list[str] = ()
) -> dict[str, float]:
    """L2 norm of the gradients per LoRA group and per fully fine-tuned component (parameters without a
    gradient are skipped; a group without any is absent).
    """
    squares: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        if ".lora_A." in name or ".lora_B." in name:
            key = lora_group(name)
        elif name.partition(".")[0] in full_finetune:
            key = "full_" + name.partition(".")[0]
        else:
            continue
        sq = _norm(p.grad).square()
        squares[key] = squares[key] + sq if key in squares else sq
    return {k: float(v.sqrt()) for k, v in sorted(squares.items())}


class LoraGradNorms(Callback):
    """Log ``train/grad_norm_<group>`` every ``trainer.log_every_n_steps`` optimizer steps (see the module doc).

    Args:
        every_n_steps: period in optimizer steps (None: the trainer's ``log_every_n_steps``).
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        self.every_n_steps = every_n_steps

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        """Logs the per-group gradient norms on every ``every_n_steps``-th optimizer step."""
        every = self.every_n_steps or trainer.log_every_n_steps or 1
        if trainer.global_step % every:
            return
        model = getattr(pl_module, "model", None)
        if model is None:
            return
        norms = group_grad_norms(model, tuple(getattr(pl_module, "full_finetune", ()) or ()))
        for key, value in norms.items():
            pl_module.log(f"train/grad_norm_{key}", value, on_step=True, on_epoch=False, batch_size=1)
