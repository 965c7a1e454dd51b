"""Optimizers, parameter groups and learning-rate schedules (counted in optimizer steps).

The schedule factories return a ``LambdaLR`` and take the optimizer first, so a config can hold them as
``functools.partial`` (Hydra ``_partial_: true``). The multiplier objects are small dataclasses, so the
scheduler's ``state_dict`` stays plain data.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger(__name__)

__all__ = [
    "WarmupCosine",
    "WarmupStableDecay",
    "build_param_groups",
    "warmup_cosine",
    "warmup_stable_decay",
]


def build_param_groups(
    module: nn.Module, base_lr: float, groups: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Split the trainable parameters into optimizer groups by top-level component.

    Args:
        module: the model (parameters named ``<component>.<path>``) or a LightningModule holding it as ``model``.
        base_lr: learning rate of the default group.
        groups: component -> options; ``lr_scale`` multiplies ``base_lr``, other keys (``weight_decay``,
            ``betas``, ...) are passed to the optimizer group. E.g. ``{"dual_tower_bridge": {"lr_scale": 2.0}}``.

    Returns:
        a list of ``{"params", "lr", "name", ...}`` dicts; empty groups are left out.
    """
    groups = dict(groups or {})
    buckets: dict[str, list[torch.nn.Parameter]] = {name: [] for name in groups}
    buckets["default"] = []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        if parts[0] == "model":
            parts = parts[1:]
        buckets[parts[0] if parts[0] in groups else "default"].append(p)
    out: list[dict[str, Any]] = []
    for name, params in buckets.items():
        if not params:
            if name != "default":
                log.warning("parameter group %r has no trainable parameters", name)
            continue
        opts = dict(groups.get(name, {}))
        scale = float(opts.pop("lr_scale", 1.0))
        out.append({"params": params, "lr": base_lr * scale, "name": name, **opts})
    return out


@dataclass
class WarmupCosine:
    """LR multiplier: linear warmup ``(step + 1) / warmup`` then cosine down to ``min_lr_ratio``."""

    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        """LR multiplier at optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class WarmupStableDecay:
    """LR multiplier: linear warmup, constant plateau, then a decay over the last ``decay_steps`` steps.

    ``decay_shape``: ``"linear"``, ``"cosine"`` or ``"sqrt"`` (1 - sqrt(progress)); ends at ``min_lr_ratio``.
    """

    warmup_steps: int
    total_steps: int
    decay_steps: int
    min_lr_ratio: float = 0.0
    decay_shape: str = "linear"

    def __call__(self, step: int) -> float:
        """LR multiplier at optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_start = self.total_steps - self.decay_steps
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, self.decay_steps))
        if self.decay_shape == "cosine":
            frac = 0.5 * (1 + math.cos(math.pi * progress))
        elif self.decay_shape == "sqrt":
            frac = 1 - math.sqrt(progress)
        else:
            frac = 1 - progress
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * frac


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup over ``warmup_steps`` optimizer steps, then cosine to ``min_lr_ratio * lr`` at
    ``total_steps`` (upstream's low-resource schedule, docs/model.md §10.3).
    """
    if warmup_steps < 0 or total_steps < 1 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(
            f"warmup_cosine: need warmup_steps >= 0, total_steps >= 1, 0 <= min_lr_ratio <= 1; got "
            f"{warmup_steps}, {total_steps}, {min_lr_ratio}"
        )
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_lr_ratio))


def warmup_stable_decay(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    decay_steps: int | None = None,
    decay_ratio: float = 0.1,
    min_lr_ratio: float = 0.0,
    decay_shape: str = "linear",
) -> LambdaLR:
    """Warmup-stable-decay (the release's "wsd" schedule): warmup, plateau, decay over the last
    ``decay_steps`` (default ``decay_ratio * total_steps``) optimizer steps.
    """
    if decay_shape not in ("linear", "cosine", "sqrt"):
        raise ValueError(f"warmup_stable_decay: decay_shape must be linear/cosine/sqrt, got {decay_shape!r}")
    decay = int(round(decay_ratio * total_steps)) if decay_steps is None else int(decay_steps)
    if warmup_steps < 0 or decay < 0 or warmup_steps + decay > total_steps:
        raise ValueError(
            f"warmup_stable_decay: warmup_steps ({warmup_steps}) + decay_steps ({decay}) must fit in "
            f"total_steps ({total_steps})"
        )
    return LambdaLR(optimizer, WarmupStableDecay(warmup_steps, total_steps, decay, min_lr_ratio, decay_shape))
