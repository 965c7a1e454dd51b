"""Tiny in-memory latent batches and a resumable stream/datamodule for training tests (fits ``mova_tiny()``)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

from mova_train.lit import MovaLitModule
from mova_train.models import mova_tiny
from mova_train.models.lora import LoraSpec
from mova_train.objectives import FlowMatchingObjective


def make_batch(
    seed: int, batch: int = 2, frames: int = 2, hw: int = 4, audio_len: int = 8, text_len: int = 8
):
    """A cached-mode batch (the datamodule's field names) with deterministic random latents."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, 8, frames, hw, hw, generator=g)
    cond[:, :4] = 0.0
    cond[:, :4, 0] = 1.0
    return {
        "video_latents": torch.randn(batch, 4, frames, hw, hw, generator=g),
        "cond": cond,
        "audio_latents": torch.randn(batch, 8, audio_len, generator=g),
        "context": torch.randn(batch, text_len, 32, generator=g),
        "audio_mask": torch.ones(batch, dtype=torch.bool),
        # drawn last, so the other tensors are what they were before t2av existed
        "empty_latents": torch.randn(1, 4, frames, hw, hw, generator=g).expand(batch, -1, -1, -1, -1),
    }


class TinyStream(IterableDataset):
    """Infinite stream of batches; batch ``i`` depends only on ``(seed, i)``; starts at ``start``."""

    def __init__(self, seed: int = 0, start: int = 0, fixed: bool = False) -> None:
        self.seed, self.start, self.fixed = seed, start, fixed

    def __iter__(self) -> Iterator[dict[str, Any]]:
        i = self.start
        while True:
            yield make_batch(self.seed if self.fixed else self.seed * 100_003 + i)
            i += 1


class TinyDataModule(LightningDataModule):
    """Resumable: the number of consumed batches is its state."""

    def __init__(self, seed: int = 0, fixed: bool = False) -> None:
        super().__init__()
        self.seed, self.fixed, self.consumed = seed, fixed, 0

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TinyStream(self.seed, self.consumed, self.fixed), batch_size=None, num_workers=0)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training:
            self.consumed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.consumed = int(state_dict["consumed"])


def tiny_module(
    lr: float = 3e-3,
    lora: LoraSpec | None = None,
    full_finetune: tuple[str, ...] = (),
    optimizer: Any = None,
    **kwargs: Any,
) -> MovaLitModule:
    """A lit module over ``mova_tiny()`` (seed 0) with AdamW by default."""
    objective_kw = {
        k: kwargs.pop(k)
        for k in list(kwargs)
        if k
        in (
            "expert_mode",
            "expert",
            "caption_dropout",
            "independent_audio_timesteps",
            "mode",
            "a2v_first_frame",
        )
    }
    return MovaLitModule(
        model=functools.partial(mova_tiny, seed=0),
        objective=FlowMatchingObjective(**objective_kw),
        optimizer=optimizer or functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.0),
        lora=lora,
        full_finetune=list(full_finetune),
        **kwargs,
    )
