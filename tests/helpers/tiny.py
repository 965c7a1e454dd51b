"""The tiny dual tower of the tests and its inputs, built in one place.

``tiny_model()`` is :func:`mova_train.models.mova_tiny` in eval mode; ``tiny_inputs(...)`` the keyword inputs of
:meth:`MovaDualTower.forward` for it (or for any tower given as ``model``: channel and text widths are read from its
configs), drawn from one seeded generator in a fixed order (latents, y, audio latents, context), so a test that
needs the same draws twice calls it twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Trainer

from mova_train.models import mova_tiny
from mova_train.models.builders import tiny_config
from mova_train.models.mova import MovaDualTower


def tiny_model(**kwargs: Any) -> MovaDualTower:
    """``mova_tiny(**kwargs)`` in eval mode (keyword args: ``experts``, ``seed``, :func:`tiny_config`'s)."""
    return mova_tiny(**kwargs).eval()


def _times(value: float | Sequence[float], batch: int, device: str | torch.device | None) -> torch.Tensor:
    values = [float(value)] if isinstance(value, int | float) else [float(v) for v in value][:batch]
    return torch.tensor(values, device=device)


def tiny_inputs(
    model: MovaDualTower | None = None,
    *,
    batch: int = 1,
    frames: int = 2,
    height: int = 4,
    width: int = 4,
    audio_len: int = 10,
    text_len: int = 6,
    timestep: float | Sequence[float] = 500.0,
    audio_timestep: float | Sequence[float] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Keyword inputs of the dual tower's forward.

    Args:
        model: the tower the inputs are for (default: the widths of :func:`tiny_config`).
        batch: samples; video latent ``[batch, C, frames, height, width]``, ``y`` has ``C + 4`` channels.
        frames: latent frames.
        height: latent height (even: patch 2).
        width: latent width (even: patch 2).
        audio_len: audio latent length: ``[batch, Ca, audio_len]``.
        text_len: context length: ``[batch, text_len, text_dim]``.
        timestep: one shared time (a ``[1]`` tensor) or one per sample (the first ``batch`` of the sequence).
        audio_timestep: the audio's times (default: ``timestep``).
        seed: of the generator the tensors are drawn from.
        device: where the tensors go (drawn on the CPU first, so every device gets the same values).
        extra: more keyword inputs (``expert="video_dit"``, ``video_fps=8.0``).

    Returns:
        ``latents``, ``y``, ``audio_latents``, ``context``, ``timestep``, ``audio_timestep`` and ``extra``.
    """
    if model is None:
        video, audio = tiny_config().video_dit, tiny_config().audio_dit
    else:
        video, audio = model.video_dit.config, model.audio_dit.config
    c, ca, td = video.out_dim, audio.in_dim, video.text_dim
    g = torch.Generator().manual_seed(seed)
    drawn = dict(
        latents=torch.randn(batch, c, frames, height, width, generator=g),
        y=torch.randn(batch, c + 4, frames, height, width, generator=g),
        audio_latents=torch.randn(batch, ca, audio_len, generator=g),
        context=torch.randn(batch, text_len, td, generator=g),
    )
    inputs: dict[str, Any] = {k: v.to(device) for k, v in drawn.items()}
    inputs["timestep"] = _times(timestep, batch, device)
    inputs["audio_timestep"] = _times(timestep if audio_timestep is None else audio_timestep, batch, device)
    return {**inputs, **extra}


def tiny_args(model: MovaDualTower | None = None, **kwargs: Any) -> tuple[torch.Tensor, ...]:
    """:func:`tiny_inputs` as positional arguments ``(latents, y, audio_latents, context, t, t_audio)``."""
    x = tiny_inputs(model, **kwargs)
    return tuple(x[k] for k in ("latents", "y", "audio_latents", "context", "timestep", "audio_timestep"))


def cpu_trainer(**kwargs: Any) -> Trainer:
    """A quiet CPU Lightning ``Trainer`` (no logger, progress bar or model summary); ``kwargs`` override."""
    return Trainer(
        **{
            "accelerator": "cpu",
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            **kwargs,
        }
    )


@torch.no_grad()
def tiny_output(model: torch.nn.Module, **kwargs: Any) -> torch.Tensor:
    """The video and audio velocities of ``model`` (in eval mode) on ``tiny_inputs(**kwargs)``, flattened into
    one vector (for equality checks between two models).
    """
    video, audio = model.eval()(**tiny_inputs(**kwargs))
    return torch.cat([video.flatten(), audio.flatten()])


@torch.no_grad()
def fill_lora(
    model: torch.nn.Module, seed: int, scale: float = 0.3, part: str = ".lora_", only_trainable: bool = False
) -> None:
    """Stand-in for training: every LoRA parameter whose name holds ``part`` (``".lora_B."``: B only) set to
    ``scale`` x standard-normal draws of one generator seeded ``seed``, in parameter order; with
    ``only_trainable`` only those that require grad.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if part in name and (p.requires_grad or not only_trainable):
            p.copy_(scale * torch.randn(p.shape, generator=g))


def overfit(
    model: torch.nn.Module, objective: Any, batch: dict[str, Any], steps: int, lr: float, video_fps: float
) -> float:
    """Train ``model`` on one fixed ``batch`` for ``steps`` AdamW steps (no weight decay, cosine LR to 0) with
    ``objective`` (noise and timesteps from a generator seeded 0); returns the last loss.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        loss = objective(model, batch, step, gen, video_fps=video_fps).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_sched.step()
    return float(loss)
