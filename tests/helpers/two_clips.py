"""Two tiny clips for memorization tests: a red square with a slow tone, a blue square with a fast tone.

Video and first-frame condition latents come from the tiny Wan VAE; the audio latents are synthesized in latent
space (a slow vs a fast sinusoid per channel) because the random tiny DAC maps a 100 Hz and a 400 Hz tone to
nearly the same latent (relative difference 0.17), which would make cross-modal checks meaningless.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

F, H, W, FPS = 5, 32, 32, 16.0
COLORS = {"A": ((255, 0, 0), 1), "B": ((0, 0, 255), 3)}  # clip -> (square colour, audio cycles)


def make_clip(enc, name: str, png: Path | None = None) -> dict[str, torch.Tensor]:
    """Latents of clip ``name`` (``"A"`` or ``"B"``): ``video_latents``, ``cond``, ``audio_latents``, each [1, ...]."""
    color, cycles = COLORS[name]
    frames = np.zeros((F, H, W, 3), np.uint8)
    for f in range(F):
        frames[f, 2:30, 2 + f : 26 + f] = color
    if png is not None:
        Image.fromarray(frames[0]).save(png)
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # [3, F, H, W]
    with torch.no_grad():
        return {
            "video_latents": enc.video_vae.encode(video[None]),
            "cond": enc.video_vae.encode_first_frame_condition(video[None, :, 0], F),
            "audio_latents": latent_tone(enc, cycles),
        }


def latent_tone(enc, cycles: int) -> torch.Tensor:
    """Audio latents ``[1, Ca, L]`` of a clip of F frames at FPS: a sinusoid of ``cycles`` periods per channel."""
    n = int(enc.audio_vae.sample_rate * F / FPS)
    length = (n - 1) // enc.audio_vae.hop_length + 1
    pos = torch.arange(length) / length
    return torch.sin(2 * math.pi * cycles * pos + torch.arange(enc.audio_vae.latent_dim)[:, None])[None]


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative distance ``||x - ref|| / ||ref||``."""
    return float((x - ref).norm() / ref.norm())
